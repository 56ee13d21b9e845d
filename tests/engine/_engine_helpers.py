"""Tiny stand-ins for the engine tests: a data set and a model that train in milliseconds."""
from __future__ import annotations

import torch
from torch import nn

from structseg.data.base import ClassInfo, SegmentationDataset

TINY_CLASSES = ClassInfo(names=("a", "b", "c"), palette=((255, 0, 0), (0, 255, 0), (0, 0, 255)))


class TinySegDataset(SegmentationDataset):
    """Images whose pixel color (plus noise) tells the class; masks are random blocks.

    The transform flips at random with ``torch.rand`` (to exercise seeded augmentation).
    """

    classes = TINY_CLASSES

    def __init__(self, length: int = 8, size: int = 16, seed: int = 0, flip: bool = True,
                 bad_label_at: int | None = None) -> None:
        self.length, self.size, self.seed, self.flip = length, size, seed, flip
        self.bad_label_at = bad_label_at
        self.transform = self._augment

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1000 + index)
        blocks = torch.randint(0, 3, (self.size // 4, self.size // 4), generator=g)
        mask = blocks.repeat_interleave(4, 0).repeat_interleave(4, 1)
        colors = torch.tensor([[200, 40, 40], [40, 200, 40], [40, 40, 200]], dtype=torch.float32)
        image = colors[mask].permute(2, 0, 1) + 30 * torch.randn(3, self.size, self.size, generator=g)
        if self.bad_label_at == index:
            mask = mask.clone()
            mask[0, 0] = 7
        return image.clamp(0, 255).to(torch.uint8), mask.long()

    def describe(self, index: int) -> str:
        return f"tiny item {index}"

    def _augment(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (image.float() / 255.0 - 0.5) / 0.25
        if self.flip and bool(torch.rand(()) < 0.5):
            x, mask = x.flip(-1), mask.flip(-1)
        return x, mask


class TinyNet(nn.Module):
    """conv-BN-ReLU "backbone" + dropout + 1x1 classifier ("head")."""

    def __init__(self, num_classes: int = 3, width: int = 8, norm: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, width, 3, padding=1),
                                      nn.BatchNorm2d(width) if norm else nn.Identity(), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(width, num_classes, 1))
        self.nan_after: int | None = None
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.backbone(x))
        if self.training:
            self.calls += 1
            if self.nan_after is not None and self.calls > self.nan_after:
                out = out * float("nan")
        return out


class PointwiseNet(nn.Module):
    """A per-pixel (1x1) model: its output at a pixel depends on that pixel only."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def tiny_config(tmp_path, *overrides: str):
    """A config for the stand-ins: small batches, no fast path, no progress bars."""
    from structseg.engine.config import load_config

    base = [
        "data.batch_size=4", "data.eval_batch_size=4", "data.workers=0", "data.class_weights=none",
        "optim.name=sgd", "optim.lr=0.05", "optim.momentum=0.9", "optim.weight_decay=0.0001",
        "schedule.name=poly", "train.iterations=6", "train.eval_every=3", "train.checkpoint_every=3",
        "train.log_every=1", "train.amp=off", "model.fast_path=off", "train.progress=false",
        "train.deterministic=true", "train.device=cpu", "train.num_threads=1",
        "loss=[{name: cross_entropy}]", "model.aux=false",
        f"run_dir={tmp_path / 'run'}",
    ]
    return load_config(None, base + list(overrides))


def run_tiny(tmp_path, *overrides: str, model=None, train_set=None, val_set=None, hooks=None, run_dir=None):
    """Train the stand-ins with :func:`tiny_config` (+ overrides); returns (trainer, result)."""
    from structseg.engine.trainer import Trainer

    cfg = tiny_config(tmp_path, *overrides)
    torch.manual_seed(0)
    trainer = Trainer(cfg, run_dir, model=model if model is not None else TinyNet(),
                      train_set=train_set if train_set is not None else TinySegDataset(8),
                      val_set=val_set if val_set is not None else TinySegDataset(5, seed=1, flip=False),
                      hooks=hooks)
    return trainer, trainer.fit()


def plain_net() -> TinyNet:
    """A TinyNet without BatchNorm and dropout (whose results depend on the per-process batch), seeded."""
    torch.manual_seed(42)
    return TinyNet(norm=False, dropout=0.0)


def ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One process of the 2-process gloo test: train the stand-ins, then evaluate fixed weights."""
    import os
    from pathlib import Path

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # a file rendezvous: no race for the port with other tests running beside this one
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world)
    try:
        out = Path(out_dir)
        run_tiny(out, "train.deterministic=false", model=plain_net(), run_dir=out / "ddp_run")
        cm = evaluate_fixed(rank, world)
        if rank == 0:
            torch.save(cm, out / "ddp_confusion.pt")
    finally:
        dist.destroy_process_group()


def evaluate_fixed(rank: int = 0, world: int = 1) -> torch.Tensor:
    """Confusion matrix of a fixed pointwise model on 7 items, sharded over ``world`` processes."""
    from torch.utils.data import DataLoader

    from structseg.engine.datasets import ShardedSampler
    from structseg.engine.evaluate import evaluate_model

    torch.manual_seed(123)
    model = PointwiseNet()
    data = TinySegDataset(7, seed=5, flip=False)
    sampler = ShardedSampler(len(data), rank=rank, world_size=world, shuffle=False, pad=False, with_seeds=False)
    loader = DataLoader(data, batch_size=2, sampler=sampler)
    return evaluate_model(model, loader, 3, ignore_index=255).confusion


# overrides that make the embedded default (synthetic data, small U-Net) train through the CLI in seconds
CLI_TINY = ["train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2", "train.log_every=1",
            "data.options.length=4", "data.options.size=32", "data.crop_size=32", "data.batch_size=2",
            "data.eval_batch_size=2", "model.options.base_channels=4", "train.progress=false",
            "train.num_threads=1", "train.amp=off", "model.fast_path=off"]


def assert_route_trains_evaluates_and_resumes(tmp_path, head: list[str]) -> None:  # noqa: ANN001
    """A model route (``head`` overrides) through the CLI: 8 iterations lower its loss, ``eval`` scores the run,
    and 4 + a resume to 8 give the same weights as 8 in one go."""
    import csv
    import json

    from structseg.cli import main

    common = [*CLI_TINY, *head, "schedule.name=constant", "schedule.warmup_iters=0", "optim.lr=0.05",
              "train.eval_every=4", "train.checkpoint_every=4"]
    run = tmp_path / "one"
    assert main(["train", "--run-dir", str(run), "--set", *common, "train.iterations=8"]) == 0
    losses = [float(r["loss"]) for r in csv.DictReader(open(run / "log.csv")) if r["loss"]]
    assert len(losses) == 8 and sum(losses[-3:]) < sum(losses[:3])
    assert main(["eval", "--run-dir", str(run), "--no-progress"]) == 0
    assert 0.0 <= json.loads((run / "eval_val.json").read_text())["miou"] <= 1.0
    two = tmp_path / "two"
    assert main(["train", "--run-dir", str(two), "--set", *common, "train.iterations=4"]) == 0
    assert main(["train", "--resume", str(two), "--set", "train.iterations=8"]) == 0
    a = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["model"]
    b = torch.load(two / "checkpoints" / "latest.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
