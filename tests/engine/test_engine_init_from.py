"""model.init_from: a new run starts from another run's model weights (fine-tuning)."""
from __future__ import annotations

import csv
import shutil

import pytest
import torch
import yaml
from _engine_helpers import TinyNet, TinySegDataset, run_tiny, tiny_config

from structseg.data.base import ClassInfo
from structseg.engine.config import ModelConfig
from structseg.engine.init_from import check_init_from, init_model_from, resolve_init_from
from structseg.engine.schedules import schedule_factor
from structseg.engine.trainer import Trainer
from structseg.errors import CheckpointError, ConfigError

SOURCE_NORM = ["data.mean=[0.5, 0.4, 0.3]", "data.std=[0.2, 0.25, 0.3]"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished 6-iteration TinyNet run (3 classes) that recorded its own input normalization."""
    root = tmp_path_factory.mktemp("source")
    trainer, _ = run_tiny(root, *SOURCE_NORM)
    return trainer.run


def set_up(tmp_path, *overrides: str, model=None, train_set=None, val_set=None) -> Trainer:
    """A Trainer set up (model built, weights initialised, optimizer made) but not trained."""
    trainer = Trainer(tiny_config(tmp_path, *overrides), model=model if model is not None else TinyNet(),
                      train_set=train_set if train_set is not None else TinySegDataset(8),
                      val_set=val_set if val_set is not None else TinySegDataset(5, seed=1, flip=False))
    try:
        trainer.setup()
    finally:
        if trainer._threads_before:  # fit() restores the thread count; setup() alone does not
            torch.set_num_threads(trainer._threads_before)
    return trainer


def model_state(path):
    return torch.load(path, weights_only=True)["model"]


class FiveClasses(TinySegDataset):
    classes = ClassInfo(names=("a", "b", "c", "d", "e"), palette=((255, 0, 0), (0, 255, 0), (0, 0, 255),
                                                                (9, 9, 9), (99, 99, 99)))


def test_weights_equal_the_source_and_training_state_starts_fresh(source, tmp_path, capsys):
    trainer = set_up(tmp_path, f"model.init_from={source.root}", "optim.backbone_lr_mult=0.1")
    out = capsys.readouterr().out
    assert f"{source.best} (the best checkpoint of run {source.root})" in out
    expected = model_state(source.best)
    got = trainer.model.state_dict()
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    # the source ended at iteration 6 with its poly schedule near zero and momentum buffers: none of it carries over
    assert trainer.iteration == 0 and trainer.scheduler.last_epoch == 0
    assert trainer.optimizer.state_dict()["state"] == {}
    start = schedule_factor(trainer.cfg.schedule, 6)(0)  # optim.lr at the schedule's start (warm-up included)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == pytest.approx({"head": 0.05 * start, "backbone": 0.005 * start})
    ended = torch.load(source.latest, weights_only=True)["optimizer"]["param_groups"][0]["lr"]
    assert ended != pytest.approx(lrs["head"])
    assert trainer.init_result.reinitialised == []
    # the source's input normalization is inherited, and the run's config records it and init_from
    assert trainer.cfg.data.mean == [0.5, 0.4, 0.3] and trainer.cfg.data.std == [0.2, 0.25, 0.3]
    recorded = yaml.safe_load(trainer.run.config.read_text())
    assert recorded["model"]["init_from"] == str(source.root)
    assert recorded["data"]["mean"] == [0.5, 0.4, 0.3]


def test_fine_tuned_run_counts_its_own_iterations(source, tmp_path):
    trainer, result = run_tiny(tmp_path, f"model.init_from={source.latest}", "train.iterations=2",
                               "train.eval_every=2", "train.checkpoint_every=2")
    assert result.iterations == 2
    ckpt = torch.load(trainer.run.latest, weights_only=True)
    assert ckpt["iteration"] == 2 and ckpt["scheduler"]["last_epoch"] == 2
    with open(trainer.run.log) as handle:
        assert [int(r["iteration"]) for r in csv.DictReader(handle) if r["loss"]] == [1, 2]


def test_explicit_normalization_wins_over_the_source(source, tmp_path, capsys):
    trainer = set_up(tmp_path, f"model.init_from={source.root}", "data.mean=[0.1, 0.1, 0.1]",
                     "data.std=[0.9, 0.9, 0.9]")
    assert trainer.cfg.data.mean == [0.1, 0.1, 0.1] and trainer.cfg.data.std == [0.9, 0.9, 0.9]
    assert "but the source was trained with data.mean=[0.5, 0.4, 0.3]" in capsys.readouterr().out


def test_run_without_best_checkpoint_gives_its_latest(source, tmp_path):
    run = tmp_path / "only_latest"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(source.latest, run / "checkpoints" / "latest.pt")
    path, what = resolve_init_from(run)
    assert path == run / "checkpoints" / "latest.pt" and "latest checkpoint" in what and "no best.pt" in what


def test_new_class_count_reinitialises_only_the_classifier(source, tmp_path, capsys):
    torch.manual_seed(7)
    model = TinyNet(num_classes=5)
    built = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = set_up(tmp_path, f"model.init_from={source.root}", model=model,
                     train_set=FiveClasses(8), val_set=FiveClasses(5, seed=1, flip=False))
    classifier = ["head.1.weight", "head.1.bias"]
    assert trainer.init_result.reinitialised == classifier
    expected, got = model_state(source.best), trainer.model.state_dict()
    for key in got:
        if key in classifier:
            assert torch.equal(got[key], built[key]), key  # left as built
            assert got[key].shape[0] == 5
        else:
            assert torch.equal(got[key], expected[key]), key
    out = capsys.readouterr().out
    assert ("classifier re-initialised (left as built; 3 classes in the source, 5 here): "
            "head.1.weight, head.1.bias") in out


def test_plain_state_dict_of_a_real_model_with_aux_head(tmp_path, capsys):
    """A .safetensors state dict with a DataParallel prefix: score layer and aux classifier re-initialised."""
    from safetensors.torch import save_file

    from structseg.models import build_model

    torch.manual_seed(0)
    src = build_model("unet", 3, base_channels=4, depth=2, aux=True)
    path = tmp_path / "weights.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(path))
    torch.manual_seed(1)
    dst = build_model("unet", 6, base_channels=4, depth=2, aux=True)
    built = {k: v.clone() for k, v in dst.state_dict().items()}
    result = init_model_from(dst, path, 6)
    classifier = {"classifier.weight", "classifier.bias", "aux_classifier.4.weight", "aux_classifier.4.bias"}
    assert set(result.reinitialised) == classifier
    for key, value in dst.state_dict().items():
        assert torch.equal(value, built[key] if key in classifier else src.state_dict()[key]), key
    assert "3 classes in the source, 6 here" in result.messages[1]


def test_other_architecture_or_backbone_is_refused_naming_keys_and_file(source, tmp_path):
    with pytest.raises(CheckpointError) as info:
        set_up(tmp_path / "width", f"model.init_from={source.root}", model=TinyNet(width=4))
    text = str(info.value)
    assert str(source.best) in text and "model.init_from" in text
    assert "backbone.0.weight (file (8, 3, 3, 3), model (4, 3, 3, 3))" in text
    assert "head.1.weight" not in text.split("shape mismatches")[0]
    from _engine_helpers import PointwiseNet

    with pytest.raises(CheckpointError, match=r"missing keys: conv\.weight, conv\.bias; unexpected keys: backbone\.0"):
        set_up(tmp_path / "other", f"model.init_from={source.root}", model=PointwiseNet())
    assert not (tmp_path / "other" / "run" / "checkpoints").exists() or not any(
        (tmp_path / "other" / "run" / "checkpoints").iterdir())

    from structseg.models import build_model

    wide = tmp_path / "unet8.pt"
    torch.save(build_model("unet", 3, base_channels=8, depth=2).state_dict(), wide)
    with pytest.raises(CheckpointError, match=rf"{wide}.*shape mismatches: .*\.\.\. \(\d+ in all\)"):
        init_model_from(build_model("unet", 3, base_channels=4, depth=2), wide, 3)


def test_missing_or_wrong_path_fails_at_config_load(tmp_path, capsys):
    from structseg.cli import main

    missing = tmp_path / "no_such_run"
    run_dir = tmp_path / "new_run"
    assert main(["train", "--run-dir", str(run_dir), "--set", f"model.init_from={missing}"]) == 2
    err = capsys.readouterr().err
    assert "'model.init_from'" in err and str(missing) in err and "does not exist" in err
    assert not run_dir.exists()
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"'model\.init_from'.*empty_run has no checkpoint"):
        check_init_from(tiny_config(tmp_path, f"model.init_from={empty}"))
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"'model\.init_from'.*weights\.npz is not a run directory or a"):
        check_init_from(tiny_config(tmp_path, f"model.init_from={odd}"))
    with pytest.raises(ConfigError, match="'model.init_from'"):  # the API path checks before building data
        set_up(tmp_path, f"model.init_from={missing}", train_set=TinySegDataset(0))


class Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_without_running_it(source, tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    state = model_state(source.best)
    torch.save({"format": 1, "model": state, "extra": Payload(str(marker))}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt cannot be read as weights \(torch\.load with weights_only"
                                              r"=True, which runs no code\): Unsupported global: "
                                              r"GLOBAL (builtins\.)?exec"):
        set_up(tmp_path, f"model.init_from={evil}")
    plain = tmp_path / "evil_state.pth"
    torch.save(Payload(str(marker)), plain)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        init_model_from(TinyNet(), plain, 3)
    assert not marker.exists()
    torch.load(plain, weights_only=False)  # the payload is real: a full unpickle runs it
    assert marker.read_text() == "pwned"


def test_resume_ignores_init_from(source, tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)  # a run of its own to resume: a copy of the source
    shutil.copy(source.latest, tmp_path / "run" / "checkpoints" / "latest.pt")
    own = model_state(source.latest)
    other = tmp_path / "other.pt"  # init_from names other weights
    torch.save({k: torch.zeros_like(v) for k, v in own.items()}, other)
    for value in (other, tmp_path / "gone"):  # even a source that no longer exists
        trainer = set_up(tmp_path, f"model.init_from={value}", "train.resume=true")
        assert f"model.init_from={value} ignored: resuming" in capsys.readouterr().out
        assert trainer.iteration == 6 and trainer.init_result is None
        for key, value_ in trainer.model.state_dict().items():
            assert torch.equal(value_, own[key]), key


def test_plain_network_starts_an_svm_head_run_and_back(tmp_path):
    from structseg.engine.heads import build_structured
    from structseg.models import build_model

    torch.manual_seed(0)
    cnn = build_model("unet", 3, base_channels=4, depth=2)
    cnn_file = tmp_path / "cnn.pt"
    torch.save(cnn.state_dict(), cnn_file)
    torch.manual_seed(1)
    svm = build_structured(build_model("unet", 3, base_channels=4, depth=2), ModelConfig(name="unet", head="svm"), 3)
    built = {k: v.clone() for k, v in svm.state_dict().items()}
    result = init_model_from(svm, cnn_file, 3)
    for key, value in svm.state_dict().items():
        if key.startswith("head."):
            assert torch.equal(value, built[key]), key
        else:
            assert torch.equal(value, cnn.state_dict()[key.removeprefix("base.")]), key
    assert result.left_as_built == ["head.classifier.weight", "head.classifier.bias"]
    assert any("SVM head (head.*) starts as built" in m for m in result.messages)

    svm_file = tmp_path / "svm.pt"  # an SVM-head run's weights start a plain run: its network, not its head
    torch.save({"format": 1, "model": svm.state_dict(), "classes": {"names": ["a", "b", "c"]}}, svm_file)
    plain = build_model("unet", 3, base_channels=4, depth=2)
    result = init_model_from(plain, svm_file, 3)
    assert result.left_out == ["head.classifier.weight", "head.classifier.bias"]
    for key, value in plain.state_dict().items():
        assert torch.equal(value, svm.state_dict()[f"base.{key}"]), key

    ssvm = build_structured(build_model("unet", 5, base_channels=4, depth=2),
                            ModelConfig(name="unet", head="ssvm"), 5)  # another head kind and class count
    result = init_model_from(ssvm, svm_file, 5)
    assert set(result.left_as_built) == {k for k in ssvm.state_dict() if k.startswith("head.")}
    assert set(result.reinitialised) == {"base.classifier.weight", "base.classifier.bias"}
