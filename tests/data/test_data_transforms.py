"""Joint augmentation: image and mask move together; padding and rotation fill with ignore."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from structseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transforms, train_transforms

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def coordinate_pair(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image whose red channel is the column and green the row; mask holds the column too."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = torch.stack([xs, ys, torch.full_like(xs, 7)]).to(torch.uint8)
    return image, xs.clone()


def block_pair(h: int, w: int, k: int = 5, block: int = 8,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask of random class blocks and the image painting each class in its own color."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, k, (h // block, w // block), generator=g)
    mask = coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)
    colors = torch.tensor([[250, 10, 10], [10, 250, 10], [10, 10, 250], [250, 250, 10], [10, 250, 250]])
    return colors[mask].permute(2, 0, 1).to(torch.uint8), mask, colors


def interior(mask: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Pixels whose (2r+1)^2 neighbourhood holds one label: away from block borders, where resampling blurs."""
    padded = torch.nn.functional.pad(mask[None, None].float(), (radius,) * 4, mode="replicate")[0, 0]
    same = torch.ones_like(mask, dtype=torch.bool)
    h, w = mask.shape
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= padded[dy:dy + h, dx:dx + w] == mask
    return same


def test_crop_and_flip_move_image_and_mask_together() -> None:
    image, mask = coordinate_pair(40, 60)
    t = train_transforms(crop_size=(24, 32), scale_range=(1.0, 1.0), hflip=0.5, **IDENTITY)
    torch.manual_seed(0)
    flips = 0
    for _ in range(12):
        out_image, out_mask = t(image, mask)
        assert out_image.shape == (3, 24, 32) and out_mask.shape == (24, 32)
        assert out_image.dtype == torch.float32 and out_mask.dtype == torch.int64
        column = torch.round(out_image[0] * 255).long()
        assert torch.equal(column, out_mask)
        flips += int(out_mask[0, 0] > out_mask[0, -1])
    assert 0 < flips < 12  # both flipped and unflipped crops occurred


@pytest.mark.parametrize("rotation", [0.0, 15.0])
def test_scale_and_rotation_keep_image_and_mask_aligned(rotation: float) -> None:
    image, mask, colors = block_pair(64, 96)
    t = train_transforms(crop_size=(48, 48), scale_range=(0.6, 1.8), rotation=rotation, **IDENTITY)
    torch.manual_seed(1)
    for _ in range(8):
        out_image, out_mask = t(image, mask)
        valid = interior(out_mask) & (out_mask != 255)
        assert valid.sum() > 100
        expected = colors[out_mask[valid]].float() / 255
        agree = ((out_image.permute(1, 2, 0)[valid] - expected).abs().max(dim=1).values < 0.2).float().mean()
        assert agree > 0.97  # a misaligned mask would agree about 1/5 of the time


def test_padding_uses_ignore_index_and_mean_color() -> None:
    image, mask = coordinate_pair(10, 12)
    t = train_transforms(crop_size=(20, 30), scale_range=(1.0, 1.0), hflip=0.0, ignore_index=99)
    out_image, out_mask = t(image, mask)
    padded = out_mask == 99
    assert padded.sum() == 20 * 30 - 10 * 12
    assert out_image[:, padded].abs().max() < 0.03  # mean color normalizes to ~0
    assert torch.equal(torch.sort(out_mask[~padded]).values, torch.sort(mask.ravel()).values)


def test_rotation_fills_mask_with_ignore() -> None:
    image, mask = coordinate_pair(40, 40)
    t = train_transforms(crop_size=40, scale_range=(1.0, 1.0), hflip=0.0, rotation=30.0, **IDENTITY)
    torch.manual_seed(3)
    out_masks = [t(image, mask)[1] for _ in range(6)]
    assert any((m == 255).sum() > 20 for m in out_masks)
    assert all(set(m.unique().tolist()) <= set(range(40)) | {255} for m in out_masks)  # nearest: no new values


def test_color_jitter_leaves_mask_alone() -> None:
    image, mask, _ = block_pair(32, 32)
    t = train_transforms(crop_size=32, scale_range=(1.0, 1.0), hflip=0.0, color_jitter=0.4, **IDENTITY)
    torch.manual_seed(0)
    out_image, out_mask = t(image, mask)
    assert torch.equal(out_mask, mask)
    assert not torch.allclose(out_image, image.float() / 255)


def test_eval_transform_keeps_size_and_normalizes() -> None:
    image, mask, _ = block_pair(24, 40)
    out_image, out_mask = eval_transforms(mean=IMAGENET_MEAN, std=IMAGENET_STD)(image, mask)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(out_image, (image.float() / 255 - mean) / std)
    assert torch.equal(out_mask, mask)

    out_image, out_mask = eval_transforms(mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=(12, 20))(image, mask)
    assert out_image.shape == (3, 12, 20) and out_mask.shape == (12, 20)
    np.testing.assert_array_equal(out_mask.numpy(), mask[::2, ::2].numpy())  # nearest of 8-pixel blocks


def test_large_label_values_survive() -> None:
    image, mask = coordinate_pair(8, 300)  # mask values up to 299 cannot travel as uint8
    out_image, out_mask = train_transforms(crop_size=(8, 300), scale_range=(1.0, 1.0), hflip=0.0, ignore_index=-1,
                                           **IDENTITY)(image, mask)
    assert torch.equal(out_mask, mask)
