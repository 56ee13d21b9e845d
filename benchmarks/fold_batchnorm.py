"""What folding BatchNorm into the convolutions buys at inference, on top of channels_last.

For each model at 360x480 (batch 1 and 8, eval, inference_mode): the channels_last model beside its
BN-folded copy (``FastPath.prepare_inference``), timed in alternation in one process, and the largest
logit difference between the two (BN running statistics randomised, so the fold is not trivial). Writes
benchmarks/results/fold_batchnorm.json.

    python benchmarks/fold_batchnorm.py [--threads N] [--repeats 5]
"""
from __future__ import annotations

import copy
import os
import statistics
import time

import torch
from tqdm import tqdm

from _harness import RESULTS, apply_threads, parser, write_json
from structseg.models import build_model
from structseg.models.fastpath import FastPath

MODELS = {
    "deeplabv3plus-mobilenet": ("deeplabv3plus", {"backbone": "mobilenet_v3_large"}),
    "deeplabv3-mobilenet": ("deeplabv3", {"backbone": "mobilenet_v3_large", "atrous_rates": (12, 24, 36)}),
    "deeplabv3plus-resnet18": ("deeplabv3plus", {"backbone": "resnet18"}),
    "unet_resnet-resnet18": ("unet_resnet", {"backbone": "resnet18"}),
    "unet-small": ("unet", {"base_channels": 16}),
    "deeplabv3-resnet50": ("deeplabv3", {"backbone": "resnet50", "output_stride": 8}),
}


def main() -> None:
    cli = parser(__doc__, out=RESULTS / "fold_batchnorm.json", threads=True)
    cli.add_argument("--repeats", type=int, default=5, help="timed rounds at batch 1 (batch 8: half)")
    cli.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    args = cli.parse_args()
    apply_threads(args)
    keys = args.models.split(",")
    if set(keys) - set(MODELS):
        cli.error(f"unknown models {sorted(set(keys) - set(MODELS))}; valid: {', '.join(MODELS)}")
    rows = []
    for key in tqdm(keys, desc="models"):
        name, options = MODELS[key]
        torch.manual_seed(0)
        model = build_model(name, 11, **options).eval()
        for m in model.modules():  # non-trivial statistics, so the fold is not an identity
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        plain = FastPath(channels_last=True).prepare_inference(copy.deepcopy(model))
        folded = FastPath(channels_last=True, fold_batchnorm=True).prepare_inference(model)
        row = {"key": key, "batchnorms": sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                             for m in plain.modules())}
        for batch in (1, 8):
            x = torch.randn(batch, 3, 360, 480).contiguous(memory_format=torch.channels_last)
            times: dict[str, list[float]] = {"channels_last": [], "channels_last+foldbn": []}
            with torch.inference_mode():
                diff = (plain(x) - folded(x)).abs().max().item()
                for _ in range(max(1, args.repeats if batch == 1 else args.repeats // 2)):
                    for tag, m in (("channels_last", plain), ("channels_last+foldbn", folded)):
                        start = time.perf_counter()
                        m(x)
                        times[tag].append(time.perf_counter() - start)
            med = {tag: statistics.median(v) for tag, v in times.items()}
            row[f"b{batch}"] = {"ms": {t: 1e3 * v for t, v in med.items()},
                                "speedup": med["channels_last"] / med["channels_last+foldbn"],
                                "max_abs_logit_diff": diff}
        rows.append(row)
    print(f"{'model':26} {'BNs':>4} | {'b1 ms cl':>9} {'+fold':>7} {'x':>5} | "
          f"{'b8 ms cl':>9} {'+fold':>7} {'x':>5} | max|diff|")
    for r in rows:
        b1, b8 = r["b1"], r["b8"]
        print(f"{r['key']:26} {r['batchnorms']:4d} | {b1['ms']['channels_last']:9.0f} "
              f"{b1['ms']['channels_last+foldbn']:7.0f} "
              f"{b1['speedup']:5.2f} | {b8['ms']['channels_last']:9.0f} {b8['ms']['channels_last+foldbn']:7.0f} "
              f"{b8['speedup']:5.2f} | {max(b1['max_abs_logit_diff'], b8['max_abs_logit_diff']):.1e}")
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "load_average_at_end": os.getloadavg(),
           "input": [360, 480], "repeats": args.repeats}
    write_json(args.out, {"environment": env, "models": rows})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
