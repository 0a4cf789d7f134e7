"""Load through the gateway with a real OpenAI-compatible load tool: guidellm at rising concurrency, then a soak
with the resident memory of every process of the stack sampled (issue 16, docs/reliability.md "Load").

    python -m benchmarks.load [--home DIR] [--levels 1,2,4,...,256] [--soak-seconds 600] [--json FILE]

Without --home it starts `llmctl up --detach` in a scratch $LLMCTL_HOME on free ports and stops it at the end;
with --home it uses the stack already up there. guidellm runs from its own virtualenv (--guidellm, default
.venv-load/bin/guidellm; `make load-tool`), offline, with the model's own tokenizer folder for its synthetic
prompts, one process per level so each level's answers are counted apart. Exit 1 when a level or the soak
saw a 5xx other than a 503 with Retry-After, a request that failed without an HTTP status, or a process whose
RSS grew more than 10% over the soak; 2 when the stack or guidellm could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.load_report import (
    Level,
    counts_delta,
    gateway_counts,
    level_failures,
    level_table,
    parse_report,
    read_tap,
    rss_failures,
    rss_table,
    summarize_rss,
)
from llmctl.agent.engine.paths import models_dir
from llmctl.controlplane.commands.up_state import live_pids, read_state

ROOT = Path(__file__).resolve().parents[1]
TAP = ROOT / "benchmarks" / "load_tap"


class LoadError(Exception):
    """The stack or guidellm could not run: no verdict (exit 2)."""


def llmctl(home: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmctl.controlplane.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "LLMCTL_HOME": str(home)})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_folder(model: str) -> Path:
    """The model's local HF folder: guidellm's tokenizer, and what a scratch `llmctl up` serves (no pull)."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        folder = models_dir() / model
    if not (folder / "tokenizer_config.json").exists():
        raise LoadError(f"no tokenizer in {folder}; run `llmctl models pull {model}` first")
    return folder


def start_stack(home: Path, args: argparse.Namespace, folder: Path) -> None:
    up = llmctl(home, "up", "--detach", "--model", str(folder), "--name", args.name, "--replicas",
                str(args.replicas), "--gateway-port", str(free_port()), "--grpc-port", str(free_port()))
    if up.returncode != 0:
        raise LoadError(f"llmctl up failed ({up.returncode}): {up.stdout[-1500:]}{up.stderr[-1500:]}")


def scenario(state: dict[str, Any], args: argparse.Namespace, folder: Path, streams: int, *,
             seconds: float, requests: int | None, seed: int, report: Path) -> dict[str, Any]:
    """A guidellm scenario file (its `--scenario`): the API key goes in this 0600 file, not on a command line."""
    constraints: list[dict[str, Any]] = [{"kind": "max_duration", "seconds": seconds}]
    if requests is not None:
        constraints.append({"kind": "max_requests", "count": requests})
    return {"spec": {
        "backend": {"kind": "openai_http", "target": state["gateway_url"], "model": state["deployment"],
                    "api_key": state["api_key"], "request_format": "/v1/chat/completions",
                    "timeout": args.request_timeout},
        "tokenizer": {"kind": "huggingface_auto", "model": str(folder)},
        "data": [{"kind": "synthetic_text", "prompt_tokens": args.prompt_tokens,
                  "output_tokens": args.output_tokens}],
        "profile": {"kind": "concurrent", "streams": [streams]},
        "constraints": constraints,
        "seed": {"kind": "static", "value": seed},
        "outputs": [{"kind": "json", "path": str(report)}],
    }}


