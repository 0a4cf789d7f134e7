"""A PostgreSQL server of the test's own: initdb into a scratch folder, listening on a free loopback port.

Restarting it (the fault under test) touches no other database: the suite's shared server at 5432, and
other tests or people using it, never notice. The binaries come from the PostgreSQL install that serves
5432 (`pg_config --bindir`, else /usr/lib/postgresql/<newest>/bin). PostgreSQL refuses to run as root, so
as root the server runs as the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg


def _bindir() -> Path:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) found: install postgresql")
    return Path(candidates[-1]).parent


class PrivatePostgres:
    """start() -> url; restart(down_s) stops it (fast: sessions are terminated) and starts it again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bin = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="llmctl-pg-"))  # not under pytest's 0700 tmp: postgres reads it
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        """The control plane's database (created by start())."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/llmctl"

    def _run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stdout}{done.stderr}\n{tail}")

    def start(self) -> str:
        if not self.data.exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8")
            self._start()
            with psycopg.connect(self._admin(), autocommit=True) as connection:
                connection.execute("CREATE DATABASE llmctl")
        else:
            self._start()
        return self.url

    def _start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        """fast: sessions are terminated and the server shuts down cleanly (what a restart does);
        immediate: no shutdown checkpoint, crash recovery at the next start."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self._start()

    def running(self) -> bool:
        try:
            with psycopg.connect(self._admin(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _admin(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def close(self) -> None:
        if self.running():
            try:
                self.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
