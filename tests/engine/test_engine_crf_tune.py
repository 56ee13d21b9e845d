"""structseg crf tune: the dense CRF's parameters searched on training images, written into the run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _engine_helpers import CLI_TINY

from structseg.cli import main
from structseg.engine import crf_tune
from structseg.errors import DataError


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune") / "run"
    assert main(["train", "--run-dir", str(root), "--set", *CLI_TINY, "train.iterations=6"]) == 0
    return root


def test_coordinate_search_scores_training_images_and_writes_the_best(run: Path, capsys, monkeypatch) -> None:
    from structseg.engine import build

    seen = []
    real = build.build_eval_dataset
    monkeypatch.setattr(build, "build_eval_dataset", lambda cfg, split=None: seen.append(split) or real(cfg, split))
    before = yaml.safe_load((run / "config.yaml").read_text())["crf"]
    assert main(["crf", "tune", "--run-dir", str(run), "--images", "3", "--rounds", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert seen == ["train"]  # never the validation split
    record = json.loads((run / "crf_tune.json").read_text())
    trials = record["trials"]
    assert len(trials) == len({json.dumps(t["params"], sort_keys=True) for t in trials}) > 5
    best = max(trials, key=lambda t: t["miou"])
    assert record["best"] == best["params"] and "<- best" in out and "without CRF: mIoU" in out
    after = yaml.safe_load((run / "config.yaml").read_text())["crf"]
    assert after["mode"] == before["mode"] == "none"
    assert {k: after[k] for k in best["params"]} == pytest.approx(best["params"])
    assert main(["eval", "--run-dir", str(run), "--crf", "dense", "--no-progress"]) == 0
    assert json.loads((run / "eval_val_crf.json").read_text())["crf"]["srgb"] == pytest.approx(best["params"]["srgb"])


def test_random_search_and_dry_run_leave_the_config(run: Path, capsys) -> None:
    before = (run / "config.yaml").read_text()
    assert main(["crf", "tune", "--run-dir", str(run), "--images", "2", "--method", "random", "--trials", "3",
                 "--dry-run", "--no-progress"]) == 0
    assert (run / "config.yaml").read_text() == before
    assert len(capsys.readouterr().out.strip().splitlines()) == 2 + 4  # header lines + start + 3 draws


def test_without_training_images_the_error_names_the_split(run: Path, monkeypatch) -> None:
    from structseg.engine import build

    monkeypatch.setattr(build, "build_eval_dataset", lambda cfg, split=None: [])
    with pytest.raises(DataError, match="training split 'train' .* has no images"):
        crf_tune.tune_dense_crf(run, images=2, progress=False)
