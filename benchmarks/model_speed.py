"""Speed of structseg models on the CPU beside their torchvision / segmentation_models_pytorch peers.

For every model: training images/s (batch 8, 256x256 crops, forward + cross-entropy + backward + SGD
step), inference latency at 360x480 (batch 1 and 8), parameters and GFLOPs, each on the default path
(fp32, contiguous) and on the fast path chosen by ``select_fast_path("cpu")`` (for inference that
includes BatchNorm folded into the convolutions); the peer is measured in the same run on the same
two paths. The accuracy cost of the fast path (fp32 vs fast logits) is
measured on CamVid images (random images without the data set) after calibrating BatchNorm statistics.

Targets: structseg on its fast path >= 2x the peer's default-path throughput, and >= the peer on the
same fast path. Writes benchmarks/results/model_speed.json and model_speed.png.

    python benchmarks/model_speed.py [--quick] [--models deeplabv3plus-resnet18,unet-small] [--threads N]
"""
from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from _harness import CAMVID, RESULTS, apply_threads, parser, write_json
from structseg.models import build_model
from structseg.models.fastpath import FastPath, select_fast_path

K = 11  # CamVid classes
TRAIN_SIZE, TRAIN_BATCH = (256, 256), 8
INFER_SIZE = (360, 480)


class _Out(nn.Module):
    """Adapts a peer: takes the ``"out"`` entry of dict outputs, pads to the divisibility it demands."""

    def __init__(self, model: nn.Module, divisor: int = 1) -> None:
        super().__init__()
        self.model, self.divisor = model, divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        d = self.divisor
        if d > 1 and (h % d or w % d):
            x = F.pad(x, (0, (-w) % d, 0, (-h) % d))
        out = self.model(x)
        out = out["out"] if isinstance(out, dict) else out
        return out[..., :h, :w]


