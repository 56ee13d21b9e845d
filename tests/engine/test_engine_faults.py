"""Faults a user meets in a run: refused resumes, non-finite weights, half-written checkpoints, bad files found
before training, file-system errors. Each case checks the message (it names the file or key), the exit status,
and that nothing in the run directory was lost."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from _engine_helpers import CLI_TINY, TinyNet, TinySegDataset, run_tiny

from structseg.cli import main, user_error
from structseg.engine.trainer import NonFiniteLossError, Trainer
from structseg.errors import DataError

TINY = CLI_TINY


def _digest(root: Path) -> dict[str, str]:
    """Every file of a run directory and a hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def trained(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--set", *TINY]) == 0
    return run


def test_a_refused_resume_leaves_the_run_directory_as_it_was(trained: Path, capsys) -> None:
    before = _digest(trained)
    capsys.readouterr()
    # another model width: the checkpoint does not fit, and config.yaml must not take the override
    code = main(["train", "--resume", str(trained), "--set", "model.options.base_channels=8", "train.iterations=6"])
    err = capsys.readouterr().err
    assert code == 2 and str(trained / "checkpoints" / "latest.pt") in err
    assert _digest(trained) == before
    assert main(["eval", "--run-dir", str(trained), "--no-progress", "-o", str(trained.parent / "e.json")]) == 0


def test_resume_says_which_overrides_the_checkpoint_overrules(trained: Path, capsys) -> None:
    stored_lr = yaml.safe_load((trained / "config.yaml").read_text())["optim"]["lr"]
    capsys.readouterr()
    assert main(["train", "--resume", str(trained), "--set", "train.iterations=6", "optim.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "optim.lr=0.5 is overruled" in out and f"optim.lr={stored_lr}" in out
    recorded = yaml.safe_load((trained / "config.yaml").read_text())
    assert recorded["optim"]["lr"] == stored_lr and recorded["train"]["iterations"] == 6


def test_weights_that_become_nan_are_never_checkpointed(tmp_path: Path) -> None:
    model = TinyNet()

    def poison(trainer: Trainer) -> None:
        if trainer.iteration == 4:
            with torch.no_grad():
                model.head[1].weight[0, 0] = float("nan")

    with pytest.raises(NonFiniteLossError, match=r"weights are not finite after iteration 4 .*head\.1\.weight") as info:
        run_tiny(tmp_path, "train.iterations=6", "train.checkpoint_every=2", "train.eval_every=2", model=model,
                 hooks={"step_end": [poison]})
    assert "latest.pt (iteration 2)" in str(info.value)
    latest = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    assert latest["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in latest["model"].values() if v.is_floating_point())


def test_a_non_finite_gradient_norm_stops_before_the_step(tmp_path: Path) -> None:
    model = TinyNet()
    model.backbone[0].weight.register_hook(lambda grad: grad * float("nan"))  # finite loss, NaN gradient
    before = model.backbone[0].weight.detach().clone()
    with pytest.raises(NonFiniteLossError, match="gradient norm is nan at iteration 1, before the optimizer step"):
        run_tiny(tmp_path, "optim.grad_clip=1.0", model=model)
    assert torch.equal(model.backbone[0].weight.detach(), before)  # the step was not taken


def test_eval_refuses_a_checkpoint_with_non_finite_weights(trained: Path, capsys) -> None:
    path = trained / "checkpoints" / "best.pt"
    ckpt = torch.load(path, weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.dim() == 4)
    ckpt["model"][name] = torch.full_like(ckpt["model"][name], float("inf"))
    torch.save(ckpt, path)
    capsys.readouterr()
    assert main(["eval", "--run-dir", str(trained), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not finite" in err and name in err


def test_a_half_written_checkpoint_is_removed_at_the_next_start(trained: Path) -> None:
    stale = trained / "checkpoints" / ".latest.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(trained), "--set", "train.iterations=6"]) == 0
    assert not stale.exists()
    assert (trained / "checkpoints" / "latest.pt").is_file()


def test_a_truncated_val_image_is_found_before_the_first_step(make_tiny_dataset, tmp_path: Path, capsys) -> None:
    data = make_tiny_dataset("camvid", n=3)
    bad = data.items["val"][2].image_path
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    run = tmp_path / "run"
    code = main(["train", "--run-dir", str(run), "--set", "data.layout=camvid", f"data.root={data.root}",
                 "model.name=unet", "model.options={base_channels: 4}", "data.crop_size=16", "data.batch_size=2",
                 "train.iterations=2", "train.progress=false", "train.num_threads=1", "model.fast_path=off"])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "before training" in err
    assert not (run / "checkpoints" / "latest.pt").exists() and not (run / "log.csv").exists()


class _Unreadable(TinySegDataset):
    """A stand-in whose item 3 cannot be read."""

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index == 3:
            raise DataError(f"{self.describe(index)}: unreadable or truncated image")
        return super().load(index)


def test_the_data_check_reads_every_split_and_can_be_turned_off(tmp_path: Path) -> None:
    steps: list[int] = []
    hooks = {"step_end": [lambda trainer: steps.append(trainer.iteration)]}
    with pytest.raises(DataError, match="(?s)before training.*val split: tiny item 3: unreadable"):
        run_tiny(tmp_path, val_set=_Unreadable(5, seed=1, flip=False), hooks=hooks)
    assert steps == []  # not one training step was taken
    with pytest.raises(DataError, match="^tiny item 3: unreadable"):  # off: found at the first evaluation
        run_tiny(tmp_path, "data.check=false", val_set=_Unreadable(5, seed=1, flip=False), hooks=hooks)
    assert steps == [1, 2, 3]


def test_file_system_errors_are_one_line_naming_the_path(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code = main(["train", "--run-dir", str(blocker / "run"), "--set", *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(blocker) in err
    assert "Not a directory" in err or "File exists" in err


def test_worker_errors_read_as_without_workers() -> None:
    wrapped = DataError("Caught DataError in DataLoader worker process 0.\n"
                        "Original Traceback (most recent call last):\n"
                        '  File "x.py", line 1, in load\nstructseg.errors.DataError: /data/a.png: not a readable image')
    assert user_error(wrapped) == "/data/a.png: not a readable image"
    assert user_error(OSError(28, "No space left on device", "/runs/x/latest.pt")) == (
        "/runs/x/latest.pt: No space left on device")
    assert user_error(ValueError("a bug")) is None


def test_switching_the_model_drops_the_old_models_options(tmp_path: Path) -> None:
    from structseg.engine.config import load_config

    cfg = load_config(None, ["model.name=deeplabv3plus", "model.backbone=resnet18"])  # default: unet base_channels
    assert cfg.model.options == {}
    kept = load_config(None, ["model.name=unet_resnet", "model.options.decoder_channels=[8, 8, 8, 8, 8]"])
    assert kept.model.options == {"decoder_channels": [8, 8, 8, 8, 8]}
    same = load_config(None, ["model.name=unet"])
    assert same.model.options == {"base_channels": 16}
    layout = load_config(None, ["data.layout=camvid", "data.root=/x"])
    assert layout.data.options == {}


def test_training_prints_where_and_how_it_computes(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--set", *TINY]) == 0
    out = capsys.readouterr().out
    assert "device cpu, threads 1, training fp32, contiguous, evaluation fp32, batch 2 = 1 process(es) x 2" in out
    import json

    env = json.loads((run / "metrics.json").read_text())["environment"]
    assert env["device"] == "cpu" and env["batch"].startswith("2 = 1")
    assert main(["report", "--run-dir", str(run), "--samples", "0"]) == 0
    assert "process(es) x 2" in (run / "report.html").read_text()


def _images(folder: Path, names: list[str]) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for name in names:
        path = folder / name
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_predict_skip_bad_writes_the_good_and_lists_the_bad(trained: Path, tmp_path: Path, capsys) -> None:
    good, bad = _images(tmp_path / "in", ["a.png", "b.png"])
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["predict", "--run-dir", str(trained), str(tmp_path / "in"), "-o", str(out)]) == 2
    assert str(bad) in capsys.readouterr().err  # without --skip-bad: stops at the bad file, named
    code = main(["predict", "--run-dir", str(trained), str(tmp_path / "in"), "-o", str(out), "--skip-bad"])
    captured = capsys.readouterr()
    assert code == 1 and "skipped 1 unreadable image" in captured.err and str(bad) in captured.err
    assert (out / "a_mask.png").is_file() and (out / "a_overlay.png").is_file()
    assert not (out / "b_mask.png").exists()


def test_predict_refuses_two_images_that_would_share_outputs(trained: Path, tmp_path: Path, capsys) -> None:
    paths = _images(tmp_path / "in", ["x.png", "x.bmp"])
    out = tmp_path / "out"
    assert main(["predict", "--run-dir", str(trained), *map(str, paths), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "x.png" in err and "x.bmp" in err and "share a name" in err
    assert not out.exists() or not any(out.iterdir())


def test_compare_picks_split_images_by_name_and_titles_rows_with_them(trained: Path, tmp_path: Path) -> None:
    from structseg.data import build_dataset

    val = build_dataset("synthetic", None, "val", length=4, size=32)
    wanted = [val.item_name(2), val.item_name(0)]
    out = tmp_path / "cmp.png"
    assert main(["compare", "--runs", str(trained), "--split", "val", "--images", *wanted, "-o", str(out)]) == 0
    assert out.is_file()
    from structseg.errors import ConfigError

    with pytest.raises(ConfigError, match="nope not in split 'val'"):
        from structseg.engine.commands import compare

        compare.run(_compare_args(trained, ["nope"], tmp_path))


def _compare_args(run: Path, images: list[str], tmp_path: Path):
    import argparse

    return argparse.Namespace(runs=[str(run)], images=images, split="val", count=4, names=None, which="best",
                              out=str(tmp_path / "c.png"), device="cpu", sam=False, sam_checkpoint=None,
                              sam_type="vit_b", sam_labels="auto", sam_points=32)


def test_each_eval_variant_keeps_its_own_file_and_the_report_shows_them_all(trained: Path, capsys) -> None:
    import json

    runs = [[], ["--flip"], ["--scales", "0.5", "1"], ["--which", "latest"], ["--flip", "--which", "latest"]]
    for extra in runs:
        assert main(["eval", "--run-dir", str(trained), "--no-progress", *extra]) == 0
    files = sorted(p.name for p in trained.glob("eval_*.json"))
    assert files == ["eval_val.json", "eval_val_flip.json", "eval_val_latest.json", "eval_val_latest_flip.json",
                     "eval_val_s0.5-1.json"]
    latest = json.loads((trained / "eval_val_latest.json").read_text())
    assert latest["checkpoint"]["which"] == "latest" and latest["checkpoint"]["iteration"] == 4
    assert json.loads((trained / "eval_val.json").read_text())["checkpoint"]["path"].endswith("best.pt")
    assert main(["report", "--run-dir", str(trained), "--samples", "0"]) == 0
    page = (trained / "report.html").read_text()
    assert all(name in page for name in files)
    assert "latest (iteration 4)" in page and "whole, scales [0.5, 1.0]" in page
    assert "the final evaluation during training" in page and "best.pt" in page
    for label in ("unet (head softmax)", "1 cross_entropy", "synthetic"):
        assert label in page
