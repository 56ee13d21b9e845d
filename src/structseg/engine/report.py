"""Gather a run's config, curves, metrics and sample predictions into one HTML page."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from structseg.engine.config import Config, load_config
from structseg.engine.rundir import RunDir, existing_run
from structseg.errors import StructsegError
from structseg.viz.report import ReportContent, write_report


def _sample_grid(run: RunDir, count: int, which: str, device: str) -> tuple[bytes | None, str]:
    """Validation images | truth | prediction as PNG bytes, or None and the reason."""
    import tempfile

    from structseg.engine.build import raw_dataset
    from structseg.engine.predict import Predictor
    from structseg.viz.grid import GridRow, comparison_grid, spread_indices

    try:
        predictor = Predictor.from_run(run.root, which, device=device)
        cfg = load_config(run.config)
        dataset = raw_dataset(cfg, cfg.data.val_split)
    except StructsegError as exc:
        return None, str(exc)
    rows = []
    for i in spread_indices(len(dataset), count):
        image, mask = dataset.load(i)
        rows.append(GridRow(image=image, truth=mask, predictions=[predictor.predict(image)],
                            name=dataset.item_name(i)))
    classes = predictor.classes
    with tempfile.TemporaryDirectory() as tmp:
        path = comparison_grid(rows, [f"prediction ({which})"], classes.palette, Path(tmp) / "samples.png",
                               class_names=list(classes.names), ignore_index=classes.ignore_index,
                               ignore_color=classes.ignore_color)
        return path.read_bytes(), ""


def describe_run(cfg: Config) -> dict[str, str]:
    """What the run trained, for the report's summary: model, backbone, weights, loss and data."""
    from structseg.models import model_spec

    m, d = cfg.model, cfg.data
    try:
        backbone = m.backbone or model_spec(m.name).default_backbone or "its own encoder"
    except StructsegError:
        backbone = m.backbone or "?"
    own = {"svm": "per-pixel hinge", "ssvm": "structured hinge", "cnn_crf": "piecewise CRF likelihood",
           "message_net": "cross-entropy of the estimated marginals"}
    if m.head == "cnn_crf" and m.cnn_crf.training == "meanfield":
        own["cnn_crf"] = "cross-entropy of the mean-field beliefs"
    loss = own.get(m.head) or " + ".join(f"{t.weight:g} {t.name}" for t in cfg.loss)
    weights = m.weights or "random"
    if m.init_from:
        weights = f"{weights}, then model.init_from {m.init_from}"
    return {"model": f"{m.name} (head {m.head})", "backbone": backbone, "weights": weights,
            "loss": loss + (f", class weights {d.class_weights}" if d.class_weights != "none" else ""),
            "data": f"{d.layout} {d.root or '(default root)'}, train {d.train_split}, val {d.val_split}"}


def build_report(run_dir: str | Path, out: str | Path | None = None, *, samples: int = 4,
                 which: str = "best", device: str = "auto") -> Path:
    """Write ``RUN/report.html`` (or ``out``) and return its path."""
    from structseg.metrics.plots import plot_confusion
    from structseg.viz.curves import plot_loss_curve, plot_miou_curve, read_log

    run = existing_run(run_dir)
    summary: dict[str, Any] = {"run directory": str(run.root), **describe_run(load_config(run.config))}
    metrics: dict[str, Any] | None = None
    source = ""
    if run.metrics.is_file():
        data = json.loads(run.metrics.read_text(encoding="utf-8"))
        metrics = data.get("final")
        if metrics is not None:
            source = (f"the final evaluation during training, on split {data.get('split', '?')} at iteration "
                      f"{data.get('iterations', '?')} (latest weights); the best checkpoint (best.pt, used by eval, "
                      f"predict and the samples below) scored {100 * data.get('best_miou', float('nan')):.2f} mIoU "
                      f"at iteration {data.get('best_iteration', '?')}")
        for key in ("iterations", "epochs", "best_miou", "best_iteration", "train_seconds", "split"):
            if key in data:
                value = data[key]
                summary[key.replace("_", " ")] = f"{100 * value:.2f}" if key == "best_miou" else value
        for key, value in (data.get("environment") or {}).items():  # device, threads, fast path, batch
            summary[key.replace("_", " ")] = value
    figures: list[tuple[str, bytes]] = []
    if run.log.is_file():
        rows = read_log(run.log)
        for name, file, plot in (("loss curve", "loss_curve.png", plot_loss_curve),
                                 ("validation mIoU", "miou_curve.png", plot_miou_curve)):
            path = run.figures / file
            if not path.is_file():
                plot(rows, path)
            figures.append((name, path.read_bytes()))
    if metrics and "confusion" in metrics:
        path = run.figures / "confusion.png"
        if not path.is_file():
            confusion = metrics["confusion"]
            names = metrics.get("class_names") or [str(i) for i in range(len(confusion))]
            plot_confusion(confusion, names, path)
        figures.append(("confusion matrix (rows: truth)", path.read_bytes()))
    sample_imgs: list[tuple[str, bytes]] = []
    if samples > 0:
        png, reason = _sample_grid(run, samples, which, device)
        if png is not None:
            sample_imgs.append(("validation images: image | ground truth | prediction", png))
        else:
            summary["samples"] = f"not available: {reason}"
    evaluations = []
    for path in sorted(run.root.glob("eval_*.json")):
        try:
            evaluations.append({"file": path.name, **json.loads(path.read_text(encoding="utf-8"))})
        except (OSError, ValueError):
            continue
    content = ReportContent(
        title=f"structseg run: {run.root.name}",
        config_yaml=run.config.read_text(encoding="utf-8"),
        summary=summary,
        metrics=metrics,
        metrics_source=source,
        evaluations=evaluations,
        figures=figures,
        samples=sample_imgs,
    )
    return write_report(content, out or run.root / "report.html")
