"""kernels dispatch: the environment picks the backend once; every Triton op has a reference twin."""

from __future__ import annotations

import os
import subprocess
import sys

from llmctl import kernels
from llmctl.kernels import quant_reference, reference


def backend_of(env_value: str) -> subprocess.CompletedProcess:
    code = "from llmctl import kernels; print(kernels.BACKEND, kernels.rms_norm.__module__)"
    env = dict(os.environ, LLMCTL_KERNELS=env_value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_every_triton_op_has_a_reference_with_the_same_name():
    for name in kernels.TRITON_OPS:
        assert hasattr(reference, name) or hasattr(quant_reference, name), name
        assert callable(getattr(kernels, name))


def test_reference_is_bound_directly_on_a_cpu_only_process():
    done = backend_of("reference")
    assert done.stdout.split() == ["reference", "llmctl.kernels.reference"]


def test_triton_can_be_forced_and_a_bad_value_is_refused():
    forced = backend_of("triton")
    assert forced.returncode == 0 and forced.stdout.split() == ["triton", "llmctl.kernels.triton.norm_rope"]
    bad = backend_of("cuda")
    assert bad.returncode != 0 and "LLMCTL_KERNELS must be auto, reference or triton" in bad.stderr
