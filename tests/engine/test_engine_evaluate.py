"""Inference modes against references: sliding window, flip and multi-scale TTA, sharded evaluation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _engine_helpers import PointwiseNet, TinyNet, TinySegDataset
from torch.utils.data import DataLoader

from structseg.engine.config import EvalConfig
from structseg.engine.datasets import ShardedSampler
from structseg.engine.evaluate import evaluate_model, gaussian_window, infer, slide_logits, window_starts
from structseg.errors import ConfigError


@pytest.fixture
def net():
    torch.manual_seed(0)
    return PointwiseNet().eval()


@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
@pytest.mark.parametrize("size, window, stride", [((23, 31), (8, 12), (5, 7)), ((6, 9), (8, 12), (4, 4))])
def test_slide_equals_whole_for_a_pointwise_model(net, blend, size, window, stride):
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(slide_logits(net, x, window, stride, blend=blend), net(x), rtol=1e-5, atol=1e-5)


def test_slide_blends_overlaps_with_the_weights():
    """A model whose output is its window's offset reveals the blending weights."""

    class Offset(torch.nn.Module):
        def forward(self, x):
            return x[:, :1].clone()  # channel 0 carries the pixel's x coordinate

    w = 10
    coords = torch.arange(w, dtype=torch.float32).expand(1, 1, 4, w)
    x = torch.cat([coords, torch.zeros(1, 2, 4, w)], dim=1)
    out = slide_logits(Offset(), x, (4, 6), (4, 4), blend="uniform")
    torch.testing.assert_close(out, coords)  # overlapping crops agree, so the average is exact
    g = gaussian_window((5, 7))
    assert g.shape == (5, 7) and g[2, 3] == 1 and torch.equal(g, g.flip(0)) and torch.equal(g, g.flip(1))


def test_window_starts_cover_everything_once_at_least():
    for length, window, stride in [(100, 32, 20), (32, 32, 8), (10, 32, 8), (65, 32, 32)]:
        starts = window_starts(length, window, stride)
        covered = torch.zeros(max(length, window), dtype=torch.bool)
        for s in starts:
            covered[s : s + window] = True
        assert covered[:length].all() and starts[-1] + window == max(length, window)


def test_flip_and_scales_match_explicit_tta():
    torch.manual_seed(1)
    model = TinyNet(norm=False).eval()
    x = torch.randn(1, 3, 20, 28)
    cfg = EvalConfig(flip=True, scales=[0.5, 1.0])
    with torch.no_grad():
        got = infer(model, x, cfg)
        probs = []
        for s in (0.5, 1.0):
            xs = (F.interpolate(x, size=(round(20 * s), round(28 * s)), mode="bilinear", align_corners=False)
                  if s != 1 else x)
            for flip in (False, True):
                out = model(xs.flip(-1)).flip(-1) if flip else model(xs)
                out = F.interpolate(out, size=(20, 28), mode="bilinear", align_corners=False)
                probs.append(out.softmax(1))
        torch.testing.assert_close(got, torch.stack(probs).mean(0), rtol=1e-5, atol=1e-6)
        assert torch.allclose(got.sum(1), torch.ones(1, 20, 28))


def test_pointwise_model_is_flip_invariant(net):
    x = torch.randn(1, 3, 9, 13)
    with torch.no_grad():
        torch.testing.assert_close(infer(net, x, EvalConfig(flip=True)), infer(net, x, EvalConfig()))


def test_slide_config_errors(net):
    with pytest.raises(ConfigError, match="eval.window"):
        infer(net, torch.randn(1, 3, 8, 8), EvalConfig(mode="slide"))
    with pytest.raises(ConfigError, match="scales"):
        infer(net, torch.randn(1, 3, 8, 8), EvalConfig(scales=[0.0]))


def test_evaluate_model_confusion_equals_direct_count(net):
    data = TinySegDataset(7, seed=3, flip=False)
    cm = evaluate_model(net, DataLoader(data, batch_size=3), 3).confusion
    direct = torch.zeros(3, 3, dtype=torch.int64)
    with torch.no_grad():
        for i in range(len(data)):
            image, mask = data[i]
            pred = net(image[None])[0].argmax(0)
            for t in range(3):
                for p in range(3):
                    direct[t, p] += int(((mask == t) & (pred == p)).sum())
    assert torch.equal(cm, direct)


def test_sharded_sampler_partitions_and_resumes():
    evals = [list(ShardedSampler(7, rank=r, world_size=3, shuffle=False, pad=False, with_seeds=False))
             for r in range(3)]
    assert sorted(sum(evals, [])) == list(range(7))
    sampler = ShardedSampler(10, rank=1, world_size=2, seed=4)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, start=2)
    assert list(sampler) == full[2:]
    single = ShardedSampler(10, seed=4)
    single.set_epoch(3)
    by_index = dict(single)
    assert all(by_index[i] == s for i, s in full)  # same sample, same augmentation seed, any world size
