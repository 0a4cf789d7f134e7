"""Service functions: session first, keyword arguments; they flush but never commit (the caller's
session_scope does), raise controlplane.errors, and record every change as an Event.

This module holds the few checks they share.
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy.orm import Session

from llmctl.controlplane.errors import InvalidArgument

NAME_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def check_name(kind: str, name: object) -> str:
    """A DNS label (lowercase letters, digits, '-'; 1-63 chars), as Kubernetes names objects."""
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise InvalidArgument(
            f"invalid {kind} name {name!r}: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def check_count(what: str, value: object, low: int, high: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidArgument(f"{what} must be an integer {bound}, got {value!r}")
    return value


def locks_rows(session: Session) -> bool:
    """Whether SELECT ... FOR UPDATE serialises writers here (PostgreSQL); SQLite has one writer anyway."""
    return session.get_bind().dialect.name == "postgresql"


def check_aware(what: str, value: datetime | None) -> datetime | None:
    """Times cross the API tz-aware; a naive one is ambiguous (local? UTC?), so it is refused."""
    if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
        raise InvalidArgument(f"{what} must be a timezone-aware datetime (UTC), got {value!r}")
    return value


MAX_THRESHOLD = 10.0


def check_sample_rate(rate: object) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise InvalidArgument(f"quality sample rate must be a number in [0, 1] (0 turns sampling off), got {rate!r}")
    return float(rate)


def check_threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 < threshold <= MAX_THRESHOLD:
        raise InvalidArgument(
            f"quality threshold must be in (0, {MAX_THRESHOLD:g}] nats of mean log-likelihood per token, "
            f"got {threshold!r}"
        )
    return float(threshold)


def quality_fields(*, sample_rate: float | None = None, auto_rollback: bool | None = None,
                   threshold: float | None = None) -> dict[str, float | bool]:
    """The Deployment columns of a quality policy, checked; only what is given."""
    fields: dict[str, float | bool] = {}
    if sample_rate is not None:
        fields["quality_sample_rate"] = check_sample_rate(sample_rate)
    if auto_rollback is not None:
        fields["quality_auto_rollback"] = bool(auto_rollback)
    if threshold is not None:
        fields["quality_threshold"] = check_threshold(threshold)
    return fields