def run_guidellm(state: dict[str, Any], args: argparse.Namespace, folder: Path, run_dir: Path, name: str,
                 streams: int, *, seconds: float, requests: int | None, seed: int) -> Level:
    """One guidellm process at one concurrency; its level with the tap's and the gateway's counts."""
    report, tap, log = (run_dir / f"{name}.{ext}" for ext in ("json", "tap.jsonl", "log"))
    config = run_dir / f"{name}.scenario.json"
    config.touch(mode=0o600)
    config.write_text(json.dumps(scenario(state, args, folder, streams, seconds=seconds, requests=requests,
                                          seed=seed, report=report), indent=2))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "GUIDELLM__MAX_WORKER_PROCESSES": str(args.load_workers), "LLMCTL_LOAD_TAP": str(tap),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TAP), os.environ.get("PYTHONPATH")]))}
    before = gateway_counts(scrape(state), state["deployment"])
    with log.open("w") as out:
        child = subprocess.Popen([args.guidellm, "run", "--scenario", str(config), "--disable-console-interactive"],
                                 cwd=run_dir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = child.wait(timeout=seconds + args.grace_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise LoadError(f"guidellm ({name}) ran past {seconds + args.grace_seconds:.0f} s; see {log}") from None
    if code != 0 or not report.exists():
        raise LoadError(f"guidellm ({name}) exited {code} without a report: {log.read_text()[-2000:]}")
    (level,) = parse_report(report)
    level.tap, level.without_retry_after = read_tap(tap)
    level.gateway = counts_delta(before, gateway_counts(scrape(state), state["deployment"]))
    return level


def scrape(state: dict[str, Any]) -> str:
    return httpx.get(f"{state['gateway_url']}/metrics", timeout=30, trust_env=False).text


class RssSampler(threading.Thread):
    """Every `interval` seconds: (time, name, pid, rss) of the supervisor and every process below it."""

    def __init__(self, home: Path, interval: float) -> None:
        super().__init__(daemon=True)
        self.home, self.interval = home, interval
        self.samples: list[tuple[float, str, int, int]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.extend(stack_rss(self.home))
            self._done.wait(self.interval)

    def stop(self) -> list[tuple[float, str, int, int]]:
        self._done.set()
        self.join()
        return self.samples


def stack_rss(home: Path) -> list[tuple[float, str, int, int]]:
    roles = {pid: name for name, pid in live_pids(read_state(home)).items()}
    found, now = [], time.time()
    roots = [psutil.Process(pid) for pid, name in roles.items() if name == "supervisor"]
    for process in roots + [c for root in roots for c in _children(root)]:
        try:
            rss = process.memory_info().rss
            name = roles.get(process.pid) or _child_name(process.cmdline()) or process.name()
        except psutil.Error:
            continue
        found.append((now, name, process.pid, rss))
    return found


def _child_name(cmdline: list[str]) -> str | None:
    """"replica :PORT" for an agent's `llmctl serve` child (`llmctl status` tells which port serves, which
    scores)."""
    if "serve" not in cmdline:
        return None
    port = cmdline[cmdline.index("--port") + 1] if "--port" in cmdline[:-1] else "?"
    return f"replica :{port}"


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def level_plan(streams: int, args: argparse.Namespace) -> int:
    """Requests a level runs: enough for every stream to send --requests-per-stream, at least --min-requests."""
    return max(args.min_requests, streams * args.requests_per_stream)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = model_folder(args.model)
    run_dir = Path(tempfile.mkdtemp(prefix="llmctl-load-"))
    home = args.home or run_dir / "home"
    started = args.home is None
    result: dict[str, Any] = {"setup": setup(args, folder), "levels": [], "soak": None, "rss": [], "failures": []}
    try:
        if started:
            print(f"llmctl up --detach in {home} ...", flush=True)
            start_stack(home, args, folder)
        state = read_state(home)
        if state.get("state") != "ready":
            raise LoadError(f"llmctl is not up and ready in {home} (state {state.get('state')!r})")
        result["setup"]["deployment"] = state["deployment"]
        for i, streams in enumerate(args.levels):
            level = run_guidellm(state, args, folder, run_dir, f"level-{streams}", streams,
                                 seconds=args.level_max_seconds, requests=level_plan(streams, args), seed=i)
            result["levels"].append(level.to_dict())
            result["failures"] += level_failures(level, f"{streams} streams")
            print(level_table([level]).splitlines()[-1] if i else level_table([level]), flush=True)
        if args.soak_seconds > 0:
            sampler = RssSampler(home, args.rss_interval)
            sampler.start()
            try:
                soak = run_guidellm(state, args, folder, run_dir, "soak", args.soak_streams,
                                    seconds=args.soak_seconds, requests=None, seed=len(args.levels))
            finally:
                samples = sampler.stop()
            window = json.loads((run_dir / "soak.json").read_text())["benchmarks"][0]
            measured = [s for s in samples if window["start_time"] <= s[0] <= window["end_time"]]
            rows = summarize_rss(measured, window_s=args.rss_window)
            result["soak"], result["rss"] = soak.to_dict(), [r.to_dict() for r in rows]
            result["rss_samples"] = [[round(t - window["start_time"], 1), name, pid, round(rss / 2**20, 1)]
                                     for t, name, pid, rss in measured]  # [seconds into the soak, name, pid, MiB]
            result["failures"] += level_failures(soak, "soak") + rss_failures(rows)
            print(f"\nsoak: {args.soak_streams} streams for {soak.seconds:.0f} s\n{level_table([soak])}\n")
            print(rss_table(rows))
    except LoadError as e:
        result["error"] = str(e)
        print(f"load: {e}", file=sys.stderr)
    finally:
        if started:
            down = llmctl(home, "down", timeout=300)
            print(down.stdout.strip() or down.stderr.strip())
    result["ok"] = not result["failures"] and "error" not in result
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    for failure in result["failures"]:
        print(f"FAIL {failure}")
    print(f"{'PASS' if result['ok'] else 'FAIL'}: {args.json} (guidellm's files in {run_dir})")
    return 2 if "error" in result else 0 if result["ok"] else 1


def setup(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    version = subprocess.run([args.guidellm, "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "guidellm": version.rsplit(" ", 1)[-1], "model": str(folder), "replicas": args.replicas,
        "levels": args.levels, "requests_per_stream": args.requests_per_stream, "min_requests": args.min_requests,
        "level_max_seconds": args.level_max_seconds, "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens, "soak_streams": args.soak_streams, "soak_seconds": args.soak_seconds,
        "rss_interval_s": args.rss_interval, "rss_window_s": args.rss_window, "load_workers": args.load_workers,
        "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--home", type=Path, help="use the `llmctl up` already running in this $LLMCTL_HOME")
    p.add_argument("--model", default="smollm2-135m", help="registered name or HF folder (its tokenizer too)")
    p.add_argument("--name", default="smollm2-135m", help="deployment name for a scratch `llmctl up`")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",") if x],
                   default=[1, 2, 4, 8, 16, 32, 64, 128, 256], help="concurrent streams per level ('' for none)")
    p.add_argument("--requests-per-stream", type=int, default=1)
    p.add_argument("--min-requests", type=int, default=10)
    p.add_argument("--level-max-seconds", type=float, default=180, help="a level's time bound (then cut)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--soak-streams", type=int, default=8)
    p.add_argument("--soak-seconds", type=float, default=600, help="0 skips the soak")
    p.add_argument("--rss-interval", type=float, default=5.0)
    p.add_argument("--rss-window", type=float, default=60.0, help="start/end RSS = median over this window")
    p.add_argument("--request-timeout", type=float, default=900.0)
    p.add_argument("--grace-seconds", type=float, default=300.0, help="guidellm's start-up and drain allowance")
    p.add_argument("--load-workers", type=int, default=2, help="guidellm worker processes")
    p.add_argument("--guidellm", default=str(ROOT / ".venv-load" / "bin" / "guidellm"))
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "load.json")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
