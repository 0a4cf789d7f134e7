"""The dashboard's only way to the control plane: AdminService over gRPC, in background workers.

    poll worker   ListNodes + ListDeployments every poll_interval_s -> FleetUpdated (or ConnectionChanged),
                  and for each followed deployment (an open Deployment screen) GetQuality -> QualityUpdated
                  and GetOptimization (its newest run) -> OptimizationUpdated
    watch worker  WatchEvents from the last event seen -> EventsArrived, bursts merged into one message
    call(fn)      one request (a deploy, a rollback, revisions) from an action's worker thread

When the control plane goes away both workers keep trying (a fresh channel each time, so a restarted
control plane is found at once rather than after gRPC's reconnect backoff) and the App keeps the last data.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from textual.app import App
from textual.message import Message

from llmctl.controlplane.client import AdminClient, EventWatch
from llmctl.controlplane.errors import ControlPlaneError, Forbidden, NotFound, Unauthenticated, Unavailable
from llmctl.controlplane.tls import ClientTls
from llmctl.tui.messages import (
    Connection,
    ConnectionChanged,
    EventMailbox,
    EventsArrived,
    FleetUpdated,
    Link,
    OptimizationUpdated,
    QualityUpdated,
)

T = TypeVar("T")

BACKLOG_EVENTS = 200
"""Audit-log entries loaded when the dashboard starts; newer ones stream in."""


class Feed(Protocol):
    """A source of fleet data for the App: LiveFeed, or tui.recorded.RecordedFeed."""

    address: str

    def start(self, app: App[Any]) -> None: ...

    def stop(self) -> None: ...

    def applied(self) -> None:
        """The App has drawn the last FleetUpdated (the live feed polls again only after that)."""

    def call(self, request: Callable[[AdminClient], T]) -> T:
        """Run `request` against the AdminService (blocking; from a worker thread)."""

    def follow(self, name: str) -> None:
        """Poll deployment `name`'s quality report (QualityUpdated) and newest optimization run
        (OptimizationUpdated) with the fleet, from now until as many unfollow calls: a Deployment screen
        follows its deployment while it is open."""

    def unfollow(self, name: str) -> None: ...


class LiveFeed:
    def __init__(self, address: str, admin_token: str, *, poll_interval_s: float = 2.0,
                 retry_max_s: float = 5.0, call_timeout_s: float = 10.0,
                 backlog: int = BACKLOG_EVENTS, tls: ClientTls | None = None) -> None:
        if not poll_interval_s > 0:
            raise ValueError(f"poll interval must be > 0 seconds, got {poll_interval_s!r}")
        self.address = address
        self.poll_interval_s = poll_interval_s
        self.retry_max_s = retry_max_s
        self.call_timeout_s = call_timeout_s
        self.backlog = backlog
        self._token = admin_token
        self._tls = tls
        self._lock = threading.Lock()
        self._client: AdminClient | None = None
        self._watch: EventWatch | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        """Ends the poll worker's wait early: stopping, or a deployment newly followed."""
        self._followed: Counter[str] = Counter()
        self._applied = threading.Event()
        self._mailbox = EventMailbox()
        self._post: Callable[[Message], object] = lambda message: None

    def start(self, app: App[Any]) -> None:
        self._post = app.post_message
        self._post(ConnectionChanged(Connection(Link.CONNECTING, self.address)))
        app.run_worker(self._poll_loop, name="poll fleet", group="feed", thread=True, exit_on_error=False)
        app.run_worker(self._watch_loop, name="watch events", group="feed", thread=True, exit_on_error=False)

    def stop(self) -> None:
        """Ends both workers promptly (the event stream is cancelled, not waited out)."""
        self._stop.set()
        self._wake.set()
        self._applied.set()
        with self._lock:
            watch, client, self._client = self._watch, self._client, None
        if watch is not None:
            watch.cancel()
        if client is not None:
            client.close()

    def applied(self) -> None:
        self._applied.set()

    def call(self, request: Callable[[AdminClient], T]) -> T:
        client = self._connected()
        try:
            return request(client)
        except Unavailable:
            self._discard(client)
            raise

    def follow(self, name: str) -> None:
        with self._lock:
            self._followed[name] += 1
        self._wake.set()  # a screen just opened: its reports now, not a poll interval later

    def unfollow(self, name: str) -> None:
        with self._lock:
            self._followed[name] -= 1
            if self._followed[name] <= 0:
                del self._followed[name]

    # -- workers ------------------------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            client = self._connected()
            try:
                nodes, deployments = client.list_nodes(), client.list_deployments()
                at = time.time()
                reports = self._poll_followed(client, at)
            except (Unauthenticated, Forbidden) as e:
                failures += 1
                self._post(ConnectionChanged(Connection(Link.REFUSED, self.address, e.message)))
            except Exception as e:  # noqa: BLE001 - whatever broke, this loop must live on and retry
                failures += 1
                self._discard(client)
                detail = e.message if isinstance(e, ControlPlaneError) else f"connection failed: {e}"
                self._post(ConnectionChanged(Connection(Link.DISCONNECTED, self.address, detail)))
            else:
                failures = 0
                self._applied.clear()
                for report in reports:
                    self._post(report)
                self._post(FleetUpdated(nodes, deployments, at))
                # Back-pressure: a busy UI is sent fewer snapshots instead of a growing queue of them (the
                # quality reports were posted before, so they are drawn by then too).
                self._applied.wait(30 * self.poll_interval_s)
            wait = self._retry_delay(failures) if failures else self.poll_interval_s
            self._wake.wait(max(0.0, wait - (time.monotonic() - started)))
            self._wake.clear()

    def _poll_followed(self, client: AdminClient, at: float) -> list[Message]:
        """The followed deployments' quality reports and newest optimization runs. A refusal for one (the
        deployment was deleted, an older control plane without quality sampling or the optimizer) goes to its
        screen; a lost connection fails the whole poll."""
        with self._lock:
            names = sorted(self._followed)
        reports: list[Message] = []
        for name in names:
            reports.append(_quality(client, name, at))
            reports.append(_optimization(client, name, at))
        return reports

    def _watch_loop(self) -> None:
        after: int | None = None
        failures = 0
        while not self._stop.is_set():
            client = self._connected()
            opened: float | None = None
            try:
                if after is None:
                    after = max(0, client.last_event_id() - self.backlog)
                watch = client.watch_events(after_id=after)
                opened = time.monotonic()
                with self._lock:
                    self._watch = watch
                if self._stop.is_set():
                    watch.cancel()
                for event in watch:
                    after, failures = event.id, 0
                    if (batch := self._mailbox.put(event)) is not None:
                        self._post(EventsArrived(batch, self._mailbox))
            except Exception:  # noqa: BLE001 - the poll worker reports the connection; this one retries
                pass
            finally:
                with self._lock:
                    self._watch = None
            # Here the stream ended or broke: the control plane stopped, or the network went.
            if opened is not None and time.monotonic() - opened > 10 * self.retry_max_s:
                failures = 0  # it had been fine for a while: this is a new outage, retry quickly
            failures += 1
            self._stop.wait(self._retry_delay(failures))

    # -- plumbing -----------------------------------------------------------------------------------------
    def _retry_delay(self, failures: int) -> float:
        return min(self.retry_max_s, 0.25 * 2 ** min(failures, 10))

    def _connected(self) -> AdminClient:
        with self._lock:
            if self._client is None:
                # Its own connection: a shared one would carry a failed connection's reconnect backoff (up to
                # two minutes) and not see a control plane that came back.
                self._client = AdminClient(
                    self.address, self._token, timeout_s=self.call_timeout_s, own_connection=True, tls=self._tls
                )
            return self._client

    def _discard(self, client: AdminClient) -> None:
        """Forget a client whose channel failed; the next request makes a new one. It is not closed here:
        another worker may be in a call on it (that call fails on its own), and it closes when dropped."""
        with self._lock:
            if self._client is client:
                self._client = None


def _quality(client: AdminClient, name: str, at: float) -> QualityUpdated:
    try:
        return QualityUpdated(name, client.get_quality(name), at)
    except Unavailable:
        raise
    except ControlPlaneError as e:
        return QualityUpdated(name, None, at, e.message)


def _optimization(client: AdminClient, name: str, at: float) -> OptimizationUpdated:
    """The newest run's report, parsed here rather than on the UI thread (a long run's trail carries every
    measurement's full result)."""
    try:
        run = client.get_optimization(deployment=name)
    except Unavailable:
        raise
    except NotFound:
        return OptimizationUpdated(name, None, at)  # no run yet (or no such deployment: the summary says so)
    except ControlPlaneError as e:
        return OptimizationUpdated(name, None, at, e.message)
    try:
        report = json.loads(run.report_json)
    except ValueError as e:
        return OptimizationUpdated(name, None, at, f"run {run.id}'s report is not JSON ({e})")
    if not isinstance(report, dict):
        return OptimizationUpdated(name, None, at, f"run {run.id}'s report is not a JSON object")
    return OptimizationUpdated(name, report, at)
