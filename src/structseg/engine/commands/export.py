"""``structseg export``: a trained run's model as ONNX (verified with onnxruntime), TorchScript, or a pretrained
directory (config.json + model.safetensors + model card) that from_pretrained and every command read."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from structseg.engine.commands._common import add_run_dir

if TYPE_CHECKING:
    import numpy as np

    from structseg.engine.predict import Predictor


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_dir(parser)
    parser.add_argument("--which", default="best", help="best | latest | a checkpoint path")
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript", "pretrained"],
                        help="output format (pretrained: a directory)")
    parser.add_argument("-o", "--out", required=True, help="output file (a directory for --format pretrained)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="example input size for tracing (default: the training crop or 512 512)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    parser.add_argument("--static", action="store_true", help="ONNX with fixed batch/height/width")
    parser.add_argument("--int8", action="store_true",
                        help="ONNX: also write FILE with .int8.onnx, statically quantized by ONNX Runtime and "
                             "calibrated on training images")
    parser.add_argument("--calibration-images", type=int, default=32,
                        help="training images that calibrate the int8 activations (default: 32)")


def run(args: argparse.Namespace) -> int:
    import torch

    from structseg.engine.config import as_pair
    from structseg.engine.predict import Predictor
    from structseg.models.export import export_onnx, export_torchscript, quantize_onnx_int8, verify_onnx

    if args.format == "pretrained":
        from structseg.engine.pretrained import save_pretrained

        out = save_pretrained(args.run, args.out, which=args.which)
        print(f"wrote {out} (config.json, model.safetensors, README.md)")
        return 0
    predictor = Predictor.from_run(args.run, args.which, device="cpu")
    cfg = predictor.config
    size = as_pair(args.size or (cfg.data.crop_size if cfg else None), "--size") or (512, 512)
    model = predictor.model
    if args.format == "onnx":
        path = export_onnx(model, args.out, input_size=size, dynamic=not args.static, opset=args.opset)
        err = verify_onnx(model, path, torch.randn(1, 3, *size))
        print(f"wrote {path} (onnxruntime vs torch: max abs difference {err:.2e})")
        if args.int8:
            int8 = quantize_onnx_int8(path, path.with_suffix(".int8.onnx"),
                                      calibration_images(predictor, args.calibration_images))
            print(f"wrote {int8} (int8, calibrated on {args.calibration_images} training images)")
    else:
        path = export_torchscript(model, args.out, input_size=size)
        print(f"wrote {path}")
    return 0


def calibration_images(predictor: Predictor, count: int) -> list[np.ndarray]:
    """``count`` training images of the run, normalized as the model expects, at the size evaluation feeds it."""
    import torch.nn.functional as F

    from structseg.engine.build import build_eval_dataset
    from structseg.viz.grid import spread_indices

    cfg = predictor.config
    assert cfg is not None
    dataset = build_eval_dataset(cfg, cfg.data.train_split)
    scale = predictor.eval_cfg.scales[0]
    out = []
    for i in spread_indices(len(dataset), count):
        x = dataset[i][0][None]
        size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        out.append(x.numpy())
    return out
