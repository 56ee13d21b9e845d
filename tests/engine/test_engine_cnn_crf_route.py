"""model.head=cnn_crf: Lin et al.'s CNN-CRF trained piecewise through the engine, evaluated by its inference."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _engine_helpers import CLI_TINY, assert_route_trains_evaluates_and_resumes

from structseg.cli import main
from structseg.crf.cnn_crf import CNNCRFModel
from structseg.engine.build import build_model_from_config
from structseg.engine.config import load_config
from structseg.errors import ConfigError

HEAD = ["model.head=cnn_crf", "model.cnn_crf.hidden=8", "model.cnn_crf.feature_stride=2",
        "model.cnn_crf.surrounding=1", "model.cnn_crf.above_below=[2, 1]", "model.cnn_crf.iterations=3"]


def test_the_route_builds_the_crf_on_the_networks_features() -> None:
    model = build_model_from_config(load_config(None, [*CLI_TINY, *HEAD]), 5)
    assert isinstance(model, CNNCRFModel) and set(model.crf.pairwise_nets) == {"surrounding", "above_below"}
    assert {k.split(".")[0] for k in model.state_dict()} == {"base", "crf"}
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 30, 34))
    assert out.shape == (2, 5, 30, 34)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2, 30, 34), atol=1e-4, rtol=0)  # log-beliefs


@pytest.mark.parametrize(("override", "fragment"), [
    ("model.cnn_crf.method=icm", "'model.cnn_crf.method': unknown method 'icm'"),
    ("model.cnn_crf.above_below=[0, 1]", "'model.cnn_crf.above_below'"),
    ("model.cnn_crf.surrounding=-1", "'model.cnn_crf.surrounding' must be >= 0"),
])
def test_bad_options_name_the_setting(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [*HEAD, override])


def test_a_range_box_larger_than_the_grid_is_named() -> None:
    model = build_model_from_config(load_config(None, [*CLI_TINY, *HEAD, "model.cnn_crf.surrounding=9",
                                                       "model.cnn_crf.above_below=[]"]), 3).eval()
    with pytest.raises(ConfigError, match=r"model.cnn_crf \(surrounding edges\)"):
        with torch.no_grad():
            model(torch.randn(1, 3, 8, 8))


def test_training_lowers_the_piecewise_loss_and_resume_is_bit_exact(tmp_path: Path) -> None:
    assert_route_trains_evaluates_and_resumes(tmp_path, HEAD)


def test_fine_tuning_from_a_plain_run(tmp_path: Path, capsys) -> None:
    plain = tmp_path / "plain"
    assert main(["train", "--run-dir", str(plain), "--set", *CLI_TINY]) == 0
    assert main(["train", "--run-dir", str(tmp_path / "crf"), "--set", *CLI_TINY, *HEAD,
                 f"model.init_from={plain}", "train.iterations=2"]) == 0
    assert "the CRF layer (crf.*) starts as built" in capsys.readouterr().out


def test_the_residual_pmi_form_trains_and_resumes_with_class_weights(tmp_path: Path) -> None:
    head = [*HEAD, "model.cnn_crf.residual=true", "model.cnn_crf.pairwise=pmi", "data.class_weights=median"]
    model = build_model_from_config(load_config(None, [*CLI_TINY, *head]), 3)
    assert isinstance(model, CNNCRFModel) and model.residual and model.pairwise == "pmi"
    assert_route_trains_evaluates_and_resumes(tmp_path, head)


def test_the_meanfield_trained_form_trains_and_resumes(tmp_path: Path) -> None:
    head = [*HEAD, "model.cnn_crf.residual=true", "model.cnn_crf.training=meanfield"]
    model = build_model_from_config(load_config(None, [*CLI_TINY, *head]), 3)
    assert isinstance(model, CNNCRFModel) and model.training_mode == "meanfield"
    assert_route_trains_evaluates_and_resumes(tmp_path, head)
    with pytest.raises(ConfigError, match="model.cnn_crf.training"):
        load_config(None, [*HEAD, "model.cnn_crf.training=joint"])


def test_a_negative_pairwise_weight_is_named() -> None:
    with pytest.raises(ConfigError, match="model.cnn_crf.pairwise_weight"):
        load_config(None, [*HEAD, "model.cnn_crf.pairwise_weight=-0.5"])
    model = build_model_from_config(load_config(None, [*CLI_TINY, *HEAD, "model.cnn_crf.pairwise_weight=0.25"]), 3)
    assert isinstance(model, CNNCRFModel) and model.pairwise_weight == 0.25
