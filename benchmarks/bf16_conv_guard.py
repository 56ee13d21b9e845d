"""What the guard against oneDNN's broken bf16 1x1-convolution kernel costs FCN training.

The guard (``structseg.models.ops.bf16_conv_defect``) runs FCN-AlexNet's and FCN-VGG's fc7 score layer
(4096 -> K, 1x1) in fp32 while training under CPU bf16 autocast. For FCN-8s on AlexNet and VGG-16 at
360x480 this prints that layer's share of the training FLOPs, then times, in alternation in one
process, training steps (forward, cross-entropy, backward, SGD) of FCN-8s-AlexNet with the guard and
without it, under bf16 autocast, and the score layer alone (forward + backward) in bf16 and in fp32.
On a CPU with native bf16 the unguarded model may abort the process: pass ``--guarded-only`` there.
Without native bf16, torch emulates bf16 (slowly) and never reaches the broken kernel, so both run.
Writes benchmarks/results/bf16_conv_guard.json.

    python benchmarks/bf16_conv_guard.py [--size 64] [--batch 2] [--repeats 3] [--threads N] [--guarded-only]
"""
from __future__ import annotations

import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from _harness import RESULTS, apply_threads, parser, write_json
from structseg.models import build_model
from structseg.models.fastpath import cpu_has_native_bf16
from structseg.models.ops import Float32TrainConv2d

K = 11


def conv_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of every Conv2d / ConvTranspose2d in one forward pass, by module name."""
    macs: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor, name: str = name) -> None:
                # a Conv2d's weight holds the MACs of one output cell, a ConvTranspose2d's those of one input cell
                cells = out if isinstance(mod, nn.Conv2d) else inp[0]
                macs[name] = mod.weight.numel() * cells.shape[0] * cells.shape[-2] * cells.shape[-1]
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return macs


def step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    loss = F.cross_entropy(out.float(), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def score_seconds(conv: nn.Module, x: torch.Tensor, bf16: bool, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = conv(x)
        out.float().sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    cli = parser(__doc__, out=RESULTS / "bf16_conv_guard.json", threads=True)
    cli.add_argument("--size", type=int, default=64, help="square training crop (emulated bf16 is slow)")
    cli.add_argument("--batch", type=int, default=2)
    cli.add_argument("--repeats", type=int, default=3, help="timed steps per variant, alternated")
    cli.add_argument("--guarded-only", action="store_true", help="skip the unguarded model (native-bf16 CPUs)")
    args = cli.parse_args()
    apply_threads(args)
    torch.manual_seed(0)

    shares = {}
    for backbone in ("alexnet", "vgg16"):
        model = build_model("fcn8s", K, backbone=backbone).eval()
        macs = conv_macs(model, torch.randn(1, 3, 360, 480))
        shares[f"fcn8s-{backbone}"] = {"score_final_macs": macs["score_final"], "total_conv_macs": sum(macs.values()),
                                       "share": macs["score_final"] / sum(macs.values())}

    guarded = build_model("fcn8s", K, backbone="alexnet").train()
    assert isinstance(guarded.score_final, Float32TrainConv2d)
    plain = build_model("fcn8s", K, backbone="alexnet").train()
    plain.load_state_dict(guarded.state_dict())
    plain.score_final.__class__ = nn.Conv2d
    variants = {"guarded": guarded} if args.guarded_only else {"guarded": guarded, "unguarded": plain}
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, K, (args.batch, args.size, args.size))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, model in variants.items():  # warm-up
        step_seconds(model, x, y)
    for _ in range(args.repeats):
        for name, model in variants.items():
            times[name].append(step_seconds(model, x, y))
    step = {name: statistics.median(t) for name, t in times.items()}

    # The score layer alone at fc7's grid for a 360x480 image (12x15 cells, batch 8).
    conv = nn.Conv2d(4096, K, 1)
    fc7 = torch.randn(8, 4096, 12, 15, requires_grad=True)
    layer = {"bf16": score_seconds(conv, fc7, True), "fp32 (guard)": score_seconds(conv, fc7, False)}

    env = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_native_bf16(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "load_average_at_end": os.getloadavg()}
    print(f"CPU: {env['cpu_capability']}, native bf16: {env['native_bf16']}, threads {env['threads']}")
    print("\n| model (360x480) | score_final MACs | all conv MACs | share |\n|---|---|---|---|")
    for name, s in shares.items():
        print(f"| {name} | {s['score_final_macs'] / 1e6:.1f} M | {s['total_conv_macs'] / 1e9:.2f} G "
              f"| {100 * s['share']:.3f} % |")
    print(f"\nFCN-8s-AlexNet training step, bf16 autocast, batch {args.batch} at {args.size}x{args.size} "
          f"(median of {args.repeats}):")
    for name, t in step.items():
        print(f"  {name}: {t:.3f} s")
    if "unguarded" in step:
        print(f"  guarded / unguarded: {step['guarded'] / step['unguarded']:.3f}")
    print("score layer alone (8x4096x12x15 -> 11, forward + backward, median of 20): "
          + ", ".join(f"{k} {1e3 * v:.2f} ms" for k, v in layer.items()))
    write_json(args.out, {"environment": env, "flop_share": shares, "step_seconds": step, "step_times": times,
                          "score_layer_seconds": layer,
                          "config": {"size": args.size, "batch": args.batch, "repeats": args.repeats}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
