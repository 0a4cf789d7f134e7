"""Shared pieces of the control-plane server tests (no tests here): an in-process ControlPlane on free
ports, an AdminService client with the admin token, and a scripted agent that speaks AgentService over
real gRPC exactly as an agent daemon would, so the protocol is tested message by message."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.proto import llmctl_pb2_grpc as pb_grpc
from llmctl.controlplane.server import ControlPlane, ServerConfig

FAST = dict(grpc_port=0, gateway_port=0, heartbeat_interval_s=0.2, reconcile_interval_s=0.2,
            node_timeout_s=2.0)


@contextmanager
def running_control_plane(home: Path, **overrides: Any) -> Iterator[ControlPlane]:
    """A started ControlPlane with its SQLite file and tokens under `home`; stopped afterwards."""
    settings = {"database_url": f"sqlite:///{home / 'llmctl.db'}", "home": home, **FAST, **overrides}
    plane = ControlPlane(ServerConfig(**settings))
    plane.start()
    try:
        yield plane
    finally:
        plane.stop(grace_s=1)


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


class Admin:
    """AdminService with the admin token: admin.Deploy(pb.DeployRequest(...))."""

    def __init__(self, address: str, token: str | None) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.AdminServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()

    def __getattr__(self, rpc: str) -> Callable[..., Any]:
        method = getattr(self.stub, rpc)

        def call(request: Any, timeout: float = 10, **kw: Any) -> Any:
            return method(request, metadata=self.metadata, timeout=timeout, **kw)

        return call

    def deploy(self, name: str, model: str = "tiny", replicas: int | None = 1, quality_sample_rate: float = 0.0,
               **config: Any) -> pb.DeployResponse:
        """Quality sampling is off unless asked for: a sampling deployment also runs a scorer replica, and
        most tests here count replicas."""
        import json

        return self.Deploy(pb.DeployRequest(name=name, model=model, engine_config_json=json.dumps(config),
                                            replicas=replicas, quality_sample_rate=quality_sample_rate))

    def events(self, kind: str | None = None, deployment: str = "") -> list[pb.Event]:
        listed = self.ListEvents(pb.ListEventsRequest(deployment=deployment, limit=1000)).events
        return [e for e in listed if kind is None or e.kind == kind]

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ScriptedAgent:
    """An agent whose every message the test decides; commands from the control plane are queued for it.

    Heartbeats go out every `beat_s` on their own until stop_heartbeats(). `on_command(message)` runs on
    the receiving thread the moment a command arrives (to look at the control plane's state right then)."""

    def __init__(self, plane: ControlPlane, name: str, *, max_replicas: int = 4, token: str | None = None,
                 gpus: tuple[pb.GpuInfo, ...] = (), beat_s: float = 0.2,
                 on_command: Callable[[pb.ControlMessage], None] | None = None) -> None:
        self.name = name
        self.max_replicas = max_replicas
        self.gpus = gpus
        self.channel = grpc.insecure_channel(plane.grpc_address)
        self.stub = pb_grpc.AgentServiceStub(self.channel)
        self.metadata = (("x-llmctl-join-token", plane.join_token if token is None else token),)
        self.commands: queue.Queue[pb.ControlMessage] = queue.Queue()
        self.pings = 0
        self.on_command = on_command
        self.beat_s = beat_s
        self._outbox: queue.Queue[pb.AgentMessage | None] | None = None
        self._stream: Any = None
        self._beating = threading.Event()
        self.stream_ended = threading.Event()

    def register(self) -> pb.RegisterResponse:
        return self.stub.Register(
            pb.RegisterRequest(node_name=self.name, hostname=f"{self.name}.test", gpus=list(self.gpus),
                               engine_version="test", max_replicas=self.max_replicas),
            metadata=self.metadata, timeout=10,
        )

    def connect(self, replicas: list[pb.ReplicaStatus] | None = None, *, heartbeats: bool = True) -> None:
        outbox: queue.Queue[pb.AgentMessage | None] = queue.Queue()
        outbox.put(pb.AgentMessage(hello=pb.Hello(node_name=self.name, replicas=replicas or [])))
        self._outbox = outbox
        self.stream_ended.clear()

        def requests() -> Iterator[pb.AgentMessage]:
            while (message := outbox.get()) is not None:
                yield message

        self._stream = self.stub.Connect(requests(), metadata=self.metadata)
        threading.Thread(target=self._receive, args=(self._stream,), daemon=True).start()
        if heartbeats:
            self._beating.set()
            threading.Thread(target=self._beat, args=(outbox,), daemon=True).start()

    def join(self, replicas: list[pb.ReplicaStatus] | None = None) -> ScriptedAgent:
        self.register()
        self.connect(replicas)
        return self

    def _receive(self, stream: Any) -> None:
        try:
            for message in stream:
                if message.WhichOneof("kind") == "ping":
                    self.pings += 1  # keep-alive, not a command
                    continue
                if self.on_command is not None:
                    self.on_command(message)
                self.commands.put(message)
        except grpc.RpcError:
            pass
        finally:
            self.stream_ended.set()

    def _beat(self, outbox: queue.Queue[pb.AgentMessage | None]) -> None:
        while self._beating.is_set() and outbox is self._outbox:
            outbox.put(pb.AgentMessage(heartbeat=pb.Heartbeat(sent_at=time.time())))
            time.sleep(self.beat_s)

    def stop_heartbeats(self) -> None:
        self._beating.clear()

    def send(self, message: pb.AgentMessage) -> None:
        assert self._outbox is not None, "connect() first"
        self._outbox.put(message)

    def report(self, replica_id: int, state: int, *, deployment: str = "", revision: int = 0, url: str = "",
               error: str = "", restarts: int = 0) -> None:
        self.send(pb.AgentMessage(replica_status=status(replica_id, state, deployment=deployment,
                                                        revision=revision, url=url, error=error,
                                                        restarts=restarts)))

    def next_command(self, kind: str | None = None, timeout: float = 10.0) -> pb.ControlMessage:
        """The next command (of `kind`: start_replica, stop_replica, drain), skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"agent {self.name} got no {kind or 'command'} within {timeout}s"
            try:
                message = self.commands.get(timeout=left)
            except queue.Empty:
                continue
            if kind is None or message.WhichOneof("kind") == kind:
                return message

    def start_replica(self, timeout: float = 10.0) -> pb.StartReplica:
        return self.next_command("start_replica", timeout).start_replica

    def stop_replica(self, timeout: float = 10.0) -> pb.StopReplica:
        return self.next_command("stop_replica", timeout).stop_replica

    def quiet_for(self, seconds: float) -> list[pb.ControlMessage]:
        """Every command that arrives within `seconds` (the test asserts there were none, or which)."""
        time.sleep(seconds)
        got = []
        while not self.commands.empty():
            got.append(self.commands.get())
        return got

    def serve(self, start: pb.StartReplica, url: str | None = None) -> None:
        """Act on a StartReplica the way a healthy agent does: STARTING, then READY at a url."""
        common = dict(deployment=start.deployment, revision=start.revision)
        self.report(start.replica_id, pb.REPLICA_STATE_STARTING, **common)
        url = url or f"http://{self.name}:{9000 + start.replica_id}"
        self.report(start.replica_id, pb.REPLICA_STATE_READY, url=url, **common)

    def disconnect(self) -> None:
        self._beating.clear()
        if self._outbox is not None:
            self._outbox.put(None)
            self._outbox = None
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None

    def close(self) -> None:
        self.disconnect()
        self.channel.close()


def status(replica_id: int, state: int, *, deployment: str = "", revision: int = 0, url: str = "",
           error: str = "", restarts: int = 0) -> pb.ReplicaStatus:
    return pb.ReplicaStatus(replica_id=replica_id, deployment=deployment, revision=revision, state=state,
                            url=url, error=error, restarts=restarts)
