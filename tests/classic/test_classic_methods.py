"""Classic unsupervised segmentation: methods, majority labeling, scoring, CLI."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from structseg.classic import evaluate_classic, list_methods, majority_labels, segment
from structseg.cli import main
from structseg.data.base import ClassInfo, SegmentationDataset
from structseg.errors import ConfigError, DataError


def blob_image(h: int = 24, w: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two flat colors split along an irregular boundary; returns image and region map."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:h, 0:w]
    region = (cols + 3 * np.sin(rows / 3.0) + rng.integers(-1, 2, (h, w)) > w / 2).astype(np.int64)
    colors = np.array([[200, 30, 40], [20, 90, 210]], dtype=np.uint8)
    return colors[region], region


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label maps group the pixels identically (up to renaming)."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize("color_space", ["lab", "rgb"])
def test_kmeans_separates_two_flat_colors_exactly(color_space: str) -> None:
    image, region = blob_image()
    segments = segment(image, "kmeans", k=2, color_space=color_space)
    assert segments.shape == region.shape and segments.dtype == np.int64
    assert set(np.unique(segments)) == {0, 1}
    assert same_partition(segments, region)


def test_kmeans_with_more_clusters_than_colors_keeps_two() -> None:
    image, region = blob_image(seed=1)
    segments = segment(image, "kmeans", k=6)
    assert same_partition(segments, region)


def scene(h: int = 30, w: int = 40, seed: int = 0) -> np.ndarray:
    """Three colored regions with mild noise: structure any method should find."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), dtype=np.float64)
    image[: h // 2] = (40, 120, 220)
    image[h // 2 :] = (90, 160, 60)
    image[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = (230, 200, 30)
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


FAST_PARAMS = {"kmeans": {"k": 3}, "kmeans_xy": {"k": 4}, "meanshift": {"quantile": 0.2, "max_samples": 600},
               "ncut": {"n_segments": 40}}


@pytest.mark.parametrize("method", list_methods())
def test_each_method_gives_a_valid_deterministic_segment_map(method: str) -> None:
    image = scene()
    params = FAST_PARAMS[method]
    segments = segment(image, method, **params)
    assert segments.shape == image.shape[:2] and segments.dtype == np.int64
    ids = np.unique(segments)
    assert ids.tolist() == list(range(len(ids)))  # contiguous 0..n-1
    assert len(ids) >= 2
    np.testing.assert_array_equal(segments, segment(image, method, **params))
    # the yellow square differs from both halves in color: its centre and a corner never share a segment
    assert segments[15, 20] != segments[1, 1] and segments[15, 20] != segments[-2, -2]


def test_segment_rejects_bad_input() -> None:
    image = scene()
    with pytest.raises(ConfigError, match="unknown classic method 'watershed'"):
        segment(image, "watershed")
    with pytest.raises(ConfigError, match="no parameter.*bogus"):
        segment(image, "kmeans", bogus=3)
    with pytest.raises(DataError, match="uint8"):
        segment(image.astype(np.float32), "kmeans")
    with pytest.raises(DataError, match="shape"):
        segment(image[..., 0], "kmeans")


def brute_majority(segments: np.ndarray, reference: np.ndarray, ignore: int) -> np.ndarray:
    out = np.empty_like(segments)
    for s in np.unique(segments):
        votes = Counter(int(v) for v in reference[segments == s] if v != ignore)
        if votes:
            best = max(votes.values())
            out[segments == s] = min(c for c, n in votes.items() if n == best)
        else:
            out[segments == s] = ignore
    return out


def test_majority_labels_hand_case() -> None:
    segments = np.array([[0, 0, 1, 1], [0, 2, 1, 1], [3, 3, 3, 3]])
    truth = np.array([[2, 2, 0, 255], [1, 255, 0, 1], [255, 255, 255, 255]])
    expected = np.array([[2, 2, 0, 0], [2, 255, 0, 0], [255, 255, 255, 255]])
    np.testing.assert_array_equal(majority_labels(segments, truth, 3), expected)


def test_majority_labels_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        segments = rng.integers(0, 7, (9, 11))
        reference = rng.integers(0, 4, (9, 11))
        reference[rng.random((9, 11)) < 0.2] = 255
        np.testing.assert_array_equal(majority_labels(segments, reference, 4), brute_majority(segments, reference, 255))


def test_majority_labels_rejects_bad_labels() -> None:
    with pytest.raises(DataError, match="outside"):
        majority_labels(np.zeros((2, 2), int), np.full((2, 2), 5), 3)
    with pytest.raises(DataError, match="shape"):
        majority_labels(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)


class ArrayDataset(SegmentationDataset):
    """Images and masks held in memory, untransformed."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], classes: ClassInfo) -> None:
        self.images, self.masks, self.classes = images, masks, classes

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.images[index]).permute(2, 0, 1), torch.from_numpy(self.masks[index])


TWO_CLASSES = ClassInfo(names=("left", "right"), palette=((255, 0, 0), (0, 0, 255)))


def test_majority_scoring_hand_case() -> None:
    """Color A on columns 0-3, B on 4-7; truth: class 0 on columns 0-2, class 1 on 3-7, one void pixel."""
    h = 5
    image = np.zeros((h, 8, 3), dtype=np.uint8)
    image[:, :4] = (250, 10, 10)
    image[:, 4:] = (10, 10, 250)
    truth = np.ones((h, 8), dtype=np.int64)
    truth[:, :3] = 0
    truth[0, 3] = 255
    result = evaluate_classic(ArrayDataset([image], [truth], TWO_CLASSES), "kmeans", {"k": 2}, progress=False)
    # prediction: columns 0-3 -> class 0 (3 votes to 1), columns 4-7 -> class 1
    iou0 = 3 * h / (4 * h - 1)
    iou1 = 4 * h / (5 * h - 1)
    assert result.metrics.miou == pytest.approx((iou0 + iou1) / 2)
    assert result.metrics.pixel_acc == pytest.approx((7 * h) / (8 * h - 1))
    assert result.segments == [2] and len(result.seconds) == 1 and result.seconds[0] > 0


def test_evaluate_resizes_and_limits() -> None:
    image, region = blob_image(24, 32)
    ds = ArrayDataset([image, image, image], [region, region, region], TWO_CLASSES)
    result = evaluate_classic(ds, "kmeans", {"k": 2}, limit=2, size=(12, 16), keep=1, progress=False)
    assert len(result.seconds) == 2 and int(result.metrics.confusion.sum()) == 2 * 12 * 16
    assert result.examples[0].segments.shape == (12, 16)
    assert result.metrics.miou > 0.8


def test_cli_writes_segment_maps_and_overlays(tmp_path: Path) -> None:
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(scene(seed=i)).save(paths[-1])
    out = tmp_path / "out"
    assert main(["classic", "--method", "kmeans", "-p", "k=3", *map(str, paths), "-o", str(out)]) == 0
    for i in range(2):
        ids = np.asarray(Image.open(out / f"im{i}_ids.png")).astype(np.int64)
        np.testing.assert_array_equal(ids, segment(scene(seed=i), "kmeans", k=3))
        colored = np.asarray(Image.open(out / f"im{i}_segments.png"))
        assert colored.shape == (30, 40, 3)
        assert len(np.unique(colored.reshape(-1, 3), axis=0)) == len(np.unique(ids))
        assert np.asarray(Image.open(out / f"im{i}_overlay.png")).shape == (30, 40, 3)


def test_cli_reports_bad_parameter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "im.png"
    Image.fromarray(scene()).save(path)
    assert main(["classic", "--method", "ncut", "-p", "k=3", str(path), "-o", str(tmp_path / "o")]) == 2
    assert "no parameter(s) k" in capsys.readouterr().err


def test_cli_eval_on_synthetic(tmp_path: Path) -> None:
    pytest.importorskip("structseg.data.synthetic")
    out = tmp_path / "eval"
    rc = main(["classic", "--method", "kmeans_xy", "-p", "k=12", "--eval", "--layout", "synthetic",
               "--split", "val", "--limit", "2", "--size", "48", "48", "--figures", "1", "-o", str(out)])
    assert rc == 0
    import json

    summary = json.loads((out / "metrics.json").read_text())
    assert summary["images"] == 2 and 0 < summary["metrics"]["miou"] <= 1
    assert len(summary["per_image"]) == 2 and all(r["seconds"] > 0 for r in summary["per_image"])
    assert (out / "examples.png").stat().st_size > 0 and (out / "per_image.csv").is_file()


@pytest.mark.camvid
def test_camvid_scoring_runs(camvid_dir: Path) -> None:
    from structseg.data import build_dataset

    ds = build_dataset("camvid", camvid_dir, "val")
    result = evaluate_classic(ds, "kmeans", {"k": 8}, limit=1, size=(90, 120), progress=False)
    assert 0.05 < result.metrics.miou < 1 and result.segments[0] >= 2


@pytest.mark.parametrize(("bandwidth", "min_bin_freq"), [(0.8, 1), (1.5, 5)])
def test_vectorised_mean_shift_matches_sklearn(bandwidth: float, min_bin_freq: int) -> None:
    from sklearn.cluster import MeanShift

    from structseg.classic.meanshift import mean_shift_modes, nearest_mode

    rng = np.random.default_rng(0)
    centres = ([0, 0, 0], [3, 0, 1], [0, 3, 3], [2, 2, -2])
    points = np.concatenate([rng.normal(c, 0.3, (60, 3)) for c in centres]).astype(np.float32)
    reference = MeanShift(bandwidth=bandwidth, bin_seeding=True, min_bin_freq=min_bin_freq).fit(points)
    modes = mean_shift_modes(points, bandwidth, min_bin_freq=min_bin_freq)
    np.testing.assert_allclose(modes, reference.cluster_centers_, atol=1e-5)
    np.testing.assert_array_equal(nearest_mode(points, modes), reference.labels_)


def test_cli_offers_every_method() -> None:
    from structseg.classic.commands import METHOD_NAMES

    assert list(METHOD_NAMES) == list_methods()
