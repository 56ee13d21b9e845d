"""Each file layout reads back exactly what the tiny writers in conftest.py stored."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from structseg.data import build_dataset, list_layouts
from structseg.errors import DataError


def assert_reads_back(ds, items, *, exact_images: bool = True) -> None:
    assert len(ds) == len(items)
    for i, item in enumerate(items):
        image, mask = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, *item.mask.shape)
        assert mask.dtype == torch.int64
        np.testing.assert_array_equal(mask.numpy(), item.mask)
        np.testing.assert_array_equal(ds.load_mask(i).numpy(), item.mask)
        got = image.permute(1, 2, 0).numpy().astype(int)
        if exact_images:
            np.testing.assert_array_equal(got, item.image)
        else:  # JPEG: close on average
            assert np.abs(got - item.image).mean() < 8
        assert item.image_path.name in ds.describe(i) and item.mask_path.name in ds.describe(i)


def test_list_layouts() -> None:
    assert set(list_layouts()) == {"voc", "camvid", "cityscapes", "folder", "synthetic"}


def test_voc_reads_palette_indices(make_tiny_dataset) -> None:
    data = make_tiny_dataset("voc", splits=("train", "val", "trainval"))
    for split in ("train", "val", "trainval"):
        ds = build_dataset("voc", data.root, split)
        assert_reads_back(ds, data.items[split], exact_images=False)
    classes = ds.classes
    assert classes.num_classes == 21 and classes.names[1] == "aeroplane" and classes.names[20] == "tvmonitor"
    assert classes.palette[1] == (128, 0, 0) and classes.palette[15] == (192, 128, 128)
    assert classes.ignore_index == 255 and classes.ignore_color == (224, 224, 192)


def test_voc_found_inside_vocdevkit(make_tiny_dataset, tmp_path) -> None:
    data = make_tiny_dataset("voc")
    outer = tmp_path / "outer"
    shutil.copytree(data.root, outer / "VOCdevkit" / "VOC2012")
    assert len(build_dataset("voc", outer, "val")) == len(data.items["val"])


def test_voc_trainaug(make_tiny_dataset) -> None:
    data = make_tiny_dataset("voc", aug=True, splits=("train",))
    ds = build_dataset("voc", data.root, "train", aug=True)
    assert_reads_back(ds, data.items["train"], exact_images=False)
    custom = data.root / "my_list.txt"
    custom.write_text(f"/JPEGImages/{data.items['train'][1].name}.jpg "
                      f"/SegmentationClassAug/{data.items['train'][1].name}.png\n")
    one = build_dataset("voc", data.root, "train", aug=True, aug_list=custom)
    assert len(one) == 1
    np.testing.assert_array_equal(one[0][1].numpy(), data.items["train"][1].mask)


def test_camvid_foreign_prefix_and_void(make_tiny_dataset) -> None:
    data = make_tiny_dataset("camvid", splits=("train", "val", "test"))
    assert "/SegNet/CamVid/" in (data.root / "train.txt").read_text()
    for split in ("train", "val", "test"):
        assert_reads_back(build_dataset("camvid", data.root, split), data.items[split])
    ds = build_dataset("camvid", data.root, "train")
    assert ds.classes.names == ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol",
                                "fence", "car", "pedestrian", "bicyclist")
    assert (ds[0][1] == 255).any()  # void (11) became ignore


def test_camvid_pairs_by_name_without_list(make_tiny_dataset) -> None:
    data = make_tiny_dataset("camvid")
    (data.root / "val.txt").unlink()
    assert_reads_back(build_dataset("camvid", data.root, "val"), data.items["val"])
    shutil.rmtree(data.root / "val")
    with pytest.raises(DataError, match="val.txt"):
        build_dataset("camvid", data.root, "val")


def test_cityscapes_label_ids_to_train_ids(make_tiny_dataset) -> None:
    data = make_tiny_dataset("cityscapes")
    ds = build_dataset("cityscapes", data.root, "train")
    assert_reads_back(ds, data.items["train"])
    assert ds.classes.num_classes == 19 and ds.classes.names[0] == "road" and ds.classes.names[18] == "bicycle"
    masks = torch.cat([ds[i][1].ravel() for i in range(len(ds))])
    assert set(masks.unique().tolist()) <= set(range(19)) | {255}


def test_folder_index_masks(make_tiny_dataset) -> None:
    data = make_tiny_dataset("folder")
    ds = build_dataset("folder", data.root, "val")
    assert_reads_back(ds, data.items["val"])
    assert ds.classes.names == ("c0", "c1", "c2", "c3")


def test_folder_without_palette_uses_num_classes(make_tiny_dataset) -> None:
    data = make_tiny_dataset("folder")
    (data.root / "classes.yaml").unlink()
    ds = build_dataset("folder", data.root, "train", num_classes=4)
    assert_reads_back(ds, data.items["train"])
    assert ds.classes.num_classes == 4
    with pytest.raises(DataError, match="num_classes"):
        build_dataset("folder", data.root, "train")


def test_folder_color_masks_through_palette(make_tiny_dataset) -> None:
    data = make_tiny_dataset("folder", color_masks=True)
    ds = build_dataset("folder", data.root, "train")
    assert_reads_back(ds, data.items["train"])
    assert ds.classes.palette[1] == (200, 30, 30)

    json_palette = data.root / "palette.json"
    json_palette.write_text('{"classes": [{"name": "a", "color": [0, 0, 0]}, {"name": "b", "color": [200, 30, 30]},'
                            ' {"name": "c", "color": [30, 200, 30]}, {"name": "d", "color": [30, 30, 200]}],'
                            ' "ignore_color": [255, 255, 255]}')
    ds = build_dataset("folder", data.root, "train", palette_file=json_palette)
    assert ds.classes.names == ("a", "b", "c", "d")
    assert_reads_back(ds, data.items["train"])


def test_transform_is_applied(make_tiny_dataset) -> None:
    data = make_tiny_dataset("camvid")
    calls = []

    def transform(image, mask):
        calls.append(image.shape)
        return image.float() / 255, mask + 0

    ds = build_dataset("camvid", data.root, "train", transform=transform)
    image, mask = ds[0]
    assert image.dtype == torch.float32 and calls == [torch.Size([3, 24, 32])]
    np.testing.assert_array_equal(mask.numpy(), data.items["train"][0].mask)
