"""Images/s of CamVid decoding + training augmentation through a DataLoader with 0, 1 and 2 workers.

Peers measured in the same run: decoding alone (no transform), so the table
shows what augmentation costs on top; and the synthetic set's generation time.
Writes benchmarks/results/data_throughput.json. Skips the CamVid rows (exit 0)
when the data set is absent.

    python benchmarks/data_throughput.py [--root ../shared/datasets/camvid] [--images 96]
"""
from __future__ import annotations

import os
import platform
import time

import torch
from torch.utils.data import DataLoader

from _harness import RESULTS, parser, write_json
from structseg.data import build_dataset
from structseg.data.synthetic import SyntheticShapes
from structseg.data.transforms import train_transforms


def pipelines() -> dict[str, object]:
    """The transform settings compared, by label."""
    return {
        "decode only": None,
        "decode + scale/crop 352x480/flip": train_transforms(crop_size=(352, 480), scale_range=(0.5, 2.0)),
        "... + rotate 10 + jitter 0.3": train_transforms(crop_size=(352, 480), scale_range=(0.5, 2.0),
                                                          rotation=10.0, color_jitter=0.3),
    }


def images_per_second(ds, workers: int, images: int, batch_size: int) -> float:
    """Steady-state rate: the clock starts once the first batch is out (worker start-up excluded)."""
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0), persistent_workers=False)
    batches = iter(loader)
    next(batches)
    seen, start = 0, time.perf_counter()
    for image, _ in batches:
        seen += image.shape[0]
        if seen >= images:
            break
    return seen / (time.perf_counter() - start)


def synthetic_ms(count: int = 200) -> tuple[float, float]:
    """Wall and CPU milliseconds per 128x128 synthetic scene (CPU time is less hurt by a shared machine)."""
    ds = SyntheticShapes("train", size=(128, 128), length=count)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        ds.render(i)
    return 1000 * (time.perf_counter() - wall) / count, 1000 * (time.process_time() - cpu) / count


def main() -> int:
    cli = parser(__doc__, out=RESULTS / "data_throughput.json", camvid=True)
    cli.add_argument("--images", type=int, default=96, help="images timed per row (after the first batch)")
    cli.add_argument("--batch-size", type=int, default=8)
    cli.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = cli.parse_args()
    torch.set_num_threads(1)  # one core per loader process, as in training with workers

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "batch_size": args.batch_size, "rows": [],
    }
    wall_ms, cpu_ms = synthetic_ms()
    result["synthetic_128x128_ms_per_image"] = {"wall": round(wall_ms, 2), "cpu": round(cpu_ms, 2)}
    print(f"synthetic 128x128 scene: {wall_ms:.2f} ms/image wall, {cpu_ms:.2f} ms CPU")
    if not (args.root / "train.txt").is_file():
        print(f"CamVid not found at {args.root}: skipping the CamVid rows (pass --root)")
        result["skipped"] = f"CamVid not found at {args.root}"
    else:
        print(f"CamVid train at {args.root}, 360x480, batch {args.batch_size}, {args.images} images per row")
        print(f"{'pipeline':<34} {'workers':>7} {'img/s':>8} {'ms/img':>8} {'vs decode':>10}")
        decode_rate: dict[int, float] = {}
        for label, transform in pipelines().items():
            ds = build_dataset("camvid", args.root, "train", transform=transform)
            for workers in args.workers:
                rate = images_per_second(ds, workers, args.images, args.batch_size)
                decode_rate.setdefault(workers, rate)
                ratio = rate / decode_rate[workers]
                result["rows"].append({"pipeline": label, "workers": workers, "images_per_s": round(rate, 1),
                                       "ratio_to_decode": round(ratio, 3)})
                print(f"{label:<34} {workers:>7} {rate:>8.1f} {1000 / rate:>8.1f} {ratio:>10.2f}")
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
