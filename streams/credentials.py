"""Bearer credentials of machines (API clients, devices): 32 random bytes (URL-safe base64),
shown once when issued, kept as one JSON line per credential holding its SHA-256, never the
credential. A fast hash is right here: a token has 256 bits of entropy, unlike a password, so
there is nothing to brute-force. Files are re-read when they change, so credentials can be
issued while a server runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Any


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(path: str, fields: dict[str, Any]) -> str:
    """A new credential for the holder described by `fields`: its hash is appended to `path`
    (created mode 600), the credential returned (to be shown once)."""
    token = secrets.token_urlsafe(32)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(json.dumps({**fields, "sha256": hash_token(token)}) + "\n")
    return token


class WatchedLines:
    """The JSON lines of a file, re-read when its modification time changes."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._mtime: float | None = None
        self.lines: list[dict] = []
        self.lock = threading.Lock()

    def load(self) -> list[dict]:
        """Call with `lock` held."""
        if self.path is None:
            return []
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            self.lines, self._mtime = [], None
            return self.lines
        if mtime != self._mtime:
            with open(self.path) as f:
                self.lines = [json.loads(line) for line in f if line.strip()]
            self._mtime = mtime
        return self.lines


class CredentialFile:
    """The credential hashes of one file."""

    def __init__(self, path: str | None) -> None:
        self._file = WatchedLines(path)

    def find(self, authorization: str | None) -> dict | None:
        """The record of the holder of a valid `Authorization: Bearer <token>` header, else
        None (compared in constant time)."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        digest = hash_token(authorization[len("Bearer "):].strip())
        with self._file.lock:
            for rec in self._file.load():
                if hmac.compare_digest(rec["sha256"], digest):
                    return rec
        return None
