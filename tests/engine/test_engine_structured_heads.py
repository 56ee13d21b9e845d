"""model.head = svm | ssvm through the engine: config, training, MAP evaluation, prediction, resume, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _engine_helpers import TinySegDataset, tiny_config
from torch.utils.data import DataLoader

from structseg.engine.build import build_model_from_config
from structseg.engine.config import load_config
from structseg.engine.datasets import compute_class_weights
from structseg.engine.evaluate import evaluate_model
from structseg.engine.trainer import Trainer
from structseg.errors import ConfigError
from structseg.graph import grid_edges
from structseg.structured.inference import infer, list_solvers
from structseg.structured.models import StructuredSegmenter
from structseg.structured.problem import LabelingProblem

HEAD = ["model.name=unet", "model.options={base_channels: 4}", "model.structured.feature_stride=2"]


def head_config(tmp_path, head: str, *overrides: str):
    return tiny_config(tmp_path, f"model.head={head}", *HEAD, *overrides)


def make_trainer(tmp_path, head: str, *overrides: str, hooks=None) -> Trainer:
    """A Trainer that builds its model from the config (the engine's wiring), on the tiny data."""
    torch.manual_seed(0)
    return Trainer(head_config(tmp_path, head, *overrides), train_set=TinySegDataset(8),
                   val_set=TinySegDataset(5, seed=1, flip=False), hooks=hooks)


# ------------------------------------------------------------------ config

@pytest.mark.parametrize(("override", "names"), [
    ("model.head=crf", ["'model.head'", "'softmax' | 'svm' | 'ssvm'"]),
    ("model.structured.solver=gurobi", ["'model.structured.solver'", "'bp'", "'expansion'", "'milp'"]),
    ("model.structured.eval_solver=fast", ["'model.structured.eval_solver'", "'icm'"]),
    ("model.structured.pairwise=potts", ["'model.structured.pairwise'", "'agreement' | 'full'"]),
    ("model.structured.connectivity=6", ["'model.structured.connectivity'", "4, 8 or a range box"]),
    ("model.structured.connectivity=[0, 0]", ["'model.structured.connectivity'"]),
    ("model.structured.feature_stride=0", ["'model.structured.feature_stride'", ">= 1"]),
    ("model.structured.margin=-1", ["'model.structured.margin'", "> 0"]),
    ("model.structured.downsample=mode", ["'model.structured.downsample'", "'majority' | 'nearest'"]),
    ("model.structured.solvr=bp", ["'model.structured.solvr'", "solver"]),
])
def test_bad_head_options_name_the_field_and_the_allowed_values(override, names):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    for name in names:
        assert name in str(info.value), (name, str(info.value))


def test_config_solvers_are_the_registered_solvers():
    """The config takes its solver names from the registry: each registered solver loads, and the error for
    another name lists exactly the registered ones."""
    for name in list_solvers():
        assert load_config(None, [f"model.structured.solver={name}"]).model.structured.solver == name
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.structured.solver=gurobi"])
    assert str(info.value).endswith("valid: " + ", ".join(map(repr, list_solvers())))


def test_default_head_is_softmax_and_builds_the_plain_model(tmp_path):
    cfg = tiny_config(tmp_path, *HEAD[:2])
    assert cfg.model.head == "softmax"
    model = build_model_from_config(cfg, 3)
    assert not isinstance(model, StructuredSegmenter) and not getattr(model, "map_inference", False)


def test_build_errors_at_build_time(tmp_path):
    with pytest.raises(ConfigError, match=r"solver_options.*'bogus'.*valid options: .*max_iter"):
        build_model_from_config(head_config(tmp_path, "ssvm", "model.structured.solver_options={bogus: 1}"), 3)
    with pytest.raises(ConfigError, match=r"model.aux=true.*model.aux=false"):
        build_model_from_config(head_config(tmp_path, "svm", "model.aux=true"), 3)
    # options of both solvers are checked: max_iter is bp's, not expansion's
    with pytest.raises(ConfigError, match=r"'max_iter' not accepted by solver 'expansion'"):
        build_model_from_config(head_config(tmp_path, "ssvm", "model.structured.solver_options={max_iter: 5}",
                                            "model.structured.eval_solver=expansion"), 3)


def test_built_model_matches_the_config(tmp_path):
    cfg = head_config(tmp_path, "ssvm", "model.structured.connectivity=8", "model.structured.pairwise=full",
                      "model.structured.eval_solver=icm")
    model = build_model_from_config(cfg, 3, ignore_index=7)
    assert isinstance(model, StructuredSegmenter) and model.feature_stride == 2 and model.eval_solver == "icm"
    head = model.head
    assert (head.kind, head.connectivity, head.ignore_index, head.solver) == ("full", 8, 7, "bp")
    assert head.unary.in_channels == model.base.feature_channels == 4
    assert head.pairwise.out_features == 9  # K x K table per edge
    x = torch.randn(2, 3, 16, 12)
    assert model.features(x).shape == (2, 4, 8, 6)
    assert model(x).shape == (2, 3, 16, 12)


# ---------------------------------------------------------------- training

@pytest.mark.parametrize("head", ["svm", "ssvm"])
def test_training_lowers_the_hinge_and_moves_every_trained_part(tmp_path, head):
    overrides = ("train.iterations=8", "train.eval_every=4", "train.checkpoint_every=4")
    probe = make_trainer(tmp_path / "probe", head, *overrides)
    probe.setup()  # the same seed builds the same initial weights as the trained run
    images, masks = zip(*(TinySegDataset(8, flip=False)[i] for i in range(8)))
    x, y = torch.stack(images), torch.stack(masks)
    with torch.no_grad():
        before_loss = float(probe.model.eval().loss(x, y))
    before = probe.model.state_dict()
    trainer = make_trainer(tmp_path, head, *overrides)
    result = trainer.fit()
    model = trainer.model.eval()
    assert before.keys() == model.state_dict().keys()
    with torch.no_grad():
        after_loss = float(model.loss(x, y))
    assert np.isfinite(before_loss) and after_loss < 0.9 * before_loss, (before_loss, after_loss)
    after = model.state_dict()
    changed = {k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])}
    assert "head.unary.weight" in changed or "head.classifier.weight" in changed
    assert any(k.startswith("base.backbone.") for k in changed)  # gradients reach the CNN
    if head == "ssvm":
        assert "head.pairwise.weight" in changed
    assert not any(k.startswith("base.classifier.") for k in changed)  # the base's own classifier is unused
    log = (trainer.run.log).read_text().splitlines()
    assert log[0].startswith("iteration,epoch,loss,lr,")  # no loss_<term> columns: the loss section is unused
    losses = [float(r.split(",")[2]) for r in log[1:] if r.split(",")[2]]
    assert len(losses) == 8 and all(np.isfinite(losses))
    m = result.final_metrics
    assert np.isfinite(m.miou) and int(m.confusion.sum()) == 5 * 16 * 16