def _tv(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models.segmentation as seg

        return _Out(getattr(seg, name)(weights=None, weights_backbone=None, num_classes=K))

    return build


def _smp(arch: str, encoder: str, divisor: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import segmentation_models_pytorch as smp

        return _Out(getattr(smp, arch)(encoder, encoder_weights=None, classes=K), divisor)

    return build


@dataclass
class Bench:
    key: str
    ours: Callable[[], nn.Module]
    peer_name: str | None = None
    peer: Callable[[], nn.Module] | None = None
    default: bool = True  # in the default selection


BENCHES = [
    Bench("fcn8s-alexnet", lambda: build_model("fcn8s", K, backbone="alexnet")),
    Bench("fcn8s-vgg16", lambda: build_model("fcn8s", K, backbone="vgg16"), default=False),
    Bench("fcn-resnet50", lambda: build_model("fcn", K, backbone="resnet50", output_stride=8),
          "torchvision fcn_resnet50", _tv("fcn_resnet50")),
    Bench("unet-small", lambda: build_model("unet", K, base_channels=16)),
    Bench("unet_resnet-resnet18", lambda: build_model("unet_resnet", K, backbone="resnet18"),
          "smp Unet resnet18", _smp("Unet", "resnet18", 32)),
    Bench("deeplabv3-resnet50", lambda: build_model("deeplabv3", K, backbone="resnet50", output_stride=8),
          "torchvision deeplabv3_resnet50", _tv("deeplabv3_resnet50")),
    Bench("deeplabv3-mobilenet", lambda: build_model("deeplabv3", K, backbone="mobilenet_v3_large",
                                                     atrous_rates=(12, 24, 36)),
          "torchvision deeplabv3_mobilenet_v3_large", _tv("deeplabv3_mobilenet_v3_large")),
    Bench("deeplabv3plus-resnet18", lambda: build_model("deeplabv3plus", K, backbone="resnet18"),
          "smp DeepLabV3Plus resnet18", _smp("DeepLabV3Plus", "resnet18", 16)),
    Bench("deeplabv3plus-mobilenet", lambda: build_model("deeplabv3plus", K, backbone="mobilenet_v3_large"),
          "smp DeepLabV3Plus tu-mobilenetv3_large_100", _smp("DeepLabV3Plus", "tu-mobilenetv3_large_100", 16)),
]


def _logits(out: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    return out["out"] if isinstance(out, dict) else out


def _paired_times(fns: dict[str, Callable[[], object]], warmup: int, iters: int, budget_s: float) -> dict[str, float]:
    """Median seconds of each function, timed in alternation so that a changing machine load hits all alike.

    Stops after fewer than ``iters`` rounds (at least one) once ``budget_s`` is spent.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    spent = 0.0
    for _ in range(iters):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
            spent += times[key][-1]
        if spent >= budget_s:
            break
    return {k: statistics.median(v) for k, v in times.items()}


def train_step(model: nn.Module, path: FastPath) -> Callable[[], None]:
    """One training step on a fixed batch: forward, cross-entropy, backward, SGD."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = path.prepare_input(torch.randn(TRAIN_BATCH, 3, *TRAIN_SIZE))
    y = torch.randint(0, K, (TRAIN_BATCH, *TRAIN_SIZE))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with path.autocast("cpu"):
            loss = F.cross_entropy(_logits(model(x)), y)
        loss.backward()
        opt.step()

    return step


def inference(model: nn.Module, path: FastPath, batch: int) -> Callable[[], None]:
    """One forward pass of ``batch`` images at 360x480 (eval mode, inference_mode)."""
    x = path.prepare_input(torch.randn(batch, 3, *INFER_SIZE))

    def run() -> None:
        model.eval()
        with torch.inference_mode(), path.autocast("cpu"):
            model(x)

    return run


def gflops(model: nn.Module) -> float:
    """Forward GFLOPs per 360x480 image (FlopCounterMode counts a multiply-add as 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, *INFER_SIZE))
    return counter.get_total_flops() / 1e9


def _images(split: str, n: int) -> torch.Tensor:
    """n CamVid images of ``split``, ImageNet-normalized; random images when the data set is absent."""
    files = sorted((CAMVID / split).glob("*.png"))[:n]
    if len(files) < n:
        return torch.randn(n, 3, *INFER_SIZE)
    from PIL import Image

    arrays = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255 for f in files]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (x - mean[:, None, None]) / std[:, None, None]


def fast_path_accuracy(model: nn.Module, path: FastPath, calib: torch.Tensor, test: torch.Tensor) -> dict:
    """fp32 vs fast-path logits of a BN-calibrated model: max abs diff, relative diff, argmax agreement."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(calib), 2):
            model(calib[i:i + 2])
    model.eval()
    with torch.no_grad():
        ref = _logits(model(test))
        model = path.prepare_inference(model, test[:1])
        with path.autocast("cpu"):
            fast = _logits(model(path.prepare_input(test))).float()
    diff = (fast - ref).abs().max().item()
    return {"max_abs_diff": diff, "max_abs_logit": ref.abs().max().item(),
            "rel_diff": diff / max(ref.abs().max().item(), 1e-12),
            "argmax_agreement": (fast.argmax(1) == ref.argmax(1)).float().mean().item()}


def measure(builders: dict[str, Callable[[], nn.Module]], path: FastPath, it: dict) -> dict[str, dict]:
    """Training and inference speed of ours and the peer on one path, timed in alternation."""
    models = {}
    for who, build in builders.items():
        torch.manual_seed(0)
        models[who] = path.prepare(build())
    args = (it["warmup"], it["train"], it["budget_s"])
    train = _paired_times({w: train_step(m, path) for w, m in models.items()}, *args)
    models = {w: path.prepare_inference(m) for w, m in models.items()}
    b1 = _paired_times({w: inference(m, path, 1) for w, m in models.items()}, it["warmup"], it["b1"], it["budget_s"])
    b8 = _paired_times({w: inference(m, path, 8) for w, m in models.items()}, it["warmup"], it["b8"], it["budget_s"])
    return {w: {"train_img_s": TRAIN_BATCH / train[w], "infer_b1_ms": 1e3 * b1[w], "infer_b8_img_s": 8 / b8[w]}
            for w in models}


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict], fast: str) -> str:
    head = (f"{'model':26} {'params M':>8} {'GFLOPs':>7} | {'train img/s':>18} | {'infer b1 ms':>18} | "
            f"{'infer b8 img/s':>18} | {'fast/peer-default':>17} | {'fast/peer-fast':>15}")
    sub = (f"{'':26} {'':>8} {'':>7} | {'fp32':>8} {fast:>9} | {'fp32':>8} {fast:>9} | {'fp32':>8} {fast:>9} | "
           f"{'train':>8} {'b1':>8} | {'train':>7} {'b1':>7}")
    lines = [head, sub, "-" * len(head)]
    for r in rows:
        for who in ("ours", "peer"):
            d = r.get(who)
            if d is None:
                continue
            name = r["key"] if who == "ours" else f"  {r['peer_name']}"
            s = d["speed"]
            ratios = ""
            if who == "ours" and "ratios" in r:
                q = r["ratios"]
                ratios = (f" | {_fmt(q['train_fast_vs_peer_default']):>8} {_fmt(q['b1_fast_vs_peer_default']):>8} | "
                          f"{_fmt(q['train_fast_vs_peer_fast']):>7} {_fmt(q['b1_fast_vs_peer_fast']):>7}")
            lines.append(
                f"{name[:26]:26} {d['params'] / 1e6:8.2f} {d['gflops']:7.1f} | "
                f"{s['default']['train_img_s']:8.2f} {s['fast']['train_img_s']:9.2f} | "
                f"{s['default']['infer_b1_ms']:8.0f} {s['fast']['infer_b1_ms']:9.0f} | "
                f"{s['default']['infer_b8_img_s']:8.2f} {s['fast']['infer_b8_img_s']:9.2f}{ratios}"
            )
    return "\n".join(lines)


def plot(rows: list[dict], fast: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 0.6 * len(rows) + 2.5))
    for ax, metric, title in [(axes[0], "train_img_s", "training images/s (batch 8, 256x256)"),
                              (axes[1], "infer_b1_ms", "inference latency ms (batch 1, 360x480)")]:
        labels, series = [], {"ours fp32": [], f"ours {fast}": [], "peer fp32": [], f"peer {fast}": []}
        for r in rows:
            labels.append(r["key"])
            for who in ("ours", "peer"):
                d = r.get(who)
                for p, tag in (("default", "fp32"), ("fast", fast)):
                    series[f"{who} {tag}"].append(np.nan if d is None else d["speed"][p][metric])
        y = np.arange(len(labels))
        for i, (name, values) in enumerate(series.items()):
            ax.barh(y + (i - 1.5) * 0.2, values, height=0.2, label=name)
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    cli = parser(__doc__, out=RESULTS / "model_speed.json", threads=True)
    cli.add_argument("--quick", action="store_true", help="one warm-up and few timed iterations")
    cli.add_argument("--models", help="comma-separated keys: " + ", ".join(b.key for b in BENCHES))
    args = cli.parse_args()
    apply_threads(args)
    if args.models:
        keys = args.models.split(",")
        unknown = set(keys) - {b.key for b in BENCHES}
        if unknown:
            cli.error(f"unknown models {sorted(unknown)}; valid: {', '.join(b.key for b in BENCHES)}")
        benches = [b for b in BENCHES if b.key in keys]
    else:
        benches = [b for b in BENCHES if b.default]
    it = ({"warmup": 1, "train": 3, "b1": 5, "b8": 2, "budget_s": 12.0} if args.quick
          else {"warmup": 2, "train": 8, "b1": 20, "b8": 5, "budget_s": 60.0})
    common = select_fast_path("cpu")  # the common choice; AlexNet/VGG may differ (each row records its own)
    calib, test = _images("train", 4), _images("val", 2)

    rows = []
    start = time.perf_counter()
    for bench in tqdm(benches, desc="models"):
        fast = select_fast_path("cpu", backbone=bench.key.rsplit("-", 1)[-1])
        paths = {"default": FastPath(), "fast": fast}
        row: dict = {"key": bench.key, "peer_name": bench.peer_name, "fast_path": fast.describe()}
        builders = {"ours": bench.ours, "peer": bench.peer}
        for who, build in builders.items():
            if build is None:
                continue
            torch.manual_seed(0)
            model = build()
            row[who] = {"params": sum(p.numel() for p in model.parameters()), "gflops": gflops(model), "speed": {}}
            if who == "ours":
                row[who]["fast_path_accuracy"] = fast_path_accuracy(model, fast, calib, test)
        present = {w: b for w, b in builders.items() if b is not None}
        for pname, path in paths.items():
            for who, speed in measure(present, path, it).items():
                row[who]["speed"][pname] = speed
        if "peer" in row:
            o, p = row["ours"]["speed"], row["peer"]["speed"]
            row["ratios"] = {
                "train_fast_vs_peer_default": o["fast"]["train_img_s"] / p["default"]["train_img_s"],
                "b1_fast_vs_peer_default": p["default"]["infer_b1_ms"] / o["fast"]["infer_b1_ms"],
                "b8_fast_vs_peer_default": o["fast"]["infer_b8_img_s"] / p["default"]["infer_b8_img_s"],
                "train_fast_vs_peer_fast": o["fast"]["train_img_s"] / p["fast"]["train_img_s"],
                "b1_fast_vs_peer_fast": p["fast"]["infer_b1_ms"] / o["fast"]["infer_b1_ms"],
                "b8_fast_vs_peer_fast": o["fast"]["infer_b8_img_s"] / p["fast"]["infer_b8_img_s"],
                "train_default_vs_peer_default": o["default"]["train_img_s"] / p["default"]["train_img_s"],
                "b1_default_vs_peer_default": p["default"]["infer_b1_ms"] / o["default"]["infer_b1_ms"],
            }
        rows.append(row)
        tqdm.write(f"{bench.key}: done after {time.perf_counter() - start:.0f} s")

    text = table(rows, common.describe())
    print(text)
    print("\nfast-path accuracy (fp32 vs the fast path, BN-calibrated random weights, CamVid val images):")
    for r in rows:
        a = r["ours"]["fast_path_accuracy"]
        print(f"  {r['key']:26} {r['fast_path']:24} max|diff| {a['max_abs_diff']:.4f} "
              f"(max|logit| {a['max_abs_logit']:.2f}, "
              f"rel {a['rel_diff']:.2%}), argmax agreement {a['argmax_agreement']:.2%}")
    env = {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "fast_path": common.describe(),
        "load_average_at_end": os.getloadavg(), "quick": args.quick, "iterations": it,
        "train": {"batch": TRAIN_BATCH, "size": TRAIN_SIZE}, "infer_size": INFER_SIZE,
        "accuracy_input": "camvid" if (CAMVID / "val").is_dir() else "random",
        "wall_s": time.perf_counter() - start,
    }
    write_json(args.out, {"environment": env, "models": rows})
    plot(rows, common.describe(), args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
