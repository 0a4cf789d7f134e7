"""Admin and join tokens: rotation keeps the previous token working for its grace period, and survives restarts."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from llmctl.controlplane.errors import InvalidArgument
from llmctl.controlplane.tokens import TokenRing, fingerprint, load_or_create_token


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_previous_token_works_until_its_grace_period_ends(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "join_token"
    old = load_or_create_token(path, "join token")
    ring = TokenRing("join token", old, path, clock=clock)
    assert ring.match(old) == "current" and ring.previous_valid_until == 0

    new = ring.rotate(60)
    assert new != old and path.read_text().strip() == new
    assert (ring.match(new), ring.match(old), ring.match("something-else"), ring.match(None)) == (
        "current", "previous", None, None)
    previous = tmp_path / "join_token.previous"
    assert stat.S_IMODE(previous.stat().st_mode) == 0o600 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(previous.read_text()) == {"token": old, "valid_until": clock.now + 60}

    clock.now += 59
    assert TokenRing("join token", new, path, clock=clock).match(old) == "previous"  # a restart keeps it
    clock.now += 2
    assert ring.match(old) is None and ring.previous_valid_until == 0
    assert TokenRing("join token", new, path, clock=clock).match(old) is None


def test_finish_ends_the_grace_period_and_a_second_rotation_replaces_the_previous(tmp_path: Path) -> None:
    path = tmp_path / "admin_token"
    first = load_or_create_token(path, "admin token")
    ring = TokenRing("admin token", first, path)
    second = ring.rotate(3600)
    third = ring.rotate(3600)
    # Only one previous token: the one just replaced. The one before stops at once.
    assert (ring.match(first), ring.match(second), ring.match(third)) == (None, "previous", "current")
    ring.finish()
    assert (ring.match(second), ring.match(third)) == (None, "current")
    assert not (tmp_path / "admin_token.previous").exists()
    assert TokenRing("admin token", third, path).match(second) is None


def test_an_explicitly_given_token_cannot_be_rotated_by_the_control_plane() -> None:
    ring = TokenRing("admin token", "given-on-the-command-line")
    with pytest.raises(InvalidArgument, match="given explicitly"):
        ring.rotate(60)


def test_bad_grace_periods_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "join_token"
    ring = TokenRing("join token", load_or_create_token(path, "join token"), path)
    for grace in (-1, 10**9, True):
        with pytest.raises(InvalidArgument, match="grace must be"):
            ring.rotate(grace)


def test_a_fingerprint_names_a_token_without_revealing_it() -> None:
    token = "a-secret-token-value"
    assert fingerprint(token) == fingerprint(token) and len(fingerprint(token)) == 8
    assert fingerprint(token) not in token and fingerprint(token) != fingerprint(token + "x")
