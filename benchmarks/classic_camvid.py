"""Classic unsupervised segmentation on CamVid val: oracle-labelled mIoU and time per image.

Every segment takes its majority true class (see structseg.classic.labeling), so the
mIoU is the ceiling of a perfect segment classifier and grows with the number of
segments. The peer column makes that fair: a regular grid of blocks with the same
number of segments per image, labelled the same way. A method is worth its time only
where it beats that grid.

A trained network sits beside them for scale: ``--run`` (default runs/camvid_budget,
the U-Net/ResNet-18 of benchmarks/camvid_budget.py; skipped with a note when it has no
checkpoint) predicts the same images at the same size, scored by the same confusion
matrix, with no oracle: its labels are its own. Its time per image is one forward pass
(after one warm-up) on ``--device``.

    python benchmarks/classic_camvid.py [--root ../shared/datasets/camvid] [--limit 20] [--size 180 240]
                                        [--run runs/camvid_budget] [--which best] [--device cpu]

``--limit N`` takes N images evenly spaced over the split (val is a few video sequences).

Prints a table, writes benchmarks/results/classic_camvid.json and classic_camvid.png.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from _harness import RESULTS, ROOT, parser, print_table, write_json

DEFAULT_RUN = ROOT / "runs" / "camvid_budget"
METHODS = {
    "kmeans": {"k": 8},
    "kmeans_xy": {"k": 8, "position_weight": 1.0},
    "meanshift": {},
    "ncut": {"n_segments": 200},
}


def grid_segments(shape: tuple[int, int], count: int) -> np.ndarray:
    """About ``count`` near-square blocks covering ``shape``."""
    h, w = shape
    rows = max(1, round(np.sqrt(count * h / w)))
    cols = max(1, round(count / rows))
    r = np.minimum(np.arange(h) * rows // h, rows - 1)
    c = np.minimum(np.arange(w) * cols // w, cols - 1)
    return r[:, None] * cols + c[None, :]


def grid_miou(dataset, indices: list[int], size: tuple[int, int] | None, counts: list[int]) -> float:
    """mIoU of majority-labelled grids with ``counts[j]`` blocks on image ``indices[j]``."""
    import torch

    from structseg.classic.evaluate import dataset_item
    from structseg.classic.labeling import majority_labels
    from structseg.metrics import ConfusionMatrix

    classes = dataset.classes
    cm = ConfusionMatrix(classes.num_classes, ignore_index=classes.ignore_index)
    for i, count in zip(indices, counts):
        image, truth = dataset_item(dataset, i, size)
        labels = majority_labels(grid_segments(truth.shape, count), truth, classes.num_classes, classes.ignore_index)
        labels = np.where(labels == classes.ignore_index, 0, labels)
        cm.update(torch.from_numpy(labels), torch.from_numpy(truth))
    return cm.compute().miou


def model_label(name: str, backbone: str | None) -> str:
    """``unet_resnet`` on ``resnet18`` -> ``unet_resnet18``; otherwise ``name/backbone``."""
    if not backbone:
        return name
    family = backbone.rstrip("0123456789")
    return name + backbone[len(family):] if family and name.endswith(family) else f"{name}/{backbone}"


def evaluate_network(run: Path, dataset, indices: list[int], size: tuple[int, int], *, which: str = "best",
                     device: str = "cpu") -> dict | None:
    """Score a trained run on the classic methods' images, size and confusion matrix; None (with a note) without one.

    The run's test-time settings are replaced by a single whole-image pass at ``size``
    (no flip, scale 1), so the network sees exactly the images the classic methods see.
    """
    import argparse

    import torch
    from tqdm import tqdm

    from structseg.classic.evaluate import dataset_item
    from structseg.engine.build import check_classes
    from structseg.engine.commands._load import load_predictor
    from structseg.metrics import ConfusionMatrix

    checkpoints = [run / "checkpoints" / f for f in ("best.pt", "latest.pt")]
    if not (run / "config.yaml").is_file() or not any(c.is_file() for c in checkpoints):
        print(f"note: no trained-network row: {run} holds no trained run "
              "(train one with benchmarks/camvid_budget.py, or pass --run RUN_DIR)")
        return None
    tta = argparse.Namespace(run=str(run), which=which, device=device, overrides=[], mode="whole", flip=False,
                             scales=[1.0])
    predictor, cfg, _ = load_predictor(tta)
    classes = dataset.classes
    check_classes(classes, predictor.classes, f"run {run}")
    cm = ConfusionMatrix(classes.num_classes, ignore_index=classes.ignore_index)
    seconds = []
    predictor.predict(np.array(dataset_item(dataset, indices[0], size)[0]))  # warm-up: one-off allocations
    for i in tqdm(indices, desc="trained network", unit="img"):
        image, truth = dataset_item(dataset, i, size)
        image = np.array(image)  # writable, as torch.from_numpy wants
        start = time.perf_counter()
        labels = predictor.predict(image)
        seconds.append(time.perf_counter() - start)
        cm.update(labels, torch.from_numpy(truth))
    metrics = cm.compute()
    return {
        "label": f"trained network ({model_label(cfg.model.name, cfg.model.backbone)}, from {run.name})",
        "run": str(run), "checkpoint": which, "device": str(predictor.device), "torch_threads": torch.get_num_threads(),
        "model": {"name": cfg.model.name, "backbone": cfg.model.backbone},
        "images": len(seconds), "seconds_per_image": float(np.mean(seconds)), "per_image_seconds": seconds,
        "metrics": metrics.as_dict(list(classes.names)), "miou": metrics.miou, "pixel_acc": metrics.pixel_acc,
    }


def main() -> None:
    cli = parser(__doc__, out=RESULTS, camvid=True)
    cli.add_argument("--split", default="val")
    cli.add_argument("--limit", type=int, default=20)
    cli.add_argument("--size", type=int, nargs=2, default=(180, 240), metavar=("H", "W"))
    cli.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    cli.add_argument("--run", type=Path, default=DEFAULT_RUN,
                     help="trained run shown beside the classic methods (skipped when it has no checkpoint)")
    cli.add_argument("--which", default="best", help="best | latest checkpoint of --run")
    cli.add_argument("--device", default="cpu", help="device of the trained network (cpu, like the classic methods)")
    args = cli.parse_args()

    from structseg.classic.evaluate import evaluate_classic, example_figure
    from structseg.data import build_dataset

    dataset = build_dataset("camvid", args.root, args.split)
    size = tuple(args.size)
    # val is a few video sequences: spread the subset over all of them, not the first frames of one
    indices = np.linspace(0, len(dataset) - 1, min(args.limit, len(dataset))).round().astype(int).tolist()
    names = list(dataset.classes.names)
    rows, results = [], {}
    start = time.perf_counter()
    for method in args.methods:
        result = evaluate_classic(dataset, method, METHODS[method], indices=indices, size=size, keep=3)
        peer = grid_miou(dataset, indices, size, result.segments)
        rows.append((method, result.metrics.miou, result.metrics.pixel_acc, result.segments_per_image, peer,
                     result.seconds_per_image))
        results[method] = {**result.as_dict(names), "grid_miou_same_segments": peer}
        args.out.mkdir(parents=True, exist_ok=True)
        example_figure(result, dataset.classes.palette, args.out / f"classic_camvid_{method}.png",
                       dataset.classes.ignore_color)

    network = evaluate_network(args.run, dataset, indices, size, which=args.which, device=args.device)
    if network is not None:
        rows.append((network["label"], network["miou"], network["pixel_acc"], None, None,
                     network["seconds_per_image"]))

    table = [dict(zip(("method", "miou", "pixel_acc", "segments_per_image", "grid_miou_same_segments",
                       "seconds_per_image"), row)) for row in rows]
    print(f"\nCamVid {args.split}, {len(indices)} evenly spaced images at {size[0]}x{size[1]}; "
          "classic methods: majority-true-class labeling")
    print_table(table, [("method", "{method}"), ("mIoU", "{miou:.1%}"), ("pix acc", "{pixel_acc:.1%}"),
                        ("segs/img", "{segments_per_image:.1f}"), ("grid mIoU", "{grid_miou_same_segments:.1%}"),
                        ("s/img", "{seconds_per_image:.3f}")])
    print("(grid mIoU: regular blocks, as many per image as the method's segments; "
          f"total {time.perf_counter() - start:.0f} s)")
    if network is not None:
        print(f"(the trained network labels pixels itself, no oracle; {network['device']}, "
              f"{network['torch_threads']} torch threads)")

    summary = {
        "benchmark": "classic_camvid", "split": args.split, "indices": indices, "size": list(size),
        "labeling": "majority true class per segment (oracle)", "machine": platform.processor() or platform.machine(),
        "methods": results,
        "trained_network": network,
        "table": table,
    }
    write_json(args.out / "classic_camvid.json", summary)
    _bar_chart(rows, args.out / "classic_camvid.png")
    print(f"wrote {args.out / 'classic_camvid.json'} and PNGs")


def _bar_chart(rows: list[tuple], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ["trained\nnetwork" if r[4] is None else r[0] for r in rows]
    x = np.arange(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    classic = [i for i, r in enumerate(rows) if r[4] is not None]
    networks = [i for i, r in enumerate(rows) if r[4] is None]
    ax1.bar([i - 0.2 for i in classic], [100 * rows[i][1] for i in classic], 0.4, label="method (oracle labels)")
    ax1.bar([i + 0.2 for i in classic], [100 * rows[i][4] for i in classic], 0.4, label="grid, same #segments")
    if networks:
        ax1.bar(networks, [100 * rows[i][1] for i in networks], 0.4, color="tab:green", label="trained network")
    ax1.set_xticks(x, methods)
    ax1.set_ylabel("mIoU (%)")
    ax1.legend(fontsize=8)
    ax2.bar(x, [r[5] for r in rows], 0.5, color="tab:gray")
    ax2.set_xticks(x, methods)
    ax2.set_ylabel("seconds per image")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
