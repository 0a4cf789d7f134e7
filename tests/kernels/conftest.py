"""Kernel tests build their tensors on the GPU when there is one, so the compiled Triton kernels get
device pointers; without a GPU everything stays on the CPU and Triton runs under the interpreter."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def tensors_on_the_test_device():
    if not torch.cuda.is_available():
        yield
        return
    torch.set_default_device("cuda")
    try:
        yield
    finally:
        torch.set_default_device("cpu")
