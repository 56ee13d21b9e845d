"""Exact resume after a SIGKILL, and 2-process DDP (gloo) against one process."""
from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _engine_helpers import evaluate_fixed, plain_net, run_tiny

HERE = Path(__file__).parent

KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {here!r})
    from pathlib import Path
    from _engine_helpers import run_tiny

    def die(trainer):
        if trainer.iteration == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind

    run_tiny(Path({tmp!r}), "train.iterations={n}", "train.checkpoint_every={kill_at}", "train.eval_every=2",
             hooks={{"checkpoint_saved": [die]}})
    """
)


def test_killed_then_resumed_run_equals_uninterrupted_run(tmp_path):
    n, kill_at = 8, 4
    one_go, _ = run_tiny(tmp_path / "one_go", f"train.iterations={n}", f"train.checkpoint_every={kill_at}",
                         "train.eval_every=2")
    script = KILLED_RUN.format(here=str(HERE), tmp=str(tmp_path / "killed"), n=n, kill_at=kill_at)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    latest = tmp_path / "killed" / "run" / "checkpoints" / "latest.pt"
    assert torch.load(latest, weights_only=True)["iteration"] == kill_at

    resumed, result = run_tiny(tmp_path / "killed", f"train.iterations={n}", f"train.checkpoint_every={kill_at}",
                               "train.eval_every=2", "train.resume=true")
    assert result.iterations == n
    a, b = one_go.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit-identical, BatchNorm statistics included
    sa, sb = one_go.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    log = (tmp_path / "killed" / "run" / "log.csv").read_text().splitlines()
    iterations = [int(line.split(",")[0]) for line in log[1:] if line.split(",")[2]]
    assert iterations == list(range(1, n + 1))  # no row doubled by the restart


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_process_gloo_matches_one_process(tmp_path):
    import torch.multiprocessing as mp
    from _engine_helpers import ddp_worker

    mp.start_processes(ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    single, _ = run_tiny(tmp_path, "train.deterministic=false", model=plain_net(),
                         run_dir=tmp_path / "single_run")
    ddp = torch.load(tmp_path / "ddp_run" / "checkpoints" / "latest.pt", weights_only=True)
    assert ddp["world_size"] == 2 and ddp["iteration"] == single.iteration
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # evaluation of fixed weights: 7 images split 4 + 3 over two ranks, summed by all_reduce
    assert torch.equal(torch.load(tmp_path / "ddp_confusion.pt", weights_only=True), evaluate_fixed())
