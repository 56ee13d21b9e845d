"""int8 CPU inference of the CamVid models: accuracy and batch-1 latency against fp32 and the fast path.

For each trained run (default: runs/camvid_budget_pretrained), at the size its evaluation feeds the model: the
model exported to ONNX (fp32) and quantized statically by ONNX Runtime (QDQ, int8 weights per channel, uint8
activations calibrated on training images, stem and classifier kept in float; ``structseg export --format
onnx --int8``). Reported, same process:

- val mIoU at the full label resolution: torch fp32, ONNX Runtime int8 (target: within 1.0 mIoU of fp32);
- batch-1 latency: torch fp32, torch on the fast path (channels_last + BN folding, bf16 where the CPU has it
  natively), ONNX Runtime fp32 and int8 (target: int8 at least 2x torch fp32), medians of alternated rounds.

``--pt2e`` adds PyTorch's own int8 path to both: PT2E static quantization (torchao's X86InductorQuantizer, the
same calibration images) compiled by inductor, the torch.ao route the int8 issue names beside ONNX Runtime (torch
2.14 moved it to torchao, which structseg does not depend on: ``pip install --no-deps torchao``).

Writes benchmarks/results/int8.json.

    python benchmarks/int8.py [--runs runs/camvid_budget_pretrained] [--rounds 20] [--limit N] [--pt2e]
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import RESULTS, ROOT, machine, parser, print_table, write_json


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 0  # ORT's default: the physical cores
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def pt2e_int8(model: Any, calibration: list[Any]) -> Any:
    """``model`` quantized by PT2E (X86InductorQuantizer, static, calibrated on ``calibration``) and compiled by
    inductor with frozen weights: the int8 kernels come from inductor's lowering."""
    import torch
    import torch._inductor.config as inductor
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = torch.from_numpy(calibration[0])
    exported = torch.export.export(model.eval(), (example,)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(torch.from_numpy(x))
    converted = convert_pt2e(prepared)
    inductor.freezing = True
    compiled = torch.compile(converted)
    with torch.no_grad():
        compiled(example)  # compile now, not in the first timed call
    return compiled


def measure(run: Path, rounds: int, limit: int | None, calibration: int, pt2e: bool = False) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.utils.data import Subset

    from structseg.engine.build import build_eval_dataset
    from structseg.engine.commands.export import calibration_images
    from structseg.engine.config import apply_overrides
    from structseg.engine.predict import Predictor
    from structseg.metrics import ConfusionMatrix
    from structseg.models.export import export_onnx, quantize_onnx_int8
    from structseg.models.fastpath import FastPath

    plain = Predictor.from_run(run, device="cpu", prepare=False)
    assert plain.config is not None
    fast = Predictor.from_run(run, device="cpu")
    cfg = plain.config
    val = build_eval_dataset(apply_overrides(cfg, []))
    scored = Subset(val, range(min(limit or len(val), len(val))))
    scale = plain.eval_cfg.scales[0]
    h0, w0 = val[0][0].shape[-2:]
    size = (round(h0 * scale), round(w0 * scale))
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = export_onnx(plain.model, Path(tmp) / "model.onnx", input_size=size, dynamic=False)
        images = calibration_images(plain, calibration)
        int8_path = quantize_onnx_int8(fp32_path, Path(tmp) / "model.int8.onnx", images)
        sessions = {"onnx fp32": _session(fp32_path), "onnx int8": _session(int8_path)}
        compiled = None
        if pt2e:
            started = time.perf_counter()
            compiled = pt2e_int8(Predictor.from_run(run, device="cpu", prepare=False).model, images)
            print(f"PT2E int8: quantized and compiled in {time.perf_counter() - started:.0f} s", flush=True)
        k, ignore = plain.classes.num_classes, plain.classes.ignore_index
        scored_names = ["torch fp32", "onnx int8"] + (["pt2e int8"] if compiled is not None else [])
        cms = {name: ConfusionMatrix(k, ignore_index=ignore) for name in scored_names}
        for image, mask in scored:
            x = image[None]
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if size != tuple(x.shape[-2:]) else x
            with torch.inference_mode():
                logits = {"torch fp32": plain.model(xs).float(),
                          "onnx int8": torch.from_numpy(sessions["onnx int8"].run(None, {"image": xs.numpy()})[0])}
                if compiled is not None:
                    logits["pt2e int8"] = compiled(xs).float()
            for name, out in logits.items():
                out = F.interpolate(out, size=mask.shape[-2:], mode="bilinear", align_corners=False)
                cms[name].update(out.argmax(1), mask[None])
        metrics = {name: cm.compute() for name, cm in cms.items()}
        x = torch.randn(1, 3, *size)
        fast_path: FastPath = fast.fast_path  # type: ignore[assignment]

        def torch_fp32() -> None:
            with torch.inference_mode():
                plain.model(x)

        def torch_fast() -> None:
            with torch.inference_mode(), fast_path.autocast("cpu"):
                fast.model(fast_path.prepare_input(x))

        feeds = {"image": x.numpy()}
        runners = {"torch fp32": torch_fp32, "torch fast path": torch_fast,
                   "onnx fp32": lambda: sessions["onnx fp32"].run(None, feeds),
                   "onnx int8": lambda: sessions["onnx int8"].run(None, feeds)}
        if compiled is not None:
            def pt2e_int8_run() -> None:
                with torch.no_grad():
                    compiled(x)

            runners["pt2e int8"] = pt2e_int8_run
        for fn in runners.values():  # warm-up
            fn()
            fn()
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(rounds):
            for name, fn in runners.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    return {"run": str(run), "model": cfg.model.name, "backbone": cfg.model.backbone, "input": list(size),
            "images": len(scored), "fast_path": fast_path.describe(),
            "miou": {name: m.miou for name, m in metrics.items()},
            "per_class_iou": {name: [float(v) for v in np.nan_to_num(m.iou.numpy())] for name, m in metrics.items()},
            "ms_batch1": ms, "speedup_int8_vs_torch_fp32": ms["torch fp32"] / ms["onnx int8"],
            "miou_drop_int8": metrics["torch fp32"].miou - metrics["onnx int8"].miou,
            **({"speedup_pt2e_int8_vs_torch_fp32": ms["torch fp32"] / ms["pt2e int8"],
                "miou_drop_pt2e_int8": metrics["torch fp32"].miou - metrics["pt2e int8"].miou} if pt2e else {})}


def main() -> int:
    p = parser(__doc__, out=RESULTS / "int8.json")
    p.add_argument("--runs", nargs="+", type=Path, default=[ROOT / "runs" / "camvid_budget_pretrained"])
    p.add_argument("--rounds", type=int, default=20, help="timed rounds per runner (alternated)")
    p.add_argument("--limit", type=int, help="score the first N val images only")
    p.add_argument("--calibration", type=int, default=32, help="training images calibrating the activations")
    p.add_argument("--pt2e", action="store_true", help="add torchao's PT2E int8 path (inductor-compiled)")
    args = p.parse_args()
    runs = [r for r in args.runs if (r / "checkpoints" / "best.pt").is_file()]
    if not runs:
        print("no trained run: run benchmarks/camvid_budget.py --pretrained first")
        return 1
    results = [measure(r, args.rounds, args.limit, args.calibration, args.pt2e) for r in runs]
    print(f"CPU: {machine()['cpu']}, native bf16: {machine()['native_bf16']}")
    rows = [{"run": Path(r["run"]).name, "fp32": 100 * r["miou"]["torch fp32"], "int8": 100 * r["miou"]["onnx int8"],
             "drop": 100 * r["miou_drop_int8"], **{k.replace(" ", "_"): v for k, v in r["ms_batch1"].items()},
             "x": r["speedup_int8_vs_torch_fp32"],
             "pt2e": 100 * r["miou"].get("pt2e int8", float("nan")),
             "pt2e_ms": r["ms_batch1"].get("pt2e int8", float("nan"))}
            for r in results]
    print_table(rows,
                [("run", "{run}"), ("mIoU fp32", "{fp32:.2f}"), ("mIoU int8", "{int8:.2f}"), ("drop", "{drop:.2f}"),
                 ("ms torch fp32", "{torch_fp32:.1f}"), ("ms fast path", "{torch_fast_path:.1f}"),
                 ("ms onnx fp32", "{onnx_fp32:.1f}"), ("ms onnx int8", "{onnx_int8:.1f}"),
                 ("int8 vs fp32", "{x:.2f}x"), ("mIoU pt2e", "{pt2e:.2f}"), ("ms pt2e", "{pt2e_ms:.1f}")])
    write_json(args.out, {"results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
