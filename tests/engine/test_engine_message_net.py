"""model.head=message_net: Lin et al.'s CNN message estimators through the engine, checked against a naive loop."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from _engine_helpers import CLI_TINY, assert_route_trains_evaluates_and_resumes

from structseg.crf.message_net import MessageEstimator, MessageNetModel
from structseg.engine.build import build_model_from_config
from structseg.engine.config import load_config

HEAD = ["model.head=message_net", "model.cnn_crf.hidden=8", "model.cnn_crf.feature_stride=2",
        "model.cnn_crf.surrounding=1", "model.cnn_crf.above_below=[2, 1]"]


def test_node_logits_are_the_unary_message_plus_the_mean_pairwise_messages() -> None:
    torch.manual_seed(0)
    offsets = [(0, 1), (1, 0)]
    net = MessageEstimator(3, 4, hidden=5, edge_types={"grid": offsets})
    f = torch.randn(1, 3, 2, 3)
    got = net(f)[0]
    unary = net.unary(f)[0]
    pair = net.pairwise["grid"]
    a, b = pair.to_node(f)[0], pair.from_node(f)[0]
    expected = unary.clone()
    h, w = 2, 3
    for y in range(h):
        for x in range(w):
            msgs = []
            for i, (dy, dx) in enumerate(offsets):
                for sign, index in ((1, i + len(offsets)), (-1, i)):  # p is the source (reverse) or the target
                    qy, qx = y + sign * dy, x + sign * dx
                    if 0 <= qy < h and 0 <= qx < w:
                        hidden = a[:, y, x] + b[:, qy, qx] + pair.relation.weight[index]
                        msgs.append(pair.out(hidden.relu()))
            expected[:, y, x] += torch.stack(msgs).mean(0)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_route_trains_evaluates_and_resumes_bit_exactly(tmp_path: Path) -> None:
    model = build_model_from_config(load_config(None, [*CLI_TINY, *HEAD]), 5)
    assert isinstance(model, MessageNetModel) and {k.split(".")[0] for k in model.state_dict()} == {"base", "crf"}
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 30, 34))
    torch.testing.assert_close(out.exp().sum(1), torch.ones(1, 30, 34), atol=1e-4, rtol=0)
    assert_route_trains_evaluates_and_resumes(tmp_path, HEAD)


def test_the_loss_is_the_cross_entropy_of_the_marginals_on_the_feature_grid() -> None:
    torch.manual_seed(1)
    model = build_model_from_config(load_config(None, [*CLI_TINY, *HEAD]), 3)
    x = torch.randn(2, 3, 16, 16)
    target = torch.randint(0, 3, (2, 16, 16))
    coarse = model.crf(model.features(x))
    from structseg.graph import downsample_labels

    labels = downsample_labels(target, tuple(coarse.shape[-2:]), 3)
    torch.testing.assert_close(model(x, target), F.cross_entropy(coarse, labels, ignore_index=255))


def test_the_residual_form_adds_the_messages_to_the_networks_logits(tmp_path: Path) -> None:
    torch.manual_seed(2)
    cfg = load_config(None, [*CLI_TINY, *HEAD, "model.cnn_crf.residual=true"])
    model = build_model_from_config(cfg, 3)
    assert isinstance(model, MessageNetModel) and model.residual
    x, target = torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.base(x))  # estimators start at zero
        model.class_weights = torch.tensor([1.0, 3.0, 0.5])
        torch.testing.assert_close(model(x, target), F.cross_entropy(model.base(x), target,
                                                                      weight=model.class_weights))
    assert_route_trains_evaluates_and_resumes(tmp_path, [*HEAD, "model.cnn_crf.residual=true"])
