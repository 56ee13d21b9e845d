"""The embedded default config end to end (reduced), then eval / predict / compare / report / export."""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from structseg.cli import main

SMALL = ["train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2", "train.log_every=1",
         "data.options.length=8", "data.options.size=32", "data.crop_size=32", "data.batch_size=4",
         "data.eval_batch_size=8", "model.options.base_channels=4", "train.progress=false",
         "train.num_threads=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of the embedded default at toy size, resumed once to 6 iterations."""
    root = tmp_path_factory.mktemp("e2e")
    run = root / "run"
    assert main(["train", "--run-dir", str(run), "--set", *SMALL]) == 0
    assert main(["train", "--resume", str(run), "--set", "train.iterations=6"]) == 0
    return root, run


def test_train_outputs(trained):
    _, run = trained
    for name in ("config.yaml", "log.csv", "metrics.json", "checkpoints/latest.pt", "checkpoints/best.pt",
                 "figures/miou_curve.png", "figures/loss_curve.png"):
        assert (run / name).is_file(), name
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["iteration"] == 6 and ckpt["config"]["train"]["iterations"] == 6
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["iterations"] == 6 and len(metrics["final"]["per_class"]) == 8


def test_refuses_to_clobber_and_checks_missing_run(trained, capsys):
    root, run = trained
    assert main(["train", "--run-dir", str(run), "--set", *SMALL]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["eval", "--run", str(root / "nope")]) == 2
    assert "run directory" in capsys.readouterr().err and "does not exist" in capsys.readouterr().err + "does not exist"
    assert main(["train", "--set", "train.iteratons=3"]) == 2
    assert "'train.iteratons'" in capsys.readouterr().err


def test_eval_with_tta_writes_json_and_png(trained):
    root, run = trained
    out = root / "eval" / "val.json"
    assert main(["eval", "--run", str(run), "--flip", "--scales", "0.75", "1", "-o", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["eval"]["flip"] is True and result["eval"]["scales"] == [0.75, 1.0]
    pixels = sum(c["pixels"] for c in result["per_class"].values())
    assert pixels == 8 * 32 * 32  # every validation pixel counted once
    assert out.with_suffix(".png").is_file()


def test_predict_compare_report_export(trained):
    root, run = trained
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(37, 45), (32, 32)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    out = root / "pred"
    assert main(["predict", "--run", str(run), str(images), "-o", str(out)]) == 0
    mask = Image.open(out / "img0_mask.png")
    assert mask.size == (45, 37) and (out / "img0_overlay.png").is_file()

    fig = root / "compare.png"
    assert main(["compare", "--runs", str(run), str(run), "--names", "first", "second",
                 "--split", "val", "--count", "2", "-o", str(fig)]) == 0
    assert Image.open(fig).size[0] > 400

    html_path = root / "report.html"
    assert main(["report", "--run", str(run), "-o", str(html_path), "--samples", "2"]) == 0
    html = html_path.read_text()
    assert "background" in html and "train:" in html  # class table and resolved config
    images_in_page = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images_in_page) >= 4 and not re.search(r'src="(?!data:)', html)
    assert base64.b64decode(images_in_page[0])[:4] == b"\x89PNG"

    ts = root / "model.pt"
    assert main(["export", "--run", str(run), "--format", "torchscript", "-o", str(ts)]) == 0
    scripted = torch.jit.load(str(ts))
    from structseg.engine.predict import Predictor

    predictor = Predictor.from_run(run, device="cpu")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), predictor.model.float()(x), rtol=1e-4, atol=1e-4)


def test_predictor_matches_manual_forward(trained, tmp_path):
    from structseg.engine.evaluate import forward_logits
    from structseg.engine.predict import Predictor

    _, run = trained
    predictor = Predictor.from_run(run, "latest", device="cpu")
    rng = np.random.default_rng(1)
    array = rng.integers(0, 255, (37, 45, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "x.png")
    labels = predictor.predict(tmp_path / "x.png")
    assert labels.shape == (37, 45) and labels.dtype == torch.int64
    assert torch.equal(labels, predictor.predict(array))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    x = (torch.from_numpy(array).permute(2, 0, 1).float() / 255 - mean) / std
    with torch.no_grad():
        manual = forward_logits(predictor.model, x[None], predictor.fast_path)[0].argmax(0)
    assert (manual == labels).float().mean() > 0.999


def test_predictor_folds_batchnorm_only_on_the_fast_path(trained):
    from structseg.engine.config import load_config
    from structseg.engine.predict import Predictor
    from structseg.engine.rundir import existing_run

    _, run = trained
    ckpt = existing_run(run).checkpoint("latest")
    config = existing_run(run).config
    fast = Predictor.from_checkpoint(ckpt, load_config(config), device="cpu")
    plain = Predictor.from_checkpoint(ckpt, load_config(config, ["model.fast_path=off"]), device="cpu")

    def batchnorms(model: torch.nn.Module) -> int:
        return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())

    assert fast.fast_path.fold_batchnorm and batchnorms(fast.model) == 0 < batchnorms(plain.model)
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        want = plain.model(x)
        torch.testing.assert_close(fast.model(x.contiguous(memory_format=torch.channels_last)), want,
                                   atol=1e-4 * want.abs().max().item(), rtol=1e-4)


def test_report_and_compare_paint_ignored_pixels_alike(trained, monkeypatch):
    """The report's sample grid and ``compare`` take the ignore colour from the run's classes (the synthetic
    data's is white): one rendering of ignored pixels, not two."""
    import structseg.viz.grid as grid

    root, run = trained
    seen: list[object] = []
    real = grid.comparison_grid

    def spy(*args, **kwargs):
        seen.append(tuple(kwargs["ignore_color"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(grid, "comparison_grid", spy)
    assert main(["report", "--run", str(run), "-o", str(root / "r2.html"), "--samples", "1"]) == 0
    assert main(["compare", "--runs", str(run), "--split", "val", "--count", "1", "-o", str(root / "c2.png")]) == 0
    assert seen == [(255, 255, 255), (255, 255, 255)]
