"""Measurements for the optimizer: `llmctl bench` and `llmctl eval` run as child processes of the agent.

The control plane sends RunMeasurement {measurement_id, kind, args_json, timeout_s}; the runner turns the
args into a command line, runs one child at a time in the order received, and hands back a
MeasurementOutcome with the child's JSON output. Arguments, by kind:

    bench: {"url": "http://HOST:PORT", "model": NAME,
            "workload": {"requests": 24, "input_len": [32, 128], "output_len": [32, 96],
                         "shared_prefix_len": 0, "request_rate": "inf", "seed": 0}}
           -> `llmctl bench --url URL --model NAME --requests 24 --input-len 32:128 ... --json OUT`
           A workload with "lengths": [[input, output], ...] (one pair per request, from recorded traffic)
           adds `--workload FILE`, a JSON file {"lengths": ...} written beside OUT: too long for a command line.
    eval:  {"model": NAME, "engine_config": {...}, "reference_model": NAME, "reference_engine_config": {...},
            "max_tokens": 2048, "mc_limit": 60, "context_len": 512}
           -> `llmctl eval NAME --engine-config JSON --reference-model NAME ... --json OUT`

Every key but url and model is optional (the command's default then applies); "mc_limit": 0 skips the
multiple-choice set. A control plane that lost an answer sends the same id again and gets the stored one.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.agent.bench import parse_lengths
from llmctl.agent.replicas import _log_tail, _pdeath_preexec, _signal_group

logger = logging.getLogger("llmctl.agent.measurement")

KINDS = ("bench", "eval")
KEEP_OUTCOMES = 64
"""Finished outcomes kept to answer a repeated id."""
LOG_TAIL_LINES = 40
POLL_S = 0.2

WORKLOAD_FLAGS = {  # workload key -> (flag, smallest value); ranges are handled apart
    "requests": ("--requests", 1),
    "shared_prefix_len": ("--shared-prefix-len", 0),
    "seed": ("--seed", 0),
}
RANGES = {"input_len": "--input-len", "output_len": "--output-len"}
EVAL_INTS = {"max_tokens": ("--max-tokens", 1), "context_len": ("--context-len", 2), "mc_limit": ("--mc-limit", 0)}


@dataclass(frozen=True)
class MeasurementOutcome:
    """How one measurement ended: the child's JSON output when ok, else why not."""

    measurement_id: int
    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None
    wall_s: float = 0.0
    """How long the child ran (0 when none was started)."""


class BadMeasurement(ValueError):
    """Arguments that cannot make a command line; the message says which and why."""


def _check_keys(args: Any, allowed: Sequence[str], what: str) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise BadMeasurement(f"{what} must be a JSON object, got {type(args).__name__}")
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise BadMeasurement(f"unknown {what} key(s) {', '.join(unknown)}; expected some of {', '.join(allowed)}")
    return args


