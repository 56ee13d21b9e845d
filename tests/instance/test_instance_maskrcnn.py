"""Mask R-CNN: builders, a falling loss on tiny data, and the train / eval / predict commands."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from structseg.cli import main
from structseg.data.base import ClassInfo
from structseg.errors import ConfigError
from structseg.instance.config import load_instance_config
from structseg.instance.datasets import MapInstances, collate_detection
from structseg.instance.models import build_maskrcnn

SHAPES = ClassInfo(("red", "green"), ((255, 0, 0), (0, 255, 0)))
LIGHT = dict(min_size=64, max_size=64, anchor_sizes=[8, 16, 32, 64, 128], box_head_dim=64, mask_head_layers=[32, 32],
             rpn_batch_size_per_image=64, box_batch_size_per_image=32,
             rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
             rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50)


def tiny_instances(n: int, size: int = 64, seed: int = 0) -> MapInstances:
    """Dark noisy images with a red and a green rectangle each; class = color."""
    rng = np.random.default_rng(seed)
    images, instance_maps, class_maps = [], [], []
    for _ in range(n):
        image = rng.integers(0, 60, (3, size, size)).astype(np.uint8)
        inst = np.zeros((size, size), np.int64)
        cls = np.zeros((size, size), np.int64)
        for j, color in enumerate(([220, 40, 40], [40, 220, 40])):
            y, x = rng.integers(2, size - 26, 2)
            h, w = rng.integers(12, 24, 2)
            inst[y:y + h, x:x + w], cls[y:y + h, x:x + w] = j + 1, j
            image[:, y:y + h, x:x + w] = np.array(color, np.uint8)[:, None, None]
        images.append(image)
        instance_maps.append(inst)
        class_maps.append(cls)
    return MapInstances(images, instance_maps, class_maps, SHAPES)


def test_resnet50_is_torchvisions_maskrcnn() -> None:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    ours = build_maskrcnn(4, backbone="resnet50").state_dict()
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}


def test_bad_backbone_and_weights_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown Mask R-CNN backbone 'vgg16'"):
        build_maskrcnn(3, backbone="vgg16")
    with pytest.raises(ConfigError, match="weights_backbone"):
        build_maskrcnn(3, backbone="resnet18", weights_backbone="coco")


def test_loss_falls_on_tiny_data() -> None:
    """ResNet-18 FPN from scratch, light heads, 64x64 images, one fixed batch (MobileNet runs in the CLI test)."""
    torch.manual_seed(0)
    images, targets = collate_detection([tiny_instances(2)[i] for i in range(2)])
    model = build_maskrcnn(2, backbone="resnet18", **LIGHT).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("task: instance\nmodel: {backbone: resnet18, depth: 3}\n")
    with pytest.raises(ConfigError, match="model.depth"):
        load_instance_config(path)
    path.write_text("train: {iterations: many}\n")
    with pytest.raises(ConfigError, match="train.iterations"):
        load_instance_config(path)
    with pytest.raises(ConfigError, match="data.batch_size"):
        load_instance_config(None, ["data.batch_size=two"])
    assert load_instance_config(None, ["train.lr=1e-3"]).train.lr == pytest.approx(1e-3)


def test_train_eval_predict_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = {"train": tiny_instances(2, seed=1), "val": tiny_instances(2, seed=2)}
    monkeypatch.setattr("structseg.instance.train.build_instance_dataset",
                        lambda layout, root, split, **kw: data[split])
    model_cfg = {k: v for k, v in LIGHT.items()
                 if k in ("min_size", "max_size", "anchor_sizes", "box_head_dim", "mask_head_layers")}
    options = {k: v for k, v in LIGHT.items() if k not in model_cfg}
    config = tmp_path / "instance.yaml"
    config.write_text(json.dumps({
        "task": "instance", "data": {"layout": "tiny", "batch_size": 2},
        "model": {"backbone": "mobilenet_v3_small", **model_cfg, "options": options},
        "train": {"iterations": 3, "warmup_iters": 1, "log_every": 1, "tensorboard": False, "progress": False},
        "eval": {"figures": 1},
    }))
    run = tmp_path / "run"
    assert main(["instance", "train", "-c", str(config), "--set", "train.lr=0.005", "--run", str(run)]) == 0
    for name in ("config.yaml", "log.csv", "metrics.json", "checkpoints/latest.pt", "checkpoints/best.pt",
                 "figures/loss.png", "figures/val_predictions.png"):
        assert (run / name).is_file(), name
    assert load_instance_config(run / "config.yaml").train.lr == pytest.approx(0.005)
    assert len((run / "log.csv").read_text().strip().splitlines()) == 1 + 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["segm"]) >= {"AP", "AP50", "AP75"} and metrics["images"] == 2
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["iteration"] == 3 and ckpt["category_names"] == ["red", "green"]

    assert main(["instance", "eval", "--run", str(run)]) == 0
    evaluated = json.loads((run / "eval_val.json").read_text())
    assert evaluated["segm"] == metrics["segm"]  # same weights, same data: same AP

    image = tmp_path / "shapes.png"
    Image.fromarray(data["val"].images[0].permute(1, 2, 0).numpy()).save(image)
    out = tmp_path / "pred"
    assert main(["instance", "predict", "--run", str(run), str(image), "-o", str(out), "--threshold", "0.0"]) == 0
    drawn = np.asarray(Image.open(out / "shapes_instances.png"))
    assert drawn.shape == (256, 256, 3)  # small images are enlarged 4x so that captions stay legible


def test_draw_instances_colors_kept_masks_only() -> None:
    from structseg.instance.draw import draw_instances

    image = torch.full((3, 30, 40), 100, dtype=torch.uint8)
    masks = torch.zeros((2, 1, 30, 40))
    masks[0, 0, 2:8, 3:12] = 0.9
    masks[1, 0, 20:28, 15:25] = 0.9
    prediction = {"boxes": torch.tensor([[3.0, 2.0, 12.0, 8.0], [15.0, 20.0, 25.0, 28.0]]),
                  "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.2]), "masks": masks}
    drawn = draw_instances(image, prediction, ["red", "green"], score_threshold=0.5, min_side=1)
    assert drawn.shape == (30, 40, 3)
    assert (drawn[4:6, 5:10] != 100).any(-1).all()  # inside the kept mask (away from its box outline)
    assert (drawn[18:30] == 100).all()  # the low-score instance is not drawn, nor is anything below the caption
    assert draw_instances(image, prediction, ["red", "green"], min_side=60).shape == (60, 80, 3)
