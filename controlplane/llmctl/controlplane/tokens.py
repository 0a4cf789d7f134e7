"""The control plane's two shared secrets, kept as files under $LLMCTL_HOME.

`admin_token` authorises AdminService callers (llmctl, the dashboard); `join_token` lets agents join.
Each is created once (random, mode 0600) and read back on every later start, so a restarted control
plane keeps accepting the agents and operators it accepted before.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from llmctl.controlplane.errors import InvalidArgument

logger = logging.getLogger("llmctl.controlplane")

ADMIN_TOKEN_FILE = "admin_token"
JOIN_TOKEN_FILE = "join_token"
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
