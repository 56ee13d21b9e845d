"""Dense-CRF refinement in evaluation and prediction: the ``crf`` config section, the
engine's refiner against :func:`structseg.crf.dense.refine` and ``DenseCRF``, and
``structseg eval / predict --crf dense`` end to end."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from _engine_helpers import PointwiseNet, TinySegDataset
from PIL import Image
from torch.utils.data import DataLoader

from structseg.cli import main
from structseg.crf.dense import DenseCRF, DenseCRFConfig, refine
from structseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from structseg.engine.build import eval_transform
from structseg.engine.config import CRFConfig, EvalConfig, load_config
from structseg.engine.evaluate import build_refiner, evaluate_model, infer
from structseg.errors import ConfigError
from structseg.metrics import ConfusionMatrix

SMALL = ["train.iterations=3", "train.eval_every=3", "train.checkpoint_every=3", "train.log_every=1",
         "data.options.length=4", "data.options.size=32", "data.crop_size=32", "data.batch_size=4",
         "data.eval_batch_size=4", "model.options.base_channels=4", "train.progress=false",
         "train.num_threads=1", "train.amp=off", "model.fast_path=off"]


def _tiny_val() -> TinySegDataset:
    """Tiny items normalized as the engine does (ImageNet mean / std), so the refiner can undo it."""
    data = TinySegDataset(4, size=24, seed=3, flip=False)
    data.transform = eval_transform()
    return data


def _pointwise() -> PointwiseNet:
    torch.manual_seed(7)
    return PointwiseNet().eval()


def test_crf_section_defaults_and_overrides():
    cfg = load_config(None)
    assert cfg.crf.mode == "none" and build_refiner(cfg.crf) is None
    defaults = {f.name: f.default for f in dataclasses.fields(DenseCRFConfig)}
    params = cfg.crf.dense_params()
    assert params.pop("threads") == 1  # one thread: the sane choice on a shared CPU
    assert params == {k: v for k, v in defaults.items() if k != "threads"}
    cfg = load_config(None, ["crf.mode=dense", "crf.iterations=10", "crf.srgb=5"])
    assert (cfg.crf.mode, cfg.crf.iterations, cfg.crf.srgb) == ("dense", 10, 5.0)
    DenseCRFConfig(**cfg.crf.dense_params())  # accepted as they are


@pytest.mark.parametrize("override, field", [
    ("crf.iterations=-1", "crf.iterations"),
    ("crf.iterations=2.5", "crf.iterations"),
    ("crf.srgb=0", "crf.srgb"),
    ("crf.sxy_bilateral=-3", "crf.sxy_bilateral"),
    ("crf.compat_gaussian=.nan", "crf.compat_gaussian"),
    ("crf.threads=0", "crf.threads"),
    ("crf.mode=crfasrnn", "crf.mode"),
    ("crf.sxy=3", "crf.sxy"),
])
def test_bad_crf_values_are_config_errors(override, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        load_config(None, [override])


def test_refiner_matches_refine_and_uint8_oracle():
    data = _tiny_val()
    images = torch.stack([data[i][0] for i in range(2)])
    rgb = torch.stack([data.load(i)[0] for i in range(2)])
    probs = infer(_pointwise(), images)
    crf = CRFConfig(mode="dense", iterations=4, srgb=20.0)
    refined = build_refiner(crf)(probs, images)
    params = DenseCRFConfig(**crf.dense_params())
    expected = refine(torch.log(probs.clamp_min(1e-8)), images, params, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.testing.assert_close(refined, expected, rtol=0, atol=0)
    # independently: the probabilities against the original uint8 colors
    from_colors = DenseCRF(params)(probs, rgb, input_type="probs")
    torch.testing.assert_close(refined, from_colors, rtol=0, atol=1e-4)
    assert (refined.argmax(1) != probs.argmax(1)).any()  # the CRF did change labels


@pytest.mark.parametrize("scales, flip", [([1.0], False), ([0.5, 1.0], True)])
def test_evaluate_model_refines_fused_probabilities(scales, flip):
    data = _tiny_val()
    model = _pointwise()
    eval_cfg = EvalConfig(scales=scales, flip=flip)
    crf = CRFConfig(mode="dense", iterations=3)
    loader = DataLoader(data, batch_size=2)
    metrics = evaluate_model(model, loader, 3, cfg=eval_cfg, crf=crf)
    plain = evaluate_model(model, loader, 3, cfg=eval_cfg)

    oracle = ConfusionMatrix(3)
    params = DenseCRFConfig(**crf.dense_params())
    with torch.no_grad():
        for images, masks in loader:
            probs = infer(model, images, eval_cfg)
            refined = refine(torch.log(probs.clamp_min(1e-8)), images, params, mean=IMAGENET_MEAN, std=IMAGENET_STD)
            oracle.update(refined.argmax(1), masks)
    assert torch.equal(metrics.confusion, oracle.matrix)
    assert not torch.equal(metrics.confusion, plain.confusion)
    assert metrics.confusion.sum() == plain.confusion.sum() == 4 * 24 * 24


def test_predictor_refines_against_the_image():
    from _engine_helpers import TINY_CLASSES

    from structseg.engine.predict import Predictor

    crf = CRFConfig(mode="dense", iterations=3)
    refined = Predictor(_pointwise(), TINY_CLASSES, crf=crf)
    plain = Predictor(_pointwise(), TINY_CLASSES)
    rgb, _ = TinySegDataset(1, size=24, seed=4).load(0)
    probs = plain.predict_proba(rgb)
    expected = DenseCRF(DenseCRFConfig(**crf.dense_params()))(probs, rgb, input_type="probs")
    got = refined.predict_proba(rgb.permute(1, 2, 0).numpy())  # (H, W, 3) array input
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert (got.argmax(0) != probs.argmax(0)).any()
    # an already normalized image: the refiner undoes the normalization
    torch.testing.assert_close(refined.predict_proba(refined.preprocess(rgb)), expected, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("crf") / "run"
    assert main(["train", "--run-dir", str(run), "--set", *SMALL]) == 0
    return run


def test_eval_cli_with_crf(run_dir, tmp_path, capsys):
    out_crf, out_plain = tmp_path / "crf.json", tmp_path / "plain.json"
    assert main(["eval", "--run", str(run_dir), "--crf", "dense", "--set", "crf.iterations=2",
                 "-o", str(out_crf), "--no-progress"]) == 0
    assert "CRF: dense, 2 iterations" in capsys.readouterr().out
    assert main(["eval", "--run", str(run_dir), "-o", str(out_plain), "--no-progress"]) == 0
    assert "CRF: none" in capsys.readouterr().out
    crf, plain = json.loads(out_crf.read_text()), json.loads(out_plain.read_text())
    assert crf["crf"]["mode"] == "dense" and crf["crf"]["iterations"] == 2 and plain["crf"]["mode"] == "none"
    assert 0.0 <= crf["miou"] <= 1.0
    pixels = sum(c["pixels"] for c in crf["per_class"].values())
    assert pixels == sum(c["pixels"] for c in plain["per_class"].values()) > 0

    assert main(["eval", "--run", str(run_dir), "--crf", "dense", "--set", "crf.srgb=-1", "--no-progress"]) == 2
    assert "'crf.srgb'" in capsys.readouterr().err


def test_predict_cli_with_crf_writes_refined_masks(run_dir, tmp_path):
    from structseg.engine.predict import Predictor
    from structseg.viz.masks import colorize

    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    array = rng.integers(0, 255, (29, 35, 3), dtype=np.uint8)
    Image.fromarray(array).save(images / "a.png")
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(run_dir), str(images), "-o", str(out), "--crf", "dense",
                 "--set", "crf.iterations=3"]) == 0
    written = np.asarray(Image.open(out / "a_mask.png").convert("RGB"))
    assert written.shape == (29, 35, 3) and (out / "a_overlay.png").is_file()

    plain = Predictor.from_run(run_dir, device="cpu")
    assert plain.refiner is None
    rgb = torch.from_numpy(array).permute(2, 0, 1)
    probs = plain.predict_proba(rgb)
    refined = DenseCRF(DenseCRFConfig(**CRFConfig(mode="dense", iterations=3).dense_params()))(
        probs, rgb, input_type="probs")
    classes = plain.classes
    expected = colorize(refined.argmax(0), classes.palette, classes.ignore_index, classes.ignore_color)
    assert np.array_equal(written, expected)
