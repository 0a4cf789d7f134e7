"""The control plane's two shared secrets, kept as files under $LLMCTL_HOME.

`admin_token` authorises AdminService callers (llmctl, the dashboard); `join_token` lets agents join.
Each is created once (random, mode 0600) and read back on every later start, so a restarted control
plane keeps accepting the agents and operators it accepted before. `api_key_secret` is the HMAC key API
keys are hashed with (services/tenants.py); it never leaves the control plane.

Rotation (TokenRing.rotate) writes a new token and keeps the previous one, with the time it stops working,
in `<name>.previous`, so callers switch over during a grace period instead of all at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from llmctl.controlplane.errors import InvalidArgument

logger = logging.getLogger("llmctl.controlplane")

ADMIN_TOKEN_FILE = "admin_token"
JOIN_TOKEN_FILE = "join_token"
API_KEY_SECRET_FILE = "api_key_secret"
PREVIOUS_SUFFIX = ".previous"
DEFAULT_GRACE_S = 3600.0
MAX_GRACE_S = 30 * 24 * 3600.0
MIN_LENGTH = 8
"""Shorter tokens are refused: they could be guessed by trying."""


def check_token(what: str, token: str) -> str:
    token = token.strip() if isinstance(token, str) else token
    if not isinstance(token, str) or len(token) < MIN_LENGTH or any(c.isspace() for c in token):
        raise InvalidArgument(
            f"{what} must be at least {MIN_LENGTH} characters without spaces; leave it unset to generate one"
        )
    return token


def load_or_create_token(path: Path, what: str) -> str:
    """The token stored at `path`, creating the file (random token, mode 0600) when it does not exist."""
    path = Path(path)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = None
    if token is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        try:
            # O_EXCL: two control planes starting at once must not each write a different token.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_token(path, what)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        logger.info("created %s in %s", what, path)
        return token
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("%s file %s is readable by other users; run `chmod 600 %s`", what, path, path)
    try:
        return check_token(what, token)
    except InvalidArgument as e:
        raise InvalidArgument(f"{path}: {e.message}, or delete the file to generate a new token") from None


def resolve_token(given: str | None, home: Path, filename: str, what: str) -> str:
    """An explicitly given token (checked, not written anywhere), else the one in home/filename."""
    if given is not None:
        return check_token(what, given)
    return load_or_create_token(home / filename, what)


def same_token(offered: str | None, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a guess was right."""
    return offered is not None and hmac.compare_digest(offered.encode(), expected.encode())


def fingerprint(token: str) -> str:
    """Names a token in audit rows and logs without revealing it: 8 hex digits of its sha256."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def _write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with a mode-0600 file holding `text` (never a moment with a partial file)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class TokenRing:
    """One kind of token: the current one, and the previous one until its grace period ends.

    `path` is where the current token is kept ($LLMCTL_HOME/admin_token); None for a token given explicitly,
    which the control plane cannot replace (the operator rotates it where it is set).
    """

    def __init__(self, what: str, current: str, path: Path | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.what, self.path, self._clock = what, path, clock
        self._lock = threading.Lock()
        self._current = current
        self._previous: tuple[str, float] | None = self._load_previous()

    @property
    def current(self) -> str:
        return self._current

    @property
    def previous_valid_until(self) -> float:
        """Unix seconds when the previous token stops working; 0 when none works now."""
        previous = self._previous
        return previous[1] if previous is not None and previous[1] > self._clock() else 0.0

    def match(self, offered: str | None) -> str | None:
        """"current" or "previous" when `offered` is one of the tokens that work now, else None.

        Both are compared in constant time, whichever matches, so timing tells nothing about either."""
        current, previous = self._current, self._previous
        is_current = same_token(offered, current)
        is_previous = previous is not None and same_token(offered, previous[0]) and previous[1] > self._clock()
        return "current" if is_current else "previous" if is_previous else None

    def rotate(self, grace_s: float) -> str:
        """A new current token; the one it replaces keeps working `grace_s` seconds more."""
        if self.path is None:
            raise InvalidArgument(f"the {self.what} was given explicitly (flag or environment variable), so the "
                                  "control plane cannot replace it; set a new one there and restart")
        if isinstance(grace_s, bool) or not isinstance(grace_s, int | float) or not 0 <= grace_s <= MAX_GRACE_S:
            raise InvalidArgument(f"grace must be 0 to {MAX_GRACE_S / 86400:g} days in seconds, got {grace_s!r}")
        with self._lock:
            new = secrets.token_urlsafe(32)
            until = self._clock() + grace_s
            # The previous token first: a crash between the two writes leaves both old tokens working.
            _write_private(self._previous_path(), json.dumps({"token": self._current, "valid_until": until}))
            _write_private(self.path, new + "\n")
            self._previous, self._current = (self._current, until), new
        logger.info("rotated the %s (now %s; the previous one, %s, works for %gs more)", self.what,
                    fingerprint(new), fingerprint(self._previous[0]), grace_s)
        return new

    def finish(self) -> None:
        """The previous token stops working now."""
        with self._lock:
            if self.path is not None:
                self._previous_path().unlink(missing_ok=True)
            self._previous = None
        logger.info("the previous %s no longer works", self.what)

    def _previous_path(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.name + PREVIOUS_SUFFIX)

    def _load_previous(self) -> tuple[str, float] | None:
        if self.path is None:
            return None
        try:
            stored = json.loads(self._previous_path().read_text())
            previous = (check_token(self.what, stored["token"]), float(stored["valid_until"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, InvalidArgument):
            logger.warning("ignoring unreadable %s; only the current %s works", self._previous_path(), self.what)
            return None
        return previous if previous[1] > self._clock() else None