def _text(args: dict[str, Any], key: str, what: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise BadMeasurement(f"{what} needs {key!r} as a non-empty string, got {value!r}")
    return value


def _integer(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadMeasurement(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _range(value: Any, name: str) -> str:
    """[A, B] (or a bare N for N:N) as the "A:B" the bench takes."""
    bounds = value if isinstance(value, list) else [value, value]
    if len(bounds) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in bounds) \
            or not 1 <= bounds[0] <= bounds[1]:
        raise BadMeasurement(f"{name} must be [A, B] with integers 1 <= A <= B, got {value!r}")
    return f"{bounds[0]}:{bounds[1]}"


def _rate(value: Any) -> str:
    if value in ("inf", "infinity") or (isinstance(value, float) and math.isinf(value) and value > 0):
        return "inf"
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise BadMeasurement(f"workload.request_rate must be a positive number or \"inf\", got {value!r}")
    return repr(value)


def bench_argv(args: Any) -> list[str]:
    args = _check_keys(args, ("url", "model", "workload"), "bench argument")
    url, model = _text(args, "url", "a bench"), _text(args, "model", "a bench")
    if not url.startswith(("http://", "https://")):
        raise BadMeasurement(f"bench url must start with http:// or https://, got {url!r}")
    workload = _check_keys(args.get("workload", {}), ("request_rate", "lengths", *WORKLOAD_FLAGS, *RANGES),
                           "workload")
    argv = ["bench", "--url", url, "--model", model]
    for key, (flag, minimum) in WORKLOAD_FLAGS.items():
        if key in workload:
            argv += [flag, str(_integer(workload[key], f"workload.{key}", minimum))]
    for key, flag in RANGES.items():
        if key in workload:
            argv += [flag, _range(workload[key], f"workload.{key}")]
    if "request_rate" in workload:
        argv += ["--request-rate", _rate(workload["request_rate"])]
    if "lengths" in workload:
        _lengths(workload["lengths"])
    return argv


def _lengths(value: Any) -> None:
    try:
        parse_lengths(value)
    except ValueError as exc:
        raise BadMeasurement(str(exc).replace("workload lengths", "workload.lengths")) from None


def measurement_files(kind: str, args: Any) -> dict[str, Any]:
    """JSON inputs a measurement's command reads from files, by flag (after measurement_argv accepted args)."""
    workload = (args.get("workload") or {}) if kind == "bench" else {}
    return {"--workload": {"lengths": workload["lengths"]}} if "lengths" in workload else {}


def eval_argv(args: Any) -> list[str]:
    configs = {"engine_config": "--engine-config", "reference_engine_config": "--reference-engine-config"}
    args = _check_keys(args, ("model", "reference_model", *configs, *EVAL_INTS), "eval argument")
    argv = ["eval", _text(args, "model", "an eval")]
    if "reference_model" in args:
        argv += ["--reference-model", _text(args, "reference_model", "an eval")]
    for key, flag in configs.items():
        if key in args:
            if not isinstance(args[key], dict):
                raise BadMeasurement(f"{key} must be a JSON object of EngineConfig fields, got {args[key]!r}")
            argv += [flag, json.dumps(args[key])]
    for key, (flag, minimum) in EVAL_INTS.items():
        if key in args:
            value = _integer(args[key], key, minimum)
            argv += ["--no-mc"] if key == "mc_limit" and value == 0 else [flag, str(value)]
    return argv


def measurement_argv(kind: str, args: Any) -> list[str]:
    """The llmctl command line (after the program, before --json OUT) of one measurement."""
    if kind == "bench":
        return bench_argv(args)
    if kind == "eval":
        return eval_argv(args)
    raise BadMeasurement(f"unknown measurement kind {kind!r}; expected one of {', '.join(KINDS)}")


@dataclass
class _Job:
    measurement_id: int
    kind: str
    argv: list[str]
    timeout_s: float
    files: dict[str, Any]
    """flag -> JSON object written to a file in the work dir, whose path follows the flag."""
    cancelled: bool = False


class MeasurementRunner:
    """Runs measurements one at a time on a worker thread; every outcome goes to on_result (one call at a
    time, from the worker thread or the caller of submit/cancel)."""

    def __init__(
        self,
        on_result: Callable[[MeasurementOutcome], None],
        *,
        command: Sequence[str] | None = None,
        work_dir: Path,
        default_timeout_s: float = 1800,
    ) -> None:
        """command: how to run the llmctl CLI (default: this Python, -m controlplane.cli); work_dir: where
        each child's output JSON and log go (the log is kept only when it failed)."""
        self._on_result = on_result
        self._command = list(command) if command else [sys.executable, "-m", "llmctl.controlplane.cli"]
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._default_timeout_s = default_timeout_s
        self._cond = threading.Condition()  # guards everything below; notified on submit, cancel, close
        self._queue: deque[_Job] = deque()
        self._running: _Job | None = None
        self._finished: OrderedDict[int, MeasurementOutcome] = OrderedDict()
        self._closed = False
        self._deliver_lock = threading.RLock()
        # Children are forked from this thread: PR_SET_PDEATHSIG fires when the forking thread exits.
        self._thread = threading.Thread(target=self._work, name="agent-measurements", daemon=True)
        self._thread.start()

    # -- public API ----------------------------------------------------------------------------------
    def submit(self, measurement_id: int, kind: str, args: Any, timeout_s: float = 0.0) -> None:
        """Queue a measurement (timeout_s <= 0: the default). Bad arguments are answered at once with a
        failed outcome; an id queued or running is ignored; a finished one is answered again."""
        with self._cond:
            if self._closed:
                return
            answer = self._finished.get(measurement_id)
            if answer is None:
                if self._known(measurement_id):
                    return
                try:
                    argv = measurement_argv(kind, args)
                    files = measurement_files(kind, args)
                except BadMeasurement as exc:
                    answer = self._remember(MeasurementOutcome(measurement_id, False, error=str(exc)))
                else:
                    usable = isinstance(timeout_s, int | float) and timeout_s > 0
                    timeout_s = timeout_s if usable else self._default_timeout_s
                    self._queue.append(_Job(measurement_id, kind, argv, timeout_s, files))
                    self._cond.notify_all()
                    return
        self._deliver(answer)

    def cancel(self, measurement_id: int) -> None:
        """Drop a queued measurement or kill a running one; either is answered "cancelled". An unknown id is
        answered (and remembered) as cancelled too, a finished one with its stored outcome."""
        with self._cond:
            if self._closed:
                return
            answer = self._finished.get(measurement_id)
            if answer is None:
                running = self._running
                if running is not None and running.measurement_id == measurement_id:
                    running.cancelled = True  # the worker kills the child and answers
                    self._cond.notify_all()
                    return
                self._queue = deque(j for j in self._queue if j.measurement_id != measurement_id)
                answer = self._remember(MeasurementOutcome(measurement_id, False, error="cancelled"))
        self._deliver(answer)

    def close(self) -> None:
        """Kill a running child, drop the queue (nothing more is answered) and stop the worker. Idempotent."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def __enter__(self) -> MeasurementRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------------
    def _known(self, measurement_id: int) -> bool:
        running = self._running
        return (running is not None and running.measurement_id == measurement_id) or any(
            j.measurement_id == measurement_id for j in self._queue)

    def _remember(self, outcome: MeasurementOutcome) -> MeasurementOutcome:
        self._finished[outcome.measurement_id] = outcome
        self._finished.move_to_end(outcome.measurement_id)
        while len(self._finished) > KEEP_OUTCOMES:
            self._finished.popitem(last=False)
        return outcome

    def _deliver(self, outcome: MeasurementOutcome) -> None:
        with self._deliver_lock:
            try:
                self._on_result(outcome)
            except Exception:  # a broken callback must not kill the worker
                logger.exception("on_result failed for measurement %d", outcome.measurement_id)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._running = self._queue.popleft()
            try:
                outcome = self._run(job)
            except Exception as exc:  # a runner bug fails this measurement, not the ones after it
                logger.exception("measurement %d failed in the agent", job.measurement_id)
                outcome = MeasurementOutcome(job.measurement_id, False, error=f"agent error: {exc!r}")
            with self._cond:
                self._running = None
                if self._closed:
                    return
                self._remember(outcome)
            self._deliver(outcome)

    def _run(self, job: _Job) -> MeasurementOutcome:
        out = self.work_dir / f"measurement-{job.measurement_id}.json"
        log_path = self.work_dir / f"measurement-{job.measurement_id}.log"
        out.unlink(missing_ok=True)
        inputs = []
        for n, (flag, data) in enumerate(job.files.items()):
            path = self.work_dir / f"measurement-{job.measurement_id}-input-{n}.json"
            path.write_text(json.dumps(data))
            inputs += [flag, str(path)]
        cmd = [*self._command, *job.argv, *inputs, "--json", str(out)]
        started = time.monotonic()

        def failed(error: str) -> MeasurementOutcome:
            for path in inputs[1::2]:
                Path(path).unlink(missing_ok=True)
            return MeasurementOutcome(job.measurement_id, False, error=error, wall_s=time.monotonic() - started)

        with open(log_path, "wb") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=_pdeath_preexec())
            except OSError as exc:
                return failed(f"cannot start llmctl {job.kind}: {exc}")
        logger.info("measurement %d: llmctl %s started, pid %d (log %s)", job.measurement_id, job.kind, proc.pid,
                    log_path)
        stopped = self._wait(job, proc, started + job.timeout_s)
        _signal_group(proc, signal.SIGKILL)  # the whole group, even after a clean exit: nothing lingers
        proc.wait()
        tail = _log_tail(log_path, 0, LOG_TAIL_LINES)
        if stopped == "cancelled" or job.cancelled:
            return failed("cancelled")
        if stopped == "timeout":
            return failed(f"timed out after {job.timeout_s:g}s" + (f"; last lines of its output:\n{tail}" if tail
                                                                   else ""))
        if proc.returncode != 0:
            return failed(f"llmctl {job.kind} exited with code {proc.returncode}; last lines of its output:\n{tail}")
        try:
            result = json.loads(out.read_text())
        except (OSError, ValueError) as exc:
            return failed(f"llmctl {job.kind} wrote no JSON result ({exc}); last lines of its output:\n{tail}")
        if not isinstance(result, dict):
            return failed(f"llmctl {job.kind} wrote {type(result).__name__} JSON, not an object")
        for path in [out, log_path, *map(Path, inputs[1::2])]:
            path.unlink(missing_ok=True)
        return MeasurementOutcome(job.measurement_id, True, result=result, wall_s=time.monotonic() - started)

    def _wait(self, job: _Job, proc: subprocess.Popen[bytes], deadline: float) -> str | None:
        """Until the child exits (None), is cancelled or the runner closes ("cancelled"), or times out."""
        while proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            with self._cond:
                if job.cancelled or self._closed:
                    return "cancelled"
                self._cond.wait(min(left, POLL_S))
        return None
