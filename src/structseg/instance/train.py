"""Training, evaluation and prediction of Mask R-CNN runs.

A run directory is the engine's (:class:`~structseg.engine.rundir.RunDir`): ``config.yaml``, ``log.csv``,
``tb/``, ``checkpoints/{latest,best}.pt``, ``figures/``, ``metrics.json``. A checkpoint is a plain dict
(``model`` state dict, ``iteration``, ``config``, ``category_names``, ``metrics``, ``task: instance``) written
atomically and read with ``weights_only=True`` by the engine's checkpoint functions; configs are read and
written by the engine's config I/O, devices resolved by its ``resolve_device``.
"""
from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from structseg.engine.checkpoint import load_checkpoint, save_atomic
from structseg.engine.config import config_from_dict, config_to_dict, save_config
from structseg.engine.distributed import resolve_device
from structseg.engine.rundir import RunDir
from structseg.errors import CheckpointError, DataError
from structseg.instance.coco import coco_evaluate, format_ap
from structseg.instance.config import InstanceConfig
from structseg.instance.datasets import InstanceDataset, build_instance_dataset, collate_detection
from structseg.instance.models import build_maskrcnn, load_maskrcnn_weights

Target = dict[str, torch.Tensor]


def build_model(cfg: InstanceConfig, num_classes: int) -> nn.Module:
    """The Mask R-CNN a config describes (``model.weights`` loaded when given)."""
    m = cfg.model
    model = build_maskrcnn(
        num_classes, backbone=m.backbone, weights_backbone=m.weights_backbone, trainable_layers=m.trainable_layers,
        anchor_sizes=m.anchor_sizes, box_head_dim=m.box_head_dim, mask_head_layers=m.mask_head_layers,
        min_size=m.min_size, max_size=m.max_size, **m.options,
    )
    if m.weights is not None:
        load_maskrcnn_weights(model, m.weights)
    return model


class _FirstItems(Subset):
    """The first ``limit`` items of an instance data set, with its class metadata."""

    def __init__(self, dataset: InstanceDataset, limit: int) -> None:
        super().__init__(dataset, range(limit))
        self.category_names, self.classes = dataset.category_names, dataset.classes


def build_split(cfg: InstanceConfig, split: str, *, train: bool,
                limit: int | None = None) -> InstanceDataset | _FirstItems:
    """The instance data set of one split, hflip only for training, cut to ``limit`` items."""
    d = cfg.data
    ds = build_instance_dataset(
        d.layout, d.root, split, hflip=d.hflip if train else 0.0, background=d.background, **d.options
    )
    if len(ds) == 0:
        raise DataError(f"{d.layout} split {split!r} has no images")
    if limit is not None and limit < len(ds):
        return _FirstItems(ds, limit)
    return ds


def binarize(prediction: Target, mask_threshold: float = 0.5) -> Target:
    """CPU copy of a Mask R-CNN output with ``(N, H, W)`` uint8 masks (memory: 1/4 of float)."""
    out = {k: v.detach().cpu() for k, v in prediction.items()}
    out["masks"] = (out["masks"][:, 0] > mask_threshold).to(torch.uint8)
    return out


@torch.no_grad()
def predict_dataset(
    model: nn.Module, dataset: Any, *, mask_threshold: float = 0.5, progress: bool = True
) -> tuple[list[Target], list[Target]]:
    """Ground-truth targets and binarised predictions of every item of ``dataset``."""
    from tqdm import tqdm

    model.eval()
    device = next(model.parameters()).device
    targets, predictions = [], []
    for i in tqdm(range(len(dataset)), desc="instance eval", unit="img", disable=not progress):
        image, target = dataset[i]
        (pred,) = model([image.to(device)])
        targets.append(target)
        predictions.append(binarize(pred, mask_threshold))
    return targets, predictions


def evaluate_model(
    model: nn.Module, dataset: Any, *, mask_threshold: float = 0.5, progress: bool = True
) -> dict[str, dict[str, float | None]]:
    """COCO mask (``segm``) and box (``bbox``) AP of ``model`` on ``dataset``."""
    targets, predictions = predict_dataset(model, dataset, mask_threshold=mask_threshold, progress=progress)
    return coco_evaluate(targets, predictions, dataset.category_names)


