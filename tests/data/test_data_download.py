"""VOC download=True: fails at once offline, extracts a served archive. Never touches the network."""
from __future__ import annotations

import tarfile
import time
from urllib.error import URLError

import pytest

import structseg.data.download as download
from structseg.data import build_dataset
from structseg.data.voc import VOC_URL
from structseg.errors import DataError


def test_offline_fails_fast_with_instructions(monkeypatch, tmp_path) -> None:
    seen = {}

    def offline(url, timeout):
        seen.update(url=url, timeout=timeout)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(download, "urlopen", offline)
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        build_dataset("voc", tmp_path / "voc", "train", download=True)
    assert time.perf_counter() - start < 2
    message = str(info.value)
    assert VOC_URL in message and str(tmp_path / "voc") in message and "VOCdevkit/VOC2012/JPEGImages" in message
    assert seen["url"] == VOC_URL and seen["timeout"] <= 10
    assert not list((tmp_path / "voc").glob("*.part"))


def test_without_download_the_error_names_the_archive(tmp_path) -> None:
    (tmp_path / "voc").mkdir()
    with pytest.raises(DataError, match=rf"{tmp_path / 'voc'}.*{VOC_URL}"):
        build_dataset("voc", tmp_path / "voc", "train")


def test_extracts_archive_from_url(make_tiny_dataset, tmp_path) -> None:
    data = make_tiny_dataset("voc", splits=("train",))
    archive = tmp_path / "VOCtrainval_11-May-2012.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(data.root, arcname="VOCdevkit/VOC2012")
    root = tmp_path / "fresh"
    ds = build_dataset("voc", root, "train", download=True, url=archive.as_uri())
    assert len(ds) == len(data.items["train"])
    assert (root / "VOCdevkit" / "VOC2012" / "JPEGImages").is_dir()
    assert not list(root.glob("*.tar*"))  # the downloaded copy is removed after extraction
    assert ds[0][1].shape == data.items["train"][0].mask.shape
