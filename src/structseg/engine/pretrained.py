"""A trained model outside structseg's run layout: ``config.json`` + ``model.safetensors`` + a model card.

``save_pretrained(source, out_dir)`` writes the directory from a run (its best checkpoint) or a
:class:`~structseg.engine.predict.Predictor`; ``from_pretrained(dir)`` gives a Predictor back, and ``eval``,
``predict`` and ``compare`` take such a directory wherever they take a run directory. The weights are a
safetensors file (no code runs when it is read); ``config.json`` holds the full training config, the classes
and palette, the input normalization and what the checkpoint was; ``README.md`` is a model card written from
the run: data, classes, per-class metrics, training budget, machine, and the licence of the pretrained weights.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from structseg.errors import CheckpointError

if TYPE_CHECKING:
    from structseg.engine.config import Config
    from structseg.engine.predict import Predictor

__all__ = ["FORMAT", "from_pretrained", "is_pretrained_dir", "save_pretrained", "stored_config"]

FORMAT = "structseg-pretrained"
VERSION = 1
CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"


def is_pretrained_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory :func:`save_pretrained` wrote."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file() and not (path / "config.yaml").is_file()


def save_pretrained(source: str | Path | Predictor, out_dir: str | Path, *, which: str = "best") -> Path:
    """Write ``out_dir/{config.json, model.safetensors, README.md}`` for a run directory's ``which`` checkpoint or
    a loaded Predictor; returns ``out_dir``."""
    from safetensors.torch import save_file

    from structseg.engine.checkpoint import classes_to_dict
    from structseg.engine.config import config_to_dict
    from structseg.engine.predict import Predictor

    run_root = None
    if not isinstance(source, Predictor):
        from structseg.engine.rundir import existing_run

        run_root = existing_run(source).root
        predictor = Predictor.from_run(run_root, which, device="cpu", prepare=False)
    else:
        predictor = source
    if predictor.config is None:
        raise CheckpointError("save_pretrained needs a predictor built from a config (Predictor.from_checkpoint)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in predictor.model.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": FORMAT})
    mean, std = predictor.normalization
    record = {
        "format": FORMAT, "version": VERSION,
        "config": config_to_dict(predictor.config),
        "classes": classes_to_dict(predictor.classes),
        "normalization": {"mean": list(mean), "std": list(std)},
        "checkpoint": predictor.checkpoint,
    }
    (out / CONFIG).write_text(json.dumps(record, indent=2), encoding="utf-8")
    (out / CARD).write_text(model_card(record, run_root), encoding="utf-8")
    return out


def from_pretrained(path: str | Path, *, device: str = "auto",
                    overrides: list[str] | tuple[str, ...] = ()) -> Predictor:
    """The Predictor of a :func:`save_pretrained` directory (weights read with safetensors), its config with
    ``overrides`` (test-time inference, CRF) applied."""
    from safetensors.torch import load_file

    from structseg.engine.build import build_model_from_config, fast_path_for, num_classes_for
    from structseg.engine.checkpoint import classes_from_dict, load_model_state
    from structseg.engine.config import apply_overrides, config_from_dict
    from structseg.engine.distributed import resolve_device
    from structseg.engine.predict import Predictor

    path = Path(path)
    if not is_pretrained_dir(path):
        raise CheckpointError(f"{path} is not a structseg pretrained directory ({CONFIG} and {WEIGHTS} expected)")
    try:
        record = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / CONFIG}: cannot be read ({exc})") from None
    if record.get("format") != FORMAT or not isinstance(record.get("version"), int) or record["version"] > VERSION:
        raise CheckpointError(f"{path / CONFIG}: format {record.get('format')!r} version {record.get('version')!r} "
                              f"is not one this structseg reads ({FORMAT} <= {VERSION})")
    cfg = apply_overrides(config_from_dict(record["config"]), list(overrides))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=None, init_from=None))
    classes = classes_from_dict(record["classes"])
    model = build_model_from_config(cfg, num_classes_for(cfg, classes), classes.ignore_index)
    load_model_state(model, load_file(str(path / WEIGHTS)), source=str(path / WEIGHTS))
    dev = resolve_device(device)
    fast = fast_path_for(cfg, dev)
    predictor = Predictor(fast.prepare_inference(model.to(dev).eval()), classes, eval_cfg=cfg.eval, device=dev,
                          fast_path=fast, config=cfg, crf=cfg.crf)
    predictor.checkpoint = {**(record.get("checkpoint") or {}), "path": str(path / WEIGHTS)}
    return predictor


def stored_config(path: str | Path) -> Config:
    """The config a run directory (``config.yaml``) or a pretrained directory (``config.json``) holds."""
    from structseg.engine.config import config_from_dict, load_config

    path = Path(path)
    if is_pretrained_dir(path):
        return config_from_dict(json.loads((path / CONFIG).read_text(encoding="utf-8"))["config"])
    return load_config(path / "config.yaml")


def model_card(record: dict[str, Any], run_root: Path | None) -> str:
    """A markdown model card from the exported record and, when known, the run's metrics.json."""
    from structseg.models.backbones import backbone_imagenet_weights

    cfg, classes = record["config"], record["classes"]
    m, d = cfg["model"], cfg["data"]
    metrics: dict[str, Any] = {}
    if run_root is not None and (run_root / "metrics.json").is_file():
        metrics = json.loads((run_root / "metrics.json").read_text(encoding="utf-8"))
    lines = [f"# {m['name']} on {d['layout']} (structseg)", "",
             f"Semantic segmentation, {len(classes['names'])} classes. Load it with "
             "`structseg.from_pretrained(DIR)` or use the directory with `structseg eval / predict / compare "
             "--run-dir DIR`.", "", "## Model", "",
             f"- architecture: `{m['name']}`, backbone `{m.get('backbone') or 'default'}`, head `{m.get('head')}`, "
             f"output stride {m.get('output_stride') or 'default'}, options {m.get('options') or '{}'}",
             f"- input: RGB, normalized with mean {record['normalization']['mean']} and std "
             f"{record['normalization']['std']}; any size",
             f"- checkpoint: {record.get('checkpoint', {}).get('which', '?')} "
             f"(iteration {record.get('checkpoint', {}).get('iteration', '?')})"]
    weights = m.get("weights")
    if weights == "imagenet" and m.get("backbone"):
        info = backbone_imagenet_weights(m["backbone"])
        lines.append(f"- encoder initialised from {info.source}; licence: {info.licence}")
    elif weights:
        lines.append(f"- encoder initialised from {weights} (its licence applies)")
    else:
        lines.append("- trained from random weights")
    lines += ["", "## Data", "", f"- layout `{d['layout']}`, root `{d.get('root')}`, trained on split "
              f"`{d['train_split']}`, evaluated on `{d['val_split']}`", "", "| id | class | color |", "|---|---|---|"]
    lines += [f"| {i} | {n} | {tuple(c)} |" for i, (n, c) in enumerate(zip(classes["names"], classes["palette"]))]
    lines.append(f"| {classes['ignore_index']} | (ignored) | {tuple(classes['ignore_color'])} |")
    final = metrics.get("final") or {}
    if final:
        lines += ["", f"## Metrics ({metrics.get('split', 'val')}, last evaluation of training)", "",
                  f"mIoU {100 * final['miou']:.2f}, pixel accuracy {100 * final['pixel_acc']:.2f}; best mIoU "
                  f"{100 * metrics.get('best_miou', 0):.2f} at iteration {metrics.get('best_iteration')}", "",
                  "| class | IoU % |", "|---|---|"]
        for name, entry in final.get("per_class", {}).items():
            iou = entry.get("iou")
            lines.append(f"| {name} | {'-' if iou is None else f'{100 * iou:.2f}'} |")
    t = cfg["train"]
    lines += ["", "## Training", "",
              f"- {metrics.get('iterations', t['iterations'])} iterations, batch {d['batch_size']}, "
              f"{metrics.get('train_seconds', '?')} s of training"
              + (f" (budget {t['max_minutes']} min)" if t.get("max_minutes") else ""),
              f"- optimizer {cfg['optim']['name']} lr {cfg['optim']['lr']}, schedule {cfg['schedule']['name']}, "
              f"loss {' + '.join(str(term['name']) for term in cfg['loss'])}"]
    env = metrics.get("environment") or {}
    if env:
        lines.append("- machine: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    lines += ["", "The full training configuration is in `config.json`."]
    return "\n".join(lines) + "\n"
