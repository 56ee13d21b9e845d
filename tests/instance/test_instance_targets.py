"""Instance targets from id/class maps, the VOC reader, data-set adapters and collation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import masks_to_boxes

from structseg.data.base import ClassInfo
from structseg.errors import DataError
from structseg.instance.datasets import LoadedInstances, MapInstances, VOCInstances, collate_detection
from structseg.instance.targets import mask_boxes, targets_from_maps


def test_mask_boxes_match_torchvision_plus_one() -> None:
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((6, 13, 17)) < 0.05)
    masks[0] = False
    masks[0, 4, 9] = True  # a single pixel: box of width and height 1
    keep = masks.flatten(1).any(1)
    expected = masks_to_boxes(masks[keep]) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(mask_boxes(masks.to(torch.uint8))[keep], expected)
    torch.testing.assert_close(mask_boxes(masks[:1].to(torch.uint8)), torch.tensor([[9.0, 4.0, 10.0, 5.0]]))


def voc_maps() -> tuple[np.ndarray, np.ndarray]:
    """Two objects on a 20x24 canvas with VOC's 255 rings around them."""
    objects = np.zeros((20, 24), dtype=np.uint8)
    classes = np.zeros((20, 24), dtype=np.uint8)
    objects[1:9, 1:11] = 255
    objects[2:8, 2:10] = 1  # person: rows 2-7, cols 2-9
    classes[1:9, 1:11] = 255
    classes[2:8, 2:10] = 15
    objects[11:19, 13:23] = 255
    objects[12:18, 14:22] = 2  # car: rows 12-17, cols 14-21
    classes[11:19, 13:23] = 255
    classes[12:18, 14:22] = 7
    return objects, classes


def expected_masks() -> torch.Tensor:
    masks = torch.zeros((2, 20, 24), dtype=torch.uint8)
    masks[0, 2:8, 2:10] = 1
    masks[1, 12:18, 14:22] = 1
    return masks


def test_targets_from_voc_maps() -> None:
    objects, classes = voc_maps()
    target = targets_from_maps(objects, classes, ignore_index=255, background=(0,))
    assert target["labels"].tolist() == [16, 8]  # class c -> label c + 1
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 2.0, 10.0, 8.0], [14.0, 12.0, 22.0, 18.0]]))
    torch.testing.assert_close(target["masks"], expected_masks())
    # the 255 border is part of no mask
    assert not target["masks"].bool().any(0)[torch.from_numpy(objects == 255)].any()


def test_instance_class_is_majority_and_background_is_dropped() -> None:
    inst = np.zeros((6, 6), dtype=np.int64)
    cls = np.zeros((6, 6), dtype=np.int64)
    inst[0:3, 0:3] = 1
    cls[0:3, 0:3] = 2
    cls[0, 0] = 1  # a minority vote
    inst[4:6, 4:6] = 2  # class 0 = background: dropped
    target = targets_from_maps(inst, cls, background=(0,))
    assert target["labels"].tolist() == [3]
    explicit = targets_from_maps(inst, instance_classes={1: 4, 2: 5}, background=())
    assert explicit["labels"].tolist() == [5, 6]


def test_no_instance_gives_empty_target() -> None:
    target = targets_from_maps(np.zeros((5, 7), int), np.zeros((5, 7), int))
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 5, 7) and target["labels"].numel() == 0


def write_voc(root: Path) -> None:
    objects, classes = voc_maps()
    palette = [v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)]
    for folder in ("JPEGImages", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(np.full((20, 24, 3), 128, dtype=np.uint8)).save(root / "JPEGImages" / "2007_000001.jpg")
    for folder, array in (("SegmentationObject", objects), ("SegmentationClass", classes)):
        png = Image.fromarray(array, mode="P")
        png.putpalette(palette)
        png.save(root / folder / "2007_000001.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000001\n")


def test_voc_instances_read_palette_pngs(tmp_path: Path) -> None:
    write_voc(tmp_path / "VOCdevkit" / "VOC2012")
    ds = VOCInstances(tmp_path, "train")
    assert len(ds) == 1 and ds.category_names[15] == "person"
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 20, 24) and 0.45 < float(image.mean()) < 0.56
    assert target["labels"].tolist() == [16, 8] and int(target["image_id"]) == 0
    torch.testing.assert_close(target["masks"], expected_masks())
    with pytest.raises(DataError, match="val list not found"):
        VOCInstances(tmp_path, "val")


def test_hflip_moves_boxes_with_masks() -> None:
    objects, classes = voc_maps()
    ds = MapInstances([np.zeros((3, 20, 24), np.uint8)], [objects], [classes],
                      ClassInfo(tuple(f"c{i}" for i in range(21)), tuple((i, i, i) for i in range(21))),
                      background=(0,), hflip=1.0)
    _, target = ds[0]
    torch.testing.assert_close(target["masks"], expected_masks().flip(-1))
    torch.testing.assert_close(target["boxes"], mask_boxes(target["masks"]))


class FakeInstanceSource:
    """The synthetic data set's interface: load(i) and load_instances(i) with 1-based instance ids."""

    classes = ClassInfo(("background", "disc", "square"), ((0, 0, 0), (255, 0, 0), (0, 255, 0)))

    def __len__(self) -> int:
        return 1

    def describe(self, index: int) -> str:
        return f"fake {index}"

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.zeros((8, 8), dtype=torch.int64)
        mask[0:4, 0:4], mask[4:8, 4:8] = 1, 2
        return torch.zeros((3, 8, 8), dtype=torch.uint8), mask

    def load_instances(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        inst = torch.zeros((8, 8), dtype=torch.int64)
        inst[0:4, 0:4], inst[4:8, 4:8] = 1, 2
        return inst, torch.tensor([1, 2])


def test_loaded_instances_use_per_instance_classes() -> None:
    ds = LoadedInstances(FakeInstanceSource())
    images, targets = collate_detection([ds[0], ds[0]])
    assert len(images) == 2 and images[0].shape == (3, 8, 8)
    assert targets[0]["labels"].tolist() == [2, 3]
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[0.0, 0.0, 4.0, 4.0], [4.0, 4.0, 8.0, 8.0]]))


def test_synthetic_instances_agree_with_its_masks() -> None:
    pytest.importorskip("structseg.data.synthetic")
    from structseg.instance.datasets import build_instance_dataset

    ds = build_instance_dataset("synthetic", split="val", size=48, length=2)
    semantic = ds.dataset
    for i in range(2):
        _, target = ds[i]
        mask = semantic.load(i)[1]
        assert target["masks"].shape[0] >= 1
        for m, label in zip(target["masks"].bool(), target["labels"]):
            assert (mask[m] == label - 1).all()  # every instance pixel carries the instance's class
        union = target["masks"].bool().any(0)
        assert torch.equal(union, mask > 0)
