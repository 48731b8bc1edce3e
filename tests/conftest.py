"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    # Tiny tensors: one intra-op thread is as fast, and spares the tests the oversubscription of a busy 2-core
    # machine (measured 4x faster under load). Restored after each test, since run scripts called in-process set
    # their own thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
