"""Graph tests run on tiny problems with one intra-op thread (see ``one_torch_thread``)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    yield
