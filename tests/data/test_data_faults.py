"""Files a user feeds in that used to surprise: list files with a byte-order mark, foreign bytes or a symlink
loop; 16-bit grey images; two images with one name; an empty split."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from structseg.cli import main
from structseg.data import build_dataset
from structseg.data.io import read_image, read_text_file
from structseg.errors import DataError


def test_a_list_file_with_a_byte_order_mark_reads_as_without(make_tiny_dataset) -> None:
    data = make_tiny_dataset("camvid")
    lst = data.root / "train.txt"
    plain = build_dataset("camvid", data.root, "train").describe(0)
    lst.write_bytes(b"\xef\xbb\xbf" + lst.read_bytes())
    ds = build_dataset("camvid", data.root, "train")
    assert ds.describe(0) == plain and len(ds) == len(data.items["train"])
    ds.load(0)


def test_a_list_file_with_foreign_bytes_names_file_line_and_byte(make_tiny_dataset) -> None:
    data = make_tiny_dataset("voc")
    lst = data.root / "ImageSets" / "Segmentation" / "val.txt"
    lst.write_bytes(lst.read_bytes() + b"caf\xe9\n")
    lines = lst.read_bytes().count(b"\n")
    with pytest.raises(DataError, match=rf"{lst}:{lines}: VOC val list is not UTF-8 text \(byte 0xe9"):
        build_dataset("voc", data.root, "val")


def test_a_symlink_loop_is_named_not_a_traceback(tmp_path) -> None:
    loop = tmp_path / "train.txt"
    os.symlink(loop, loop)
    with pytest.raises(DataError, match=rf"{loop}: list file cannot be read \(.*"):
        read_text_file(loop)
    with pytest.raises(DataError, match=rf"{tmp_path / 'none.txt'}: palette file not found"):
        read_text_file(tmp_path / "none.txt", "palette file")


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_grey_images_keep_their_range(tmp_path, mode: str) -> None:
    values = np.array([[0, 1000, 32768], [50000, 65000, 65535]], dtype=np.int32)
    path = tmp_path / ("grey16.png" if mode == "I;16" else "grey32.tif")  # Pillow writes mode I as TIFF, not PNG
    Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.int32)).save(path)
    image = read_image(path)
    expected = torch.from_numpy(np.round(values.astype(np.float64) * (255.0 / 65535)).astype(np.uint8))
    assert image.dtype == torch.uint8 and image.shape == (3, 2, 3)
    assert torch.equal(image[0], expected) and torch.equal(image[1], image[2])
    assert int(image.max()) == 255 and 0 < int(image[0, 0, 1]) < 10  # not saturated: 1000 / 65535 of the range


def test_two_images_with_one_name_are_an_error(make_tiny_dataset) -> None:
    data = make_tiny_dataset("folder")
    first = data.items["train"][0].image_path
    twin = first.with_suffix(".png" if first.suffix != ".png" else ".bmp")
    Image.open(first).save(twin)
    with pytest.raises(DataError, match=rf"share a name .*{first.name}.*{twin.name}|{twin.name}.*{first.name}"):
        build_dataset("folder", data.root, "train")


def test_data_check_on_an_empty_split_exits_1(make_tiny_dataset, capsys) -> None:
    data = make_tiny_dataset("camvid")
    (data.root / "val.txt").write_text("")
    code = main(["data", "check", "--layout", "camvid", "--root", str(data.root), "--split", "val"])
    assert code == 1 and "has no items" in capsys.readouterr().err
    assert main(["data", "check", "--layout", "camvid", "--root", str(data.root), "--split", "train"]) == 0
