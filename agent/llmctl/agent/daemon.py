"""The agent daemon: joins the control plane, streams heartbeats and telemetry, runs replica commands.

One connection thread owns the session with the control plane:

    Register (join token) -> Connect stream: Hello(running replicas) first, then Heartbeat every
    heartbeat_interval_s, TelemetrySample every telemetry_interval_s, ReplicaStatus on every change;
    ControlMessages (StartReplica, StopReplica, DrainNode, RunMeasurement, CancelMeasurement) come back
    down the same stream; MeasurementResults go up it when the optimizer's bench and eval children end.

When Register fails or the stream breaks it waits (0.5 s doubling to max_backoff_s, with jitter) and starts
over with a fresh channel; replicas keep running meanwhile and the next Hello lists them, so a restarted
control plane adopts them instead of starting duplicates. Every replica is a child process of the
ReplicaSupervisor, so a crashing engine never takes the agent down, and no child outlives the agent.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import random
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from llmctl.agent import daemon_convert as convert
from llmctl.agent.cpu_slots import usable_cpus
from llmctl.agent.daemon_session import Session, SilenceWatchdog
from llmctl.agent.engine.paths import llmctl_home
from llmctl.agent.measurement import MeasurementOutcome, MeasurementRunner
from llmctl.agent.replica_stats import ReplicaStatsScraper, ReplicaUnreachable
from llmctl.agent.replicas import ReplicaError, ReplicaState, ReplicaStatus, ReplicaSupervisor, UnknownReplica
from llmctl.agent.telemetry import open_telemetry
from llmctl.controlplane.errors import InvalidArgument
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.proto import llmctl_pb2_grpc as pb_grpc
from llmctl.controlplane.tls import ClientTls, host_of, is_loopback, open_channel

logger = logging.getLogger("llmctl.agent.daemon")

JOIN_TOKEN_HEADER = "x-llmctl-join-token"
REGISTER_TIMEOUT_S = 10.0
DEFAULT_HEARTBEAT_S = 2.0
PING_MISSES = 3
"""A control plane that pings is taken for dead after this many heartbeat intervals (+2 s) of silence."""
"""Used when the control plane's RegisterResponse names no interval."""
STABLE_SESSION_S = 10.0
"""A session that lasted this long resets the reconnect backoff; shorter ones keep doubling it."""
STOP_GRACE_S = 30.0
"""Drain time for a StopReplica or DrainNode that names none."""
# Mirrors the control plane's rule for names (a DNS label), so a bad --node-name fails before connecting.
NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class AgentConfigError(ValueError):
    """An AgentConfig value that cannot work; the message says which and how to fix it."""


@dataclass(frozen=True)
class AgentConfig:
    """How `llmctl agent` joins a control plane and runs replicas on this host."""

    control_plane: str
    """The control plane's gRPC address, "host:port"."""
    join_token: str = field(repr=False)  # repr: a logged config shows no secret
    node_name: str | None = None
    """None: this host's name, lowercased into a DNS label."""
    max_replicas: int | None = None
    """Most replicas this node runs at once; None: one per GPU, or on a host without GPUs one per CPU core it
    may use (replicas then get disjoint core sets, agent/cpu_slots.py). A larger number is the operator's
    explicit choice to oversubscribe."""
    replica_host: str = "127.0.0.1"
    """Address replicas bind; the gateway must reach it."""
    log_dir: Path | None = None
    """Replica logs (and failed measurements' logs in its measurements/); None: $LLMCTL_HOME/logs/replicas."""
    telemetry_interval_s: float = 2.0
    max_backoff_s: float = 30.0
    """Longest wait between reconnects to the control plane (and between replica restarts)."""
    tls: ClientTls | None = None
    """None: plaintext gRPC (fine on loopback; warned about elsewhere). Set: TLS with its CA, and mutual TLS
    when it carries this agent's certificate and key."""
    nvml: object | None = None
    """A pynvml-like module (tests inject FakeNvml); None: real pynvml, or host-only telemetry without it."""

    def __post_init__(self) -> None:
        host, sep, port = self.control_plane.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise AgentConfigError(
                f"control plane address {self.control_plane!r} is not HOST:PORT (e.g. 10.0.0.5:50051)")
        if not self.join_token or not self.join_token.isascii() or not self.join_token.isprintable() \
                or any(c.isspace() for c in self.join_token):
            raise AgentConfigError("the join token must be non-empty printable ASCII without spaces; copy it "
                                   "from $LLMCTL_HOME/join_token on the control-plane host")
        if self.node_name is not None and NODE_NAME.fullmatch(self.node_name) is None:
            raise AgentConfigError(f"invalid node name {self.node_name!r}: use 1-63 lowercase letters, "
                                   "digits and '-', starting and ending with a letter or digit")
        count = self.max_replicas
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise AgentConfigError(f"max_replicas must be an integer >= 0, got {self.max_replicas!r}")
        if not self.telemetry_interval_s > 0:
            raise AgentConfigError(f"telemetry_interval_s must be > 0, got {self.telemetry_interval_s!r}")
        if not self.max_backoff_s >= 0.5:
            raise AgentConfigError(f"max_backoff_s must be >= 0.5, got {self.max_backoff_s!r}")


