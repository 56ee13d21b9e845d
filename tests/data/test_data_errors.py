"""Bad input raises DataError naming the file (or path, option, value) and the fault."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from structseg.data import build_dataset
from structseg.errors import DataError


def test_truncated_image(make_tiny_dataset) -> None:
    data = make_tiny_dataset("camvid")
    path = data.items["train"][1].image_path
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    ds = build_dataset("camvid", data.root, "train")
    ds[0]
    with pytest.raises(DataError, match=rf"{path}.*truncated"):
        ds[1]


def test_not_an_image(make_tiny_dataset) -> None:
    data = make_tiny_dataset("folder")
    path = data.items["train"][0].mask_path
    path.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=rf"{path}.*not a readable image"):
        build_dataset("folder", data.root, "train")[0]


def test_missing_file(make_tiny_dataset) -> None:
    data = make_tiny_dataset("voc")
    path = data.items["val"][2].mask_path
    path.unlink()
    with pytest.raises(DataError, match=rf"{path}: file not found"):
        build_dataset("voc", data.root, "val")[2]


def test_size_mismatch(make_tiny_dataset) -> None:
    data = make_tiny_dataset("cityscapes")
    item = data.items["val"][0]
    Image.fromarray(np.zeros((10, 12), np.uint8), "L").save(item.mask_path)
    with pytest.raises(DataError, match=rf"{item.mask_path}: mask size 12x10 .* differs from image {item.image_path}"):
        build_dataset("cityscapes", data.root, "val")[0]


@pytest.mark.parametrize(("layout", "bad"), [("camvid", 12), ("folder", 7), ("voc", 21), ("cityscapes", 40)])
def test_label_out_of_range(make_tiny_dataset, layout: str, bad: int) -> None:
    data = make_tiny_dataset(layout)
    item = data.items["train"][0]
    stored = np.array(Image.open(item.mask_path))
    stored[3, 5] = bad
    out = Image.fromarray(stored, "L")
    out.save(item.mask_path)
    ds = build_dataset(layout, data.root, "train")
    with pytest.raises(DataError,
                       match=rf"{item.mask_path}: label value\(s\) {bad} outside \[0, {ds.classes.num_classes}\)"):
        ds.load_mask(0)


def test_color_not_in_palette(make_tiny_dataset) -> None:
    data = make_tiny_dataset("folder", color_masks=True)
    item = data.items["val"][1]
    rgb = np.array(Image.open(item.mask_path))
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(item.mask_path)
    with pytest.raises(DataError, match=rf"{item.mask_path}: color\(s\) \(1, 2, 3\) not in the palette"):
        build_dataset("folder", data.root, "val")[1]


def test_missing_root_and_split(make_tiny_dataset, tmp_path) -> None:
    missing = tmp_path / "nowhere"
    for layout in ("voc", "camvid", "cityscapes", "folder"):
        with pytest.raises(DataError, match=str(missing)):
            build_dataset(layout, missing, "train")
    data = make_tiny_dataset("voc")
    with pytest.raises(DataError, match=r"ImageSets/Segmentation/test\.txt"):
        build_dataset("voc", data.root, "test")
    data = make_tiny_dataset("cityscapes")
    with pytest.raises(DataError, match=r"leftImg8bit/test"):
        build_dataset("cityscapes", data.root, "test")
    data = make_tiny_dataset("folder")
    with pytest.raises(DataError, match=r"images/test"):
        build_dataset("folder", data.root, "test")


def test_malformed_list_line(make_tiny_dataset) -> None:
    data = make_tiny_dataset("camvid")
    (data.root / "train.txt").write_text("only_one_field.png\n")
    with pytest.raises(DataError, match=r"train\.txt:1"):
        build_dataset("camvid", data.root, "train")


def test_bad_palette_file(make_tiny_dataset) -> None:
    data = make_tiny_dataset("folder", color_masks=True)
    palette = data.root / "classes.yaml"
    palette.write_text("classes:\n  - {name: a, color: [0, 0, 300]}\n")
    with pytest.raises(DataError, match=r"classes\.yaml: classes\[0\]\.color"):
        build_dataset("folder", data.root, "train")
    palette.write_text("classes:\n  - a\n  - b\n  - c\n  - d\n")  # names only: color masks cannot be read
    with pytest.raises(DataError, match="does not give every class a color"):
        build_dataset("folder", data.root, "train")[0]


def test_unknown_layout_option_and_root(monkeypatch) -> None:
    monkeypatch.delenv("STRUCTSEG_CITYSCAPES", raising=False)
    with pytest.raises(DataError, match="unknown data layout 'coco'"):
        build_dataset("coco", "/tmp")
    with pytest.raises(DataError, match="unknown option.*color.*accepted: seed"):
        build_dataset("synthetic", split="train", color="red")
    with pytest.raises(DataError, match="needs a root"):
        build_dataset("cityscapes", None, "train")