def save_checkpoint(path: Path, model: nn.Module, iteration: int, cfg: InstanceConfig,
                    names: Sequence[str], metrics: dict[str, Any] | None) -> Path:
    """Write a plain-dict checkpoint (state dict on the CPU) atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_atomic({"model": state, "iteration": iteration, "config": config_to_dict(cfg),
                        "category_names": list(names), "metrics": metrics, "task": "instance"}, path)


def load_instance_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a run checkpoint (``weights_only=True``) and check that it is an instance one."""
    ckpt = load_checkpoint(path)
    if ckpt.get("task") != "instance" or "config" not in ckpt or "category_names" not in ckpt:
        raise CheckpointError(f"{path}: not a structseg instance checkpoint (no task/config/category_names entries)")
    return ckpt


def load_run(run_dir: str | Path, which: str = "best", *,
             device: str = "cpu") -> tuple[InstanceConfig, nn.Module, list[str]]:
    """Config, model (eval mode, weights loaded, on ``device``) and category names of a trained run."""
    path = RunDir(run_dir).checkpoint(which)
    ckpt = load_instance_checkpoint(path)
    cfg = config_from_dict(ckpt["config"], InstanceConfig)
    cfg.model.weights = None
    cfg.model.weights_backbone = None  # the checkpoint holds every weight
    names = list(ckpt["category_names"])
    model = build_model(cfg, len(names))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the configured model "
                              f"({str(exc).splitlines()[0]})") from exc
    return cfg, model.to(resolve_device(device)).eval(), names


