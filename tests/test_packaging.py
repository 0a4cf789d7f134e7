"""One import root: the wheel holds only llmctl/, runs beside the locked dependencies from any directory, and
the checkout never shadows another distribution's top-level name (Hugging Face's `kernels`, which
transformers >= 5.25 imports) whether or not its root is on sys.path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.factories import serve_process

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ("kernels", "agent", "controlplane", "tui", "migrations")
SHADOW_CHECK = (
    "from transformers import LlamaForCausalLM\n"
    "import kernels, llmctl.kernels\n"
    "print(kernels.__file__)\n"
    "print(llmctl.kernels.__file__)\n"
)

pytestmark = pytest.mark.slow


def run(cmd: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    return done


def working_tree_files() -> list[str]:
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy of the working tree: setuptools' build/ folder keeps files of earlier builds.
    src = tmp_path_factory.mktemp("src")
    for name in working_tree_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, src], cwd=dist)
    (built,) = dist.glob("llmctl-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway virtualenv with the wheel installed alone; it sees this environment's (locked) dependencies
    through a plain path entry, which runs none of their .pth files, so llmctl's editable finder stays out."""
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv)
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "locked-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps",
         "--no-index", wheel], cwd=venv)  # fmt: skip
    return venv


def test_the_wheel_holds_only_the_llmctl_import_root_and_every_component_file(wheel: Path):
    names = [n for n in zipfile.ZipFile(wheel).namelist() if not n.endswith("/")]
    dist_info = wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"
    assert {n.split("/")[0] for n in names} == {"llmctl", dist_info}
    assert "llmctl/__init__.py" not in names  # a PEP 420 namespace, shared by the component folders
    # Every file of every component folder (code, data, the proto, the Alembic template and versions, the
    # dashboard's stylesheet), at its import path: kernels/llmctl/kernels/x.py -> llmctl/kernels/x.py.
    tracked = {
        name.split("/", 1)[1]
        for name in working_tree_files()
        if name.split("/")[0] in COMPONENTS and "__pycache__" not in name
    }
    assert {n for n in names if n.startswith("llmctl/")} == tracked
    assert "llmctl/migrations/script.py.mako" in tracked and "llmctl/agent/engine/data/mc_items.jsonl" in tracked


def test_the_installed_wheel_runs_llmctl_from_another_directory(wheel_venv: Path, smollm2_path: Path, tmp_path):
    python, llmctl = wheel_venv / "bin" / "python", wheel_venv / "bin" / "llmctl"
    assert "generate" in run([llmctl, "--help"], cwd=tmp_path).stdout
    hf_kernels, ours = run([python, "-c", SHADOW_CHECK], cwd=tmp_path).stdout.split()
    assert Path(ours).is_relative_to(wheel_venv), ours  # the wheel's copy, not the checkout's
    assert not Path(hf_kernels).is_relative_to(ROOT / "kernels"), hf_kernels
    out = run([llmctl, "generate", "smollm2-135m", "What is 2+2? Answer with one number.", "--max-tokens", "6"],
              cwd=tmp_path).stdout  # fmt: skip
    assert "4" in out


@pytest.mark.parametrize("where", ["repository root", "another directory"])
def test_transformers_and_llmctl_import_side_by_side(where: str, tmp_path: Path):
    # `python -c` puts the working directory first on sys.path: from the root that is the checkout itself.
    cwd = ROOT if where == "repository root" else tmp_path
    hf_kernels, ours = run([sys.executable, "-c", SHADOW_CHECK], cwd=cwd).stdout.split()
    assert Path(hf_kernels).parent.name == "kernels" and not Path(hf_kernels).is_relative_to(ROOT / "kernels")
    assert Path(ours) == ROOT / "kernels" / "llmctl" / "kernels" / "__init__.py"


@pytest.mark.parametrize("where", ["repository root", "another directory"])
def test_llmctl_generate_and_serve_work_from_any_directory(where: str, smollm2_path: Path, tmp_path: Path):
    cwd = ROOT if where == "repository root" else tmp_path
    llmctl = Path(sys.executable).with_name("llmctl")
    out = run([llmctl, "generate", "smollm2-135m", "What is 2+2? Answer with one number.", "--max-tokens", "6"],
              cwd=cwd).stdout  # fmt: skip
    assert "4" in out
    # `llmctl serve` runs as `python -m llmctl.controlplane.cli`, which puts its working directory first on sys.path.
    with serve_process("smollm2-135m", "--served-model-name", "smol", cwd=cwd) as url:
        reply = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "smol", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] > 0
