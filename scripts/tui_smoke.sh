#!/usr/bin/env bash
# Smoke test of the real dashboard: `llmctl up --detach` with a tiny random Llama, then `llmctl dashboard`
# in a 120x40 tmux pane, driven with send-keys and read with capture-pane. Fails (exit 1, printing the
# screen) when the expected text is not on screen in time. `llmctl down` runs on any exit.
#
#   scripts/tui_smoke.sh                     uses .venv/bin/python
#   PY=python3 scripts/tui_smoke.sh          another interpreter with llmctl installed
#   DASHBOARD="..." scripts/tui_smoke.sh     another command line for the dashboard
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
command -v tmux >/dev/null || { echo "tui smoke: tmux is not installed" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/llmctl-tui-smoke.XXXXXX")"
export LLMCTL_HOME="$WORK/home"
SOCKET="llmctl-tui-smoke-$$"
LLMCTL=("$PY" -m llmctl.controlplane.cli)
DASHBOARD="${DASHBOARD:-$PY -m llmctl.controlplane.cli dashboard}"

cleanup() {
    tmux -L "$SOCKET" kill-server 2>/dev/null || true
    "${LLMCTL[@]}" down >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

screen() { tmux -L "$SOCKET" capture-pane -p -J -t smoke; }

# expect TEXT [SECONDS]: wait until TEXT is on screen.
expect() {
    local text="$1" deadline=$((SECONDS + ${2:-30}))
    while ((SECONDS < deadline)); do
        if screen | grep -qF -- "$text"; then return 0; fi
        sleep 0.2
    done
    echo "tui smoke: FAILED waiting for '$text'; the screen was:" >&2
    screen >&2 || true
    exit 1
}

keys() { tmux -L "$SOCKET" send-keys -t smoke "$@"; sleep 0.3; }

echo "tui smoke: building a tiny model and starting llmctl up in $WORK"
"$PY" -c 'import sys; from pathlib import Path; from tests.factories import make_tiny_llama; make_tiny_llama(Path(sys.argv[1]))' "$WORK/tiny"
"${LLMCTL[@]}" up --detach --model "$WORK/tiny" --name tiny --gateway-port "$(free_port)" \
    --grpc-port "$(free_port)" --timeout 300 >"$WORK/up.out"

echo "tui smoke: driving the dashboard"
tmux -L "$SOCKET" new-session -d -s smoke -x 120 -y 40 \
    "env LLMCTL_HOME='$LLMCTL_HOME' TERM=xterm-256color $DASHBOARD; echo 'dashboard exited with' \$?; sleep 600"
expect "● connected" 60
expect "Nodes (1)"
expect "local"
expect "tiny"

# One key at a time, each followed by what it must bring on screen, as a person would.
keys Tab
keys Enter                                       # open the deployment
expect "Deployment tiny"
expect "Replicas (2)"
expect "ready"
expect "rollout.completed"                      # the newest event: the panel keeps the latest in view
keys Escape
expect "llmctl › Fleet"

keys e                                           # the audit log, then filter it
expect "llmctl › Events"
keys /
expect "filter: words"
tmux -L "$SOCKET" send-keys -t smoke -l rollout
expect "shown)"
expect "rollout.completed"
keys Escape                                      # clears the filter
keys Escape                                      # back to Fleet
expect "llmctl › Fleet"

keys s                                           # scale to the same count: a real round trip
expect "Scale tiny (now 1"
keys C-a
keys C-k
keys 1
keys Enter
expect "Scale tiny from 1 to 1 replicas?"
keys y
expect "tiny: scaled to 1 replica(s)"

keys q
expect "dashboard exited with 0" 15
echo "tui smoke: ok"