RESIDUAL = ("model.structured.residual=true", "model.structured.train_backbone=false",
            "model.structured.upsample=refine")
# ssvm on the input's pixels with contrast-sensitive Potts terms
CONTRAST = (*RESIDUAL, "model.structured.pairwise=contrast", "model.structured.grid=input",
            "model.structured.solver=bp", "model.structured.contrast_sigma=1.5")
# ssvm with the dense CRF's pairwise terms, kernels from the crf section
DENSE = ("model.structured.residual=true", "model.structured.train_backbone=false", "model.structured.pairwise=dense",
         "model.structured.grid=input", "crf.iterations=3", "crf.sxy_bilateral=4", "crf.srgb=20")


@pytest.mark.parametrize("head", ["svm", "ssvm", "ssvm-contrast", "ssvm-dense"])
def test_a_residual_head_on_a_frozen_network_trains_only_the_head(tmp_path, head):
    contrast = head.endswith("-contrast")  # its pair weights move CONTRAST_STEP times faster than the unary layer
    form = {"contrast": CONTRAST, "dense": DENSE}.get(head.partition("-")[2], RESIDUAL)
    overrides = ("train.iterations=8", "train.eval_every=8", "train.checkpoint_every=8",
                 f"optim.lr={0.001 if contrast else 0.05}", *form)
    head = head.partition("-")[0]
    trainer = make_trainer(tmp_path, head, *overrides)
    trainer.setup()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert all(float(before[k].abs().sum()) == 0 for k in before if k.startswith("head.") and "unary" in k
               or k.startswith("head.classifier"))  # the residual head starts as the network
    trainer.fit()
    after = trainer.model.state_dict()
    changed = {k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("head.") for k in changed), changed  # BN statistics included
    if "model.structured.pairwise=contrast" in overrides:
        assert "head.contrast" in changed
    if "model.structured.pairwise=dense" in overrides:
        assert "head.penalty" in changed
    losses = [float(r.split(",")[2]) for r in trainer.run.log.read_text().splitlines()[1:] if r.split(",")[2]]
    assert losses[-1] < losses[0], losses


