"""CPU replicas on core sets of their own: the split, the pinning of real `llmctl serve` processes as replicas
come and go, the engine's thread count following its set, and the node capacity an agent advertises."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import psutil
import pytest
import torch
from typer.testing import CliRunner

from llmctl.agent.cpu_slots import partition, usable_cpus
from llmctl.agent.daemon import AgentConfig, AgentDaemon, node_capacity
from llmctl.agent.engine import EngineConfig
from llmctl.agent.engine.config import PINNED_ENV
from llmctl.agent.engine.engine import LLMEngine
from llmctl.agent.replicas import ReplicaState, ReplicaSupervisor
from llmctl.controlplane.cli import app
from llmctl.controlplane.proto import llmctl_pb2 as pb
from tests.agent.test_daemon import Cluster, start_plane, wait_until
from tests.agent.test_replicas import Recorder, chat
from tests.factories import make_tiny_llama

CPUS = usable_cpus()
needs_two_cores = pytest.mark.skipif(len(CPUS) < 2, reason="splitting cores between replicas needs two of them")


def test_partition_is_disjoint_and_even_up_to_one_core_each():
    assert partition([0, 1, 2, 3], 1) == [[0, 1, 2, 3]]
    assert partition([0, 1, 2, 3], 2) == [[0, 1], [2, 3]]
    assert partition([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert partition([4, 5, 6], 3) == [[4], [5], [6]]
    assert partition([0, 1], 0) == []


def test_partition_past_one_core_each_shares_cores_round_robin():
    # The operator's explicit oversubscription: one core (one thread) each, never more threads than cores.
    assert partition([0, 1], 3) == [[0], [1], [0]]


def test_node_capacity_is_the_operators_number_else_gpus_else_cores():
    assert node_capacity(None, 0, 2) == 2
    assert node_capacity(None, 4, 64) == 4
    assert node_capacity(3, 0, 2) == 3  # an explicit --max-replicas oversubscribes on purpose
    assert node_capacity(0, 2, 2) == 0


def threads_cpus(pid: int) -> list[set[int]]:
    """The affinity of every thread of a process."""
    out = []
    for thread in psutil.Process(pid).threads():
        try:
            out.append(os.sched_getaffinity(thread.id))
        except ProcessLookupError:
            continue
    return out


@needs_two_cores
def test_replicas_get_disjoint_core_sets_that_follow_the_replica_count(tmp_path: Path):
    model = make_tiny_llama(tmp_path / "tiny")
    recorder = Recorder()
    cores = CPUS[:2]
    engine = {"dtype": "float32", "num_kv_blocks": 64}  # no num_threads: the replica runs one per core
    with ReplicaSupervisor(recorder, log_dir=tmp_path / "logs", max_backoff_s=2, cpus=cores) as sup:
        def start(replica_id: int) -> psutil.Process:
            since = recorder.mark()
            sup.start(replica_id, deployment="chat", revision=1, model=str(model), engine_config=engine,
                      served_model_name="tiny")
            ready = recorder.wait_for(since, lambda s: s.replica_id == replica_id and s.state is ReplicaState.READY)
            chat(ready.url)
            return psutil.Process(ready.pid)

        first = start(1)
        assert sup.cpus_of(1) == cores
        assert all(c == set(cores) for c in threads_cpus(first.pid))

        second = start(2)  # the first gives up a core before the second starts
        assert (sup.cpus_of(1), sup.cpus_of(2)) == ([cores[0]], [cores[1]])
        assert all(c == {cores[0]} for c in threads_cpus(first.pid))
        assert all(c == {cores[1]} for c in threads_cpus(second.pid))
        chat(sup.status(1).url)  # still serving after the move

        since = recorder.mark()
        sup.stop(2, drain=False)
        recorder.wait_for(since, lambda s: s.replica_id == 2 and s.state is ReplicaState.STOPPED)
        assert sup.cpus_of(1) == cores  # the freed core goes back to the first
        wait_until(lambda: all(c == set(cores) for c in threads_cpus(first.pid)), 5, "the first to get both cores")
        chat(sup.status(1).url)


@needs_two_cores
def test_a_pinned_engine_runs_one_torch_thread_per_core_of_its_set(tiny_llama: Path, monkeypatch):
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), dtype="float32", num_kv_blocks=32))
    before_threads, before_cpus = torch.get_num_threads(), os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {CPUS[0]})
        engine.adopt_cpu_affinity()
        assert torch.get_num_threads() == before_threads  # not pinned by an agent: left alone
        monkeypatch.setenv(PINNED_ENV, "1")
        engine.adopt_cpu_affinity()
        assert torch.get_num_threads() == 1
        os.sched_setaffinity(0, set(CPUS[:2]))
        engine.adopt_cpu_affinity()
        assert torch.get_num_threads() == 2
        engine.config = dataclasses.replace(engine.config, num_threads=1)  # --threads stays an upper bound
        engine.adopt_cpu_affinity()
        assert torch.get_num_threads() == 1
    finally:
        os.sched_setaffinity(0, before_cpus)
        torch.set_num_threads(before_threads)


@needs_two_cores
def test_a_cpu_agent_takes_one_replica_per_core_and_a_third_is_refused_as_over_capacity(tmp_path: Path):
    """On this 2-core box: a deployment scaled to 3 gets 2 replicas on disjoint cores, and an event that says
    the third has no room; an agent started with an explicit --max-replicas 3 takes the third."""
    model = make_tiny_llama(tmp_path / "tiny")
    cluster = Cluster(tmp_path / "cp", start_plane(tmp_path / "cp"), None, model)  # type: ignore[arg-type]
    cluster.agent = AgentDaemon(AgentConfig(cluster.plane.grpc_address, cluster.plane.join_token,
                                            node_name="cpu-box", log_dir=tmp_path / "logs",
                                            telemetry_interval_s=0.5, max_backoff_s=1.0))
    cluster.agent.start()
    try:
        wait_until(lambda: cluster.agent.connected, 15, "the agent to connect")
        listed = cluster.call("ListNodes", pb.ListNodesRequest()).nodes
        assert [(n.name, n.max_replicas) for n in listed] == [("cpu-box", len(CPUS))]
        cluster.call("Deploy", pb.DeployRequest(name="chat", model=str(model), replicas=1,
                                                engine_config_json='{"dtype": "float32", "num_kv_blocks": 64}',
                                                quality_sample_rate=0))
        scaled = CliRunner().invoke(app, ["scale", "chat", str(len(CPUS) + 1), "--control-plane",
                                          cluster.plane.grpc_address, "--admin-token", cluster.plane.admin_token])
        assert scaled.exit_code == 0, scaled.output
        assert f"only {len(CPUS)} replica slot(s) are free for chat" in " ".join(scaled.output.split())

        def ready() -> list:
            return [s for s in cluster.agent.statuses() if s.state is ReplicaState.READY]

        wait_until(lambda: len(ready()) == len(CPUS), 120, "one READY replica per core")
        events = cluster.call("ListEvents", pb.ListEventsRequest(deployment="chat")).events
        refused = [e.message for e in events if e.kind == "deployment.unschedulable"]
        assert refused and "no healthy connected node has room for 1 more replica" in refused[0]
        time.sleep(1.0)  # reconcile rounds: time enough to (wrongly) place the third
        assert len(cluster.agent.statuses()) == len(CPUS)
        sets = [set(cluster.agent._supervisor.cpus_of(s.replica_id)) for s in ready()]
        assert set().union(*sets) == set(CPUS) and sum(map(len, sets)) == len(CPUS)  # disjoint, all cores
    finally:
        cluster.agent.stop()
        cluster.plane.stop()


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_gpu_replicas_each_see_a_gpu_of_their_own_and_a_freed_gpu_is_reused(tmp_path: Path):
    # Only the binding is checked (CUDA_VISIBLE_DEVICES in each child's environment): no READY needed.
    recorder = Recorder()
    gpus = ["GPU-aaaa", "GPU-bbbb"]
    with ReplicaSupervisor(recorder, log_dir=tmp_path / "logs", max_backoff_s=2, gpus=gpus) as sup:
        def spawned(replica_id: int) -> int:
            since = recorder.mark()
            sup.start(replica_id, deployment="chat", revision=1, model="tiny", engine_config={},
                      served_model_name="tiny")
            return recorder.wait_for(since, lambda s: s.replica_id == replica_id and s.pid is not None).pid

        first, second = spawned(1), spawned(2)
        assert environ_of(first)["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"
        assert environ_of(second)["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb"
        assert (sup.gpu_of(1), sup.gpu_of(2)) == ("GPU-aaaa", "GPU-bbbb")
        since = recorder.mark()
        sup.stop(1, drain=False)
        recorder.wait_for(since, lambda s: s.replica_id == 1 and s.state is ReplicaState.STOPPED)
        assert environ_of(spawned(3))["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"  # the freed GPU, not a shared one
