"""What the control plane knows about its agents right now, in memory only (SQL holds the durable state).

Per connected agent: its Connect stream's session (the commands queued for it, the replicas it reports
running). Per node and per replica: the latest telemetry sample. Telemetry arrives every few seconds from
every node, so it is never written to SQL; after a control-plane restart it refills within one interval.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass

from llmctl.controlplane.proto import llmctl_pb2 as pb

LIVE_AGENT_STATES = frozenset(
    {pb.REPLICA_STATE_PENDING, pb.REPLICA_STATE_STARTING, pb.REPLICA_STATE_READY, pb.REPLICA_STATE_FAILED}
)
"""Agent-reported states of a replica that still has (or will again have) a process."""

_session_ids = itertools.count(1)


class AgentSession:
    """One agent's Connect stream: the commands queued for it and the replicas it says it runs."""

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self.id = next(_session_ids)
        self.connected_at = time.time()
        self.heard_at = self.connected_at
        """time.time() of the last message from the agent (kept here, so a heartbeat lost with its SQL write
        still proves the node alive)."""
        self._outbox: queue.Queue[pb.ControlMessage | None] = queue.Queue()
        self._closed = threading.Event()
        self.reported: dict[int, pb.ReplicaStatus] = {}
        """Replica id -> the agent's latest status of it; STOPPED ones are dropped."""
        self.sent_starts: set[int] = set()
        self.sent_stops: dict[int, float] = {}
        """Replica id -> time.monotonic() of the last StopReplica sent, so a lost one is sent again."""
        self.drain_sent = False
        self.unsaved: dict[int, pb.ReplicaStatus] = {}
        """Replica id -> a status the agent reported whose SQL write failed (the database was away); written
        again with the session's next message, unless a newer status of the replica is written first."""

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def send(self, message: pb.ControlMessage) -> bool:
        """Queue a command for the agent; False when the stream has already ended."""
        if self.closed:
            return False
        self._outbox.put(message)
        return True

    def start_replica(self, start: pb.StartReplica) -> bool:
        sent = self.send(pb.ControlMessage(start_replica=start))
        if sent:
            self.sent_starts.add(start.replica_id)
        return sent

    def stop_replica(self, replica_id: int, *, drain: bool, grace_s: float) -> bool:
        sent = self.send(pb.ControlMessage(stop_replica=pb.StopReplica(replica_id=replica_id, drain=drain,
                                                                       grace_s=grace_s)))
        if sent:
            self.sent_stops[replica_id] = time.monotonic()
        return sent

    def next_command(self, timeout: float) -> pb.ControlMessage | None:
        """The next queued command, or None after `timeout` seconds or once the session is closed."""
        try:
            return self._outbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._closed.set()
        self._outbox.put(None)  # wakes the stream's writer, which then ends the stream

    def report(self, status: pb.ReplicaStatus) -> None:
        if status.state == pb.REPLICA_STATE_STOPPED:
            self.reported.pop(status.replica_id, None)
            self.sent_stops.pop(status.replica_id, None)
        else:
            self.reported[status.replica_id] = status

    def heard(self) -> None:
        self.heard_at = time.time()

    def knows(self, replica_id: int) -> bool:
        """Whether the agent reported the replica or was told to start it."""
        return replica_id in self.reported or replica_id in self.sent_starts


@dataclass(frozen=True)
class NodeTelemetry:
    sample: pb.TelemetrySample
    received_at: float


@dataclass(frozen=True)
class ReplicaTelemetry:
    stats: pb.ReplicaStats
    received_at: float
    requests_per_s: float | None
    """Finished requests per second between this sample and the previous one; None after the first."""


class Fleet:
    """Connected agents and their latest telemetry; safe to use from any thread."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        """Held by whoever changes replica state (agent streams, the reconciler), so SQL and the sessions'
        reports change together and every reconcile pass sees one consistent picture. Always taken before
        a database transaction starts, never inside one (database locks would then wait on it: deadlock)."""
        self._sessions: dict[str, AgentSession] = {}
        self._telemetry_lock = threading.Lock()  # readers run inside transactions, so not `lock`
        self._nodes: dict[str, NodeTelemetry] = {}
        self._replicas: dict[int, ReplicaTelemetry] = {}

    # -- sessions -------------------------------------------------------------------------------------
    def connect(self, node_name: str) -> AgentSession:
        """A new session for the node; an older one (the agent reconnected before it noticed) is closed."""
        session = AgentSession(node_name)
        with self.lock:
            old = self._sessions.get(node_name)
            self._sessions[node_name] = session
        if old is not None:
            old.close()
        return session

    def disconnect(self, session: AgentSession) -> None:
        session.close()
        with self.lock:
            if self._sessions.get(session.node_name) is session:
                del self._sessions[session.node_name]

    def session(self, node_name: str) -> AgentSession | None:
        with self.lock:
            return self._sessions.get(node_name)

    def sessions(self) -> list[AgentSession]:
        with self.lock:
            return list(self._sessions.values())

    def close_all(self) -> None:
        with self.lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.close()

    # -- telemetry ------------------------------------------------------------------------------------
    def record_telemetry(self, node_name: str, sample: pb.TelemetrySample) -> None:
        now = time.time()
        with self._telemetry_lock:
            self._nodes[node_name] = NodeTelemetry(sample, now)
            for stats in sample.replicas:
                self._replicas[stats.replica_id] = ReplicaTelemetry(
                    stats, now, _rate(self._replicas.get(stats.replica_id), stats, now)
                )

    def node_telemetry(self, node_name: str) -> NodeTelemetry | None:
        with self._telemetry_lock:
            return self._nodes.get(node_name)

    def connected_telemetry(self) -> dict[str, NodeTelemetry]:
        """Latest sample of every connected node (a gone node's last readings are not current)."""
        with self._telemetry_lock:
            nodes = dict(self._nodes)
        with self.lock:
            return {name: t for name, t in nodes.items() if name in self._sessions}

    def replica_telemetry(self, replica_id: int) -> ReplicaTelemetry | None:
        with self._telemetry_lock:
            return self._replicas.get(replica_id)

    def forget_replica(self, replica_id: int) -> None:
        with self._telemetry_lock:
            self._replicas.pop(replica_id, None)


def _rate(previous: ReplicaTelemetry | None, stats: pb.ReplicaStats, now: float) -> float | None:
    if previous is None or not stats.HasField("requests_total") \
            or not previous.stats.HasField("requests_total"):
        return None
    elapsed = now - previous.received_at
    finished = stats.requests_total - previous.stats.requests_total
    if elapsed <= 0 or finished < 0:  # a restarted replica starts counting again from zero
        return None
    return finished / elapsed
