"""Turning class-free segments into a class map: each segment takes its majority class.

With the ground truth as reference this is an oracle labeling, an upper bound of what
any per-segment classifier could reach with these segments; it rewards over-segmentation
(one segment per pixel scores 100%), so report the number of segments beside the score.
With a network's prediction as reference it snaps that prediction to the segments.
"""
from __future__ import annotations

import numpy as np

from structseg.errors import DataError


def majority_labels(
    segments: np.ndarray,
    reference: np.ndarray,
    num_classes: int,
    ignore_index: int = 255,
) -> np.ndarray:
    """Class map ``int64 (H, W)``: every pixel gets the most frequent reference class of its segment.

    Reference pixels equal to ``ignore_index`` do not vote; a segment with no voting
    pixel gets ``ignore_index``. Ties go to the smaller class id.
    """
    segments = np.asarray(segments)
    reference = np.asarray(reference)
    if segments.shape != reference.shape:
        raise DataError(f"segment map shape {segments.shape} does not match reference shape {reference.shape}")
    if segments.size and segments.min() < 0:
        raise DataError(f"segment ids must be >= 0, got {int(segments.min())}")
    seg = segments.reshape(-1).astype(np.int64)
    ref = reference.reshape(-1).astype(np.int64)
    valid = ref != ignore_index
    bad = valid & ((ref < 0) | (ref >= num_classes))
    if bad.any():
        raise DataError(
            f"reference labels {np.unique(ref[bad])[:5].tolist()} are outside [0, {num_classes}) "
            f"and are not the ignore index {ignore_index}"
        )
    n_segments = int(seg.max()) + 1 if seg.size else 0
    votes = np.bincount(seg[valid] * num_classes + ref[valid], minlength=n_segments * num_classes)
    votes = votes.reshape(n_segments, num_classes)
    winner = np.where(votes.sum(1) > 0, votes.argmax(1), ignore_index)
    return winner[seg].reshape(segments.shape)
