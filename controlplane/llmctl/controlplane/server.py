"""The control-plane server: gRPC (AgentService, AdminService), the gateway, and the periodic jobs.

    ControlPlane(ServerConfig(...)).start()   upgrade the schema, rebuild routes from SQL, listen
    run_server(config)                        the same, blocking until SIGINT/SIGTERM (`llmctl server`)

Everything durable lives in SQL, so a restarted control plane on the same database serves the same
deployments at once (routes come from the replicas SQL last saw READY) and adopts the replicas its
agents report when they reconnect.
"""

from __future__ import annotations

import logging
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from llmctl.controlplane.autoscaling.runner import AutoscaleJob
from llmctl.controlplane.errors import InvalidArgument, Unavailable
from llmctl.controlplane.fleet import Fleet
from llmctl.controlplane.gateway.holding import ColdStartHold
from llmctl.controlplane.gateway.model_route import ModelRouteTable
from llmctl.controlplane.gateway.pricing import PriceTable
from llmctl.controlplane.gateway.routes import RouteTable
from llmctl.controlplane.gateway.sampling import QualitySampler, SamplingTable
from llmctl.controlplane.gateway.semantic_cache import SemanticTable
from llmctl.controlplane.jobs import AUTOSCALE, OPTIMIZE, RECONCILE, JobRunner, control_plane_jobs
from llmctl.controlplane.metrics import ControlPlaneMetrics
from llmctl.controlplane.optimizer.runner import Optimizer
from llmctl.controlplane.proto import llmctl_pb2_grpc as pb_grpc
from llmctl.controlplane.quality.worker import QUEUE_SIZE, QualityWorker
from llmctl.controlplane.reconciler import ReconcilePolicy, Reconciler
from llmctl.controlplane.rpc.admin import AdminServicer
from llmctl.controlplane.rpc.agents import AgentServicer
from llmctl.controlplane.rpc.audit import AuditInterceptor
from llmctl.controlplane.rpc.interceptors import AuthInterceptor, ErrorInterceptor, admin_rule, join_rule
from llmctl.controlplane.tls import ServerTls, is_loopback
from llmctl.controlplane.tokens import (
    ADMIN_TOKEN_FILE,
    API_KEY_SECRET_FILE,
    JOIN_TOKEN_FILE,
    TokenRing,
    resolve_token,
)

logger = logging.getLogger("llmctl.controlplane")

