"""`llmctl prompts audit` against a real, in-process control plane (gRPC, SQLite): the table, the JSON, and the
errors for an unknown deployment, an empty window and bad flags. Rows are written with the services the
gateway uses (tests/controlplane/gateway/test_prompts.py sends real requests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmctl.controlplane.db.session import make_engine, session_factory, session_scope
from llmctl.controlplane.server import ControlPlane
from llmctl.controlplane.services import tenants
from tests.controlplane.cli_plane import llmctl, running_control_plane
from tests.controlplane.test_store_prompts import record_all


@pytest.fixture
def control_plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    with running_control_plane(tmp_path, monkeypatch) as cp:
        yield cp



def record(cp: ControlPlane) -> None:
    engine = make_engine(cp.database_url)
    try:
        with session_scope(session_factory(engine, api_key_secret="prompts-test-secret")) as session:
            tenants.create_tenant(session, name="acme")
            tenants.create_tenant(session, name="beta")
            record_all(session)
    finally:
        engine.dispose()


def test_the_audit_table_and_json(control_plane: ControlPlane) -> None:
    cp = control_plane
    assert llmctl(cp, "deploy", "chat", "--model", "tiny", "--no-wait")[0] == 0
    record(cp)
    code, output = llmctl(cp, "prompts", "audit", "chat", "--window", "2h", "--top", "2")
    assert code == 0, output
    lines = [" ".join(line.split()) for line in output.splitlines()]
    assert lines[0] == "chat: 8 requests in the last 2h, 2,980 prompt tokens"
    assert "acme 4 2,070 69% 40 $0.004" in lines and "beta 4 910 31% 40 $0.002" in lines
    assert "system prompts: 2 distinct, in 6 of 8 requests" in lines
    assert any(line.startswith("system prompt ") and line.endswith(" (400 tokens) is in 50% of requests")
               for line in lines)
    assert "most repeated prefixes: 3 distinct" in lines
    assert [line.split()[1:] for line in lines if line.endswith((" 768", " 448"))] == [
        ["384", "2", "25%", "768"], ["448", "1", "12%", "448"]]
    price = 0.006 / 3060 * 1e6
    assert f"prefix caching saves 184.0M prompt tokens, ${184 * price:,.2f} (49% of prompt tokens)" in lines
    assert (f"system prompts cut to 167 tokens save 124.8M prompt tokens, ${124.75 * price:,.2f} (the mean is 250 "
            "tokens a request)") in lines
    assert any(line.startswith(f"at ${price:.4g} per million tokens, the window's recorded cost") for line in lines)

    data = json.loads(llmctl(cp, "prompts", "audit", "chat", "-o", "json", "--target-system-tokens", "300",
                             "--usd-per-mtok", "2")[1])
    assert data["requests"] == 8 and data["price_source"] == "given" and data["usd_per_mtok"] == 2.0
    assert data["shorter_system_prompt"] == {"tokens_per_million": 50e6, "usd_per_million": 100.0}
    assert [p["saved_tokens"] for p in data["prefixes"]] == [768, 448, 192]
    assert all(len(p["hash"]) == 16 for p in data["prefixes"] + data["system_prompts"])
    assert [t["tenant"] for t in data["tenants"]] == ["acme", "beta"]


def test_unknown_deployments_empty_windows_and_bad_flags_are_errors(control_plane: ControlPlane) -> None:
    cp = control_plane
    assert llmctl(cp, "deploy", "chat", "--model", "tiny", "--no-wait")[0] == 0
    code, output = llmctl(cp, "prompts", "audit", "nope")
    assert code == 2 and "deployment 'nope' not found" in output
    code, output = llmctl(cp, "prompts", "audit", "chat")
    assert code == 2 and "deployment chat has no recorded traffic between" in " ".join(output.split())
    record(cp)
    code, output = llmctl(cp, "prompts", "audit", "chat", "--window", "10s")  # the rows are a minute old
    assert code == 2 and "widen --window" in " ".join(output.split())
    for flags, message in ((["--window", "soon"], "--window takes a duration"),
                           (["--top", "0"], "--top takes 1 to 100"),
                           (["--target-system-tokens", "-5"], "--target-system-tokens takes a number of tokens"),
                           (["--usd-per-mtok", "-1"], "--usd-per-mtok takes a price")):
        code, output = llmctl(cp, "prompts", "audit", "chat", *flags)
        assert code == 2 and message in output, output
