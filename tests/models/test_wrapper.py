"""NetworkWrapper: the base of the structured layers put on a network."""
from __future__ import annotations

import pytest
import torch

from structseg.crf import CNNCRFModel
from structseg.crf.message_net import MessageNetModel
from structseg.models import build_model


@pytest.mark.parametrize("wrapper", [CNNCRFModel, MessageNetModel])
def test_a_frozen_network_keeps_its_statistics_while_the_layer_trains(wrapper) -> None:
    torch.manual_seed(0)
    model = wrapper(build_model("unet", 3, base_channels=4, depth=2), 3, hidden=4, train_backbone=False)
    before = {k: v.clone() for k, v in model.base.state_dict().items()}
    model.train()
    assert model.training and not any(m.training for m in model.base.modules())
    model(torch.rand(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))).backward()
    assert all(torch.equal(before[k], v) for k, v in model.base.state_dict().items())  # BN running stats too
    assert all(p.grad is None for p in model.base.parameters())
    assert any(p.grad is not None for p in model.crf.parameters())
    trained = wrapper(build_model("unet", 3, base_channels=4, depth=2), 3, hidden=4).train()
    assert all(m.training for m in trained.base.modules())
