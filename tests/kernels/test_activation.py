"""The Triton SiLU-and-mul kernel against fp64 math and the torch reference.

Without a GPU the kernel runs under the Triton interpreter on CPU tensors, so shapes stay small.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton`

from llmctl.kernels import reference  # noqa: E402
from llmctl.kernels.triton import activation  # noqa: E402
from tests.kernels.closeness import assert_close  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)]


@pytest.fixture
def poisoned_empty(monkeypatch):
    """Every tensor the wrapper allocates starts as NaN, so an element the kernel never writes fails."""
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: empty(*a, **kw).fill_(float("nan")))


def fp64_silu_and_mul(gate_up):
    gate, up = gate_up.double().chunk(2, dim=-1)
    return gate * torch.sigmoid(gate) * up


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("tokens,inter", [(8, 1536), (5, 100), (3, 2500), (1, 1)])
def test_silu_and_mul_matches_fp64(poisoned_empty, dtype, tol, tokens, inter):
    # 1536: SmolLM2's intermediate size; 100 and 1 are below one block; 2500 ends mid-block.
    gate_up = torch.randn(tokens, 2 * inter, dtype=dtype, device=DEVICE) * 3
    gate_up0 = gate_up.clone()
    out = activation.silu_and_mul(gate_up)
    assert out.dtype == dtype and out.shape == (tokens, inter)
    assert_close(out, fp64_silu_and_mul(gate_up), tol, "out")
    assert torch.equal(gate_up, gate_up0)


@pytest.mark.parametrize("dtype,tol", DTYPES[:2])
def test_silu_and_mul_agrees_with_reference_on_strided_rows_and_leading_dims(poisoned_empty, dtype, tol):
    # gate_up is a column slice of a wider buffer (row stride != 2I), viewed with two leading dims.
    inter = 300
    wide = torch.randn(2, 7, 2 * inter + 64, dtype=dtype, device=DEVICE)
    gate_up = wide[..., : 2 * inter]
    out = activation.silu_and_mul(gate_up)
    ref = reference.silu_and_mul(gate_up)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert_close(out, fp64_silu_and_mul(gate_up), tol, "out")
    assert_close(out, ref.double(), 2 * tol, "out vs reference")


def test_silu_and_mul_rejects_odd_width_and_integer_input():
    with pytest.raises(ValueError, match="even"):
        activation.silu_and_mul(torch.randn(4, 7, device=DEVICE))
    with pytest.raises(ValueError, match="gate_up must"):
        activation.silu_and_mul(torch.ones(4, 8, dtype=torch.int32, device=DEVICE))
