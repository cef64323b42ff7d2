"""Shared test settings."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tests run many small ops on a shared 2-core machine: one intra-op thread avoids
    oversubscription (measured ~20x slower with several threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
