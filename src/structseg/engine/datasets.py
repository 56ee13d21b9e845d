"""Data plumbing for training: prepared data sets, resumable samplers, class weights.

Augmentation randomness is made a function of ``(seed, epoch, index)``: the
sampler hands each index its own seed and :class:`SeededDataset` runs the
transform under that seed. The augmented batch at iteration ``i`` is then the
same whatever the worker count and whether the run was interrupted, which is
what makes exact resume possible.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from structseg.data.base import ClassInfo, PairTransform, SegmentationDataset
from structseg.data.transforms import resize_pair
from structseg.engine.config import Config
from structseg.engine.distributed import DistInfo
from structseg.errors import ConfigError, DataError

Pair = tuple[torch.Tensor, torch.Tensor]  # (image, mask)
IndexedPair = tuple[torch.Tensor, torch.Tensor, int]  # (image, mask, index in the split)


class PreparedDataset(SegmentationDataset):
    """A data set resized once (optional) and held in RAM (optional), with its own transform.

    Masks are cached as uint8 when their labels fit, an eighth of int64's memory.
    """

    def __init__(
        self,
        base: SegmentationDataset,
        *,
        resize: tuple[int, int] | None = None,
        preload: bool = False,
        transform: PairTransform | None = None,
        progress: bool = False,
    ) -> None:
        self.base = base
        self.classes = base.classes
        self.resize = resize
        self.transform = transform
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if preload:
            from tqdm.auto import tqdm

            cache = []
            for i in tqdm(range(len(base)), desc="preload", disable=not progress, leave=False):
                image, mask = self._read(i)
                small = mask.numel() == 0 or (int(mask.min()) >= 0 and int(mask.max()) < 256)
                cache.append((image.contiguous(), mask.to(torch.uint8) if small else mask))
            self._cache = cache

    def _read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.base.load(index)
        if self.resize is not None:
            image, mask = resize_pair(image, mask, self.resize)
        return image, mask

    @property
    def preloaded(self) -> bool:
        """Whether every pair was read into RAM (and so validated) when the set was built."""
        return self._cache is not None

    def __len__(self) -> int:
        return len(self.base)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None:
            return self._read(index)
        image, mask = self._cache[index]
        return image, mask.long()

    def load_mask(self, index: int) -> torch.Tensor:
        """The mask alone (cached, or read without decoding the image where the base allows)."""
        if self._cache is not None:
            return self._cache[index][1].long()
        if self.resize is None and hasattr(self.base, "load_mask"):
            return self.base.load_mask(index)
        return self.load(index)[1]

    def describe(self, index: int) -> str:
        return self.base.describe(index)

    def item_name(self, index: int) -> str:
        return self.base.item_name(index)


class SeededDataset(Dataset[IndexedPair]):
    """Wraps a data set: item ``(index, seed)`` -> ``(image, mask, index)`` transformed under ``seed``.

    The global RNGs (python, numpy, torch) are restored afterwards, so drawing
    samples does not disturb the training loop's own random stream.
    """

    def __init__(self, dataset: Dataset[Pair]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> IndexedPair:
        index, seed = item
        py_state = random.getstate()
        np_state = np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % (2**32))
            try:
                image, mask = self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
        return image, mask, index


class ShardedSampler(Sampler[Any]):
    """Epoch-seeded permutation split across ``world_size`` ranks, startable mid-epoch.

    Like :class:`torch.utils.data.DistributedSampler` (same rank-strided split,
    so one process with batch ``B`` sees the same global batches as ``W``
    processes with ``B / W`` each) plus: every index comes with a per-sample
    augmentation seed, and :meth:`set_epoch` takes a ``start`` offset so a
    resumed run continues exactly where the interrupted one stopped.
    With ``shuffle=False`` and ``pad=False`` it is an evaluation sharder
    that visits every item exactly once across ranks.
    """

    def __init__(
        self,
        length: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        pad: bool = True,
        with_seeds: bool = True,
    ) -> None:
        self.length = length
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.pad = pad
        self.with_seeds = with_seeds
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start`` items of this rank."""
        self.epoch = epoch
        self.start = start

    def per_rank(self) -> int:
        if self.pad:
            return math.ceil(self.length / self.world_size)
        return len(range(self.rank, self.length, self.world_size))

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if self.pad and self.length % self.world_size:
            extra = self.world_size - self.length % self.world_size
            order += (order * math.ceil(extra / max(1, len(order))))[:extra]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Any]:
        indices = self._indices()[self.start :]
        if not self.with_seeds:
            yield from indices
            return
        for pos, index in enumerate(indices, start=self.start):
            # seed of (seed, epoch, position in the global order): the same sample gets the
            # same augmentation whatever the number of processes
            global_pos = pos * self.world_size + self.rank
            key = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + global_pos
            yield index, key % (2**63 - 1)

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.start)


