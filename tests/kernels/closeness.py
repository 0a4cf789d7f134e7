"""The one closeness check of the kernel tests: relative norm error against an fp64 reference."""

from __future__ import annotations

import pytest
import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double().cpu() - ref.double().cpu()).norm() / ref.double().cpu().norm()).item()


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "output") -> None:
    """||out - ref|| / ||ref|| < tol (ref in fp64); on failure show the worst elements.
    A non-finite output (an unwritten, poisoned element) always fails."""
    out64, ref64 = out.double().cpu(), ref.double().cpu()
    bad = ~torch.isfinite(out64)
    err = float("inf") if bad.any() else rel_err(out64, ref64)
    if err < tol:
        return
    diff = (out64 - ref64).abs().masked_fill(bad, float("inf")).flatten()
    lines = [f"{what}: relative error {err:.3g} >= {tol:g}; worst elements (index: got vs want):"]
    for i in diff.topk(min(8, diff.numel())).indices.tolist():
        idx = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), out64.shape))
        lines.append(f"  {idx}: {out64.flatten()[i].item():.6g} vs {ref64.flatten()[i].item():.6g}")
    pytest.fail("\n".join(lines))
