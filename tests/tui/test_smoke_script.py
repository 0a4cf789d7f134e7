"""scripts/tui_smoke.sh: the real `llmctl dashboard` in tmux against `llmctl up` with a tiny model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_smoke_script_drives_the_real_dashboard() -> None:
    assert shutil.which("tmux"), "the dashboard smoke test needs tmux (apt-get install tmux)"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "tui_smoke.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PY": sys.executable})
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.stdout.rstrip().endswith("tui smoke: ok")
