"""API tokens for machine clients (webhook subscribers, integrations): hashed at rest.

A token is 32 random bytes (URL-safe base64), shown once by `patient-twin tokens add NAME`; the
file named by API_TOKENS_FILE keeps one JSON line per token with its name and the SHA-256 of the
token, never the token. (A fast hash is right here: the token has 256 bits of entropy, unlike a
password, so there is nothing to brute-force.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from pathlib import Path

from streams.errors import ConfigError


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_token(path: str, name: str) -> str:
    """Create a token named `name`, store its hash in `path`, return the token (shown once)."""
    if not name or any(c.isspace() for c in name):
        raise ConfigError("a token name must be non-empty, without spaces")
    token = secrets.token_urlsafe(32)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(json.dumps({"name": name, "sha256": hash_token(token)}) + "\n")
    return token


class TokenStore:
    """The token hashes of API_TOKENS_FILE, re-read when the file changes."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._mtime: float | None = None
        self._hashes: dict[str, str] = {}
        self._lock = threading.Lock()

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            self._hashes = {}
            return
        if mtime == self._mtime:
            return
        hashes = {}
        with open(self.path) as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    hashes[rec["sha256"]] = rec["name"]
        self._hashes, self._mtime = hashes, mtime

    def check(self, authorization: str | None) -> str | None:
        """The token's name for a valid `Authorization: Bearer <token>` header, else None."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        digest = hash_token(authorization[len("Bearer "):].strip())
        with self._lock:
            self._load()
            for known, name in self._hashes.items():
                if hmac.compare_digest(known, digest):
                    return name
        return None
