"""Procedural scenes whose classes are told apart by shape and context, never by color.

Each scene has a smooth sky (a gradient) above a tilted horizon and a textured
ground (stripes, checks or blotches) below it. Two to six objects are pasted on
top, later ones occluding earlier ones: discs, squares, triangles, rings,
crosses and five-pointed stars, at random sizes, angles and positions. Every
object and both scene regions draw colors and fill patterns (solid, gradient,
stripes, noise) from one shared distribution, so color says nothing about the
class. Stars are the context class: a star wholly in the sky is ``sky_star``, a
star wholly on the ground ``ground_star``.

Item ``i`` of a split is rendered on the fly from ``(seed, split, i)``; splits
draw from disjoint seed streams.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from structseg.data.base import ClassInfo, PairTransform, SegmentationDataset
from structseg.errors import DataError

SYNTHETIC_CLASSES = ClassInfo(
    names=("background", "disc", "square", "triangle", "ring", "cross", "sky_star", "ground_star"),
    palette=((40, 40, 40), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
             (245, 130, 48), (145, 30, 180), (70, 240, 240)),
    ignore_index=255,
    ignore_color=(255, 255, 255),
)
DISC, SQUARE, TRIANGLE, RING, CROSS, SKY_STAR, GROUND_STAR = range(1, 8)
# SKY_STAR stands for "a star" (context decides which), listed twice as stars are often rejected at the horizon
_SHAPES = (DISC, SQUARE, TRIANGLE, RING, CROSS, SKY_STAR, SKY_STAR)
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
DEFAULT_LENGTHS = {"train": 400, "val": 100, "test": 100}
MIN_CONTRAST = 90.0  # RGB distance between an object's mean color and that of what it covers
BACKGROUND_SPREAD = 60.0  # sky and ground textures are muted: their two colors differ by at most this per channel
OBJECT_SPREAD = 120.0
OBJECT_FILLS = ("solid", "solid", "gradient", "stripes", "blotches")


@dataclass
class Scene:
    """One rendered item: image uint8 (H, W, 3), class mask, instance map (0 = none), instance classes, ground
    region."""

    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    instance_classes: list[int]
    ground: np.ndarray  # bool (H, W): below the horizon


def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Pixels inside a shape of radius ``r``, given coordinates ``u, v`` in its rotated frame."""
    if kind == DISC:
        return u * u + v * v <= r * r
    if kind == SQUARE:
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if kind == TRIANGLE:  # equilateral, circumradius r: three half-planes at distance r/2
        inside = v <= 0.5 * r
        for angle in (np.pi / 6, 5 * np.pi / 6):
            inside &= u * np.cos(angle) - v * np.sin(angle) <= 0.5 * r
        return inside
    if kind == RING:
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind == CROSS:
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.28 * r) & (av <= r)) | ((av <= 0.28 * r) & (au <= r))
    # star: radius swings between 0.4 r and r five times around
    phi = np.arctan2(v, u)
    return np.hypot(u, v) <= r * (0.7 + 0.3 * np.cos(5 * phi))


