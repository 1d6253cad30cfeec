"""Quantization tests run small models: one intra-op thread is as fast as two on them, and
far faster when the machine's two cores are busy with other work (threads then wait on each
other). The setting is restored after each test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
