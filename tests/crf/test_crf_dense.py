"""Dense CRF: agreement with pydensecrf, input handling, parameter validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _crf_helpers import assert_close, camvid_crop, noisy_logits, scene

from structseg.crf import DenseCRF, DenseCRFConfig, DenseCRFRefiner, dense_crf, refine
from structseg.errors import ConfigError

dcrf = pytest.importorskip("pydensecrf.densecrf")

# float32 throughout on both sides; observed differences are ~1e-6
PROB_TOL = 1e-4
LABEL_AGREEMENT = 0.999


def reference(image: np.ndarray, logits: np.ndarray, iterations: int, *, sxy_g=3.0, compat_g=3.0, sxy_b=80.0,
              srgb=13.0, compat_b=10.0):
    """pydensecrf's DenseCRF2D on (H, W, 3) uint8 and (K, H, W) logits -> (K, H, W) probabilities."""
    k, h, w = logits.shape
    energy = -(logits - np.log(np.exp(logits).sum(0, keepdims=True)))
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(energy.reshape(k, -1), dtype=np.float32))

    def as_compat(c):
        return np.ascontiguousarray(c, dtype=np.float32) if isinstance(c, np.ndarray) else c

    crf.addPairwiseGaussian(sxy=sxy_g, compat=as_compat(compat_g))
    crf.addPairwiseBilateral(sxy=sxy_b, srgb=srgb, rgbim=np.ascontiguousarray(image), compat=as_compat(compat_b))
    return np.asarray(crf.inference(iterations)).reshape(k, h, w)


def ours(image: np.ndarray, logits: np.ndarray, iterations: int, **params) -> np.ndarray:
    img = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
    return dense_crf(torch.from_numpy(logits).unsqueeze(0), img, iterations=iterations, **params)[0].numpy()


def assert_agrees(a: np.ndarray, b: np.ndarray) -> None:
    assert np.abs(a - b).max() <= PROB_TOL
    assert (a.argmax(0) == b.argmax(0)).mean() >= LABEL_AGREEMENT


@pytest.mark.parametrize("iterations", [1, 5])
def test_matches_pydensecrf_potts(iterations):
    image, labels = scene(40, 56, seed=1)
    logits = noisy_logits(labels, 4, seed=2)
    params = dict(sxy_gaussian=3.0, compat_gaussian=3.0, sxy_bilateral=20.0, srgb=13.0, compat_bilateral=10.0)
    expected = reference(image, logits, iterations, sxy_b=20.0)
    got = ours(image, logits, iterations, **params)
    assert_agrees(got, expected)
    # the CRF did something: it changed labels relative to the unary argmax
    assert (expected.argmax(0) != logits.argmax(0)).mean() > 0.02


def test_matches_pydensecrf_matrix_compatibility():
    image, labels = scene(32, 40, seed=3)
    logits = noisy_logits(labels, 3, seed=4)
    rng = np.random.default_rng(5)
    mg = rng.normal(0, 1, (3, 3)).astype(np.float32)
    mb = rng.normal(0, 2, (3, 3)).astype(np.float32)  # not symmetric: both sides symmetrise
    expected = reference(image, logits, 4, compat_g=mg, compat_b=mb, sxy_b=15.0)
    got = ours(image, logits, 4, compat_gaussian=torch.from_numpy(mg), compat_bilateral=torch.from_numpy(mb),
               sxy_bilateral=15.0)
    assert_agrees(got, expected)