class SyntheticShapes(SegmentationDataset):
    """Deterministic procedural scenes (see the module docstring); no files needed."""

    classes = SYNTHETIC_CLASSES

    def __init__(
        self,
        split: str = "train",
        *,
        transform: PairTransform | None = None,
        seed: int = 0,
        size: int | tuple[int, int] = (128, 128),
        length: int | None = None,
        max_objects: int = 7,
    ) -> None:
        self.split = split
        self.transform = transform
        self.seed = int(seed)
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(self.size) < 16:
            raise DataError(f"synthetic: size {self.size} too small (need at least 16x16)")
        self.length = int(length) if length is not None else DEFAULT_LENGTHS.get(split, 100)
        if self.length < 0:
            raise DataError(f"synthetic: length must be >= 0, got {length}")
        self.max_objects = int(max_objects)
        self._split_id = _SPLIT_IDS.get(split, 1000 + zlib.crc32(split.encode()))
        self._last: tuple[int, Scene] | None = None  # load() then load_instances() of one item renders once

    def __len__(self) -> int:
        return self.length

    def describe(self, index: int) -> str:
        return f"synthetic {self.split} item {index} (seed {self.seed}, size {self.size[0]}x{self.size[1]})"

    def item_name(self, index: int) -> str:
        return f"{self.split}_{index:04d}"

    def __repr__(self) -> str:
        return f"SyntheticShapes(split={self.split!r}, items={self.length}, size={self.size}, seed={self.seed})"

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        scene = self.render(index)
        image = torch.from_numpy(scene.image).permute(2, 0, 1).contiguous()
        return image, torch.from_numpy(scene.mask.astype(np.int64))

    def load_instances(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Instance map int64 (H, W), 0 = no object, k = instance k; and the class of each instance (N,)."""
        scene = self.render(index)
        return (torch.from_numpy(scene.instances.astype(np.int64)),
                torch.tensor(scene.instance_classes, dtype=torch.int64))

    def render(self, index: int) -> Scene:
        """Draw item ``index`` from its own random stream."""
        if not 0 <= index < self.length:
            raise IndexError(f"synthetic {self.split}: index {index} out of range [0, {self.length})")
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        rng = np.random.default_rng([self.seed, self._split_id, index])
        scene = _Painter(rng, *self.size).paint(self.max_objects)
        self._last = (index, scene)
        return scene


class _Painter:
    """Renders one scene with one random stream."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.rng, self.h, self.w = rng, height, width
        self.ys = np.arange(height, dtype=np.float32)[:, None]
        self.xs = np.arange(width, dtype=np.float32)[None, :]

    def color(self) -> np.ndarray:
        return self.rng.uniform(0, 255, size=3).astype(np.float32)

    def pattern(self, ys: np.ndarray, xs: np.ndarray, kinds: tuple[str, ...], spread: float) -> np.ndarray:
        """A float RGB fill over the grid ``ys`` x ``xs`` (broadcast shapes (h,1), (1,w)).

        The pattern blends two colors at most ``spread`` apart per channel.
        """
        a = self.color()
        b = np.clip(a + self.rng.uniform(-spread, spread, size=3).astype(np.float32), 0, 255)
        kind = kinds[self.rng.integers(len(kinds))]
        h, w = ys.shape[0], xs.shape[1]
        if kind == "solid":
            return np.broadcast_to(a, (h, w, 3))
        angle = self.rng.uniform(0, np.pi)
        along = ys * np.sin(angle) + xs * np.cos(angle)
        if kind == "gradient":
            t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
        elif kind == "stripes":
            period = self.rng.uniform(4, 12)
            t = ((along / period) % 1.0 < 0.5).astype(np.float32)
        elif kind == "checks":
            period = self.rng.uniform(5, 14)
            across = -ys * np.cos(angle) + xs * np.sin(angle)
            t = (np.floor(along / period) + np.floor(across / period)) % 2
        else:  # blotches: coarse noise, blocky-upsampled
            cell = int(self.rng.integers(3, 9))
            coarse = self.rng.uniform(0, 1, size=(h // cell + 1, w // cell + 1)).astype(np.float32)
            t = np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:h, :w]
        return a + (b - a) * t[..., None]

    def paint(self, max_objects: int) -> Scene:
        rng, h, w = self.rng, self.h, self.w
        horizon = h * rng.uniform(0.3, 0.6) + rng.uniform(-0.15, 0.15) * (self.xs - w / 2)
        below = self.ys - horizon  # > 0 on the ground, signed pixel distance (nearly) to the horizon
        sky = self.pattern(self.ys, self.xs, ("gradient",), BACKGROUND_SPREAD)
        ground = self.pattern(self.ys, self.xs, ("stripes", "checks", "blotches"), BACKGROUND_SPREAD)
        on_ground = below > 0
        image = np.where(on_ground[..., None], ground, sky).astype(np.float32, copy=False)
        mask = np.zeros((h, w), dtype=np.uint8)
        instances = np.zeros((h, w), dtype=np.int32)
        areas: list[int] = []
        classes: list[int] = []
        scale = min(h, w)
        for _ in range(int(rng.integers(3, max_objects + 1))):
            placed = self._place(below, instances, areas, scale)
            if placed is None:
                continue
            kind, (y0, y1, x0, x1), inside = placed
            image[y0:y1, x0:x1][inside] = self._fill(image[y0:y1, x0:x1][inside], (y0, y1, x0, x1), inside)
            covered = instances[y0:y1, x0:x1][inside]
            if covered.size:
                lost = np.bincount(covered, minlength=len(areas) + 1)[1:]
                areas = [a - int(c) for a, c in zip(areas, lost)]
            areas.append(int(inside.sum()))
            classes.append(kind)
            mask[y0:y1, x0:x1][inside] = kind
            instances[y0:y1, x0:x1][inside] = len(classes)
        image += rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(rng.uniform(2, 8))  # sensor-like grain
        return Scene(np.clip(image, 0, 255).astype(np.uint8), mask, instances, classes, on_ground)

    def _fill(self, behind: np.ndarray, box: tuple[int, int, int, int], inside: np.ndarray) -> np.ndarray:
        """Object pixels whose mean color stands out from what they cover (a few tries)."""
        y0, y1, x0, x1 = box
        for _ in range(4):
            fill = self.pattern(self.ys[y0:y1], self.xs[:, x0:x1], OBJECT_FILLS, OBJECT_SPREAD)
            pixels = fill[inside]
            if np.linalg.norm(pixels.mean(0) - behind.mean(0)) >= MIN_CONTRAST:
                break
        return pixels

    def _place(
        self, below: np.ndarray, instances: np.ndarray, areas: list[int], scale: int
    ) -> tuple[int, tuple[int, int, int, int], np.ndarray] | None:
        """A shape, its bounding box and pixels, placed so that it hides at most half of any earlier object."""
        rng = self.rng
        for _ in range(8):
            kind = _SHAPES[rng.integers(len(_SHAPES))]
            r = scale * rng.uniform(0.08, 0.22)
            cy, cx = rng.uniform(0, self.h), rng.uniform(0, self.w)
            if kind == SKY_STAR:
                side = below[min(int(cy), self.h - 1), min(int(cx), self.w - 1)]
                if abs(side) < 1.1 * r:  # stars must lie wholly in one region
                    continue
                kind = GROUND_STAR if side > 0 else SKY_STAR
            y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, self.h)
            x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, self.w)
            theta = rng.uniform(0, 2 * np.pi)
            dy, dx = self.ys[y0:y1] - cy, self.xs[:, x0:x1] - cx
            u = dx * np.cos(theta) + dy * np.sin(theta)
            v = -dx * np.sin(theta) + dy * np.cos(theta)
            inside = _shape_mask(kind, u, v, r)
            if inside.sum() < 24:  # almost wholly outside the image
                continue
            covered = instances[y0:y1, x0:x1][inside]
            if covered.size and areas:
                lost = np.bincount(covered, minlength=len(areas) + 1)[1:]
                if np.any(lost > 0.5 * np.maximum(np.array(areas), 1)):
                    continue
            return kind, (y0, y1, x0, x1), inside
        return None
