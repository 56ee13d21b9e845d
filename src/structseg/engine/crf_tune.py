"""Dense-CRF parameter search on a trained run's training images (never the validation split).

The network's test-time probabilities are computed once per image; every candidate parameter set then only
re-runs the CRF on them and scores the refined labels (mIoU over the chosen images). Coordinate search starts
at the run's ``crf:`` section and tries, one parameter at a time, a few multiples of its current value,
keeping any that scores higher, for ``rounds`` passes; random search draws ``trials`` sets log-uniformly
around the defaults. The best set is written into the run's ``config.yaml`` (``crf:`` section; its ``mode`` stays as it
was) so ``structseg eval --crf dense`` uses it, and every trial into ``crf_tune.json``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from structseg.engine.config import CRFConfig
from structseg.errors import ConfigError, DataError

__all__ = ["TuneResult", "tune_dense_crf", "write_tuned"]

# parameter -> multipliers tried in coordinate search (iterations: absolute values)
_STEPS: dict[str, tuple[float, ...]] = {
    "sxy_bilateral": (0.25, 0.5, 2.0), "srgb": (0.5, 0.75, 1.5, 2.0), "compat_bilateral": (0.3, 0.6, 1.5),
    "sxy_gaussian": (0.5, 2.0), "compat_gaussian": (0.3, 2.0),
}
_ITERATIONS = (2, 5, 10)
_RANDOM_RANGE: dict[str, tuple[float, float]] = {
    "sxy_bilateral": (10.0, 160.0), "srgb": (3.0, 30.0), "compat_bilateral": (1.0, 20.0),
    "sxy_gaussian": (1.0, 6.0), "compat_gaussian": (0.5, 6.0),
}


@dataclass
class TuneResult:
    """Every trial (params, mIoU, pixel accuracy, seconds), the baseline without CRF and the best set."""

    trials: list[dict[str, Any]] = field(default_factory=list)
    no_crf_miou: float = float("nan")
    images: int = 0
    best: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        keys = ["iterations", "sxy_gaussian", "compat_gaussian", "sxy_bilateral", "srgb", "compat_bilateral"]
        head = "".join(f"{k:>17}" for k in keys) + f"{'mIoU %':>9}{'pix acc %':>11}"
        lines = [f"{self.images} training images; without CRF: mIoU {100 * self.no_crf_miou:.2f}", head]
        for t in self.trials:
            mark = "  <- best" if t["params"] == self.best else ""
            lines.append("".join(f"{t['params'][k]:>17g}" for k in keys)
                         + f"{100 * t['miou']:>9.2f}{100 * t['pixel_acc']:>11.2f}{mark}")
        return "\n".join(lines)


def _score(refined: list[torch.Tensor], masks: list[torch.Tensor], num_classes: int, ignore_index: int) -> Any:
    from structseg.metrics import ConfusionMatrix

    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    for labels, mask in zip(refined, masks):
        cm.update(labels, mask)
    return cm.compute()


def tune_dense_crf(run_dir: str | Path, *, images: int = 20, method: str = "coordinate", rounds: int = 2,
                   trials: int = 24, seed: int = 0, device: str = "cpu", progress: bool = True) -> TuneResult:
    """Search the dense CRF's parameters for a run on ``images`` training images; returns the trials and best.
    Writes nothing (see :func:`write_tuned`)."""
    from tqdm.auto import tqdm

    from structseg.crf.dense import DenseCRFRefiner
    from structseg.crf.params import DenseCRFConfig
    from structseg.engine.build import build_eval_dataset
    from structseg.engine.evaluate import infer, probs_to_logits
    from structseg.engine.predict import Predictor
    from structseg.engine.rundir import existing_run
    from structseg.viz.grid import spread_indices

    if method not in ("coordinate", "random"):
        raise ConfigError(f"crf tune: method must be coordinate or random, got {method!r}")
    if images < 1 or rounds < 1 or trials < 1:
        raise ConfigError(f"crf tune: images, rounds and trials must be >= 1, got {images}, {rounds}, {trials}")
    run = existing_run(run_dir)
    predictor = Predictor.from_run(run.root, device=device)
    if predictor.config is None or getattr(predictor.model, "map_inference", False):
        raise ConfigError("crf tune refines class probabilities; this run predicts MAP labels (model.head svm/ssvm)")
    cfg = predictor.config
    dataset = build_eval_dataset(cfg, cfg.data.train_split)
    if len(dataset) == 0:
        raise DataError(f"crf tune: the training split {cfg.data.train_split!r} of {cfg.data.layout} has no images "
                        "(the search never looks at the validation split)")
    picks = spread_indices(len(dataset), images)
    probs, masks, inputs = [], [], []
    with torch.inference_mode():
        for i in tqdm(picks, desc="network", disable=not progress, leave=False):
            image, mask = dataset[i]
            x = image[None].to(predictor.device)
            probs.append(infer(predictor.model, x, predictor.eval_cfg, predictor.fast_path).float().cpu())
            masks.append(mask[None])
            inputs.append(x.cpu())
    k, ignore = predictor.classes.num_classes, predictor.classes.ignore_index
    result = TuneResult(images=len(picks))
    result.no_crf_miou = _score([p.argmax(1) for p in probs], masks, k, ignore).miou
    mean, std = predictor.normalization
    cache: dict[tuple[Any, ...], dict[str, Any]] = {}

    def trial(params: dict[str, Any]) -> dict[str, Any]:
        key = tuple(sorted(params.items()))
        if key not in cache:
            refiner = DenseCRFRefiner(DenseCRFConfig(**params, threads=cfg.crf.threads), mean=mean, std=std)
            start = time.perf_counter()
            with torch.inference_mode():
                refined = [refiner(probs_to_logits(p), x).argmax(1) for p, x in zip(probs, inputs)]
            seconds = time.perf_counter() - start
            m = _score(refined, masks, k, ignore)
            cache[key] = {"params": dict(params), "miou": m.miou, "pixel_acc": m.pixel_acc,
                          "seconds_per_image": seconds / len(probs)}
            result.trials.append(cache[key])
        return cache[key]

    start = {k2: v for k2, v in cfg.crf.dense_params().items() if k2 != "threads"}
    best = trial(start)
    bar = tqdm(desc="crf tune", disable=not progress, leave=False)
    if method == "coordinate":
        for _ in range(rounds):
            for name in ["iterations", *_STEPS]:
                values = _ITERATIONS if name == "iterations" else [best["params"][name] * f for f in _STEPS[name]]
                for value in values:
                    candidate = trial({**best["params"], name: value})
                    bar.update(1)
                    if candidate["miou"] > best["miou"] + 1e-9:
                        best = candidate
    else:
        rng = random.Random(seed)
        for _ in range(trials):
            params: dict[str, Any] = {name: math.exp(rng.uniform(math.log(lo), math.log(hi)))
                                      for name, (lo, hi) in _RANDOM_RANGE.items()}
            params["iterations"] = rng.choice(_ITERATIONS)
            candidate = trial(params)
            bar.update(1)
            if candidate["miou"] > best["miou"] + 1e-9:
                best = candidate
    bar.close()
    result.best = best["params"]
    return result


def write_tuned(run_dir: str | Path, result: TuneResult) -> Path:
    """The best parameters into the run's ``config.yaml`` (``crf:`` section, ``mode`` unchanged) and every trial
    into ``crf_tune.json``; returns the JSON path."""
    from structseg.engine.config import load_config, save_config
    from structseg.engine.rundir import existing_run

    run = existing_run(run_dir)
    cfg = load_config(run.config)
    cfg.crf = CRFConfig(**{**dataclasses.asdict(cfg.crf), **result.best})
    save_config(cfg, run.config)
    out = run.root / "crf_tune.json"
    out.write_text(json.dumps(dataclasses.asdict(result), indent=2), encoding="utf-8")
    return out
