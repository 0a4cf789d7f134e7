"""How long does `llmctl up` leave the gateway without service when one of its children is killed -9?

Starts `llmctl up --detach` in a scratch $LLMCTL_HOME, then --rounds times: opens --streams streaming chat
requests through the gateway, kills the control plane (`llmctl server`, which hosts the gateway) with
SIGKILL while they stream, and measures from the kill to the first chat completion that succeeds again
(the gateway's restart window), to the supervisor's new server in up.json, and to the agent's reconnect.
Then the same once for the agent (its replicas die with it, so service waits for a new replica).

    python benchmarks/bench_up_restart.py [--model smollm2-135m] [--rounds 3] [--streams 4] [--pause 60]
        [--json FILE]

Prints one row per kill; `llmctl down` at the end (also on failure).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from llmctl.controlplane.up_restart import STABLE_S

CONNECTED = "agent local connected to the control plane"
"""The agent's log line for each session it opens."""


def llmctl(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmctl.controlplane.cli", *args], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "LLMCTL_HOME": str(home)})


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat(state: dict, stream: bool = False, max_tokens: int = 4) -> int | None:
    """The status code of one chat completion; None when the connection fails or a stream ends without
    [DONE] or with an error event (a stream's status is sent before its first token)."""
    body = {"model": state["deployment"], "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": max_tokens, "stream": stream}
    headers = {"authorization": f"Bearer {state['api_key']}"}
    try:
        with httpx.stream("POST", f"{state['gateway_url']}/v1/chat/completions", json=body, headers=headers,
                          timeout=30, trust_env=False) as answer:
            text = b"".join(answer.iter_bytes()).decode(errors="replace")
    except httpx.HTTPError:
        return None
    if stream and answer.status_code == 200 and ("data: [DONE]" not in text or '"error"' in text):
        return None
    return answer.status_code


def kill_once(home: Path, name: str, streams: int) -> dict:
    state = json.loads((home / "up.json").read_text())
    old = state["pids"][name]
    results: list[int | None] = []
    threads = [threading.Thread(target=lambda: results.append(chat(state, stream=True, max_tokens=400)))
               for _ in range(streams)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # the streams are producing tokens
    agent_log = home / "logs" / "agent.log"
    connects = agent_log.read_text().count(CONNECTED)
    checks = {
        "served_again_s": lambda: chat(state) == 200,
        "new_pid_s": lambda: json.loads((home / "up.json").read_text())["pids"][name] != old,
        "agent_reconnected_s": lambda: agent_log.read_text().count(CONNECTED) > connects,
    }
    seen: dict[str, float] = {}
    killed = time.monotonic()
    os.kill(old, signal.SIGKILL)
    while len(seen) < len(checks):
        if time.monotonic() - killed > 300:
            raise TimeoutError(f"after killing the {name}, only {sorted(seen)} within 300 s")
        for key, check in checks.items():
            if key not in seen and check():
                seen[key] = round(time.monotonic() - killed, 2)
        time.sleep(0.1)
    for thread in threads:
        thread.join()
    return {"killed": name, **seen, "streams_broken": sum(code != 200 for code in results), "streams": streams}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--pause", type=float, default=STABLE_S,
                        help="seconds between kills; from STABLE_S on, each restart waits the base 1 s")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-up-restart-"))
    up = llmctl(home, "up", "--detach", "--model", args.model, "--gateway-port", str(free_port()),
                "--grpc-port", str(free_port()))
    if up.returncode != 0:
        sys.exit(f"llmctl up failed: {up.stderr}")
    rows = []
    try:
        for _ in range(args.rounds):
            rows.append(kill_once(home, "server", args.streams))
            print(rows[-1], flush=True)
            time.sleep(args.pause)
        rows.append(kill_once(home, "agent", args.streams))
        print(rows[-1], flush=True)
    finally:
        llmctl(home, "down")
    served = [r["served_again_s"] for r in rows if r["killed"] == "server"]
    print(f"\ngateway restart window after kill -9 of the server: median {statistics.median(served):.1f} s "
          f"(min {min(served):.1f}, max {max(served):.1f}, {len(served)} kills); "
          f"after kill -9 of the agent: {rows[-1]['served_again_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
