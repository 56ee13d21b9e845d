"""ConfusionMatrix / SegMetrics: hand-computed cases, torchmetrics as oracle, streaming, errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

from structseg.errors import ConfigError, DataError
from structseg.metrics import ConfusionMatrix, SegMetrics, metrics_from_confusion

IGNORE = 255


def _nan_equal(actual: torch.Tensor, expected: list[float]) -> None:
    expected_t = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.double(), expected_t, equal_nan=True)


def test_hand_computed_3x3_with_ignore():
    # valid (truth, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,0); the pixel with truth 255 is skipped
    target = torch.tensor([[[0, 0, 1], [1, 2, IGNORE]]])
    pred = torch.tensor([[[0, 1, 1], [1, 0, 2]]])
    cm = ConfusionMatrix(3, ignore_index=IGNORE)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert cm.matrix.dtype == torch.int64
    m = cm.compute()
    _nan_equal(m.iou, [1 / 3, 2 / 3, 0.0])
    _nan_equal(m.acc, [1 / 2, 1.0, 0.0])
    _nan_equal(m.dice, [1 / 2, 4 / 5, 0.0])
    assert m.present.tolist() == [True, True, True]
    assert m.miou == pytest.approx(1 / 3)
    assert m.pixel_acc == pytest.approx(3 / 5)
    assert m.mean_acc == pytest.approx(1 / 2)
    assert m.fwiou == pytest.approx(2 / 5 * 1 / 3 + 2 / 5 * 2 / 3)
    assert m.confusion.tolist() == cm.matrix.tolist()


def test_absent_and_predicted_only_classes():
    # class 2 is predicted but never true (counts, IoU 0); class 3 appears nowhere (absent)
    target = torch.tensor([[0, 1], [1, 1]])
    pred = torch.tensor([[0, 2], [1, 1]])
    cm = ConfusionMatrix(4, ignore_index=IGNORE)
    cm.update(pred, target)
    m = cm.compute()
    assert m.present.tolist() == [True, True, True, False]
    _nan_equal(m.iou, [1.0, 2 / 3, 0.0, math.nan])
    _nan_equal(m.acc, [1.0, 2 / 3, 0.0, math.nan])
    _nan_equal(m.dice, [1.0, 4 / 5, 0.0, math.nan])
    assert m.miou == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m.mean_acc == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m.pixel_acc == pytest.approx(3 / 4)


def test_logits_same_as_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(logits, target)
    b.update(logits.argmax(1), target)
    assert torch.equal(a.matrix, b.matrix)
    c = ConfusionMatrix(4)  # unbatched (K,H,W) logits with an (H,W) target
    c.update(logits[0], target[0])
    d = ConfusionMatrix(4)
    d.update(logits[:1], target[:1])
    assert torch.equal(c.matrix, d.matrix)


def _random_batch(seed: int, n: int, k: int, size: int, absent: int | None = None):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, size, size, generator=g)
    target = torch.randint(0, k, (n, size, size), generator=g)
    if absent is not None:  # never true, never predicted
        logits[:, absent] = -1e4
        target[target == absent] = (absent + 1) % k
    target[torch.rand(n, size, size, generator=g) < 0.15] = IGNORE
    return logits, target


@pytest.mark.parametrize("absent", [None, 2])
def test_against_torchmetrics(absent):
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassJaccardIndex,
    )

    k = 5
    ours = ConfusionMatrix(k, ignore_index=IGNORE)
    tm = {
        "confmat": MulticlassConfusionMatrix(k, ignore_index=IGNORE),
        "miou": MulticlassJaccardIndex(k, ignore_index=IGNORE, average="macro"),
        "iou": MulticlassJaccardIndex(k, ignore_index=IGNORE, average="none"),
        "fwiou": MulticlassJaccardIndex(k, ignore_index=IGNORE, average="weighted"),
        "pixel_acc": MulticlassAccuracy(k, ignore_index=IGNORE, average="micro"),
        "mean_acc": MulticlassAccuracy(k, ignore_index=IGNORE, average="macro"),
        "acc": MulticlassAccuracy(k, ignore_index=IGNORE, average="none"),
        "dice": MulticlassF1Score(k, ignore_index=IGNORE, average="none"),
        "mean_dice": MulticlassF1Score(k, ignore_index=IGNORE, average="macro"),
    }
    for seed in range(3):
        logits, target = _random_batch(seed, n=2, k=k, size=12, absent=absent)
        ours.update(logits, target)
        for metric in tm.values():
            metric.update(logits, target)
    m = ours.compute()
    expected = {name: metric.compute().double() for name, metric in tm.items()}

    assert torch.equal(m.confusion, expected["confmat"].long())
    for name in ("miou", "fwiou", "pixel_acc", "mean_acc", "mean_dice"):
        assert getattr(m, name) == pytest.approx(float(expected[name]), abs=1e-6), name
    present = torch.ones(k, dtype=torch.bool)
    if absent is not None:
        present[absent] = False
    assert torch.equal(m.present, present)
    for name in ("iou", "acc", "dice"):
        ours_values = getattr(m, name)
        torch.testing.assert_close(ours_values[present], expected[name][present], atol=1e-6, rtol=0)
        assert torch.isnan(ours_values[~present]).all()


def test_streaming_equals_one_update():
    logits, target = _random_batch(7, n=6, k=4, size=10)
    once = ConfusionMatrix(4)
    once.update(logits, target)
    many = ConfusionMatrix(4)
    for chunk in (slice(0, 1), slice(1, 4), slice(4, 6)):
        many.update(logits[chunk].argmax(1), target[chunk])
    assert torch.equal(once.matrix, many.matrix)
    assert once.matrix.sum() == (target != IGNORE).sum()
    many.reset()
    assert int(many.matrix.sum()) == 0


def test_all_reduce_without_process_group_is_noop():
    logits, target = _random_batch(3, n=1, k=3, size=6)
    cm = ConfusionMatrix(3)
    cm.update(logits, target)
    before = cm.matrix.clone()
    assert cm.all_reduce() is cm
    assert torch.equal(cm.matrix, before)


def test_empty_matrix_gives_nan_not_error():
    m = ConfusionMatrix(3).compute()
    assert math.isnan(m.miou) and math.isnan(m.pixel_acc) and math.isnan(m.fwiou)
    assert not m.present.any()
    assert m.as_dict()["miou"] is None


def test_as_dict_json_and_table():
    target = torch.tensor([[0, 1], [1, 1]])
    pred = torch.tensor([[0, 2], [1, 1]])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    m = cm.compute()
    names = ["road", "sky", "tree", "car"]
    d = json.loads(json.dumps(m.as_dict(names), allow_nan=False))
    assert d["per_class"]["car"] == {"iou": None, "acc": None, "dice": None, "present": False, "pixels": 0}
    assert d["per_class"]["sky"]["iou"] == pytest.approx(2 / 3)
    assert d["miou"] == pytest.approx(5 / 9)
    assert d["confusion"] == cm.matrix.tolist()

    table = m.table(names)
    lines = table.splitlines()
    class_rows = [line for line in lines if line.split()[0] in names]
    assert [row.split()[0] for row in class_rows] == names
    assert len({len(row) for row in class_rows}) == 1  # fixed width
    assert class_rows[1].split()[1:] == ["66.67", "66.67", "80.00", "yes"]
    assert class_rows[3].split()[1:] == ["-", "-", "-", "no"]
    assert any(line.startswith("mIoU") and "55.56" in line for line in lines)
    with pytest.raises(DataError, match="3 entries"):
        m.table(names[:3])


def test_metrics_from_confusion_matches_compute():
    logits, target = _random_batch(11, n=2, k=3, size=8)
    cm = ConfusionMatrix(3)
    cm.update(logits, target)
    assert isinstance(metrics_from_confusion(cm.matrix), SegMetrics)
    assert metrics_from_confusion(cm.matrix).miou == cm.compute().miou
    with pytest.raises(DataError, match="square"):
        metrics_from_confusion(torch.zeros(2, 3))


def test_bad_input_errors_name_the_value():
    cm = ConfusionMatrix(3, ignore_index=IGNORE)
    with pytest.raises(DataError, match=r"\[7\]"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 7], [IGNORE, 1]]]))
    with pytest.raises(DataError, match=r"\[-1\]"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, -1], [1, 1]]]))
    with pytest.raises(DataError, match=r"predicted labels \[5\]"):
        cm.update(torch.tensor([[[0, 5], [1, 1]]]), torch.tensor([[[0, 1], [1, 1]]]))
    with pytest.raises(DataError, match="does not match"):
        cm.update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(DataError, match="4 channels"):
        cm.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(DataError, match="dtype"):
        cm.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    assert int(cm.matrix.sum()) == 0  # failed updates leave no trace
    with pytest.raises(ConfigError, match="ignore_index 1"):
        ConfusionMatrix(3, ignore_index=1)
    with pytest.raises(ConfigError, match="num_classes"):
        ConfusionMatrix(0)


def test_pixel_outside_ignore_but_ignore_out_of_range_is_fine():
    cm = ConfusionMatrix(11, ignore_index=11)  # CamVid: void = 11 = K
    cm.update(torch.tensor([[3, 4]]), torch.tensor([[3, 11]]))
    assert int(cm.matrix.sum()) == 1 and int(cm.matrix[3, 3]) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    logits, target = _random_batch(5, n=2, k=4, size=16)
    cpu, gpu = ConfusionMatrix(4), ConfusionMatrix(4)
    cpu.update(logits, target)
    gpu.update(logits.cuda(), target.cuda())
    assert gpu.matrix.device.type == "cuda"
    assert torch.equal(cpu.matrix, gpu.matrix.cpu())
