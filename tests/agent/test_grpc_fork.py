"""The agent forks replicas and measurements while its gRPC stream is busy. With grpcio's fork support on (its
default), about half of such children abort before exec (grpc/grpc#43055: the child restarts gRPC's epoll
poller, subprocess closes its descriptor, the poller dies on EBADF). Importing llmctl turns fork support off."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import llmctl.agent  # first, as every llmctl entry point does
import subprocess, threading
from concurrent import futures
import grpc

server = grpc.server(futures.ThreadPoolExecutor(4))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
stop = threading.Event()

def busy():
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    while not stop.is_set():
        try:
            channel.unary_unary("/llmctl.test/Nothing")(b"", timeout=0.05)
        except grpc.RpcError:
            pass

threads = [threading.Thread(target=busy, daemon=True) for _ in range(3)]
for t in threads:
    t.start()
codes = [subprocess.Popen(["/bin/true"], preexec_fn=lambda: None).wait() for _ in range(400)]
stop.set()
print(sum(code != 0 for code in codes))
"""


def test_children_forked_while_grpc_is_busy_start_normally() -> None:
    env = {"PATH": "/usr/bin:/bin"}  # no GRPC_ENABLE_FORK_SUPPORT from the caller's environment
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0", f"{out.stdout.strip()} of 400 children died before exec"
