"""ConfusionMatrix.all_reduce in a real 2-process gloo group equals the single-process result.

Rank 0 runs in the test process and rank 1 in one process started by
torch.multiprocessing (spawn): one torch import less than spawning both.
"""
from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from structseg.metrics import ConfusionMatrix

K, IGNORE, WORLD = 4, 255, 2


def _shard(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    logits = torch.randn(2 + rank, K, 6, 7, generator=g)  # ranks hold different amounts of data
    target = torch.randint(0, K, (2 + rank, 6, 7), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = IGNORE
    return logits, target


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        cm = ConfusionMatrix(K, ignore_index=IGNORE)
        cm.update(*_shard(rank))
        cm.all_reduce()
        torch.save({"matrix": cm.matrix, "miou": cm.compute().miou}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_two_process_gloo(tmp_path):
    args = (str(tmp_path / "init"), str(tmp_path))
    child = mp.get_context("spawn").Process(target=_worker, args=(1, *args))
    child.start()
    try:
        _worker(0, *args)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0

    single = ConfusionMatrix(K, ignore_index=IGNORE)
    for rank in range(WORLD):
        single.update(*_shard(rank))
    expected = single.compute()
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(result["matrix"], single.matrix)
        assert result["miou"] == expected.miou
    assert not dist.is_initialized()
