"""`llmctl optimize`: bad flags exit 2 before any control plane is involved; a started run is followed step by
step to an exit code that says how it ended. The control plane is a stand-in client here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmctl.controlplane.cli import app
from llmctl.controlplane.commands import optimize
from llmctl.controlplane.errors import Unavailable
from llmctl.controlplane.proto import llmctl_pb2 as pb
from tests.controlplane.test_optimizer_report import make_report


class FakeAdmin:
    """Answers GetOptimization from a script (a run, or an exception to raise) and records every call."""

    def __init__(self, script: list | None = None):
        self.script = list(script or [])
        self.calls: list[tuple] = []
        self.connected = 0

    def __call__(self, address: str, token: str, **_: object) -> FakeAdmin:
        self.connected += 1
        return self

    def close(self) -> None:
        pass

    def start_optimization(self, deployment: str, goal: str, options: dict) -> pb.OptimizationRun:
        self.calls.append(("start", deployment, goal, options))
        return pb.OptimizationRun(id=3, deployment=deployment, goal=goal, state="running", created_at=1.0)

    def get_optimization(self, *, run_id: int = 0, deployment: str = "") -> pb.OptimizationRun:
        self.calls.append(("get", run_id, deployment))
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def cancel_optimization(self, *, run_id: int = 0, deployment: str = "") -> pb.OptimizationRun:
        self.calls.append(("cancel", run_id, deployment))
        return pb.OptimizationRun(id=3, deployment="demo", goal="throughput", state="cancelled")


def as_run(report: dict) -> pb.OptimizationRun:
    return pb.OptimizationRun(id=report["id"], deployment=report["deployment"], state=report["state"],
                              goal=report["goal"], created_at=report["created_at"],
                              finished_at=report["finished_at"] or 0, summary=report["summary"] or "",
                              report_json=json.dumps(report))


def running_at(steps: int, last_state: str = "running") -> dict:
    """The fixture run while it is still at step `steps - 1`."""
    report = make_report(state="running", finished_at=None, result_revision=None, summary="measuring")
    report["steps"] = [dict(s) for s in report["steps"][:steps]]
    report["steps"][-1].update(state=last_state, reason="" if last_state == "running" else report["steps"][-1]["reason"])
    return report


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path))
    for name in ("LLMCTL_ADMIN_TOKEN", "LLMCTL_CONTROL_PLANE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(optimize, "POLL_S", 0.0)
    return tmp_path


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> FakeAdmin:
    fake = FakeAdmin()
    monkeypatch.setattr("llmctl.controlplane.client.AdminClient", fake)
    return fake


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["optimize", *args])
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--goal", "speed"], "--goal must be one of throughput, latency, memory, cost, got 'speed'"),
        (["--max-quality-drop", "2"], "--max-quality-drop 2: give a fraction (like 0.02) or a percent (like 2%)"),
        (["--max-quality-drop", "two%"], "--max-quality-drop takes a fraction (0.02) or a percent (2%), got 'two%'"),
        (["--max-quality-drop", "150%"], "--max-quality-drop must be a fraction in [0, 1], got 1.5"),
        (["--min-gain", "-5%"], "--min-gain must be a fraction in [0, 10], got -0.05"),
        (["--slo-ttft-p95", "0"], "--slo-ttft-p95 must be a positive number of milliseconds"),
        (["--repeats", "1"], "--repeats must be an integer in 2..20, got 1"),
        (["--budget-minutes", "0"], "--budget-minutes must be a positive number of minutes"),
        (["--techniques", " , "], "--techniques must be a non-empty list of names"),
    ],
)
def test_bad_flags_exit_2_with_one_clear_line_before_any_connection(admin, flags, message):
    code, output = run("demo", *(flags if "--goal" in flags else ["--goal", "throughput", *flags]))
    assert code == 2
    assert f"error: {message}" in output
    assert admin.connected == 0  # and no admin token was needed to say so


def test_a_deployment_name_that_cannot_exist_is_refused_locally(admin):
    code, output = run("Demo_1", "--goal", "throughput")
    assert code == 2 and "invalid deployment name 'Demo_1'" in output
    assert admin.connected == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "--workload {path}: no such file"),
        ("{requests: 8", "--workload {path} is not valid JSON"),
        ('{"requests": 8, "prompts": 3}', "--workload {path}: unknown workload key(s) ['prompts']"),
        ('{"input_len": [128, 32]}', "--workload {path}: workload input_len must be [low, high]"),
        ('[1, 2]', "--workload {path}: a workload must be a JSON object"),
    ],
)
def test_a_bad_workload_file_exits_2_naming_the_file(admin, tmp_path, content, message):
    path = tmp_path / "workload.json"
    if content is not None:
        path.write_text(content)
    code, output = run("demo", "--goal", "throughput", "--workload", str(path))
    assert code == 2
    assert f"error: {message.format(path=path)}" in output
    assert admin.connected == 0


def test_start_sends_the_checked_options_as_fractions_and_detaches(admin, tmp_path):
    path = tmp_path / "workload.json"
    path.write_text('{"requests": 8, "shared_prefix_len": 64}')
    code, output = run("demo", "--goal", "latency", "--max-quality-drop", "1%", "--min-gain", "0.1",
                       "--slo-tpot-p95", "80", "--workload", str(path), "--techniques", "kv-cache-size, awq",
                       "--advisory", "--repeats", "4", "--detach", "--admin-token", "t")
    assert code == 0, output
    [(kind, deployment, goal, options)] = admin.calls
    assert (kind, deployment, goal) == ("start", "demo", "latency")
    assert "goal" not in options
    assert options["max_quality_drop"] == pytest.approx(0.01) and options["min_gain"] == pytest.approx(0.1)
    assert options["slo_tpot_p95_ms"] == 80 and options["slo_ttft_p95_ms"] is None
    assert options["techniques"] == ["kv-cache-size", "awq"] and options["advisory"] is True
    assert options["repeats"] == 4 and options["budget_minutes"] == 60
    assert options["workload"] == {"requests": 8, "input_len": [32, 128], "output_len": [32, 96],
                                   "shared_prefix_len": 64, "request_rate": "inf", "seed": 0}
    assert "run 3: optimizing demo for latency; `llmctl optimize status 3` shows it" in output


def test_start_follows_each_step_once_and_exits_0_when_the_run_succeeds(admin):
    admin.script = [as_run(running_at(1)), as_run(running_at(1)), as_run(running_at(2)),
                    as_run(running_at(2, "kept")), as_run(make_report())]
    code, output = run("demo", "--goal", "throughput", "--admin-token", "t")
    assert code == 0, output
    progress, final = output.split("optimization run 3 of demo: succeeded, goal throughput")
    assert progress.count("bottleneck: kv-memory: the baseline preempted 41 sequences") == 1
    assert progress.count("step 0 baseline: running") == 1
    assert progress.count("step 0 baseline: kept: the starting point") == 1
    assert progress.count("step 1 kv-cache-size (num_kv_blocks=128): running") == 1
    assert progress.count("step 1 kv-cache-size (num_kv_blocks=128): kept: throughput +38.1%") == 1
    assert "step 3 awq (quantization=awq): rejected: quality: top-1 agreement dropped 6.1%" in progress
    assert "step 4 prefix-caching: skipped: the workload shares no prompt prefix" in progress
    assert "1 kv-cache-size 513.0 9.0 112.1 640/1510 52.3/66.0 = = 0.124 kept (tok/s +38.1%)" in final
    assert "revisions: 1 -> 2" in final
    assert all(call[:2] == ("get", 3) for call in admin.calls[1:])


@pytest.mark.parametrize("state", ["failed", "cancelled"])
def test_start_exits_1_when_the_run_fails_or_is_cancelled(admin, state):
    admin.script = [as_run(make_report(state=state, error="no node has room for a trial replica"
                                       if state == "failed" else None, summary=f"{state} at step 2",
                                       result_revision=None))]
    code, output = run("demo", "--goal", "throughput", "--admin-token", "t")
    assert code == 1
    expected = "no node has room for a trial replica" if state == "failed" else "cancelled at step 2"
    assert f"error: run 3 {state}: {expected}" in output


def test_ctrl_c_stops_following_but_not_the_run(admin):
    admin.script = [as_run(running_at(1)), KeyboardInterrupt()]
    code, output = run("demo", "--goal", "throughput", "--admin-token", "t")
    assert code == 0
    assert "stopped following run 3; it goes on: `llmctl optimize status 3` shows it, " \
           "`llmctl optimize cancel 3` stops it" in output
    assert not any(call[0] == "cancel" for call in admin.calls)


def test_following_waits_out_a_control_plane_restart(admin):
    admin.script = [as_run(running_at(1)), Unavailable("control plane at x is unreachable"),
                    Unavailable("control plane at x is unreachable"), as_run(make_report())]
    code, output = run("demo", "--goal", "throughput", "--admin-token", "t")
    assert code == 0, output
    assert output.count("control plane unreachable; still following") == 1


def test_report_markdown_with_traffic_projection(admin):
    admin.script = [as_run(make_report())]
    result = CliRunner().invoke(app, ["optimize", "report", "3", "--format", "markdown", "--traffic", "50M",
                                      "--admin-token", "t"])
    assert result.exit_code == 0, result.output
    assert "| 3 | awq | - | - | - | - | - | +10.0% | -6.1% | - | rejected: quality |" in result.output
    assert "At 50,000,000 output tokens per day" in result.output
    assert "| saved (25%) | - | 2 | $73.00 |" in result.output
    assert admin.calls == [("get", 3, "")]


def test_report_json_is_the_report_with_its_projection(admin):
    admin.script = [as_run(make_report())]
    result = CliRunner().invoke(app, ["optimize", "report", "3", "--format", "json", "--traffic", "50000000",
                                      "--admin-token", "t"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["steps"][3]["quality"]["top1_agreement"]["drop"] == 0.061
    assert data["projection"]["result"]["replicas"] == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status"], "name a run (`llmctl optimize status RUN`) or a deployment (--deployment NAME)"),
        (["cancel"], "name a run (`llmctl optimize cancel RUN`) or a deployment (--deployment NAME)"),
        (["report", "0"], "RUN is a run id (1 or more), got 0"),
        (["report", "3", "--traffic", "lots"], "--traffic takes a positive number of output tokens per day"),
    ],
)
def test_run_commands_refuse_a_missing_or_bad_target_locally(admin, args, message):
    code, output = run(*args)
    assert code == 2 and f"error: {message}" in output
    assert admin.connected == 0


def test_cancel_by_deployment_says_the_serving_revision_stays(admin):
    code, output = run("cancel", "--deployment", "demo", "--admin-token", "t")
    assert code == 0
    assert admin.calls == [("cancel", 0, "demo")]
    assert "run 3 of demo: cancelled; its trial replicas stop and demo keeps serving the revision it serves" in output


def test_a_running_step_is_announced_once_even_as_its_progress_text_changes():
    seen: dict = {}
    report = running_at(2)
    report["steps"][1]["reason"] = "measuring pair 1 of 3"
    first = optimize.progress_lines(report, seen)
    report["steps"][1]["reason"] = "measuring pair 2 of 3"
    assert optimize.progress_lines(report, seen) == []
    assert first[-1] == "step 1 kv-cache-size (num_kv_blocks=128): running"