# ------------------------------------------------------------ class weights

def class_pixel_counts(dataset: SegmentationDataset, num_classes: int,
                       ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: total pixels, and total pixels of the images in which the class occurs."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    image_pixels = torch.zeros(num_classes, dtype=torch.float64)
    for i in range(len(dataset)):
        mask = dataset.load_mask(i) if hasattr(dataset, "load_mask") else dataset.load(i)[1]
        labels = mask.reshape(-1).long()
        labels = labels[(labels != ignore_index) & (labels >= 0) & (labels < num_classes)]
        c = torch.bincount(labels, minlength=num_classes).double()
        counts += c
        image_pixels += (c > 0).double() * labels.numel()
    return counts, image_pixels


def compute_class_weights(method: str, dataset: SegmentationDataset, classes: ClassInfo) -> torch.Tensor | None:
    """Class weights for the loss from the training masks (``None`` for ``"none"``)."""
    from structseg.data.classes import WEIGHT_METHODS, class_weights

    if method == "none":
        return None
    if method not in WEIGHT_METHODS:
        raise ConfigError(f"data.class_weights: unknown method {method!r} (none, {', '.join(WEIGHT_METHODS)})")
    counts, image_pixels = class_pixel_counts(dataset, classes.num_classes, classes.ignore_index)
    if not bool((counts > 0).any()):
        raise DataError("class weights: the training masks hold no labelled pixel")
    return class_weights(counts, method, image_pixels=image_pixels)


def build_loaders(train_set: Dataset[Pair], val_set: Dataset[Pair], cfg: Config, dist: DistInfo, local_batch: int,
                  device: torch.device) -> tuple[ShardedSampler, DataLoader[IndexedPair], DataLoader[Pair], int]:
    """The training sampler and loader (seeded per sample, sharded per process, resumable), the validation
    loader (sharded, unpadded) and the steps per epoch; a :class:`DataError` when the split is smaller than
    one batch."""
    t, w = cfg.train, cfg.data.workers
    n = len(train_set)  # type: ignore[arg-type]
    sampler = ShardedSampler(n, rank=dist.rank, world_size=dist.world_size, shuffle=True, seed=t.seed)
    steps_per_epoch = sampler.per_rank() // local_batch
    if steps_per_epoch == 0:
        raise DataError(f"the training split has {n} images, fewer than the batch size ({local_batch} per "
                        "process): lower data.batch_size")
    pin = device.type == "cuda"
    train_loader = DataLoader(
        SeededDataset(train_set), batch_size=local_batch, sampler=sampler, drop_last=True, num_workers=w,
        persistent_workers=w > 0, pin_memory=pin, generator=torch.Generator().manual_seed(t.seed),
    )
    val_sampler = ShardedSampler(len(val_set), rank=dist.rank, world_size=dist.world_size,  # type: ignore[arg-type]
                                 shuffle=False, pad=False, with_seeds=False)
    val_loader = DataLoader(val_set, batch_size=cfg.data.eval_batch_size, sampler=val_sampler, num_workers=w,
                            persistent_workers=w > 0, pin_memory=pin, generator=torch.Generator())
    return sampler, train_loader, val_loader, steps_per_epoch


def check_batch_labels(masks: torch.Tensor, indices: torch.Tensor, num_classes: int, ignore_index: int,
                       describe: Callable[[int], str]) -> None:
    """A :class:`DataError` naming the first offending items when a training batch holds labels outside
    ``0..num_classes-1`` that are not ``ignore_index``."""
    valid = masks[masks != ignore_index]
    if valid.numel() == 0:
        return
    lo, hi = int(valid.min()), int(valid.max())
    if lo < 0 or hi >= num_classes:
        bad = [int(i) for i, m in zip(indices, masks)
               if bool(((m != ignore_index) & ((m < 0) | (m >= num_classes))).any())]
        raise DataError(f"mask labels {lo}..{hi} do not fit the {num_classes} classes of the data set "
                        f"(ignore value {ignore_index}) in {', '.join(describe(i) for i in bad[:3])}")