def _loss_figure(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    its = [r["iteration"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in [k for k in rows[0] if k.startswith("loss")]:
        ax.plot(its, [r[key] for r in rows], label=key, linewidth=2 if key == "loss" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def prediction_figure(dataset: Any, targets: list[Target], predictions: list[Target], names: Sequence[str],
                      path: Path, *, count: int = 4, score_threshold: float = 0.5) -> None:
    """PNG grid: for the first ``count`` items, truth | prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from structseg.instance.draw import draw_instances

    count = min(count, len(targets))
    if count == 0:
        return
    fig, axes = plt.subplots(count, 2, figsize=(8, 3.2 * count), squeeze=False)
    for i in range(count):
        image = dataset[i][0]
        panels = [("truth", draw_instances(image, targets[i], names)),
                  (f"prediction (score >= {score_threshold})",
                   draw_instances(image, predictions[i], names, score_threshold=score_threshold))]
        for ax, (title, picture) in zip(axes[i], panels):
            ax.imshow(picture)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _score(results: dict[str, dict[str, float | None]]) -> float:
    ap = results.get("segm", {}).get("AP")
    return -1.0 if ap is None else ap


def train_instance(cfg: InstanceConfig, run_dir: str | Path | None = None) -> Path:
    """Train Mask R-CNN as ``cfg`` says; returns the run directory."""
    from tqdm import tqdm

    t = cfg.train
    run = RunDir(run_dir or cfg.run_dir or "runs/instance").make()
    cfg.run_dir = str(run.root)
    save_config(cfg, run.config)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    torch.manual_seed(t.seed)
    np.random.seed(t.seed)
    device = resolve_device(t.device)

    train_ds = build_split(cfg, cfg.data.train_split, train=True, limit=cfg.data.limit_train)
    names = train_ds.category_names
    loader = DataLoader(train_ds, batch_size=cfg.data.batch_size, shuffle=True, num_workers=cfg.data.workers,
                        collate_fn=collate_detection, generator=torch.Generator().manual_seed(t.seed))
    model = build_model(cfg, len(names)).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    warmup = max(t.warmup_iters, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: min(1.0, 0.001 + (1 - 0.001) * it / warmup))
    writer = None
    if t.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.tb))

    val_ds = None
    best, results, rows = -math.inf, None, []
    log_file = open(run.log, "w", newline="")
    log: csv.DictWriter | None = None
    batches = iter(loader)
    bar = tqdm(range(1, t.iterations + 1), desc="instance train", unit="it", disable=not t.progress)
    start = time.perf_counter()
    try:
        for it in bar:
            try:
                images, targets = next(batches)
            except StopIteration:
                batches = iter(loader)
                images, targets = next(batches)
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in tg.items()} for tg in targets]
            losses = model(images, targets)
            loss = sum(losses.values())
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at iteration {it}; lower train.lr or raise warmup_iters")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                nn.utils.clip_grad_norm_(params, t.grad_clip)
            optimizer.step()
            scheduler.step()
            if it % t.log_every == 0 or it == t.iterations:
                row = {"iteration": it, "loss": value, **{k: v.item() for k, v in losses.items()},
                       "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - start}
                rows.append(row)
                if log is None:
                    log = csv.DictWriter(log_file, fieldnames=list(row))
                    log.writeheader()
                log.writerow(row)
                log_file.flush()
                if writer is not None:
                    for k, v in row.items():
                        if k != "iteration":
                            writer.add_scalar(f"train/{k}", v, it)
                bar.set_postfix(loss=f"{value:.3f}")
            last = it == t.iterations
            if (t.eval_every and it % t.eval_every == 0) or last:
                if val_ds is None:
                    val_ds = build_split(cfg, cfg.data.val_split, train=False, limit=cfg.data.limit_val)
                results = evaluate_model(model, val_ds, mask_threshold=cfg.eval.mask_threshold, progress=t.progress)
                model.train()
                tqdm.write(f"iteration {it}: mask AP {_fmt(results['segm']['AP'])}, "
                           f"box AP {_fmt(results['bbox']['AP'])}")
                if writer is not None:
                    for kind, stats in results.items():
                        for k, v in stats.items():
                            if v is not None:
                                writer.add_scalar(f"val/{kind}_{k}", v, it)
                if _score(results) > best:
                    best = _score(results)
                    save_checkpoint(run.best, model, it, cfg, names, results)
            if it % t.checkpoint_every == 0 or last:
                save_checkpoint(run.latest, model, it, cfg, names, results)
    finally:
        log_file.close()
        if writer is not None:
            writer.close()

    _loss_figure(rows, run.figures / "loss.png")
    summary = {"iterations": t.iterations, "seconds": time.perf_counter() - start, "split": cfg.data.val_split,
               "images": len(val_ds) if val_ds is not None else 0, **(results or {})}
    run.metrics.write_text(json.dumps(summary, indent=2))
    if val_ds is not None and cfg.eval.figures > 0:
        subset = Subset(val_ds, range(min(cfg.eval.figures, len(val_ds))))
        targets, predictions = predict_dataset(model, subset, mask_threshold=cfg.eval.mask_threshold, progress=False)
        prediction_figure(subset, targets, predictions, names, run.figures / "val_predictions.png",
                          count=cfg.eval.figures, score_threshold=cfg.eval.draw_threshold)
    return run.root


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def evaluate_run(run_dir: str | Path, *, split: str | None = None, limit: int | None = None,
                 which: str = "best", device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """COCO AP of a trained run on its validation split (or ``split``); writes ``eval_<split>.json`` and a figure."""
    run_dir = Path(run_dir)
    cfg, model, names = load_run(run_dir, which, device=device)
    split = split or cfg.data.val_split
    dataset = build_split(cfg, split, train=False, limit=limit if limit is not None else cfg.data.limit_val)
    targets, predictions = predict_dataset(model, dataset, mask_threshold=cfg.eval.mask_threshold, progress=progress)
    results = coco_evaluate(targets, predictions, names)
    summary = {"split": split, "images": len(dataset), "checkpoint": which, **results}
    (run_dir / f"eval_{split}.json").write_text(json.dumps(summary, indent=2))
    prediction_figure(dataset, targets, predictions, names, run_dir / "figures" / f"eval_{split}.png",
                      count=cfg.eval.figures, score_threshold=cfg.eval.draw_threshold)
    print(format_ap(results))
    return summary
