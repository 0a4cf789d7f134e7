"""`llmctl db upgrade | current | downgrade` as an operator runs them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmctl.controlplane.db.cli import db_app
from llmctl.controlplane.db.session import head_revision


def run(*args: str, answer: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(db_app, list(args), input=answer)
    return result.exit_code, result.output


def test_upgrade_current_downgrade_on_the_default_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path))
    monkeypatch.delenv("LLMCTL_DATABASE_URL", raising=False)
    assert run("current") == (0, "no schema yet; run `llmctl db upgrade`\n")

    code, output = run("upgrade")
    assert code == 0 and f"is at schema revision {head_revision()}" in output
    assert (tmp_path / "llmctl.db").is_file()
    assert run("current") == (0, f"{head_revision()} (head)\n")

    for answer in ("n\n", None):  # asks first; "no", or no terminal to answer on, leaves the schema alone
        code, output = run("downgrade", answer=answer)
        assert code == 2 and "Data in dropped tables is lost" in output and "pass --yes" in output
    assert run("current")[1].endswith("(head)\n")

    code, output = run("downgrade", "--yes")
    assert code == 0 and "base (empty)" in output
    assert run("current")[0] == 0 and "no schema yet" in run("current")[1]


def test_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    code, output = run("upgrade", "--database-url", "postgresql://postgres:s3cret@127.0.0.1:1/x")
    assert code == 2 and output.startswith("error: cannot use the database at ") and "s3cret" not in output
    assert output.count("\n") == 1

    code, output = run("upgrade", "--database-url", f"sqlite:///{tmp_path / 'db'}", "--revision", "nosuchrev")
    assert code == 2 and "nosuchrev" in output

    code, output = run("current", "--database-url", "mysql://root@localhost/x")
    assert code == 2 and "unsupported database 'mysql'" in output


def test_a_statement_failing_mid_migration_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "foreign.db"
    with sqlite3.connect(path) as connection:  # a database some other tool already put a `nodes` table in
        connection.execute("CREATE TABLE nodes (id INTEGER PRIMARY KEY)")
    code, output = run("upgrade", "--database-url", f"sqlite:///{path}")
    assert (
        code == 2 and output.startswith("error: migration failed") and "table nodes already exists" in output
    )
    assert output.count("\n") == 1
    assert run("current", "--database-url", f"sqlite:///{path}")[1].startswith("no schema yet")