# Each agent's Connect stream and each WatchEvents watcher holds a worker thread for its lifetime (the
# sync gRPC server), so this bounds agents + dashboards; threads start lazily, so the cap costs nothing idle.
GRPC_WORKERS = 512
"""Each connected agent and each event watch holds one worker for its stream's lifetime."""
GATEWAY_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ServerConfig:
    database_url: str | None = None
    """None: SQLite at $LLMCTL_HOME/llmctl.db."""
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    """0: pick a free port (ControlPlane.grpc_address has the real one after start)."""
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    admin_token: str | None = field(default=None, repr=False)  # repr: a logged config shows no secret
    """None: read $LLMCTL_HOME/admin_token, creating it (mode 0600) the first time."""
    join_token: str | None = field(default=None, repr=False)
    """None: read $LLMCTL_HOME/join_token, creating it (mode 0600) the first time."""
    api_key_secret: str | None = field(default=None, repr=False)
    """The HMAC key API keys are hashed with. None: read $LLMCTL_HOME/api_key_secret, creating it (mode 0600)
    the first time. Control planes sharing one database must share it (--api-key-secret-file)."""
    node_timeout_s: float = 15.0
    """A node silent this long is unhealthy and its replicas are started elsewhere (twice as long right
    after the control plane starts, while agents reconnect)."""
    rollout_timeout_s: float = 300.0
    """A new revision not fully ready this long after it was deployed is rolled back."""
    heartbeat_interval_s: float = 2.0
    """Told to agents when they register."""
    reconcile_interval_s: float = 1.0
    price_table: str | None = None
    """JSON file of GPU prices per hour for the gateway's cost accounting."""
    quality_retention_s: float = 7 * 24 * 3600.0
    """Stored quality samples (prompts and answers) are purged this long after they were sampled."""
    traffic_retention_s: float = 7 * 24 * 3600.0
    """Recorded traffic (the shape of each gateway request, no content) is purged this long after it arrived."""
    cold_start_hold_s: float = 300.0
    """A request for an autoscaled deployment with no ready replica waits this long for one (scale from zero)."""
    cold_start_max_held: int = 100
    """At most this many requests wait so per deployment; more get 503 with Retry-After at once."""
    response_cache_mb: float = 0.0
    """Size of the gateway's exact response cache in MiB (docs/caching.md); 0: no cache."""
    response_cache_ttl_s: float = 3600.0
    """A cached answer is served at most this long after it was computed."""
    tls: ServerTls | None = None
    """None: plaintext (meant for loopback; any other address gets a warning). Set: gRPC over TLS (mutual TLS
    when it names a client CA) and the gateway over HTTPS, with the same certificate."""
    home: Path | None = None
    """$LLMCTL_HOME override (tests)."""

    def __post_init__(self) -> None:
        for name in ("grpc_port", "gateway_port"):
            port = getattr(self, name)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise InvalidArgument(
                    f"{name} must be a port number 0-65535 (0: any free port), got {port!r}")
        for name in ("node_timeout_s", "rollout_timeout_s", "heartbeat_interval_s", "reconcile_interval_s",
                     "quality_retention_s", "traffic_retention_s", "cold_start_hold_s", "response_cache_ttl_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise InvalidArgument(f"{name} must be a positive number of seconds, got {value!r}")
        mb = self.response_cache_mb
        if isinstance(mb, bool) or not isinstance(mb, int | float) or mb < 0:
            raise InvalidArgument(f"response_cache_mb must be a number of MiB >= 0 (0: no cache), got {mb!r}")
        if self.node_timeout_s <= 2 * self.heartbeat_interval_s:
            raise InvalidArgument(
                f"node_timeout_s ({self.node_timeout_s:g}) must exceed two heartbeat intervals "
                f"({self.heartbeat_interval_s:g}s each), or healthy nodes would be declared dead"
            )


class ControlPlane:
    """One control-plane process: start(), then stop(); wait() blocks until it is stopped."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.grpc_address = ""
        self.gateway_url = ""
        self.tokens: dict[str, TokenRing] = {}
        """"admin" and "join": the current token of each, and the previous one during a rotation."""
        self.database_url = ""
        self.routes = RouteTable()
        self.fleet = Fleet()
        self.registry = CollectorRegistry(auto_describe=False)
        self.sampling = SamplingTable()
        self.semantic = SemanticTable()
        """Deployment -> semantic cache threshold: the reconciler writes it from SQL, the gateway reads it."""
        self.model_routes = ModelRouteTable()
        self.sampler = QualitySampler(self.sampling, queue.Queue(QUEUE_SIZE), registry=self.registry)
        self.quality: QualityWorker | None = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._engine: Any = None
        self._grpc: grpc.Server | None = None
        self._gateway: Any = None
        self._gateway_thread: threading.Thread | None = None
        self._jobs: JobRunner | None = None
        self.reconciler: Reconciler | None = None
        self.optimizer: Optimizer | None = None

    def start(self) -> None:
        from llmctl.agent.engine.paths import llmctl_home
        from llmctl.controlplane.db.session import (
            default_database_url,
            make_engine,
            session_factory,
            upgrade_database,
        )

        config = self.config
        home = Path(config.home if config.home is not None else llmctl_home()).expanduser()
        for kind, given, filename in (("admin", config.admin_token, ADMIN_TOKEN_FILE),
                                      ("join", config.join_token, JOIN_TOKEN_FILE)):
            what = f"{kind} token"
            self.tokens[kind] = TokenRing(what, resolve_token(given, home, filename, what),
                                          None if given is not None else home / filename)
        api_key_secret = resolve_token(config.api_key_secret, home, API_KEY_SECRET_FILE, "API key secret")
        self.database_url = config.database_url or default_database_url(home)
        upgrade_database(self.database_url)
        try:
            self._engine = make_engine(self.database_url)
            db = session_factory(self._engine, api_key_secret=api_key_secret)
            metrics = ControlPlaneMetrics(self.registry, self.fleet)
            policy = ReconcilePolicy(node_timeout_s=config.node_timeout_s,
                                     rollout_timeout_s=config.rollout_timeout_s)
            self.reconciler = reconciler = Reconciler(db, self.fleet, self.routes, policy, metrics,
                                                      sampling=self.sampling, model_routes=self.model_routes,
                                                      semantic=self.semantic)
            pricing = PriceTable.from_file(config.price_table) if config.price_table else PriceTable()

            def poke() -> None:  # something changed: reconcile now, not at the next tick
                runner.wake(RECONCILE)

            def poke_optimizer() -> None:
                runner.wake(OPTIMIZE)

            self.optimizer = Optimizer(db, self.fleet, pricing=pricing, on_change=poke, wake=poke_optimizer)
            # Requests held for a deployment at zero replicas wake the autoscaler, which asks for a first one.
            self.hold = ColdStartHold(self.routes, max_held=config.cold_start_max_held,
                                      timeout_s=config.cold_start_hold_s, on_hold=lambda _name: runner.wake(AUTOSCALE))
            self.autoscaler = metrics.autoscaler = AutoscaleJob(db, self.fleet, on_change=poke,
                                                                gateway_queue=self.hold.held)
            jobs = control_plane_jobs(reconciler, reconcile_interval_s=config.reconcile_interval_s,
                                      node_timeout_s=config.node_timeout_s, db=db,
                                      quality_retention_s=config.quality_retention_s, optimizer=self.optimizer,
                                      traffic_retention_s=config.traffic_retention_s, autoscaler=self.autoscaler)
            runner = self._jobs = JobRunner(jobs)

            self.quality = QualityWorker(db, self.sampler, on_rollback=poke, registry=self.registry)

            # Routes from SQL before anything listens, so the gateway serves from its first request.
            reconciler.reconcile()
            self._start_grpc(db, poke, poke_optimizer)
            self._start_gateway(db, pricing)
            self._jobs.start()
            self.quality.start()
        except BaseException:
            self.stop(grace_s=0)
            raise
        logger.info("control plane listening: gRPC %s, gateway %s", self.grpc_address, self.gateway_url)

    def _start_grpc(self, db: Any, poke: Callable[[], None], poke_optimizer: Callable[[], None]) -> None:
        config = self.config
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS, thread_name_prefix="llmctl-grpc"),
            # Outermost first: the audit sees every admin change, refused ones included, then the token check.
            interceptors=[AuditInterceptor(db, admin_rule(self.tokens["admin"])),
                          AuthInterceptor([admin_rule(self.tokens["admin"]), join_rule(self.tokens["join"])]),
                          ErrorInterceptor()],
        )
        pb_grpc.add_AgentServiceServicer_to_server(
            AgentServicer(db, self.fleet, heartbeat_interval_s=config.heartbeat_interval_s, on_change=poke,
                          on_measurement=self.optimizer.record_result if self.optimizer else None),
            server)
        pb_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(db, self.fleet, on_change=poke, stopping=self._stopping, optimizer=self.optimizer,
                          on_optimize=poke_optimizer, autoscaler=self.autoscaler, tokens=self.tokens,
                          gateway_response_cache=config.response_cache_mb > 0), server)
        address = _join(config.grpc_host, config.grpc_port)
        try:
            if config.tls is not None:
                port = server.add_secure_port(address, config.tls.grpc_credentials())
            else:
                _warn_if_exposed("gRPC", config.grpc_host, "the admin and join tokens")
                port = server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if port == 0:
            raise Unavailable(f"cannot listen for gRPC on {address}: the address is in use or not this "
                              "host's; pick another --grpc-host/--grpc-port")
        server.start()
        self._grpc = server
        self.grpc_address = _join(config.grpc_host, port)

    def _start_gateway(self, db: Any, pricing: PriceTable) -> None:
        import uvicorn

        from llmctl.agent.http_guard import uvicorn_limits
        from llmctl.controlplane.gateway.app import build_gateway_app
        from llmctl.controlplane.gateway.response_cache import ResponseCacheConfig

        config = self.config
        assert self.reconciler is not None
        cache = None
        if config.response_cache_mb > 0:
            max_bytes = max(1, int(config.response_cache_mb * 2**20))
            cache = ResponseCacheConfig(max_bytes=max_bytes, ttl_s=config.response_cache_ttl_s,
                                        max_entry_bytes=min(max_bytes, ResponseCacheConfig.max_entry_bytes))
        app = build_gateway_app(routes=self.routes, db_factory=db, pricing=pricing,
                                gpu_of=self.reconciler.gpu_of, metrics_registry=self.registry,
                                sampler=self.sampler, hold=self.hold, response_cache=cache,
                                model_routes=self.model_routes, semantic=self.semantic)
        family = socket.AF_INET6 if ":" in config.gateway_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.gateway_host, config.gateway_port))
        except OSError as e:
            sock.close()
            where = _join(config.gateway_host, config.gateway_port)
            raise Unavailable(f"cannot listen for the gateway on {where}: {e.strerror}; "
                              "pick another --gateway-host/--gateway-port") from None
        port = sock.getsockname()[1]
        if config.tls is None:
            _warn_if_exposed("the gateway", config.gateway_host, "API keys, prompts and answers")
        tls_options = config.tls.uvicorn_options() if config.tls is not None else {}
        self._gateway = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30,
                                                      **tls_options, **uvicorn_limits()))
        self._gateway_thread = threading.Thread(target=self._gateway.run, kwargs={"sockets": [sock]},
                                                name="llmctl-gateway", daemon=True)
        self._gateway_thread.start()
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT_S
        while not self._gateway.started:
            if not self._gateway_thread.is_alive() or time.monotonic() > deadline:
                raise Unavailable(f"the gateway did not start on port {port}; see the log above")
            time.sleep(0.02)
        host = f"[{config.gateway_host}]" if ":" in config.gateway_host else config.gateway_host
        self.gateway_url = f"{'https' if config.tls is not None else 'http'}://{host}:{port}"

    def stop(self, grace_s: float = 5) -> None:
        """Stop listening and close agents' streams (their replicas keep running, to be adopted later)."""
        if self._stopped.is_set():
            return
        self._stopping.set()
        if self._jobs is not None:
            self._jobs.stop()
        if self.quality is not None:
            self.quality.stop()
        # New calls are refused from here; agent streams end now rather than at the grace deadline.
        grpc_stopped = self._grpc.stop(grace_s) if self._grpc is not None else None
        self.fleet.close_all()
        if grpc_stopped is not None:
            grpc_stopped.wait()
        if self._gateway is not None and self._gateway_thread is not None:
            self._gateway.config.timeout_graceful_shutdown = grace_s
            self._gateway.should_exit = True
            self._gateway_thread.join(grace_s + 5)
        if self._engine is not None:
            self._engine.dispose()
        self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()

    @property
    def admin_token(self) -> str:
        """The current admin token ("" before start)."""
        ring = self.tokens.get("admin")
        return ring.current if ring is not None else ""

    @property
    def join_token(self) -> str:
        """The current join token ("" before start)."""
        ring = self.tokens.get("join")
        return ring.current if ring is not None else ""


def _warn_if_exposed(what: str, host: str, secrets: str) -> None:
    if not is_loopback(host):
        logger.warning("%s listens on %s in plaintext: %s cross the network readable by anyone on the path; "
                       "pass --tls-cert and --tls-key (and --client-ca for agents), see docs/operations.md",
                       what, host, secrets)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run_server(config: ServerConfig) -> None:
    """Run a control plane until SIGINT or SIGTERM, then stop it cleanly."""
    from llmctl.controlplane.db.session import mask_url

    plane = ControlPlane(config)
    plane.start()
    home = config.home
    print(f"llmctl control plane\n  gRPC     {plane.grpc_address}\n  gateway  {plane.gateway_url}\n"
          f"  database {mask_url(plane.database_url)}", flush=True)
    if config.tls is not None:
        clients = (f"client certificates from {config.tls.client_ca} required on gRPC"
                   if config.tls.client_ca is not None else "no client certificates asked for")
        print(f"  tls      {config.tls.cert}; {clients}", flush=True)
    for what, given, filename in (("admin token", config.admin_token, ADMIN_TOKEN_FILE),
                                  ("join token", config.join_token, JOIN_TOKEN_FILE)):
        if given is None:
            from llmctl.agent.engine.paths import llmctl_home

            folder = Path(home if home is not None else llmctl_home()).expanduser()
            print(f"  {what:<8} in {folder / filename}", flush=True)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):  # a timed wait, so the signal handler gets to run promptly
            pass
        print("stopping the control plane", file=sys.stderr, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        plane.stop()
