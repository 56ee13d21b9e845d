"""Model tests run torch single-threaded: with pytest-xdist (or other jobs) sharing the cores,
intra-op threads oversubscribe them and the tests slow down several-fold."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