def node_capacity(max_replicas: int | None, gpus: int, cpus: int) -> int:
    """Replicas a node advertises: the operator's --max-replicas, else one per GPU, else one per usable core."""
    if max_replicas is not None:
        return max_replicas
    return gpus if gpus else max(1, cpus)


def default_node_name() -> str:
    """This host's name as a DNS label: first label, lowercased, other characters turned into '-'."""
    label = socket.gethostname().split(".")[0].lower()
    return re.sub(r"[^a-z0-9-]+", "-", label).strip("-")[:63].strip("-") or "node"


def engine_version() -> str:
    try:
        return importlib.metadata.version("llmctl")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def reconnect_delay(attempt: int, max_backoff_s: float) -> float:
    """0.5 s doubling per failed attempt up to max_backoff_s; the random half keeps a fleet of agents
    from reconnecting in lockstep after a control-plane restart."""
    ceiling = min(0.5 * 2.0 ** min(attempt, 30), max_backoff_s)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class AgentDaemon:
    """One node's agent: start() connects in the background; stop() ends the session and every replica."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.node_name = config.node_name or default_node_name()
        self.log_dir = Path(config.log_dir or llmctl_home() / "logs" / "replicas")
        self._lock = threading.Lock()  # guards _session, _channel, _urls; held while a Hello is queued
        self._session: Session | None = None
        self._channel: grpc.Channel | None = None
        self._connected = False
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._sample_now = threading.Event()
        self._urls: dict[int, str] = {}  # replica id -> last url, so its scrape history can be dropped
        self._threads: list[threading.Thread] = []
        self._started = False

    @property
    def connected(self) -> bool:
        """Registered with the control plane and holding the Connect stream open."""
        return self._connected

    def statuses(self) -> list[ReplicaStatus]:
        """The replicas this agent runs now (with their local pids)."""
        return self._supervisor.statuses() if self._started else []

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            raise RuntimeError("AgentDaemon.start() was already called")
        self._started = True
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe otherwise
        self._telemetry = open_telemetry(self.config.nvml)
        self._gpus = self._telemetry.gpu_info()  # static facts: read once, sent with every Register
        # CPU replicas share this host's cores: each gets a set of its own; GPU replicas get a GPU each.
        cpus = None if self._gpus else usable_cpus()
        self.capacity = node_capacity(self.config.max_replicas, len(self._gpus), len(cpus or ()))
        try:
            self._supervisor = ReplicaSupervisor(
                self._on_replica_change, host=self.config.replica_host, log_dir=self.log_dir,
                max_backoff_s=max(1.0, self.config.max_backoff_s), cpus=cpus,
                gpus=[g.get("uuid") or str(g["index"]) for g in self._gpus] or None,
            )
            # One bench or eval child at a time, off the connection thread; answers go up the open stream.
            self._measurements = MeasurementRunner(self._on_measurement, work_dir=self.log_dir / "measurements")
        except OSError as exc:
            self._started = False
            raise AgentConfigError(f"cannot create the replica log folder {self.log_dir}: {exc.strerror}; "
                                   "pass a writable --log-dir") from exc
        self._scraper = ReplicaStatsScraper()
        loops = ((self._connection_loop, "agent-connection"), (self._telemetry_loop, "agent-telemetry"))
        for target, name in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("agent %s: %d GPU(s) (%s telemetry), %d CPU core(s), room for %d replica(s), joining the "
                    "control plane at %s", self.node_name, len(self._gpus), self._telemetry.source,
                    len(usable_cpus()), self.capacity, self.config.control_plane)
        if self.config.tls is None and not is_loopback(host_of(self.config.control_plane)):
            logger.warning("connecting to the control plane at %s in plaintext: the join token and replica "
                           "commands cross the network readable by anyone on the path; pass --ca (and --cert, "
                           "--key for mutual TLS)", self.config.control_plane)

    def stop(self) -> None:
        """Stop every replica (the control plane hears DRAINING/STOPPED while the stream is still up), close
        the stream, and release telemetry. Idempotent."""
        if not self._started:
            return
        if self._stopping.is_set():
            self._stopped.wait()
            return
        self._stopping.set()
        self._sample_now.set()
        try:
            self._measurements.close()
            self._supervisor.close()
            with self._lock:
                session, channel = self._session, self._channel
            if session is not None:
                session.finish(timeout=2.0)
            if channel is not None:
                channel.close()  # cancels a Register still waiting on an unresponsive address
            for thread in self._threads:
                thread.join(timeout=REGISTER_TIMEOUT_S + 5)
            self._scraper.close()
            self._telemetry.close()
        finally:
            self._connected = False
            self._stopped.set()
        logger.info("agent %s stopped", self.node_name)

    def wait(self) -> None:
        """Block until stop() has finished."""
        self._stopped.wait()

    # -- the session with the control plane -----------------------------------------------------------
    def _connection_loop(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            began = time.monotonic()
            problem = self._session_once()
            if self._stopping.is_set():
                break
            if time.monotonic() - began >= STABLE_SESSION_S:
                attempt = 0
            delay = reconnect_delay(attempt, self.config.max_backoff_s)
            attempt += 1
            level, text = problem
            logger.log(level, "%s; retrying in %.1fs", text, delay)
            self._stopping.wait(delay)

    def _session_once(self) -> tuple[int, str]:
        """Register, then hold one Connect stream until it ends. Returns (log level, why it ended)."""
        try:  # fresh each time: no stale backoff; certificate files are read again, so replacing them works
            channel = open_channel(self.config.control_plane, self.config.tls)
        except InvalidArgument as exc:
            return logging.ERROR, f"cannot set up TLS to the control plane: {exc.message}"
        with self._lock:
            if self._stopping.is_set():
                channel.close()
                return logging.DEBUG, "stopping"
            self._channel = channel
        try:
            return self._register_and_connect(pb_grpc.AgentServiceStub(channel))
        except ValueError:  # "Cannot invoke RPC on closed channel": stop() closed it before Register began
            if self._stopping.is_set():
                return logging.DEBUG, "stopping"
            raise
        finally:
            with self._lock:
                self._channel = None
            channel.close()

    def _register_and_connect(self, stub: pb_grpc.AgentServiceStub) -> tuple[int, str]:
        metadata = ((JOIN_TOKEN_HEADER, self.config.join_token),)
        address = self.config.control_plane
        try:
            reply = stub.Register(self._register_request(), metadata=metadata, timeout=REGISTER_TIMEOUT_S)
        except grpc.RpcError as exc:
            return self._explain(exc, "register with")
        interval = reply.heartbeat_interval_s if reply.heartbeat_interval_s > 0 else DEFAULT_HEARTBEAT_S
        session = self._open_session(interval)
        if session is None:
            return logging.DEBUG, "stopping"
        watchdog: SilenceWatchdog | None = None
        try:
            call = stub.Connect(session.requests(), metadata=metadata)
            session.attach(call)
            self._connected = True
            self._sample_now.set()  # the control plane gets readings now, not one interval later
            logger.info("agent %s connected to the control plane at %s (node %s, %d replica(s) running)",
                        self.node_name, address, reply.node_name or self.node_name,
                        len(self._supervisor.statuses()))
            watchdog = SilenceWatchdog(call, silent_after_s=PING_MISSES * interval + 2.0)
            for message in call:
                watchdog.heard(message.WhichOneof("kind") == "ping")
                for answer in self.handle(message):
                    self._send(answer)
            if watchdog.fired:
                return logging.WARNING, (f"the control plane at {address} went silent for "
                                         f"{watchdog.silent_after_s:g}s; reconnecting")
            return logging.WARNING, f"the control plane at {address} closed the agent stream"
        except grpc.RpcError as exc:
            if watchdog is not None and watchdog.fired:
                return logging.WARNING, (f"the control plane at {address} went silent for "
                                         f"{watchdog.silent_after_s:g}s; reconnecting")
            return self._explain(exc, "stay connected to")
        finally:
            if watchdog is not None:
                watchdog.stop()
            self._connected = False
            with self._lock:
                self._session = None
            session.close()

    def _open_session(self, heartbeat_s: float) -> Session | None:
        session = Session(heartbeat_s)
        with self._lock:
            if self._stopping.is_set():
                return None
            self._session = session
            # Under the lock that _on_replica_change takes: every change either made it into this
            # snapshot or is queued after the Hello, so the control plane never sees a stale state last.
            hello = pb.Hello(node_name=self.node_name,
                             replicas=[convert.status_to_proto(s) for s in self._supervisor.statuses()])
            session.send(pb.AgentMessage(hello=hello))
        return session

    def _register_request(self) -> pb.RegisterRequest:
        cuda = self._telemetry.source == "nvml"
        kernels = "triton" if cuda and importlib.util.find_spec("triton") is not None else "reference"
        return pb.RegisterRequest(
            node_name=self.node_name, hostname=socket.gethostname(),
            gpus=convert.gpu_info_to_proto(self._gpus), engine_version=engine_version(),
            max_replicas=self.capacity,
            capabilities={"device": "cuda" if cuda else "cpu", "kernels": kernels},
        )

    def _explain(self, exc: grpc.RpcError, doing: str) -> tuple[int, str]:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        where = f"the control plane at {self.config.control_plane}"
        if code == grpc.StatusCode.CANCELLED and self._stopping.is_set():
            return logging.DEBUG, "stream closed for shutdown"
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return logging.ERROR, (f"{where} refused this agent's join token ({details}); pass the token "
                                   "from $LLMCTL_HOME/join_token on the control-plane host as --join-token")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            # A refused TLS handshake looks like any closed socket from here; the server's log says which.
            if self.config.tls is not None:
                hint = ("; if it listens, the TLS handshake may have failed: check --ca, --cert and --key against "
                        "the server's certificate and --client-ca, and the server's log")
            else:
                hint = "; if it serves TLS, pass --ca (and --cert, --key)" if "socket closed" in details.lower() else ""
            return logging.WARNING, f"cannot {doing} {where}: {code.name}: {details}{hint}"
        name = code.name if code is not None else type(exc).__name__
        return logging.ERROR, f"{where} rejected node {self.node_name}: {name}: {details}"

    # -- commands from the control plane --------------------------------------------------------------
    def handle(self, message: pb.ControlMessage) -> list[pb.ReplicaStatus | pb.MeasurementResult]:
        """Carry out one control message; returns the answers to send at once (a refused command is
        answered FAILED or STOPPED, or a failed MeasurementResult, with the reason). Never raises: bad input
        cannot stop the agent."""
        kind = message.WhichOneof("kind")
        try:
            if kind == "start_replica":
                return self._start_replica(message.start_replica)
            if kind == "stop_replica":
                return self._stop_replica(message.stop_replica)
            if kind == "run_measurement":
                return self._run_measurement(message.run_measurement)
            if kind == "cancel_measurement":
                self._measurements.cancel(message.cancel_measurement.measurement_id)
            elif kind == "drain":
                self._drain(message.drain.reason)
            elif kind == "ping":
                pass  # only proves the control plane is alive (the stream's watchdog counts it)
            else:
                logger.warning("ignoring a control message of unknown kind %r (a newer control plane?)",
                               kind)
        except Exception:  # whatever the control plane sends, the agent keeps running its replicas
            logger.exception("failed to handle control message %s", kind)
        return []

    def _start_replica(self, msg: pb.StartReplica) -> list[pb.ReplicaStatus]:
        try:
            spec = convert.parse_start(msg)
        except convert.BadCommand as exc:
            logger.error("refusing to start replica %d: %s", msg.replica_id, exc)
            return [convert.failed_status(msg.replica_id, msg.deployment, msg.revision, str(exc))]
        if self._stopping.is_set():
            # STOPPED, not FAILED: the revision is fine, this node is leaving; place the replica elsewhere.
            return [convert.stopped_status(msg.replica_id, msg.deployment, msg.revision,
                                           "the agent is shutting down")]
        running = {s.replica_id for s in self._supervisor.statuses()}
        if msg.replica_id not in running and len(running) >= self.capacity:
            logger.warning("starting replica %d beyond this node's capacity of %d (already running %d)",
                           msg.replica_id, self.capacity, len(running))
        try:
            self._supervisor.start(msg.replica_id, **spec)
        except ReplicaError as exc:
            if self._stopping.is_set():
                return [convert.stopped_status(msg.replica_id, msg.deployment, msg.revision,
                                               "the agent is shutting down")]
            return [convert.failed_status(msg.replica_id, msg.deployment, msg.revision, str(exc))]
        if msg.replica_id in running:
            # A resent command for a replica already running changes nothing: repeat where it stands.
            try:
                return [convert.status_to_proto(self._supervisor.status(msg.replica_id))]
            except UnknownReplica:
                pass  # it stopped in between; its STOPPED status is on its way
        return []

    def _stop_replica(self, msg: pb.StopReplica) -> list[pb.ReplicaStatus]:
        grace_s = msg.grace_s if msg.grace_s > 0 else STOP_GRACE_S
        try:
            self._supervisor.stop(msg.replica_id, drain=msg.drain, grace_s=grace_s)
        except UnknownReplica as exc:
            # Nothing to stop: say so, so the control plane's record converges on "stopped".
            return [convert.stopped_status(msg.replica_id, "", 0, str(exc))]
        return []

    def _drain(self, reason: str) -> None:
        logger.info("draining node %s: %s", self.node_name, reason or "no reason given")
        for status in self._supervisor.statuses():
            try:
                self._supervisor.stop(status.replica_id, drain=True, grace_s=STOP_GRACE_S)
            except UnknownReplica:
                pass  # stopped on its own meanwhile

    def _run_measurement(self, msg: pb.RunMeasurement) -> list[pb.MeasurementResult]:
        try:
            args = convert.parse_measurement_args(msg)
        except convert.BadCommand as exc:
            return [pb.MeasurementResult(measurement_id=msg.measurement_id, ok=False, error=str(exc))]
        self._measurements.submit(msg.measurement_id, msg.kind, args, msg.timeout_s)
        return []

    def _on_measurement(self, outcome: MeasurementOutcome) -> None:
        # Sent on the stream open now; with none, the control plane asks again and gets the stored outcome.
        self._send(convert.measurement_to_proto(outcome))

    def _send(self, answer: pb.ReplicaStatus | pb.MeasurementResult) -> None:
        if isinstance(answer, pb.MeasurementResult):
            message = pb.AgentMessage(measurement_result=answer)
        else:
            message = pb.AgentMessage(replica_status=answer)
        with self._lock:
            if self._session is not None:
                self._session.send(message)

    # -- replica changes and telemetry ----------------------------------------------------------------
    def _on_replica_change(self, status: ReplicaStatus) -> None:
        """Called by the supervisor (one call at a time) on every state change."""
        with self._lock:
            old = self._urls.pop(status.replica_id, None)
            if status.url and status.state is not ReplicaState.STOPPED:
                self._urls[status.replica_id] = status.url
            if self._session is not None:
                self._session.send(pb.AgentMessage(replica_status=convert.status_to_proto(status)))
        if old and old != status.url:
            self._scraper.forget(old)
        if status.state is ReplicaState.FAILED:
            logger.warning("replica %d (%s revision %d) failed: %s", status.replica_id, status.deployment,
                           status.revision, status.error)

    def _telemetry_loop(self) -> None:
        while not self._stopping.is_set():
            self._sample_now.wait(self.config.telemetry_interval_s)
            self._sample_now.clear()
            with self._lock:
                session = self._session
            if session is None or self._stopping.is_set() or session.backlog > 16:
                continue  # nobody to tell, or the stream is not draining: a stale sample helps no one
            try:
                sample = self._sample()
            except Exception:  # a telemetry hiccup must not end the sampling
                logger.exception("reading telemetry failed")
                continue
            session.send(pb.AgentMessage(telemetry=sample))

    def _sample(self) -> pb.TelemetrySample:
        reading = self._telemetry.read()
        stats = {}
        for status in self._supervisor.statuses():
            if status.state is ReplicaState.READY and status.url:
                try:
                    stats[status.replica_id] = self._scraper.scrape(status.url)
                except ReplicaUnreachable as exc:
                    logger.debug("no stats from replica %d: %s", status.replica_id, exc)
        return convert.telemetry_to_proto(reading, stats)


def run_agent(config: AgentConfig) -> None:
    """Run the agent until SIGINT/SIGTERM, then stop it cleanly (every replica stopped first)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    daemon = AgentDaemon(config)
    stop = threading.Event()
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        daemon.start()
        print(f"llmctl agent: node {daemon.node_name} -> control plane {config.control_plane}; "
              f"replica logs in {daemon.log_dir}; Ctrl-C stops it and its replicas", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        daemon.stop()
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
