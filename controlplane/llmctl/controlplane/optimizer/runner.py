"""The optimizer job: moves every running optimization run forward, one action at a time, from SQL alone.

Each tick reads a running run and does the next thing it needs: choose a node, start a trial replica, ask
the node's agent for a measurement, judge a finished step, deploy the result. Nothing waits: measurements
run on agents (child processes) and come back as MeasurementResult on the agent's stream, which stores
them and wakes this job. Because every decision is written before it is acted on, a control plane that
restarts in the middle of a run picks it up where it was: the trial replicas are adopted from their agent's
Hello, and measurements still pending are sent again (an agent answers a repeated id from its stored
outcome, or ignores it while it is still running).

A step's bench measurements alternate A0 B0 A1 B1 ... A(n-1) B(n-1) An (A: the best so far, B: the
candidate), one at a time, never two at once; judge.interleaved_gain compares each B with its two
neighbours, so drift of a noisy machine cancels. When the node has no room for both trial replicas they
take turns: the idle arm's replica is stopped before the other starts.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from llmctl.controlplane.db.models import (
    Measurement,
    MeasurementState,
    Node,
    NodeState,
    OptimizationRun,
    OptimizationStep,
    Replica,
    ReplicaRole,
    ReplicaState,
    RunState,
    StepState,
    utcnow,
)
from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.errors import InvalidArgument
from llmctl.controlplane.fleet import Fleet
from llmctl.controlplane.gateway.pricing import PriceTable
from llmctl.controlplane.optimizer import judge
from llmctl.controlplane.optimizer.metrics import bench_metrics, goal_metric, mean_metrics
from llmctl.controlplane.optimizer.options import OptimizeOptions
from llmctl.controlplane.optimizer.techniques import Context, find_bottleneck, plan_techniques, technique
from llmctl.controlplane.proto import llmctl_pb2 as pb
from llmctl.controlplane.services import optimizer as runs
from llmctl.controlplane.services import quality as quality_service
from llmctl.controlplane.services.deployments import deploy, get_revision, validated_engine_config
from llmctl.controlplane.services.events import record_event
from llmctl.controlplane.services.replicas import create_replica

logger = logging.getLogger("llmctl.controlplane.optimizer")

BENCH_TIMEOUT_S = 900.0
EVAL_TIMEOUT_S = 1800.0
RESULT_GRACE_S = 120.0
"""A measurement not answered this long after its timeout is given up (the agent may have lost it)."""
MAX_RETRIES = 1
"""A failed measurement is taken again this many times before its step fails (one bad child is not a verdict)."""
MAX_TRIAL_FAILURES = 2
"""A configuration whose trial replica failed permanently this often is given up."""
MAX_ACTIONS_PER_TICK = 32
EVAL_CONTEXT_LEN = 512


class StepFailed(Exception):
    """The step cannot be measured (its replica or a measurement failed): it fails, the run goes on."""


class RunFailed(Exception):
    """The run cannot go on (its baseline cannot be measured)."""


@dataclass
class _Acts:
    """What a tick decided; carried out after its transaction commits."""

    send: list[int] = field(default_factory=list)
    cancel: list[tuple[str, int]] = field(default_factory=list)
    reconcile: bool = False


class Optimizer:
    def __init__(self, db: sessionmaker[Session], fleet: Fleet, *, pricing: PriceTable | None = None,
                 on_change: Callable[[], None] = lambda: None, wake: Callable[[], None] = lambda: None) -> None:
        self.db, self.fleet = db, fleet
        self.pricing = pricing or PriceTable()
        self.on_change = on_change
        """Wakes the reconciler (trial replicas created or stopped, a revision deployed)."""
        self.wake = wake
        """Wakes this job (a measurement result arrived)."""
        self._sent: dict[int, int] = {}
        """Measurement id -> the agent session id it was last sent on; a new session gets it again."""
        self._lock = threading.Lock()

    # -- the job ------------------------------------------------------------------------------------
    def tick(self) -> None:
        with session_scope(self.db) as session:
            ids = [run.id for run in runs.running_runs(session)]
        for run_id in ids:
            for _ in range(MAX_ACTIONS_PER_TICK):
                if not self._advance_once(run_id):
                    break

    def _advance_once(self, run_id: int) -> bool:
        """One transaction: the next action of one run. Returns whether it made progress worth another go."""
        acts = _Acts()
        with self.fleet.lock:  # trial replicas change state here; see Fleet.lock
            with session_scope(self.db) as session:
                run = session.get(OptimizationRun, run_id)
                if run is None or run.state != RunState.RUNNING:
                    return False
                try:
                    progressed = self._advance(session, run, acts)
                except RunFailed as exc:
                    acts.cancel += [(m.node_name, m.id) for m in
                                    runs.finish_run(session, run, RunState.FAILED, summary=str(exc), error=str(exc))]
                    acts.reconcile, progressed = True, False
                run.updated_at = utcnow()
        self._act(acts)
        return progressed

    def _act(self, acts: _Acts) -> None:
        if acts.send:
            with session_scope(self.db) as session:
                for measurement_id in acts.send:
                    m = session.get(Measurement, measurement_id)
                    if m is not None and m.state == MeasurementState.PENDING:
                        self._send(m)
        self.cancel_on_agents(acts.cancel)
        if acts.reconcile:
            self.on_change()

    def cancel_on_agents(self, measurements: list[tuple[str, int]]) -> None:
        for node, measurement_id in measurements:
            agent = self.fleet.session(node)
            if agent is not None:
                agent.send(pb.ControlMessage(cancel_measurement=pb.CancelMeasurement(measurement_id=measurement_id)))

    def _send(self, m: Measurement) -> None:
        agent = self.fleet.session(m.node_name)
        if agent is None:
            return
        with self._lock:
            if self._sent.get(m.id) == agent.id:
                return
        command = pb.RunMeasurement(measurement_id=m.id, kind=m.kind, args_json=json.dumps(m.args),
                                    timeout_s=m.timeout_s)
        if agent.send(pb.ControlMessage(run_measurement=command)):
            with self._lock:
                self._sent[m.id] = agent.id

    # -- results from agents ------------------------------------------------------------------------
    def record_result(self, node_name: str, result: pb.MeasurementResult) -> None:
        """Store an agent's MeasurementResult (called on the agent stream's reader thread)."""
        with session_scope(self.db) as session:
            m = session.get(Measurement, result.measurement_id)
            if m is None or m.state != MeasurementState.PENDING or m.node_name != node_name:
                return  # not ours, cancelled, or already answered (a repeated answer)
            if result.ok:
                try:
                    m.result = json.loads(result.result_json)
                except json.JSONDecodeError as exc:
                    m.state, m.error = MeasurementState.FAILED, f"the agent sent unreadable JSON: {exc}"
                else:
                    m.state = MeasurementState.DONE
            else:
                m.state, m.error = MeasurementState.FAILED, result.error or "failed without a reason"
            m.wall_s, m.finished_at = result.wall_s, utcnow()
        with self._lock:
            self._sent.pop(result.measurement_id, None)
        self.wake()

    # -- one run ------------------------------------------------------------------------------------
    def _advance(self, session: Session, run: OptimizationRun, acts: _Acts) -> bool:
        options = OptimizeOptions.from_dict(run.options)
        node = self._node(session, run)
        if node is None:
            return False
        step = next((s for s in run.steps if s.state in runs.OPEN_STEP_STATES), None)
        if step is None:
            self._finish(session, run, options, acts)
            return False
        try:
            if step.number == 0:
                return self._baseline(session, run, step, node, options, acts)
            return self._technique(session, run, step, node, options, acts)
        except StepFailed as exc:
            if step.number == 0:
                raise RunFailed(f"the baseline could not be measured: {exc}") from None
            self._end_step(session, run, step, StepState.FAILED, str(exc), acts)
            return True

    def _node(self, session: Session, run: OptimizationRun) -> Node | None:
        """The run's node, chosen once: the healthy connected node with the most free replica slots."""
        if run.node_name is not None:
            node = session.scalar(select(Node).where(Node.name == run.node_name))
            if node is None:
                raise RunFailed(f"node {run.node_name} was removed")
            if node.state != NodeState.HEALTHY or self.fleet.session(node.name) is None:
                run.summary = f"waiting for node {node.name} ({node.state.value}) to come back"
                return None
            return node
        candidates = [n for n in session.scalars(select(Node).order_by(Node.name))
                      if n.state == NodeState.HEALTHY and self.fleet.session(n.name) is not None]
        rooms = {n.name: n.max_replicas - self._used(session, n) for n in candidates}
        free = [n for n in candidates if rooms[n.name] >= 1]
        if not free:
            run.summary = "waiting for a healthy connected node with a free replica slot"
            if utcnow() - run.created_at > timedelta(minutes=10):
                raise RunFailed("no healthy connected node had a free replica slot for 10 minutes")
            return None
        node = max(free, key=lambda n: (rooms[n.name], n.name))
        gpu = node.gpus[0]["name"] if node.gpus else None
        run.node_name, run.gpu, run.price_per_hour = node.name, gpu, self.pricing.hourly(gpu)
        run.summary = f"measuring on node {node.name}"
        return node

    @staticmethod
    def _used(session: Session, node: Node) -> int:
        return session.scalar(select(func.count()).select_from(Replica).where(
            Replica.node_id == node.id, Replica.state != ReplicaState.STOPPED)) or 0

    # -- step 0: the baseline -----------------------------------------------------------------------
    def _baseline(self, session: Session, run: OptimizationRun, step: OptimizationStep, node: Node,
                  options: OptimizeOptions, acts: _Acts) -> bool:
        self._begin(step)
        done = self._benches(step)
        if self._waiting(step, acts):
            return False
        if len(done) < options.repeats:
            replica = self._arm(session, run, step.engine_config, node, acts)
            if replica is None:
                run.summary = "baseline: starting the trial replica"
                return False
            self._measure_bench(session, run, step, "A", len(done), replica, options, acts)
            run.summary = f"baseline: measurement {len(done) + 1} of {options.repeats}"
            return False
        metrics = mean_metrics([bench_metrics(m.result, run.price_per_hour) for m in done])
        step.metrics = metrics
        bottleneck = find_bottleneck(options.goal, metrics)
        run.bottleneck = {"name": bottleneck.name, "why": bottleneck.why}
        planned = plan_techniques(bottleneck.name, options.techniques)
        for number, t in enumerate(planned, start=1):
            run.steps.append(OptimizationStep(number=number, technique=t.name, state=StepState.PENDING,
                                              change={}, reason=""))
        names = ", ".join(t.name for t in planned) or "none"
        self._end_step(session, run, step, StepState.KEPT,
                       f"the starting point: revision {run.baseline_revision}", acts, stop_replicas=False)
        record_event(session, kind="optimize.baseline", deployment_name=run.deployment.name, actor="optimizer",
                     message=f"optimization run {run.id}: bottleneck {bottleneck.name} ({bottleneck.why}); "
                             f"techniques to try: {names}",
                     details={"run": run.id, "metrics": metrics, "bottleneck": run.bottleneck,
                              "techniques": [t.name for t in planned]})
        return True

    # -- steps 1..n: one technique each -------------------------------------------------------------
    def _technique(self, session: Session, run: OptimizationRun, step: OptimizationStep, node: Node,
                   options: OptimizeOptions, acts: _Acts) -> bool:
        best = _best(run)
        t = technique(step.technique)
        if step.state == StepState.PENDING:
            return self._propose(session, run, step, best, t, options, acts)
        if t.changes_numerics and step.quality is None:
            return self._quality(session, run, step, options, acts)
        done = self._benches(step)
        if self._waiting(step, acts):
            return False
        order = ["A", "B"] * options.repeats + ["A"]
        if len(done) < len(order):
            arm = order[len(done)]
            config = best.engine_config if arm == "A" else step.engine_config
            replica = self._arm(session, run, config, node, acts)
            if replica is None:
                run.summary = f"step {step.number} ({step.technique}): starting the {_arm_name(arm)} trial replica"
                return False
            self._measure_bench(session, run, step, arm, len(done) // 2, replica, options, acts)
            run.summary = (f"step {step.number} ({step.technique}): measurement {len(done) + 1} of {len(order)} "
                           f"({_arm_name(arm)})")
            return False
        self._judge(session, run, step, best, done, options, acts)
        return True

    def _propose(self, session: Session, run: OptimizationRun, step: OptimizationStep, best: OptimizationStep,
                 t: Any, options: OptimizeOptions, acts: _Acts) -> bool:
        if utcnow() - run.created_at > timedelta(minutes=options.budget_minutes):
            self._end_step(session, run, step, StepState.SKIPPED,
                           f"the budget of {options.budget_minutes:g} minutes was spent", acts)
            return True
        metrics = best.metrics or {}
        assert run.bottleneck is not None
        context = Context(workload=options.workload, kv_cache_bytes=metrics.get("kv_bytes"),
                          kv_blocks_total=_int(metrics.get("kv_blocks_total")),
                          linear_weight_bytes=_int(metrics.get("linear_weight_bytes")), goal=options.goal,
                          bottleneck=run.bottleneck["name"])
        proposal = t.propose(dict(best.engine_config), context)
        if proposal.change is None:
            self._end_step(session, run, step, StepState.SKIPPED, proposal.why_not or "does not apply", acts)
            return True
        model = get_revision(session, run.deployment.name, run.baseline_revision).model
        try:
            candidate = validated_engine_config(model, {**best.engine_config, **proposal.change})
        except InvalidArgument as exc:
            self._end_step(session, run, step, StepState.SKIPPED, f"not a valid configuration: {exc.message}", acts)
            return True
        step.change, step.engine_config = proposal.change, candidate
        self._begin(step)
        run.summary = f"step {step.number} ({step.technique}): {_describe(proposal.change)}"
        return True

    def _quality(self, session: Session, run: OptimizationRun, step: OptimizationStep, options: OptimizeOptions,
                 acts: _Acts) -> bool:
        """The candidate against the deployment's quality reference, before any speed measurement: a
        configuration that loses quality is rejected without spending minutes benchmarking it."""
        evals = [m for m in step.measurements if m.kind == "eval"]
        if self._waiting(step, acts):
            return False
        if not evals or evals[-1].state == MeasurementState.FAILED:
            deployment = run.deployment
            reference = quality_service.reference_revision(deployment) or get_revision(
                session, deployment.name, run.baseline_revision)
            model = get_revision(session, deployment.name, run.baseline_revision).model
            # Scores do not depend on the thread count, so the eval uses every core of the node (a replica
            # config may pin one thread so that replicas sharing a CPU node do not thrash).
            args = {"model": model, "engine_config": {**step.engine_config, "num_threads": None},
                    "reference_model": reference.model,
                    "reference_engine_config": {**reference.engine_config, "num_threads": None},
                    "max_tokens": options.eval_max_tokens,
                    "mc_limit": options.eval_mc_limit, "context_len": EVAL_CONTEXT_LEN}
            self._new_measurement(session, run, step, "eval", "", 0, None, args, EVAL_TIMEOUT_S, acts)
            run.summary = f"step {step.number} ({step.technique}): quality eval against revision {reference.number}"
            return False
        last = evals[-1]
        assert last.state == MeasurementState.DONE and last.result is not None
        step.quality = judge.quality_drops(last.result["candidate"], last.result["reference"])
        candidate = last.result["candidate"]
        step.metrics = {"linear_weight_bytes": candidate.get("linear_weight_bytes"),
                        "kv_bytes_per_token": candidate.get("kv_bytes_per_token")}
        failures = judge.quality_failures(step.quality, options.max_quality_drop)
        if failures:
            self._end_step(session, run, step, StepState.REJECTED,
                           "; ".join(failures) + "; speed not measured (quality is checked first)", acts)
        return True

    def _judge(self, session: Session, run: OptimizationRun, step: OptimizationStep, best: OptimizationStep,
               done: list[Measurement], options: OptimizeOptions, acts: _Acts) -> None:
        price = run.price_per_hour
        a = [bench_metrics(m.result, price) for m in done if m.arm == "A"]
        b = [bench_metrics(m.result, price) for m in done if m.arm == "B"]
        metric, higher = goal_metric(options.goal, (run.bottleneck or {}).get("name", ""))
        if options.goal == "memory":
            gain = judge.exact_gain(statistics.fmean(x[metric] for x in a), statistics.fmean(x[metric] for x in b),
                                    metric=metric, higher_is_better=higher)
        else:
            gain = judge.interleaved_gain([x[metric] for x in a], [x[metric] for x in b], metric=metric,
                                          higher_is_better=higher)
        mean_b, mean_a = mean_metrics(b), mean_metrics(a)
        slos = [(label, mean_b[key], limit) for label, key, limit in (
            ("TTFT p95", "ttft_p95_ms", options.slo_ttft_p95_ms), ("TPOT p95", "tpot_p95_ms", options.slo_tpot_p95_ms))
            if limit is not None and mean_b.get(key) is not None]
        decision = judge.decide(gain=gain, min_gain=options.min_gain, quality=step.quality,
                                max_quality_drop=options.max_quality_drop, slos=slos)
        step.metrics, step.baseline_metrics, step.gain = mean_b, mean_a, gain.to_dict()
        state = StepState.KEPT if decision.kept else StepState.REJECTED
        self._end_step(session, run, step, state, decision.reason, acts)

    # -- the end ------------------------------------------------------------------------------------
    def _finish(self, session: Session, run: OptimizationRun, options: OptimizeOptions, acts: _Acts) -> None:
        kept = [s for s in run.steps if s.number > 0 and s.state == StepState.KEPT]
        names = ", ".join(s.technique for s in kept)
        best = _best(run)
        deployment = run.deployment
        if not kept:
            summary = "nothing kept: no technique gained beyond noise within the quality limit"
        elif options.advisory:
            summary = f"advisory: recommends {names} ({_describe(_changes(run))}); no revision created"
        elif deployment.current_revision is None or deployment.current_revision.number != run.baseline_revision:
            now = deployment.current_revision.number if deployment.current_revision else None
            summary = (f"kept {names}, but {deployment.name} moved from revision {run.baseline_revision} to {now} "
                       "during the run, so nothing was deployed; apply the report's configuration by hand")
        else:
            model = get_revision(session, deployment.name, run.baseline_revision).model
            _, revision, created = deploy(session, name=deployment.name, model=model,
                                          engine_config=best.engine_config, actor="optimizer",
                                          reason=f"optimization run {run.id}: {names}")
            run.result_revision = revision.number if created else None
            summary = f"kept {names}; revision {revision.number} is rolling out"
        acts.cancel += [(m.node_name, m.id) for m in runs.finish_run(session, run, RunState.SUCCEEDED, summary=summary)]
        acts.reconcile = True

    # -- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _begin(step: OptimizationStep) -> None:
        if step.state == StepState.PENDING:
            step.state, step.started_at = StepState.RUNNING, utcnow()

    def _end_step(self, session: Session, run: OptimizationRun, step: OptimizationStep, state: StepState,
                  reason: str, acts: _Acts, *, stop_replicas: bool = True) -> None:
        step.state, step.reason, step.finished_at = state, reason, utcnow()
        if stop_replicas and step.number > 0:
            # The best configuration's replica stays for the next step; every other one stops.
            best = _best(run)
            keep = tuple(r.id for r in self._trials(session, run) if r.engine_config == best.engine_config)
            if runs.stop_trial_replicas(session, run.id, keep=keep):
                acts.reconcile = True
        if step.number > 0:
            record_event(session, kind=f"optimize.step.{state.value}", deployment_name=run.deployment.name,
                         actor="optimizer",
                         message=f"optimization run {run.id} step {step.number} ({step.technique}) {state.value}: "
                                 f"{reason}",
                         details={"run": run.id, "step": step.number, "technique": step.technique,
                                  "change": step.change, "gain": step.gain, "quality": step.quality})

    @staticmethod
    def _benches(step: OptimizationStep) -> list[Measurement]:
        return [m for m in step.measurements if m.kind == "bench" and m.state == MeasurementState.DONE]

    def _waiting(self, step: OptimizationStep, acts: _Acts) -> bool:
        """Whether a measurement of the step is still out. A failed or lost measurement is taken again once
        (its retry takes the same place in the sequence); a second failure of the same kind fails the step."""
        for m in step.measurements:
            if m.state != MeasurementState.PENDING:
                continue
            if utcnow() - m.created_at > timedelta(seconds=m.timeout_s + RESULT_GRACE_S):
                m.state, m.finished_at = MeasurementState.FAILED, utcnow()
                m.error = f"no result from the agent within {m.timeout_s + RESULT_GRACE_S:g}s"
                acts.cancel.append((m.node_name, m.id))
                break
            acts.send.append(m.id)  # (again) if its agent has not got it on its current stream
            return True
        for kind in ("bench", "eval"):
            failed = [m for m in step.measurements if m.kind == kind and m.state == MeasurementState.FAILED]
            if len(failed) > MAX_RETRIES:
                last = failed[-1]
                what = f"bench {last.id} ({_arm_name(last.arm)})" if kind == "bench" else "the quality eval"
                raise StepFailed(f"{what} failed {len(failed)} times; last: {last.error}")
        return False

    def _trials(self, session: Session, run: OptimizationRun) -> list[Replica]:
        return list(session.scalars(select(Replica).where(
            Replica.optimization_run_id == run.id, Replica.state != ReplicaState.STOPPED).order_by(Replica.id)))

    def _arm(self, session: Session, run: OptimizationRun, config: dict[str, Any] | None, node: Node,
             acts: _Acts) -> Replica | None:
        """The READY trial replica of `config`, starting one (taking turns when the node is full); None while
        it starts."""
        assert config is not None
        live = self._trials(session, run)
        mine = [r for r in live if r.engine_config == config]
        if mine:
            replica = mine[0]
            return replica if replica.state == ReplicaState.READY and replica.url else None
        # Given up by the reconciler after max_failed_starts (not stopped by this run, nor lost with a node).
        failures = session.scalars(select(Replica).where(
            Replica.optimization_run_id == run.id, Replica.state == ReplicaState.STOPPED,
            Replica.error.like("gave up%"))).all()
        failed = [r for r in failures if r.engine_config == config]
        if len(failed) >= MAX_TRIAL_FAILURES:
            raise StepFailed(f"its trial replica failed to start {len(failed)} times: {failed[-1].error}")
        if node.max_replicas - self._used(session, node) < 1:
            others = [r.id for r in live]
            if not others:
                run.summary = f"waiting for a free replica slot on {node.name}"
                return None
            runs.stop_trial_replicas(session, run.id)  # take turns: the idle arm leaves room for this one
            acts.reconcile = True
            return None
        revision = get_revision(session, run.deployment.name, run.baseline_revision)
        create_replica(session, deployment=run.deployment, revision=revision, node=node, role=ReplicaRole.TRIAL,
                       engine_config=config, optimization_run_id=run.id)
        acts.reconcile = True
        return None

    def _measure_bench(self, session: Session, run: OptimizationRun, step: OptimizationStep, arm: str, repeat: int,
                       replica: Replica, options: OptimizeOptions, acts: _Acts) -> None:
        args = {"url": replica.url, "model": replica.revision.model, "workload": options.workload}
        self._new_measurement(session, run, step, "bench", arm, repeat, replica.id, args, BENCH_TIMEOUT_S, acts)

    @staticmethod
    def _new_measurement(session: Session, run: OptimizationRun, step: OptimizationStep, kind: str, arm: str,
                         repeat: int, replica_id: int | None, args: dict[str, Any], timeout_s: float,
                         acts: _Acts) -> None:
        assert run.node_name is not None
        m = Measurement(kind=kind, arm=arm, repeat=repeat, state=MeasurementState.PENDING, node_name=run.node_name,
                        replica_id=replica_id, args=args, timeout_s=timeout_s, created_at=utcnow())
        step.measurements.append(m)
        session.flush()
        acts.send.append(m.id)


# ---- helpers --------------------------------------------------------------------------------------


def _best(run: OptimizationRun) -> OptimizationStep:
    return [s for s in run.steps if s.state == StepState.KEPT][-1]


def _changes(run: OptimizationRun) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for s in run.steps:
        if s.number > 0 and s.state == StepState.KEPT:
            merged.update(s.change)
    return merged


def _describe(change: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in change.items()) or "no change"


def _arm_name(arm: str) -> str:
    return {"A": "current best", "B": "candidate"}.get(arm, arm or "eval")


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None