def test_trainer_accepts_a_plain_structured_segmenter(tmp_path):
    from structseg.structured.models import LinearSVMHead

    base = build_model_from_config(tiny_config(tmp_path, *HEAD[:2]), 3)
    model = StructuredSegmenter(base, LinearSVMHead(base.feature_channels, 3))
    torch.manual_seed(0)
    trainer = Trainer(tiny_config(tmp_path, *HEAD[:2]), model=model, train_set=TinySegDataset(8),
                      val_set=TinySegDataset(5, seed=1, flip=False))
    result = trainer.fit()
    assert trainer.model is model and trainer.model.head is model.head
    assert trainer.criterion is None and np.isfinite(result.final_metrics.miou)


def test_head_runs_in_float32_under_bf16_autocast(tmp_path):
    seen = []

    def watch(trainer):
        if trainer.iteration == 1:
            trainer.model.head.unary.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))

    trainer = make_trainer(tmp_path, "ssvm", "train.amp=bf16", "train.iterations=3", "train.eval_every=3",
                           hooks={"step_end": [watch]})
    result = trainer.fit()
    assert trainer.fast_path.autocast_dtype == torch.bfloat16
    assert len(seen) >= 2 and all(d == (torch.float32, torch.float32) for d in seen)  # training and eval
    assert np.isfinite(result.final_metrics.miou)
    trainer.model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        base_out = trainer.model.base(torch.randn(2, 3, 16, 16))
        loss = trainer.model(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16)))
    assert base_out.dtype == torch.bfloat16  # the CNN itself still gets the fast path
    assert loss.dtype == torch.float32


def test_structured_training_rejects_tta_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"eval.flip=true.*MAP labels"):
        make_trainer(tmp_path, "svm", "eval.flip=true").fit()
    with pytest.raises(ConfigError, match=r"eval.scales=\[0.5, 1.0\]"):
        make_trainer(tmp_path, "ssvm", "eval.scales=[0.5, 1.0]").fit()
    with pytest.raises(ConfigError, match=r"eval.mode='slide'"):
        make_trainer(tmp_path, "ssvm", "eval.mode=slide", "eval.window=8").fit()
    assert not (tmp_path / "run" / "log.csv").exists()


# ------------------------------------------------------------ MAP evaluation

