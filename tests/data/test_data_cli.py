"""``structseg data stats | preview | check`` on tiny data sets."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from structseg.cli import main
from structseg.data.commands import pick_examples


def test_stats_prints_table_and_writes_png_and_json(make_tiny_dataset, tmp_path, capsys) -> None:
    data = make_tiny_dataset("folder", n=3)
    out = tmp_path / "out"
    assert main(["data", "stats", "--layout", "folder", "--root", str(data.root), "--split", "train",
                 "--out", str(out), "--weights", "median"]) == 0
    printed = capsys.readouterr().out
    assert "median w" in printed and "c3" in printed
    record = json.loads((out / "folder_train_stats.json").read_text())
    masks = [it.mask for it in data.items["train"]]
    for entry in record["classes"]:
        assert entry["pixels"] == sum(int((m == entry["id"]).sum()) for m in masks)
        assert set(entry["weights"]) == {"enet", "median", "inverse"}
    assert record["ignored_pixels"] == sum(int((m == 255).sum()) for m in masks)
    assert Image.open(out / "folder_train_stats.png").size[0] > 200


def test_preview_writes_figure_with_options(tmp_path, capsys) -> None:
    out = tmp_path / "preview"
    assert main(["data", "preview", "--layout", "synthetic", "--split", "val", "--out", str(out),
                 "--option", "size=[40,48]", "--option", "length=12"]) == 0
    image = Image.open(out / "synthetic_val_preview.png")
    assert image.size[0] > image.size[1] > 100


def test_pick_examples_prefers_distinct_items() -> None:
    counts = np.array([[5, 9, 0], [4, 0, 0], [0, 0, 0]])
    assert pick_examples(counts) == {0: 1, 1: 0}  # class 1 (rarer) takes item 0 first; class 2 is absent


def test_check_lists_every_bad_file(make_tiny_dataset, capsys) -> None:
    data = make_tiny_dataset("camvid", n=4)
    args = ["data", "check", "--layout", "camvid", "--root", str(data.root), "--split", "train"]
    assert main(args) == 0
    capsys.readouterr()

    broken = data.items["train"]
    broken[0].image_path.write_bytes(b"garbage")
    Image.fromarray(np.full((24, 32), 12, np.uint8), "L").save(broken[2].mask_path)
    Image.fromarray(np.zeros((5, 5), np.uint8), "L").save(broken[3].mask_path)
    assert main(args) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 3
    assert str(broken[0].image_path) in lines[0] and str(broken[2].mask_path) in lines[1]
    assert str(broken[3].mask_path) in lines[2] and "1 of 4 items ok, 3 bad" in captured.err


def test_missing_root_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["data", "check", "--layout", "camvid", "--root", str(tmp_path / "none"), "--split", "val"]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err
