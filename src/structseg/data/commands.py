"""``structseg data stats | preview | check``: look at a data set before training on it."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

DEFAULT_OUT = Path("outputs") / "data"


def _option(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        return key.strip(), value


def configure(parser: argparse.ArgumentParser) -> None:
    from structseg.data import list_layouts

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--layout", required=True, choices=list_layouts(), help="data set layout")
    common.add_argument("--root", default=None, help="data set folder (default: $STRUCTSEG_<LAYOUT>)")
    common.add_argument("--split", default="train", help="split to read (default: train)")
    common.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                        help="layout option, repeatable (e.g. aug=true, size=[64,64], num_classes=5)")
    common.add_argument("--limit", type=int, default=None, help="only the first N items")
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    stats = sub.add_parser("stats", parents=[common], help="per-class pixel counts, frequencies and loss weights")
    stats.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help="folder for the PNG and JSON")
    stats.add_argument("--weights", choices=("enet", "median", "inverse"), default="enet",
                       help="class-weight scheme reported beside the pixel table (default: enet)")
    stats.add_argument("--workers", type=int, default=0, help="DataLoader workers reading the masks")

    preview = sub.add_parser("preview", parents=[common], help="one image per class beside its colored mask")
    preview.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help="folder for the PNG")

    sub.add_parser("check", parents=[common], help="list every unreadable or inconsistent item; exit 1 if any")


def _dataset(args: argparse.Namespace):
    from structseg.data import build_dataset

    return build_dataset(args.layout, args.root, args.split, **dict(args.option))


def run(args: argparse.Namespace) -> int:
    return {"stats": _stats, "preview": _preview, "check": _check}[args.data_command](args)


def _stats(args: argparse.Namespace) -> int:
    from structseg.data.classes import WEIGHT_METHODS, class_statistics, class_weights
    from structseg.viz.data import plot_class_statistics

    ds = _dataset(args)
    stats = class_statistics(ds, limit=args.limit, workers=args.workers)
    names = ds.classes.names
    weights = {m: class_weights(stats, m) for m in WEIGHT_METHODS}
    freq = stats.frequency
    width = max(8, *(len(n) for n in names))
    print(f"{args.layout} {args.split}: {stats.num_images} images, {stats.ignored} ignored pixels")
    print(f"{'id':>3} {'class':<{width}} {'pixels':>12} {'freq %':>8} {'images':>7} {args.weights + ' w':>9}")
    for i, name in enumerate(names):
        print(f"{i:>3} {name:<{width}} {stats.pixels[i]:>12} {100 * freq[i]:>8.3f} {stats.images[i]:>7} "
              f"{float(weights[args.weights][i]):>9.3f}")

    stem = args.out / f"{args.layout}_{args.split}_stats"
    record = {
        "layout": args.layout, "split": args.split, "root": str(getattr(ds, "root", "")),
        "num_images": stats.num_images, "ignored_pixels": stats.ignored,
        "classes": [
            {"id": i, "name": n, "pixels": int(stats.pixels[i]), "frequency": float(freq[i]),
             "images": int(stats.images[i]), "image_pixels": int(stats.image_pixels[i]),
             "weights": {m: float(weights[m][i]) for m in WEIGHT_METHODS}}
            for i, n in enumerate(names)
        ],
    }
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
    png = plot_class_statistics(stats, ds.classes, stem.with_suffix(".png"), weights=weights[args.weights],
                                weight_method=args.weights, title=f"{args.layout} {args.split}: class frequency")
    print(f"wrote {png} and {stem.with_suffix('.json')}")
    return 0


def pick_examples(counts: np.ndarray) -> dict[int, int]:
    """Class -> item: the item where the class covers most pixels, rarest classes first, each item used once if
    possible."""
    import numpy as np

    chosen: dict[int, int] = {}
    used: set[int] = set()
    present = (counts > 0).sum(0)
    for k in sorted(np.flatnonzero(present), key=lambda k: present[k]):
        share = counts[:, k].astype(float)
        fresh = share.copy()
        fresh[list(used)] = 0
        best = int(np.argmax(fresh)) if fresh.max() > 0 else int(np.argmax(share))
        chosen[int(k)] = best
        used.add(best)
    return dict(sorted(chosen.items()))


def _preview(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from structseg.viz.data import plot_class_examples

    ds = _dataset(args)
    k = ds.classes.num_classes
    size = len(ds) if args.limit is None else min(args.limit, len(ds))
    counts = np.zeros((size, k), dtype=np.int64)
    for i in tqdm(range(size), desc="scan masks", unit="mask"):
        mask = ds.load_mask(i).numpy().ravel()
        counts[i] = np.bincount(mask[mask < k], minlength=k)
    chosen = pick_examples(counts)
    missing = [ds.classes.names[c] for c in range(k) if c not in chosen]
    examples = [(c, *ds.load(i)) for c, i in chosen.items()]
    path = args.out / f"{args.layout}_{args.split}_preview.png"
    plot_class_examples(examples, ds.classes, path, title=f"{args.layout} {args.split}: one image per class")
    if missing:
        print(f"no image contains: {', '.join(missing)}")
    print(f"wrote {path}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from structseg.data.base import scan_dataset

    size, bad = scan_dataset(_dataset(args), limit=args.limit, progress=True)
    for line in bad:
        print(line)
    if size == 0:
        print(f"{args.layout} {args.split}: the split has no items (root {args.root or 'default'})", file=sys.stderr)
        return 1
    print(f"{args.layout} {args.split}: {size - len(bad)} of {size} items ok, {len(bad)} bad",
          file=sys.stderr if bad else sys.stdout)
    return 1 if bad else 0
