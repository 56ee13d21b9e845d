"""How strong should a fine-tuned CNN-CRF's pairwise terms be at inference? Chosen on training images.

Piecewise training learns each edge's pair scores as a local classifier; it does not calibrate their sum over a
node's ~40 range-box neighbours against the unaries. This evaluates a fine-tuned ``model.head=cnn_crf`` run
(default: the residual row of ``structured_camvid.py``) with ``model.cnn_crf.pairwise_weight`` in ``--weights``:
mIoU on ``--train-images`` training images (where the weight is chosen) and on the whole val split at the full
label resolution (where it is reported). Writes benchmarks/results/cnn_crf_pairwise.json.

    python benchmarks/cnn_crf_pairwise.py [--run runs/structured_camvid_60/cnn_crf_res] [--weights 0,0.1,1]
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from _harness import RESULTS, ROOT, parser, print_table, write_json


def main() -> int:
    p = parser(__doc__, out=RESULTS / "cnn_crf_pairwise.json")
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "structured_camvid_60" / "cnn_crf_res")
    p.add_argument("--weights", default="0,0.01,0.03,0.1,0.3,1", help="comma-separated pairwise weights")
    p.add_argument("--train-images", type=int, default=30, help="training images the weight is chosen on")
    args = p.parse_args()
    if not (args.run / "checkpoints" / "best.pt").is_file():
        print(f"no fine-tuned CNN-CRF run at {args.run}: run benchmarks/structured_camvid.py first")
        return 1
    from torch.utils.data import DataLoader, Subset

    from structseg.crf.cnn_crf import CNNCRFModel
    from structseg.engine.build import build_eval_dataset
    from structseg.engine.predict import Predictor
    from structseg.viz.grid import spread_indices

    predictor = Predictor.from_run(args.run, device="cpu")
    model = predictor.model
    if not isinstance(model, CNNCRFModel) or predictor.config is None:
        print(f"{args.run} is not a model.head=cnn_crf run")
        return 1
    cfg = predictor.config
    train = build_eval_dataset(cfg, cfg.data.train_split)
    splits = {"train": Subset(train, spread_indices(len(train), args.train_images)), "val": build_eval_dataset(cfg)}
    rows: list[dict[str, Any]] = []
    for weight in (float(w) for w in args.weights.split(",")):
        model.pairwise_weight = weight
        row: dict[str, Any] = {"weight": weight}
        for name, data in splits.items():
            metrics = predictor.evaluate(DataLoader(data, batch_size=1))
            row[name] = 100 * metrics.miou
            if name == "val":
                row["val_per_class"] = metrics.as_dict(list(predictor.classes.names))["per_class"]
        print(f"pairwise weight {weight:g}: train {row['train']:.2f}, val {row['val']:.2f}", flush=True)
        rows.append(row)
    chosen = max(rows, key=lambda r: r["train"])
    print_table(rows, [("weight", "{weight:g}"), ("train mIoU %", "{train:.2f}"), ("val mIoU %", "{val:.2f}")])
    print(f"chosen on train: weight {chosen['weight']:g} -> val {chosen['val']:.2f}")
    write_json(args.out, {"run": str(args.run), "pairwise": model.pairwise, "method": model.method,
                          "train_images": args.train_images, "rows": rows, "chosen_weight": chosen["weight"]})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