@pytest.mark.camvid
def test_matches_pydensecrf_on_camvid_crop(camvid_dir):
    image = camvid_crop(camvid_dir, 64, 96)
    labels = (image.astype(np.int64).sum(2) // 120) % 5  # a label map that follows the image
    logits = noisy_logits(labels, 5, seed=6, noise=2.0)
    assert_agrees(ours(image, logits, 5), reference(image, logits, 5))


def test_batch_equals_single_images():
    image_a, labels_a = scene(24, 30, seed=7)
    image_b, labels_b = scene(24, 30, seed=8)
    images = torch.from_numpy(np.stack([image_a, image_b])).permute(0, 3, 1, 2)
    logits = torch.from_numpy(np.stack([noisy_logits(labels_a, 3, 1), noisy_logits(labels_b[:, ::-1], 3, 2)]))
    batch = dense_crf(logits, images, sxy_bilateral=10.0)
    for i in range(2):
        single = dense_crf(logits[i : i + 1], images[i : i + 1], sxy_bilateral=10.0)
        assert_close(batch[i : i + 1], single, atol=1e-6)


def test_probabilities_and_logits_inputs_agree():
    image, labels = scene(20, 24)
    logits = torch.from_numpy(noisy_logits(labels, 3))
    img = torch.from_numpy(image).permute(2, 0, 1)
    from_logits = dense_crf(logits, img)
    from_probs = dense_crf(torch.softmax(logits, 0), img)  # auto-detected as probabilities
    assert from_logits.shape == (3, 20, 24)
    assert_close(from_probs, from_logits, atol=1e-5)
    assert_close(from_logits.sum(0), torch.ones(20, 24), atol=1e-5)


def test_zero_iterations_is_the_unary_softmax():
    image, labels = scene(12, 16)
    logits = torch.from_numpy(noisy_logits(labels, 3)).unsqueeze(0)
    img = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
    assert_close(dense_crf(logits, img, iterations=0), torch.softmax(logits, 1), atol=1e-6)


def test_float_and_normalized_images_equal_uint8():
    image, labels = scene(16, 20)
    logits = torch.from_numpy(noisy_logits(labels, 3)).unsqueeze(0)
    img = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
    expected = refine(logits, img)
    as_float = img.float() / 255
    assert_close(refine(logits, as_float), expected, atol=1e-5)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalized = (as_float - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    refiner = DenseCRFRefiner({"iterations": 5}, mean=mean, std=std)
    assert_close(refiner(logits, normalized), expected, atol=1e-4)
    with pytest.raises(ValueError, match="expected \\[0, 1\\]"):
        refine(logits, normalized)


@pytest.mark.parametrize("name", ["sxy_gaussian", "sxy_bilateral", "srgb", "compat_gaussian", "compat_bilateral"])
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_non_positive_parameters_are_rejected(name, value):
    image, labels = scene(8, 8)
    logits = torch.from_numpy(noisy_logits(labels, 3))
    with pytest.raises(ConfigError, match=name):
        dense_crf(logits, torch.from_numpy(image).permute(2, 0, 1), **{name: value})


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="iterations"):
        DenseCRFConfig(iterations=-1)
    with pytest.raises(ConfigError, match="sxy_bilatral"):
        DenseCRFConfig.from_dict({"sxy_bilatral": 80})
    with pytest.raises(ConfigError, match="compat_bilateral"):
        DenseCRFConfig(compat_bilateral=torch.ones(2, 3))
    config = DenseCRFConfig.from_dict({"iterations": 2, "compat_gaussian": [[0.0, 1.0], [1.0, 0.0]]})
    assert config.iterations == 2 and config.compat_gaussian.shape == (2, 2)


def test_shape_errors_say_what_differs():
    image, labels = scene(10, 12)
    img = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
    logits = torch.from_numpy(noisy_logits(labels, 3)).unsqueeze(0)
    with pytest.raises(ValueError, match="unary is 10x11 .* image is 10x12"):
        dense_crf(logits[..., :11], img)
    with pytest.raises(ValueError, match="batch sizes differ"):
        dense_crf(torch.cat([logits, logits]), img)
    with pytest.raises(ValueError, match="unary must be"):
        dense_crf(logits[0, 0], img)
    with pytest.raises(ValueError, match="image must be"):
        dense_crf(logits, img[:, :2])
    with pytest.raises(ValueError, match="K=3"):
        dense_crf(logits, img, compat_gaussian=torch.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        dense_crf(torch.full_like(logits, float("nan")), img)


def test_dense_crf_object_and_overrides():
    image, labels = scene(12, 12)
    logits = torch.from_numpy(noisy_logits(labels, 3)).unsqueeze(0)
    img = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
    crf = DenseCRF({"iterations": 3}, srgb=20.0)
    assert crf.config.iterations == 3 and crf.config.srgb == 20.0
    assert_close(crf(logits, img), dense_crf(logits, img, iterations=3, srgb=20.0), atol=0)


def test_threads_option_is_applied_and_restored(monkeypatch):
    image, labels = scene(12, 14)
    logits = torch.from_numpy(noisy_logits(labels, 3)).unsqueeze(0)
    img = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)  # record, keep running on one thread
    out = DenseCRF({"threads": 3})(logits, img)
    assert calls == [3, torch.get_num_threads()]
    assert_close(out, dense_crf(logits, img), atol=1e-6)
    with pytest.raises(ConfigError, match="threads"):
        DenseCRFConfig(threads=0)
