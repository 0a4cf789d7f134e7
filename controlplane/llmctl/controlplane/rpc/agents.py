"""AgentService: agents register, then hold one Connect stream open for reports up and commands down.

A stream starts with Hello, which lists what the agent runs right now; those replicas are adopted as
they are (a restarted control plane or a reconnecting agent starts no duplicates). The reconciler,
woken after every change, works out everything else: what is lost, what to start, what to stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import grpc
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.db.models import Node, Replica, ReplicaState
from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.errors import ControlPlaneError, InvalidArgument, NotFound, Unavailable
from llmctl.controlplane.fleet import AgentSession, Fleet
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.proto import llmctl_pb2_grpc as pb_grpc
from llmctl.controlplane.rpc.convert import gpus_from_proto, state_from_proto
from llmctl.controlplane.services import nodes as nodes_service
from llmctl.controlplane.services.replicas import update_replica

logger = logging.getLogger("llmctl.controlplane.agents")

COMMAND_POLL_S = 1.0
"""How often a stream with nothing to send checks that its agent is still there."""


class AgentServicer(pb_grpc.AgentServiceServicer):
    def __init__(self, db: sessionmaker[Session], fleet: Fleet, *, heartbeat_interval_s: float,
                 on_change: Callable[[], None],
                 on_measurement: Callable[[str, pb.MeasurementResult], None] | None = None) -> None:
        self._db, self._fleet = db, fleet
        self._heartbeat_interval_s = heartbeat_interval_s
        self._on_change = on_change
        self._on_measurement = on_measurement

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.RegisterResponse:
        with session_scope(self._db) as session:
            node = nodes_service.register_node(
                session, name=request.node_name, hostname=request.hostname or request.node_name,
                gpus=gpus_from_proto(request.gpus), engine_version=request.engine_version,
                capabilities=dict(request.capabilities), max_replicas=request.max_replicas,
            )
            name = node.name
        self._on_change()
        return pb.RegisterResponse(node_name=name, heartbeat_interval_s=self._heartbeat_interval_s)

    def Connect(self, request_iterator: Iterator[pb.AgentMessage],
                context: grpc.ServicerContext) -> Iterator[pb.ControlMessage]:
        first = next(request_iterator, None)
        if first is None:
            return
        if first.WhichOneof("kind") != "hello":
            raise InvalidArgument(
                f"the first message on a Connect stream must be Hello, got {first.WhichOneof('kind')}"
            )
        agent = self._open(first.hello)
        context.add_callback(agent.close)  # the agent hung up or the server is stopping
        reader = threading.Thread(target=self._read, args=(request_iterator, agent),
                                  name=f"agent-{agent.node_name}", daemon=True)
        reader.start()
        try:
            last_sent = time.monotonic()
            while not agent.closed and context.is_active():
                command = agent.next_command(min(COMMAND_POLL_S, self._heartbeat_interval_s))
                if command is None and time.monotonic() - last_sent >= self._heartbeat_interval_s:
                    command = pb.ControlMessage(ping=pb.Ping(sent_at=time.time()))
                if command is not None:
                    last_sent = time.monotonic()
                    yield command
        finally:
            self._fleet.disconnect(agent)
            logger.info("agent %s disconnected", agent.node_name)
            self._on_change()

    def _open(self, hello: pb.Hello) -> AgentSession:
        """Register the stream and adopt the replicas the agent runs, atomically for the reconciler."""
        agent: AgentSession | None = None
        with self._fleet.lock:
            try:
                with session_scope(self._db) as session:
                    node = _registered(session, hello.node_name)
                    agent = self._fleet.connect(node.name)
                    for status in hello.replicas:
                        try:
                            apply_status(session, node, agent, status)
                        except InvalidArgument as e:  # one garbled entry must not keep the agent out
                            logger.warning("agent %s: replica %d in Hello: %s", node.name, status.replica_id,
                                           e.message)
            except BaseException:
                if agent is not None:
                    self._fleet.disconnect(agent)
                raise
        assert agent is not None
        logger.info("agent %s connected with %d replica(s)", agent.node_name, len(hello.replicas))
        self._on_change()
        return agent

    def _read(self, messages: Iterable[pb.AgentMessage], agent: AgentSession) -> None:
        try:
            for message in messages:
                if agent.closed:
                    break
                agent.heard()
                try:
                    self._handle(agent, message)
                    for status in list(agent.unsaved.values()):  # the database is back: write what it missed
                        self._replica_status(agent, status)
                except ControlPlaneError as e:
                    # A bad report (or the database away for a moment) must not cut the agent off.
                    logger.warning("agent %s: %s", agent.node_name, e.message)
        except grpc.RpcError:
            pass  # the stream broke; the agent reconnects
        except Exception:
            logger.exception("agent %s: failed to handle a message", agent.node_name)
        finally:
            agent.close()

    def _handle(self, agent: AgentSession, message: pb.AgentMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "heartbeat":
            with session_scope(self._db) as session:
                # Stamped with the arrival time: the agent's clock may be off, ours decides staleness.
                nodes_service.heartbeat(session, name=agent.node_name)
        elif kind == "telemetry":
            self._fleet.record_telemetry(agent.node_name, message.telemetry)
        elif kind == "replica_status":
            self._replica_status(agent, message.replica_status)
        elif kind == "measurement_result":
            if self._on_measurement is not None:
                self._on_measurement(agent.node_name, message.measurement_result)
        elif kind == "hello":
            raise InvalidArgument("Hello is only valid as the first message of a Connect stream")


    def _replica_status(self, agent: AgentSession, status: pb.ReplicaStatus) -> None:
        """Write one replica report. One the database could not take is kept and written again later: the agent
        reports each state once, so a replica that became READY meanwhile would otherwise never be routed."""
        try:
            with self._fleet.lock:
                with session_scope(self._db) as session:
                    node = _registered(session, agent.node_name)
                    apply_status(session, node, agent, status)
        except Unavailable:
            agent.unsaved[status.replica_id] = status
            raise
        agent.unsaved.pop(status.replica_id, None)
        if status.state == pb.REPLICA_STATE_STOPPED:
            self._fleet.forget_replica(status.replica_id)
        self._on_change()


def apply_status(session: Session, node: Node, agent: AgentSession, status: pb.ReplicaStatus) -> None:
    """Record an agent's report of one replica. The caller holds the fleet lock."""
    state = state_from_proto(status.state)
    agent.report(status)
    replica = session.get(Replica, status.replica_id)
    if replica is None:
        return  # not ours (any more): the reconciler tells the agent to stop it
    if replica.state == ReplicaState.STOPPED:
        return  # the control plane is done with it; a live report only earns it another StopReplica
    if replica.state == ReplicaState.DRAINING and state != ReplicaState.STOPPED:
        return  # asked to stop; until the agent confirms, older reports must not make it routable again
    update_replica(
        session, replica.id, state=state.value, url=status.url, error=status.error, restarts=status.restarts,
        node=node if replica.node_id != node.id else None,
    )


def _registered(session: Session, name: str) -> Node:
    try:
        return nodes_service.get_node(session, name)
    except NotFound as e:
        raise NotFound(f"{e.message}; call Register before Connect") from None
