"""Model routes in SQL on SQLite and PostgreSQL: the migration adds and removes exactly its table, a route
goes with either of its deployments, and what the gateway is handed resolves the saturation limit."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select

from llmctl.controlplane.db.models import DeploymentRoute
from llmctl.controlplane.db.session import (
    current_revision,
    downgrade_database,
    make_engine,
    session_scope,
    upgrade_database,
)
from llmctl.controlplane.errors import InvalidArgument
from llmctl.controlplane.services import deployments, model_routes

REVISION, PREVIOUS = "b3f1d8e26c49", "b3e19d7c5a42"


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_the_migration_adds_and_removes_the_routes_table(blank_db_url: str):
    upgrade_database(blank_db_url, REVISION)
    assert current_revision(blank_db_url) == REVISION and "deployment_routes" in tables(blank_db_url)
    before = tables(blank_db_url)
    downgrade_database(blank_db_url, PREVIOUS)
    assert current_revision(blank_db_url) == PREVIOUS and tables(blank_db_url) == before - {"deployment_routes"}
    upgrade_database(blank_db_url, REVISION)
    assert "deployment_routes" in tables(blank_db_url)


def deploy(session, *names: str, max_num_seqs: int = 64) -> None:
    for name in names:
        deployments.deploy(session, name=name, model="tiny", engine_config={"max_num_seqs": max_num_seqs},
                           replicas=0)


@pytest.mark.parametrize("gone", ["big", "small"])
def test_a_route_goes_with_either_of_its_deployments(db_factory, gone: str):
    with session_scope(db_factory) as session:
        deploy(session, "big", "small")
        model_routes.set_route(session, deployment="big", companion="small", rule="max-prompt-tokens=100")
    with session_scope(db_factory) as session:
        deployments.delete_deployment(session, name=gone)
    with session_scope(db_factory) as session:
        assert session.scalars(select(DeploymentRoute)).all() == []
        assert model_routes.published(session) == {}


def test_the_gateway_gets_the_companions_max_num_seqs_unless_a_limit_was_given(db_factory):
    with session_scope(db_factory) as session:
        deploy(session, "big", "other")
        deploy(session, "small", max_num_seqs=12)
        model_routes.set_route(session, deployment="big", companion="small", rule="classifier")
        model_routes.set_route(session, deployment="other", companion="small", rule="regex=^hi", max_in_flight=3)
    with session_scope(db_factory) as session:
        routes = model_routes.published(session)
    assert {name: (r.companion, str(r.rule), r.max_in_flight) for name, r in routes.items()} == {
        "big": ("small", "classifier", 12), "other": ("small", "regex=^hi", 3)}


def test_a_refused_route_leaves_the_stored_one(db_factory):
    with session_scope(db_factory) as session:
        deploy(session, "big", "small")
        model_routes.set_route(session, deployment="big", companion="small", rule="classifier")
    with pytest.raises(InvalidArgument, match="does not compile"), session_scope(db_factory) as session:
        model_routes.set_route(session, deployment="big", companion="small", rule="regex=[")
    with session_scope(db_factory) as session:
        assert str(model_routes.rule_of(model_routes.get_route(session, "big"))) == "classifier"
