"""What the gateway benchmarks (bench_cache.py, bench_routing.py) share: a scratch database with one tenant, and
real `llmctl serve` replicas started as processes and waited for."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx


def scratch_tenant(prefix: str) -> tuple[Path, Any, str]:
    """(a fresh folder, a session factory on a migrated SQLite database in it, the API key of tenant "bench")."""
    from llmctl.controlplane.db.session import make_engine, session_factory, session_scope, upgrade_database
    from llmctl.controlplane.services import tenants

    home = Path(tempfile.mkdtemp(prefix=prefix))
    db_url = f"sqlite:///{home / 'llmctl.db'}"
    upgrade_database(db_url)
    db = session_factory(make_engine(db_url), api_key_secret=secrets.token_hex(16))
    with session_scope(db) as session:
        _, key = tenants.create_tenant(session, name="bench")
    return home, db, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_replica(model: Path, name: str, home: Path, threads: int | None = None) -> tuple[subprocess.Popen, str]:
    """`llmctl serve MODEL` serving as `name` on a free port, logging to HOME/NAME.log: (process, its URL)."""
    port = free_port()
    extra = ["--threads", str(threads)] if threads is not None else []
    with (home / f"{name}.log").open("w") as log:  # the child keeps its own copy of the file
        proc = subprocess.Popen([sys.executable, "-m", "llmctl.controlplane.cli", "serve", str(model),
                                 "--served-model-name", name, "--port", str(port), *extra],
                                env={**os.environ, "LLMCTL_HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(proc: subprocess.Popen, url: str, home: Path) -> None:
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"llmctl serve exited; see the logs in {home}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("llmctl serve did not become healthy in 300 s")
        time.sleep(0.5)
