"""Unsupervised segmentation of one RGB image: k-means, mean-shift, normalized cuts.

Every method maps an ``uint8 (H, W, 3)`` image to a segment map ``int64 (H, W)``
with ids ``0..n-1``. Segments carry no class: :func:`structseg.classic.majority_labels`
names them afterwards.

- ``kmeans``: MiniBatchKMeans on the pixels' color (CIE Lab by default).
- ``kmeans_xy``: the same on color + ``position_weight`` x (row, column) / max(H, W),
  which trades color fidelity for spatially compact segments.
- ``meanshift``: flat-kernel mean-shift with bin seeding (scikit-learn's algorithm,
  vectorised over the seeds in :mod:`structseg.classic.meanshift`) on a strided
  subsample of the joint color + position features (Comaniciu & Meer's joint domain);
  every pixel then joins its nearest mode. The subsample keeps it tractable: mean-shift
  on all pixels of a 360x480 image takes minutes.
- ``ncut``: SLIC superpixels, a region adjacency graph weighted by mean-color
  similarity (``skimage.graph.rag_mean_color``) and recursive two-way normalized cuts
  (``skimage.graph.cut_normalized``, Shi & Malik).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from structseg.errors import ConfigError, DataError

SegmentFn = Callable[..., np.ndarray]


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(
            f"classic segmentation needs a uint8 (H, W, 3) RGB image, got dtype {image.dtype} shape {image.shape}"
        )
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise DataError(f"image of shape {image.shape} is too small to segment")
    return image


def relabel_sequential(segments: np.ndarray) -> np.ndarray:
    """Renumber segment ids to ``0..n-1`` in order of first appearance in sorted id order."""
    _, inverse = np.unique(segments, return_inverse=True)
    return inverse.reshape(segments.shape).astype(np.int64)


def pixel_features(image: np.ndarray, *, color_space: str = "lab", position_weight: float = 0.0) -> np.ndarray:
    """Per-pixel feature rows ``(H*W, 3 or 5)``: color scaled to about [0, 1], then weighted position."""
    h, w, _ = image.shape
    if color_space == "lab":
        from skimage.color import rgb2lab

        color = rgb2lab(image).reshape(-1, 3) / 100.0
    elif color_space == "rgb":
        color = image.reshape(-1, 3) / 255.0
    else:
        raise ConfigError(f"color_space must be 'lab' or 'rgb', got {color_space!r}")
    if position_weight < 0:
        raise ConfigError(f"position_weight must be >= 0, got {position_weight}")
    if position_weight == 0:
        return color.astype(np.float32)
    rows, cols = np.mgrid[0:h, 0:w]
    position = np.stack([rows.ravel(), cols.ravel()], axis=1) / max(h, w)
    return np.concatenate([color, position_weight * position], axis=1).astype(np.float32)


def kmeans(
    image: np.ndarray,
    *,
    k: int = 8,
    color_space: str = "lab",
    position_weight: float = 0.0,
    batch_size: int = 4096,
    n_init: int = 3,
    seed: int = 0,
) -> np.ndarray:
    """k-means clusters of pixel color (and position when ``position_weight > 0``)."""
    from sklearn.cluster import MiniBatchKMeans

    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    features = pixel_features(image, color_space=color_space, position_weight=position_weight)
    distinct = len(np.unique(image.reshape(-1, 3), axis=0)) if position_weight == 0 else len(features)
    k = min(k, distinct)  # never more clusters than distinct points
    km = MiniBatchKMeans(n_clusters=k, batch_size=batch_size, n_init=n_init, random_state=seed)
    labels = km.fit_predict(features)
    return relabel_sequential(labels.reshape(image.shape[:2]))


def kmeans_xy(image: np.ndarray, *, position_weight: float = 1.0, **params: Any) -> np.ndarray:
    """k-means on color + position: :func:`kmeans` with a spatial term on by default."""
    return kmeans(image, position_weight=position_weight, **params)


def meanshift(
    image: np.ndarray,
    *,
    bandwidth: float | None = None,
    quantile: float = 0.06,
    color_space: str = "lab",
    position_weight: float = 0.5,
    max_samples: int = 4000,
    min_bin_freq: int = 3,
    seed: int = 0,
) -> np.ndarray:
    """Mean-shift modes of color + position features, found on a subsample, assigned to all pixels."""
    from sklearn.cluster import estimate_bandwidth

    from structseg.classic.meanshift import mean_shift_modes, nearest_mode

    features = pixel_features(image, color_space=color_space, position_weight=position_weight)
    stride = max(1, int(np.ceil(len(features) / max_samples)))
    sample = features[::stride]
    if bandwidth is None:
        bandwidth = float(estimate_bandwidth(sample, quantile=quantile, n_samples=min(len(sample), 1000),
                                             random_state=seed))
    if bandwidth <= 0:  # a flat image: every feature equal
        return np.zeros(image.shape[:2], dtype=np.int64)
    modes = mean_shift_modes(sample, bandwidth, min_bin_freq=min_bin_freq)
    return relabel_sequential(nearest_mode(features, modes).reshape(image.shape[:2]))


def ncut(
    image: np.ndarray,
    *,
    n_segments: int = 200,
    compactness: float = 10.0,
    sigma: float = 30.0,
    thresh: float = 0.001,
    num_cuts: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """Normalized cuts on the region adjacency graph of SLIC superpixels."""
    from skimage import graph
    from skimage.segmentation import slic

    superpixels = slic(image, n_segments=n_segments, compactness=compactness, start_label=0)
    if superpixels.max() == 0:
        return np.zeros(image.shape[:2], dtype=np.int64)
    rag = graph.rag_mean_color(image, superpixels, mode="similarity", sigma=sigma)
    labels = graph.cut_normalized(superpixels, rag, thresh=thresh, num_cuts=num_cuts, rng=seed)
    return relabel_sequential(labels)


METHODS: dict[str, SegmentFn] = {
    "kmeans": kmeans,
    "kmeans_xy": kmeans_xy,
    "meanshift": meanshift,
    "ncut": ncut,
}


def list_methods() -> list[str]:
    """Names accepted by :func:`segment`."""
    return list(METHODS)


def method_params(method: str) -> dict[str, Any]:
    """Keyword parameters of ``method`` with their defaults."""
    fn = _method(method)
    params = {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    if fn is kmeans_xy:
        params = {**method_params("kmeans"), **params}
    return params


def _method(method: str) -> SegmentFn:
    try:
        return METHODS[method]
    except KeyError:
        raise ConfigError(f"unknown classic method {method!r}; choose from {', '.join(METHODS)}") from None


def segment(image: np.ndarray, method: str = "kmeans", **params: Any) -> np.ndarray:
    """Segment map ``int64 (H, W)`` with ids ``0..n-1`` of a ``uint8 (H, W, 3)`` image.

    Runs single-threaded: one image is too little work for OpenMP, whose threads only
    wait on each other (k-means ran 10x slower with 2 threads on a shared 2-core machine).
    """
    from threadpoolctl import threadpool_limits

    fn = _method(method)
    unknown = sorted(set(params) - set(method_params(method)))
    if unknown:
        raise ConfigError(
            f"method {method!r} has no parameter(s) {', '.join(unknown)}; it takes {', '.join(method_params(method))}"
        )
    image = _check_image(image)
    with threadpool_limits(limits=1):
        return fn(image, **params)
