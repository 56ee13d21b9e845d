"""Train every registered model a few steps on its fast path, in this process; run as a subprocess.

``python _train_every_model.py auto|bf16``: ``auto`` is the path ``select_fast_path`` picks for this CPU,
``bf16`` forces bf16 autocast on top of it (on CPUs without native bf16 it runs torch's own kernels).
A kernel that corrupts memory kills the process, so the caller checks the exit status; each case is
printed before it starts, so the last line names the culprit.
"""
from __future__ import annotations

import dataclasses
import sys
import time

import torch
import torch.nn.functional as F

from structseg.models import build_model, list_models, model_spec
from structseg.models.fastpath import cpu_has_native_bf16, select_fast_path
from structseg.structured.models import LinearSVMHead, StructuredSVMHead

K = 11
# The lightest backbone of each model, at full width: the defect this guards against needs AlexNet's
# and VGG's 4096-channel fc7 (VGG itself is left out for time: its fc7 and score layers are AlexNet's).
LIGHT = ("alexnet", "resnet18", None)
EXTRA = [("deeplabv3plus", "mobilenet_v3_large")]
# Forced bf16 without native bf16 emulates AlexNet's fc6 (about 30 s a model here): FCN-8s alone holds
# FCN-32s's and FCN-16s's layers.
EMULATED_SKIP = {("fcn32s", "alexnet"), ("fcn16s", "alexnet")}


def cases() -> list[tuple[str, str | None]]:
    """Every registered model once, on the first of ``LIGHT`` it takes, and ``EXTRA``."""
    chosen = []
    for name in list_models():
        backbones = model_spec(name).backbones
        chosen.append((name, next(b for b in LIGHT if (b in backbones if b else not backbones))))
    return chosen + EXTRA


def plan(mode: str) -> list[tuple[str, str | None]]:
    """The models ``main(mode)`` trains, in order."""
    skip = set() if mode == "auto" or cpu_has_native_bf16() else EMULATED_SKIP
    return [case for case in cases() if case not in skip]


HEADS = ("LinearSVMHead-4096", "StructuredSVMHead-4096")


def main(mode: str, steps: int = 2) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, K, (2, 64, 64))
    for name, backbone in plan(mode):
        print(f"start {name}-{backbone}", flush=True)
        start = time.perf_counter()
        options = {} if backbone else {"base_channels": 16}
        model = build_model(name, K, backbone=backbone, aux=name.startswith("deeplab"), **options).train()
        path = select_fast_path("cpu", backbone=backbone)
        if mode == "bf16":
            path = dataclasses.replace(path, autocast_dtype=torch.bfloat16)
        model = path.prepare(model)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        for _ in range(steps):
            with path.autocast("cpu"):
                logits, aux = model.forward_train(path.prepare_input(x))
            out = logits if aux is None else logits + 0.4 * aux
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"ok {name}-{backbone} {loss.item():.3f} {time.perf_counter() - start:.1f}s", flush=True)
    features = torch.randn(2, 4096, 2, 2)  # fc7 features of FCN-AlexNet/VGG at 64x64
    target = torch.randint(0, K, (2, 2, 2))
    for label, head in zip(HEADS, (LinearSVMHead(4096, K), StructuredSVMHead(4096, K))):
        print(f"start {label}", flush=True)
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                loss = head.loss(features, target)
            loss.backward()
        print(f"ok {label}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
