"""Reading images and label masks with validation.

Every failure is a :class:`~structseg.errors.DataError` that names the file and
says what is wrong with it, so that ``structseg data check`` can list them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from structseg.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_text_file(path: str | Path, what: str = "list file") -> str:
    """A text file (list, palette) as str: UTF-8 with or without a byte-order mark. Undecodable bytes, a symlink
    loop, a folder or an unreadable file are a :class:`DataError` naming the file and the cause."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except OSError as exc:  # ELOOP (symlink loop), EISDIR, EACCES ...
        raise DataError(f"{path}: {what} cannot be read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                        f"{exc.start})") from None


def require_unique_stems(paths: list[Path], what: str) -> None:
    """A :class:`DataError` naming the files when two of ``paths`` share a stem (``a.jpg`` and ``a.png``): their
    masks, or the outputs named after them, would be one file."""
    seen: dict[str, Path] = {}
    clashes = []
    for p in paths:
        if p.stem in seen:
            clashes.append(f"{seen[p.stem]} and {p}")
        seen.setdefault(p.stem, p)
    if clashes:
        more = f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else ""
        raise DataError(f"{what}: files share a name apart from the extension, so they would map to one "
                        f"mask / output file: {'; '.join(clashes[:3])}{more}; rename or remove one of each")


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode ``path`` so that truncated or corrupt files fail here."""
    path = Path(path)
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from None
    return image


def read_image(path: str | Path) -> torch.Tensor:
    """RGB image as uint8 ``(3, H, W)``; grey, palette and RGBA images are converted, and 16-bit (or 32-bit)
    grey images are scaled by their bit depth to 0..255 (PIL's own conversion would saturate them at 255)."""
    image = open_image(path)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(image).astype(np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or grey.max(initial=0) <= 65535 else float(2**32 - 1)
        grey = np.clip(np.round(grey * (255.0 / top)), 0, 255).astype(np.uint8)
        return torch.from_numpy(np.repeat(grey[None], 3, axis=0))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())


def read_label_array(path: str | Path) -> np.ndarray:
    """Stored label values: ``(H, W)`` for index masks ("P" gives the palette indices), ``(H, W, 3)`` for color
    masks."""
    image = open_image(path)
    if image.mode in ("RGB", "RGBA"):
        return np.asarray(image)[..., :3]
    if image.mode in ("P", "L", "I", "I;16", "1"):
        return np.asarray(image)
    raise DataError(f"{path}: unsupported mask mode {image.mode!r} (expected an index or RGB PNG)")


def check_same_size(image_path: Path, image_hw: tuple[int, int], mask_path: Path, mask_hw: tuple[int, int]) -> None:
    """Image and mask must cover the same pixels."""
    if tuple(image_hw) != tuple(mask_hw):
        raise DataError(
            f"{mask_path}: mask size {mask_hw[1]}x{mask_hw[0]} (WxH) differs from image "
            f"{image_path} size {image_hw[1]}x{image_hw[0]}"
        )


class LabelMap:
    """Maps stored label values to class ids, rejecting values that are neither a class nor ignored.

    ``remap`` sends stored values to class ids (or to ``ignore_index``); without it the
    stored value is the class id. ``ignore_values`` are stored values that mean "ignore".
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        remap: dict[int, int] | None = None,
        ignore_values: tuple[int, ...] = (),
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        stored = list(remap) if remap else list(range(num_classes))
        size = max([256, ignore_index + 1, *(v + 1 for v in stored), *(v + 1 for v in ignore_values)])
        lut = np.full(size, -1, dtype=np.int64)
        if remap:
            for value, target in remap.items():
                lut[value] = target
        else:
            lut[:num_classes] = np.arange(num_classes)
        lut[[ignore_index, *ignore_values]] = ignore_index
        self.lut = lut

    def __call__(self, raw: np.ndarray, path: str | Path) -> torch.Tensor:
        """int64 class ids of a stored ``(H, W)`` mask; :class:`DataError` names bad values and ``path``."""
        if raw.ndim != 2:
            raise DataError(f"{path}: expected a single-channel index mask, got shape {raw.shape}")
        if raw.dtype != np.uint8:
            raw = raw.astype(np.int64)
            out_of_table = (raw < 0) | (raw >= len(self.lut))
            if out_of_table.any():
                self._fail(raw[out_of_table], path)
        mask = self.lut[raw]
        bad = mask < 0
        if bad.any():
            self._fail(raw[bad], path)
        return torch.from_numpy(mask)

    def _fail(self, values: np.ndarray, path: str | Path) -> None:
        values = np.unique(values)
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise DataError(
            f"{path}: label value(s) {shown} outside [0, {self.num_classes}) "
            f"and not the ignore value {self.ignore_index}"
        )
