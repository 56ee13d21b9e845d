"""The procedural data set: deterministic, disjoint splits, every class, instances consistent with masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from structseg.data import build_dataset
from structseg.data.synthetic import GROUND_STAR, SKY_STAR, SyntheticShapes


@pytest.fixture(scope="module")
def scenes() -> list:
    ds = SyntheticShapes("train", size=(64, 80), length=40)
    return [ds.render(i) for i in range(len(ds))]


def test_shapes_and_types() -> None:
    ds = build_dataset("synthetic", split="val", size=[48, 64], length=5)
    assert len(ds) == 5 and ds.classes.num_classes == 8
    image, mask = ds[4]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 64)
    assert mask.dtype == torch.int64 and mask.shape == (48, 64)
    assert int(mask.min()) >= 0 and int(mask.max()) < 8
    assert torch.equal(ds.load_mask(4), mask)
    with pytest.raises(IndexError):
        ds.load(5)
    assert len(build_dataset("synthetic", split="train")) == 400 and len(build_dataset("synthetic", split="val")) == 100


def test_deterministic_and_seeded() -> None:
    a, b = SyntheticShapes("train", size=32), SyntheticShapes("train", size=32)
    for i in (0, 7):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    first = a[3][0]
    a[5]
    assert torch.equal(a[3][0], first) and torch.equal(b[3][0], first)  # no state carried between items
    other = SyntheticShapes("train", size=32, seed=1)
    assert not torch.equal(a[0][0], other[0][0])


def test_splits_are_disjoint() -> None:
    size = (32, 32)
    hashes = {
        split: {SyntheticShapes(split, size=size).load(i)[0].numpy().tobytes() for i in range(30)}
        for split in ("train", "val", "test")
    }
    assert all(len(h) == 30 for h in hashes.values())
    assert not (hashes["train"] & hashes["val"]) and not (hashes["train"] & hashes["test"])
    assert not (hashes["val"] & hashes["test"])


def test_every_class_appears_and_objects_are_visible(scenes) -> None:
    present = np.zeros(8, dtype=int)
    for scene in scenes:
        present += np.bincount(scene.mask.ravel(), minlength=8) > 0
    assert (present >= 3).all(), present
    background = sum(int((s.mask == 0).sum()) for s in scenes) / sum(s.mask.size for s in scenes)
    assert 0.5 < background < 0.95


def test_instances_agree_with_mask(scenes) -> None:
    for scene in scenes:
        assert ((scene.instances == 0) == (scene.mask == 0)).all()
        for k, cls in enumerate(scene.instance_classes, start=1):
            pixels = scene.mask[scene.instances == k]
            assert pixels.size > 0 and (pixels == cls).all()  # occluded but never wholly hidden
    ds = SyntheticShapes("train", size=(64, 80), length=40)
    instances, classes = ds.load_instances(0)
    assert instances.dtype == torch.int64 and classes.tolist() == scenes[0].instance_classes


def test_color_does_not_give_the_class_away(scenes) -> None:
    """Each object class shows up in many different mean colors (no class has 'its' color)."""
    colors: dict[int, list[np.ndarray]] = {}
    for scene in scenes:
        for k, cls in enumerate(scene.instance_classes, start=1):
            colors.setdefault(cls, []).append(scene.image[scene.instances == k].mean(0))
    for cls, values in colors.items():
        if len(values) >= 5:
            assert np.std(np.array(values), axis=0).mean() > 30, cls


def test_stars_take_the_class_of_their_region(scenes) -> None:
    """Same shape, two classes: every sky_star pixel is above the horizon, every ground_star pixel below."""
    seen = set()
    for scene in scenes:
        for k, cls in enumerate(scene.instance_classes, start=1):
            if cls in (SKY_STAR, GROUND_STAR):
                on_ground = scene.ground[scene.instances == k]
                assert on_ground.all() if cls == GROUND_STAR else not on_ground.any()
                seen.add(cls)
    assert seen == {SKY_STAR, GROUND_STAR}