def _oracle_labels(model: StructuredSegmenter, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """MAP labels at the image size from potentials built here (numpy) and solved by bp, and the unary argmax."""
    head = model.head
    with torch.no_grad():
        full = model.base.forward_features(x)["features"].double().numpy()
    n, c, hh, ww = full.shape
    f = full.reshape(n, c, hh // 2, 2, ww // 2, 2).mean(axis=(3, 5))  # stride-2 average pooling
    h, w = f.shape[-2:]
    wu, bu = head.unary.weight.detach().double().numpy()[:, :, 0, 0], head.unary.bias.detach().double().numpy()
    wp, bp = head.pairwise.weight.detach().double().numpy(), head.pairwise.bias.detach().double().numpy()
    edges = grid_edges(h, w, 4)
    maps, argmaxes = [], []
    for i in range(n):
        flat = f[i].reshape(c, -1).T  # (h*w, C)
        unary = flat @ wu.T + bu
        pair = np.concatenate([flat[edges[:, 0]], flat[edges[:, 1]]], axis=1) @ wp.T + bp
        labels = np.asarray(infer(LabelingProblem(unary, edges, pair, kind="agreement"), "bp").labels).reshape(h, w)
        maps.append(labels)
        argmaxes.append(unary.argmax(1).reshape(h, w))
    up = lambda a: np.repeat(np.repeat(np.stack(a), 2, axis=1), 2, axis=2)  # noqa: E731  nearest, x2
    return up(maps), up(argmaxes)


def test_evaluation_counts_map_labels_not_the_unary_argmax(tmp_path):
    torch.manual_seed(3)
    model = build_model_from_config(head_config(tmp_path, "ssvm"), 3).eval()
    torch.nn.init.normal_(model.head.unary.weight, std=100.0)  # the untrained features are ~0.01
    torch.nn.init.zeros_(model.head.unary.bias)
    torch.nn.init.normal_(model.head.pairwise.weight, std=0.1)
    torch.nn.init.constant_(model.head.pairwise.bias, 1.0)  # smoothing: MAP differs from the argmax
    data = TinySegDataset(4, seed=2, flip=False)
    metrics = evaluate_model(model, DataLoader(data, batch_size=2), 3, ignore_index=255)
    x = torch.stack([data[i][0] for i in range(4)])
    truth = torch.stack([data[i][1] for i in range(4)]).numpy()
    map_labels, argmax = _oracle_labels(model, x)
    assert (map_labels != argmax).mean() > 0.05 and len(np.unique(map_labels)) > 1
    expected = np.bincount(3 * truth.ravel() + map_labels.ravel(), minlength=9).reshape(3, 3)
    assert np.array_equal(metrics.confusion.numpy(), expected)


def test_evaluation_of_a_map_model_refuses_crf(tmp_path):
    from structseg.engine.config import CRFConfig

    model = build_model_from_config(head_config(tmp_path, "svm"), 3)
    with pytest.raises(ConfigError, match="crf.mode=none"):
        evaluate_model(model, DataLoader(TinySegDataset(2, flip=False)), 3, crf=CRFConfig(mode="dense"))


# ------------------------------------------------- checkpoints, resume, predict

@pytest.mark.parametrize("head", ["svm", "ssvm", "ssvm-residual", "ssvm-contrast", "ssvm-dense"])
def test_stopped_then_resumed_run_equals_uninterrupted_run(tmp_path, head):
    form = {"residual": RESIDUAL, "contrast": CONTRAST, "dense": DENSE}.get(head.partition("-")[2], ())
    common = ("train.iterations=6", "train.eval_every=3", "train.checkpoint_every=3", *form)
    head = head.partition("-")[0]
    one_go = make_trainer(tmp_path / "one_go", head, *common)
    one_go.fit()

    def stop(trainer):
        if trainer.iteration == 3:
            trainer.stop_requested = True

    first = make_trainer(tmp_path / "split", head, *common, hooks={"step_end": [stop]})
    assert first.fit().iterations == 3
    resumed = make_trainer(tmp_path / "split", head, *common, "train.resume=true")
    assert resumed.fit().iterations == 6
    a, b = one_go.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and {k.split(".")[0] for k in a} == {"base", "head"}
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_predictor_rebuilds_the_head_and_predicts_map_labels(tmp_path):
    from structseg.engine.predict import Predictor

    trainer = make_trainer(tmp_path, "ssvm", "train.iterations=3", "train.eval_every=3",
                           "model.structured.connectivity=8")
    trainer.fit()
    predictor = Predictor.from_run(trainer.run.root, "latest", device="cpu")
    model = predictor.model
    assert isinstance(model, StructuredSegmenter) and model.head.connectivity == 8
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    image = torch.randint(0, 256, (3, 18, 22), dtype=torch.uint8)
    labels = predictor.predict(image)
    assert labels.shape == (18, 22) and labels.dtype == torch.int64
    x = predictor.preprocess(image)[None]
    direct = trainer.model.eval().predict(x)[0]
    assert torch.equal(labels, direct)
    with pytest.raises(ConfigError, match="not class probabilities"):
        predictor.predict_proba(image)


def test_predictor_rebuilds_a_dense_head_with_the_runs_kernels(tmp_path):
    from structseg.engine.predict import Predictor
    from structseg.structured.dense import DenseSSVMHead

    trainer = make_trainer(tmp_path, "ssvm", "train.iterations=2", "train.eval_every=2", *DENSE)
    trainer.fit()
    predictor = Predictor.from_run(trainer.run.root, "latest", device="cpu")
    head = predictor.model.head
    assert isinstance(head, DenseSSVMHead) and (head.config.sxy_bilateral, head.config.iterations) == (4.0, 3)
    assert float(head.penalty.detach().abs().sum()) > 0  # the learnt penalties came back
    image = torch.randint(0, 256, (3, 18, 22), dtype=torch.uint8)
    x = predictor.preprocess(image)[None]
    assert torch.equal(predictor.predict(image), trainer.model.eval().predict(x)[0])


# --------------------------------------------------------------------- CLI

CLI = ["train.iterations=3", "train.eval_every=3", "train.checkpoint_every=3", "train.log_every=1",
       "data.options.length=6", "data.options.size=24", "data.crop_size=24", "data.batch_size=3",
       "data.eval_batch_size=6", "model.options.base_channels=4", "train.progress=false", "train.num_threads=1",
       "model.head=ssvm", "model.structured.feature_stride=2", "model.structured.solver_options={max_iter: 20}"]


def test_cli_train_eval_predict_with_ssvm(tmp_path, capsys):
    from PIL import Image

    from structseg.cli import main

    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--set", *CLI]) == 0
    assert "model.head=ssvm" in capsys.readouterr().out
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["config"]["model"]["head"] == "ssvm" and "head.pairwise.weight" in ckpt["model"]
    assert main(["train", "--resume", str(run), "--set", "train.iterations=4"]) == 0
    assert torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["iteration"] == 4

    out = tmp_path / "eval.json"
    assert main(["eval", "--run", str(run), "--which", "latest", "-o", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert sum(c["pixels"] for c in result["per_class"].values()) == 6 * 24 * 24
    assert main(["eval", "--run", str(run), "--flip", "--no-progress"]) == 2
    assert "eval.flip=false" in capsys.readouterr().err

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(images / "a.png")
    assert main(["predict", "--run", str(run), str(images), "-o", str(tmp_path / "pred")]) == 0
    mask = np.asarray(Image.open(tmp_path / "pred" / "a_mask.png"))
    assert mask.shape[:2] == (20, 30)


def test_feature_pooling_is_average_pooling(tmp_path):
    model = build_model_from_config(head_config(tmp_path, "svm", "model.structured.feature_stride=3"), 3).eval()
    x = torch.randn(1, 3, 12, 15)
    full = model.base.forward_features(x)["features"]
    assert full.shape[-2:] == (12, 15)  # the U-Net pads to a multiple of 16; its features drop that padding
    expected = full.reshape(1, 4, 4, 3, 5, 3).mean(dim=(3, 5))
    torch.testing.assert_close(model.features(x), expected)
    scores = model(x)
    torch.testing.assert_close(scores, F.interpolate(model.head(expected), size=(12, 15), mode="bilinear",
                                                     align_corners=False))


# --------------------------------------------------------------------- DDP

def _ddp_structured_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os
    from pathlib import Path

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = make_trainer(Path(out_dir), "ssvm", "train.iterations=3", "train.eval_every=3",
                               "train.deterministic=false")
        trainer.fit()
        flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        torch.save(flat, Path(out_dir) / f"params_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_process_gloo_trains_an_ssvm_head(tmp_path):
    """The base model's classifier gets no gradient: DDP needs find_unused_parameters, and ranks stay in sync."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_structured_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["iteration"] == 3
    a, b = (torch.load(tmp_path / f"params_{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("head", ["svm", "cnn_crf", "message_net"])
def test_own_loss_models_get_the_datas_class_weights(tmp_path, head) -> None:
    trainer = make_trainer(tmp_path, head, "data.class_weights=median", "model.cnn_crf.hidden=4")
    trainer.setup()
    holder = trainer.model if head != "svm" else trainer.model.head
    expected = compute_class_weights("median", trainer.train_set, trainer.classes)
    assert holder.class_weights is not None and torch.equal(holder.class_weights, expected)


@pytest.mark.parametrize(("form", "pairwise"), [(CONTRAST, "head.contrast"), (DENSE, "head.penalty")])
def test_a_fixed_unary_layer_leaves_only_the_pairwise_terms_to_learn(tmp_path, form, pairwise):
    trainer = make_trainer(tmp_path, "ssvm", "train.iterations=4", "train.eval_every=4", "train.checkpoint_every=4",
                           "optim.lr=0.001", *form, "model.structured.train_unary=false")
    trainer.setup()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    changed = {k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])}
    assert changed == {pairwise}, changed
    assert float(after["head.unary.weight"].abs().sum()) == 0  # the unaries are the network's logits
    with pytest.raises(ConfigError, match="train_unary'=false needs .*residual'=true"):
        load_config(None, ["model.head=ssvm", "model.structured.train_unary=false"])
