"""``structseg compare --sam``: a SAM column from a tiny random SAM on a toy run, and its early errors."""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _sam_helpers import LOOSE, brute_majority, tiny_sam
from structseg import sam as sam_module
from structseg.cli import main

SMALL = ["train.iterations=2", "train.eval_every=2", "train.checkpoint_every=2", "train.log_every=1",
         "data.options.length=4", "data.options.size=32", "data.crop_size=32", "data.batch_size=2",
         "data.eval_batch_size=4", "model.options.base_channels=4", "train.progress=false",
         "train.num_threads=1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """The embedded default config trained for 2 iterations on 32x32 synthetic images."""
    run = tmp_path_factory.mktemp("sam_compare") / "toy"
    assert main(["train", "--run-dir", str(run), "--set", *SMALL]) == 0
    return run


@pytest.fixture
def tiny_sam_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A random tiny SAM saved as a checkpoint of the registered type ``tiny``; the mask generator keeps every mask."""
    from segment_anything import SamAutomaticMaskGenerator

    monkeypatch.setitem(sam_module.EXTRA_SAM_TYPES, "tiny", tiny_sam)
    monkeypatch.setattr("segment_anything.SamAutomaticMaskGenerator", partial(SamAutomaticMaskGenerator, **LOOSE))
    torch.manual_seed(0)
    path = tmp_path / "tiny_sam.pth"
    torch.save(tiny_sam().state_dict(), path)
    return path


@pytest.fixture
def grids(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list, list[str]]]:
    """Records the rows and column titles ``compare`` hands to ``comparison_grid`` (which still draws)."""
    from structseg.viz import grid

    calls: list[tuple[list, list[str]]] = []
    real = grid.comparison_grid

    def spy(rows, names, *args, **kwargs):
        calls.append((list(rows), list(names)))
        return real(rows, names, *args, **kwargs)

    monkeypatch.setattr(grid, "comparison_grid", spy)
    return calls


def sam_segments_of(images: list, checkpoint: Path) -> list[np.ndarray]:
    from structseg.sam import load_sam, sam_segments

    return sam_segments(images, load_sam(checkpoint, "tiny"), points_per_side=4, progress=False)


def test_sam_column_named_by_truth(toy_run: Path, tiny_sam_file: Path, grids, tmp_path: Path) -> None:
    fig = tmp_path / "compare.png"
    assert main(["compare", "--runs", str(toy_run), "--split", "val", "--count", "2", "-o", str(fig), "--device", "cpu",
                 "--sam", "--sam-checkpoint", str(tiny_sam_file), "--sam-type", "tiny", "--sam-points", "4"]) == 0
    (rows, names), = grids
    assert names == ["toy", "SAM (truth labels)"]
    segments = sam_segments_of([row.image for row in rows], tiny_sam_file)
    assert max(int(s.max()) for s in segments) >= 1  # loose thresholds: SAM proposes several masks
    for row, seg in zip(rows, segments):
        assert len(row.predictions) == 2
        np.testing.assert_array_equal(np.asarray(row.predictions[1]), brute_majority(seg, np.asarray(row.truth)))
    assert Image.open(fig).size[0] == round(2.6 * 4 * 100)  # image | truth | model | SAM


def test_sam_column_named_by_the_model_on_plain_images(toy_run: Path, tiny_sam_file: Path, grids,
                                                       tmp_path: Path) -> None:
    from structseg.engine.predict import Predictor

    rng = np.random.default_rng(0)
    image_path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image_path)
    assert main(["compare", "--runs", str(toy_run), "--names", "unet", "--images", str(image_path),
                 "-o", str(tmp_path / "c.png"), "--device", "cpu", "--sam", "--sam-checkpoint", str(tiny_sam_file),
                 "--sam-type", "tiny", "--sam-points", "4"]) == 0
    (rows, names), = grids
    assert names == ["unet", "SAM + unet"]
    prediction = Predictor.from_run(toy_run, device="cpu").predict(image_path).numpy()
    (segments,) = sam_segments_of([rows[0].image], tiny_sam_file)
    np.testing.assert_array_equal(np.asarray(rows[0].predictions[1]), brute_majority(segments, prediction))


def test_sam_errors_come_before_any_model_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The run directory does not exist: each error below must be the SAM one, raised first."""
    base = ["compare", "--runs", str(tmp_path / "no_run"), "--split", "val", "-o", str(tmp_path / "c.png")]
    missing = tmp_path / "sam_vit_b.pth"
    assert main([*base, "--sam", "--sam-checkpoint", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "sam_vit_b_01ec64.pth" in err and "no_run" not in err

    monkeypatch.setenv("STRUCTSEG_SAM_DIR", str(tmp_path / "cache"))
    assert main([*base, "--sam", "--sam-type", "vit_l"]) == 2
    assert str(tmp_path / "cache" / "sam_vit_l_0b3195.pth") in capsys.readouterr().err

    assert main([*base, "--sam", "--sam-type", "vit_q", "--sam-checkpoint", str(missing)]) == 2
    assert "unknown SAM model type 'vit_q'" in capsys.readouterr().err

    assert main([*base, "--sam-checkpoint", str(missing)]) == 2
    assert "without --sam" in capsys.readouterr().err

    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    assert main(["compare", "--runs", str(tmp_path / "no_run"), "--images", str(image), "-o", str(tmp_path / "c.png"),
                 "--sam", "--sam-labels", "truth"]) == 2
    assert "--sam-labels truth needs ground truth" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "segment_anything", None)  # as if not installed
    assert main([*base, "--sam", "--sam-checkpoint", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "'segment_anything'" in err and "pip install" in err and "no_run" not in err
