"""Checkpoints: atomic writes, weights_only loading, RNG round trip, shape mismatch errors."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from _engine_helpers import TinyNet

from structseg.engine import checkpoint as C
from structseg.errors import CheckpointError


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "latest.pt"
    C.save_atomic({"model": {"w": torch.ones(3)}, "iteration": 1}, path)
    real_save = torch.save

    def broken_save(obj, handle, *a, **k):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        C.save_atomic({"model": {"w": torch.zeros(3)}, "iteration": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    ckpt = C.load_checkpoint(path)
    assert ckpt["iteration"] == 1 and torch.equal(ckpt["model"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["latest.pt"]  # no temporary left behind


def test_rng_states_survive_weights_only_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = C.capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(2))
    C.save_atomic({"model": {}, "rng": [state]}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    C.restore_rng_state(loaded["rng"][0])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(2), expected[2])


def test_different_shaped_model_is_named(tmp_path):
    C.save_atomic({"model": TinyNet(num_classes=3, width=8).state_dict()}, tmp_path / "c.pt")
    ckpt = C.load_checkpoint(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"head\.1\.weight \(3, 8, 1, 1\) vs model \(5, 8, 1, 1\)"):
        C.load_model_state(TinyNet(num_classes=5, width=8), ckpt["model"])
    with pytest.raises(CheckpointError, match=r"missing keys backbone\.1\.weight"):
        C.load_model_state(TinyNet(num_classes=3, width=8), {k: v for k, v in ckpt["model"].items()
                                                             if k != "backbone.1.weight"})
    model = TinyNet(num_classes=3, width=8)
    C.load_model_state(model, ckpt["model"])
    assert torch.equal(model.head[1].weight, ckpt["model"]["head.1.weight"])


def test_corrupt_and_missing_checkpoints(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt cannot be read"):
        C.load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        C.load_checkpoint(tmp_path / "none.pt")
