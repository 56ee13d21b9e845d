"""A tiny randomly initialised Segment Anything for tests (no official weights needed)."""
from __future__ import annotations

from functools import partial

import numpy as np
import torch

LOOSE = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}  # random weights: keep every mask


def tiny_sam(dim: int = 32, size: int = 64):
    """A SAM with a one-block 32-wide ViT on 64x64 inputs (4x4 tokens)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    return Sam(
        image_encoder=ImageEncoderViT(img_size=size, patch_size=16, embed_dim=dim, depth=1, num_heads=2, out_chans=dim,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), window_size=0),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // 16, size // 16),
                                     input_image_size=(size, size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=2,
                                 iou_head_hidden_dim=dim,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2)),
    ).eval()


def brute_majority(segments: np.ndarray, truth: np.ndarray, ignore: int = 255) -> np.ndarray:
    """Each segment takes its most frequent non-ignored label (lowest on ties); segments without votes get
    ``ignore``."""
    out = np.full(segments.shape, ignore, dtype=np.int64)
    for s in np.unique(segments):
        votes = truth[(segments == s) & (truth != ignore)]
        if votes.size:
            counts = np.bincount(votes)
            out[segments == s] = int(np.flatnonzero(counts == counts.max())[0])
    return out
