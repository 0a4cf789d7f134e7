"""Deployments and revisions on SQLite and PostgreSQL: deploy, redeploy, rollback, scale, races."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from llmctl.agent.engine.config import EngineConfig
from llmctl.controlplane.db.models import Revision, RevisionImmutable
from llmctl.controlplane.db.session import session_scope
from llmctl.controlplane.errors import Conflict, InvalidArgument, NotFound
from llmctl.controlplane.services.deployments import (
    config_diff,
    delete_deployment,
    deploy,
    get_deployment,
    get_revision,
    list_deployments,
    list_revisions,
    rollback,
    scale,
)
from llmctl.controlplane.services.events import list_events
from llmctl.controlplane.services.replicas import create_replica, list_replicas

MODEL = "smollm2-135m"


def test_deploy_creates_revision_one_with_the_full_engine_config(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deployment, revision, created = deploy(
            session, name="chat", model=MODEL, engine_config={"max_num_seqs": 8}, actor="alice"
        )
    assert created and revision.number == 1
    with session_scope(db_factory) as session:
        stored = get_deployment(session, "chat")
        assert stored.current_revision is not None and stored.current_revision.number == 1
        assert stored.desired_replicas == 1 and stored.model == MODEL
        assert stored.current_revision.engine_config == EngineConfig(model=MODEL, max_num_seqs=8).to_dict()
        assert stored.current_revision.created_by == "alice"
        assert stored.created_at.tzinfo is not None
        [event] = list_events(session, deployment_name="chat")
        assert event.kind == "deployment.deployed" and event.actor == "alice"


def test_redeploy_with_changed_config_makes_revision_two(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deploy(session, name="chat", model=MODEL, engine_config={"max_num_seqs": 8})
    with session_scope(db_factory) as session:
        _, revision, created = deploy(session, name="chat", model=MODEL, engine_config={"max_num_seqs": 16})
    assert created and revision.number == 2
    with session_scope(db_factory) as session:
        assert get_deployment(session, "chat").current_revision.number == 2
        assert [r.number for r in list_revisions(session, "chat")] == [1, 2]
        deployed = list_events(session, kinds=["deployment.deployed"])
        assert deployed[-1].details["changes"] == [["max_num_seqs", 8, 16]]


def test_identical_redeploy_makes_no_revision_but_applies_replicas(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deploy(session, name="chat", model=MODEL, engine_config={"block_size": 32})
    with session_scope(db_factory) as session:
        # Defaults spelled out or left implicit are the same config.
        deployment, revision, created = deploy(
            session, name="chat", model=MODEL, engine_config={"block_size": 32, "dtype": "auto"}, replicas=3
        )
    assert not created and revision.number == 1 and deployment.desired_replicas == 3
    with session_scope(db_factory) as session:
        assert [r.number for r in list_revisions(session, "chat")] == [1]
        assert get_deployment(session, "chat").desired_replicas == 3
        assert [e.kind for e in list_events(session)] == ["deployment.deployed", "deployment.scaled"]


def test_rollback_restores_previous_engine_config(db_factory: sessionmaker[Session]) -> None:
    first = {"max_num_seqs": 8, "kv_cache_dtype": "int8", "enable_prefix_caching": False}
    with session_scope(db_factory) as session:
        deploy(session, name="chat", model=MODEL, engine_config=first)
    with session_scope(db_factory) as session:
        deploy(session, name="chat", model=MODEL, engine_config={"max_num_seqs": 32})
    with session_scope(db_factory) as session:
        target = rollback(session, name="chat", actor="bob")
    assert target.number == 1
    with session_scope(db_factory) as session:
        deployment = get_deployment(session, "chat")
        assert deployment.current_revision.number == 1
        assert (
            deployment.current_revision.engine_config
            == EngineConfig.from_dict({**first, "model": MODEL}).to_dict()
        )
        # Rolling back points at an old revision; it never copies it into a new one.
        assert [r.number for r in list_revisions(session, "chat")] == [1, 2]
        [event] = list_events(session, kinds=["deployment.rolled_back"])
        assert event.details == {"from": 2, "to": 1, "reason": "rollback to 1"} and event.actor == "bob"


def test_rollback_to_a_named_revision_and_its_limits(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        for seqs in (8, 16, 32):
            deploy(session, name="chat", model=MODEL, engine_config={"max_num_seqs": seqs})
    with session_scope(db_factory) as session:
        assert rollback(session, name="chat", to_revision=1, reason="bad latency").number == 1
    with (
        session_scope(db_factory) as session,
        pytest.raises(NotFound, match="no revision 7; it has revisions 1 to 3"),
    ):
        rollback(session, name="chat", to_revision=7)
    with session_scope(db_factory) as session, pytest.raises(InvalidArgument, match="already at revision 1"):
        rollback(session, name="chat", to_revision=1)
    with session_scope(db_factory) as session, pytest.raises(InvalidArgument, match="no earlier revision"):
        rollback(session, name="chat")
    with session_scope(db_factory) as session:
        assert get_deployment(session, "chat").current_revision.number == 1
        assert list_events(session, kinds=["deployment.rolled_back"])[-1].details["reason"] == "bad latency"


def test_invalid_engine_config_names_the_bad_field(db_factory: sessionmaker[Session]) -> None:
    cases = [
        ({"block_size": 7}, "block_size must be 8, 16, 32 or 64"),
        ({"max_num_seqs": "many"}, "max_num_seqs must be int"),
        ({"enable_prefix_caching": 1}, "enable_prefix_caching must be bool"),
        ({"max_num_seq": 4}, "unknown engine config keys: max_num_seq"),
    ]
    for config, message in cases:
        with session_scope(db_factory) as session, pytest.raises(InvalidArgument, match=message):
            deploy(session, name="chat", model=MODEL, engine_config=config)
    with session_scope(db_factory) as session:
        assert list_deployments(session) == [] and list_events(session) == []


def test_names_and_replica_counts_are_checked(db_factory: sessionmaker[Session]) -> None:
    for name in ("Chat", "-chat", "chat_1", "a" * 64, ""):
        with (
            session_scope(db_factory) as session,
            pytest.raises(InvalidArgument, match="invalid deployment name"),
        ):
            deploy(session, name=name, model=MODEL, engine_config={})
    with session_scope(db_factory) as session:
        deploy(session, name="chat", model=MODEL, engine_config={})
    for replicas in (-1, 65, True):
        with session_scope(db_factory) as session, pytest.raises(InvalidArgument, match="replicas must be"):
            scale(session, name="chat", replicas=replicas)
    with session_scope(db_factory) as session:
        assert scale(session, name="chat", replicas=0).desired_replicas == 0
    with session_scope(db_factory) as session, pytest.raises(NotFound, match="known deployments: chat"):
        get_deployment(session, "chta")


def test_config_diff_lists_changed_keys_sorted() -> None:
    old = EngineConfig(model="a", max_num_seqs=8).to_dict()
    new = EngineConfig(model="b", max_num_seqs=8, block_size=32).to_dict()
    assert config_diff(old, new) == [("block_size", 16, 32), ("model", "a", "b")]
    assert config_diff(old, old) == []
    assert config_diff({"x": 1}, {}) == [("x", 1, None)]


def test_revisions_refuse_updates(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deploy(session, name="chat", model=MODEL, engine_config={"max_num_seqs": 8})
    with pytest.raises(RevisionImmutable), session_scope(db_factory) as session:
        get_revision(session, "chat", 1).engine_config = {"model": MODEL, "max_num_seqs": 999}
    with session_scope(db_factory) as session:
        assert get_revision(session, "chat", 1).engine_config["max_num_seqs"] == 8


def test_delete_removes_revisions_but_keeps_the_audit_log(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deploy(session, name="chat", model=MODEL, engine_config={})
        deployment, revision, _ = deploy(session, name="chat", model=MODEL, engine_config={"block_size": 8})
        create_replica(session, deployment=deployment, revision=revision, node=None)
    with session_scope(db_factory) as session:
        delete_deployment(session, name="chat")
    with session_scope(db_factory) as session:
        assert list_deployments(session) == [] and list_replicas(session) == []
        kinds = [e.kind for e in list_events(session, deployment_name="chat")]
        assert kinds == ["deployment.deployed", "deployment.deployed", "replica.created", "deployment.deleted"]
    with session_scope(db_factory) as session:
        _, revision, _ = deploy(session, name="chat", model=MODEL, engine_config={})
        assert revision.number == 1


def test_concurrent_deploys_one_wins_the_other_conflicts(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deploy(session, name="chat", model=MODEL, engine_config={"max_num_seqs": 8})
    barrier = threading.Barrier(2, timeout=10)
    outcomes: list[str] = []

    def writer(seqs: int) -> None:
        try:
            with session_scope(db_factory) as session:
                # Both hold version N before either writes (held: the session only keeps referenced rows).
                seen = get_deployment(session, "chat")
                barrier.wait()
                deploy(session, name=seen.name, model=MODEL, engine_config={"max_num_seqs": seqs})
            outcomes.append("won")
        except Conflict as e:
            assert "changed by another call at the same time; re-read and retry" in e.message
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(seqs,)) for seqs in (16, 32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["conflict", "won"]
    with session_scope(db_factory) as session:
        revisions = list_revisions(session, "chat")
        assert [r.number for r in revisions] == [1, 2]
        assert get_deployment(session, "chat").current_revision.engine_config == revisions[1].engine_config
        assert len(list_events(session, kinds=["deployment.deployed"])) == 2


def test_a_stale_copy_cannot_scale_or_roll_back(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        deploy(session, name="chat", model=MODEL, engine_config={"max_num_seqs": 8})
        deploy(session, name="chat", model=MODEL, engine_config={"max_num_seqs": 16})
    stale = db_factory()
    try:
        seen = get_deployment(stale, "chat")
        with session_scope(db_factory) as session:
            scale(session, name="chat", replicas=5)
        with pytest.raises(Conflict):
            rollback(stale, name=seen.name)
        stale.rollback()
    finally:
        stale.close()
    with session_scope(db_factory) as session:
        deployment = get_deployment(session, "chat")
        assert deployment.current_revision.number == 2 and deployment.desired_replicas == 5


def test_a_field_added_to_engine_config_later_is_not_a_change(db_factory: sessionmaker[Session]) -> None:
    with session_scope(db_factory) as session:
        _, revision, _ = deploy(session, name="chat", model=MODEL, engine_config={"max_num_seqs": 8})
        # A revision written before `served_model_name` existed (Core bypasses the ORM's guard).
        older = {k: v for k, v in revision.engine_config.items() if k != "served_model_name"}
        session.execute(update(Revision).where(Revision.id == revision.id).values(engine_config=older))
    with session_scope(db_factory) as session:
        _, _, created = deploy(session, name="chat", model=MODEL, engine_config={"max_num_seqs": 8})
        assert not created
        config = {"max_num_seqs": 8, "served_model_name": "chat"}
        _, _, created = deploy(session, name="chat", model=MODEL, engine_config=config)
        assert created
        changes = list_events(session, kinds=["deployment.deployed"])[-1].details["changes"]
        assert changes == [["served_model_name", None, "chat"]]


def test_a_revision_stored_before_speculative_decoding_existed_is_not_changed_by_a_redeploy(
    db_factory: sessionmaker[Session],
) -> None:
    speculative = ("speculative_method", "speculative_model", "num_speculative_tokens", "ngram_max", "ngram_min")
    with session_scope(db_factory) as session:
        _, revision, _ = deploy(session, name="chat", model=MODEL, engine_config={"quantization": "int8"})
        older = {k: v for k, v in revision.engine_config.items() if k not in speculative}
        session.execute(update(Revision).where(Revision.id == revision.id).values(engine_config=older))
    with session_scope(db_factory) as session:
        _, _, created = deploy(session, name="chat", model=MODEL, engine_config={"quantization": "int8"})
        assert not created
        config = {"quantization": "int8", "speculative_method": "ngram"}
        _, _, created = deploy(session, name="chat", model=MODEL, engine_config=config)
        assert created
        changes = list_events(session, kinds=["deployment.deployed"])[-1].details["changes"]
        assert changes == [["speculative_method", "none", "ngram"]]  # the stored config read as today's
