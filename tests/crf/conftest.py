"""CRF tests run on tiny problems: one intra-op thread avoids OpenMP hand-off
costs that dominate such small work on a shared 2-core machine."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
