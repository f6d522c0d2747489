"""Who may use the dashboard: API tokens for machine clients and accounts for people.

API tokens (webhook subscribers, integrations) are hashed at rest. A token is 32 random bytes
(URL-safe base64), shown once by `patient-twin tokens add NAME --wards W --scopes S`; the
file named by API_TOKENS_FILE keeps one JSON line per token with its name, its wards, its scopes
and the SHA-256 of the token, never the token. Scopes: `read` (the alert stream, webhook
subscriptions of its own), `act` (acknowledge, silence), `admin` (every client's
subscriptions); each only on its wards. A token line from before scopes reads every ward and
acts on nothing. (A fast hash is right here: the token has 256 bits of entropy, unlike a
password, so there is nothing to brute-force.)

Accounts (`patient-twin users add NAME --role R --wards W1,W2`) live in USERS_FILE, one JSON line
per user with the role, the wards and the password hashed by Werkzeug's scrypt (a memory-hard
password hash: passwords have little entropy, so the hash must be slow). Roles:

- viewer: sees the patients of the assigned wards, changes nothing;
- clinician: sees the assigned wards; acknowledges and silences alerts, sets the SpO2 scale,
  transfers and discharges there;
- admin: every ward, everything.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from werkzeug.security import check_password_hash, generate_password_hash

from streams.credentials import CredentialFile, WatchedLines, issue
from streams.errors import ConfigError

ROLES = ("viewer", "clinician", "admin")
SCOPES = ("read", "act", "admin")
Role = Literal["viewer", "clinician", "admin"]
MIN_PASSWORD = 10
ALL_WARDS = "*"


def covers(wards: tuple[str, ...], ward: str | None) -> bool:
    """Do these assigned wards include `ward`? "*" covers every ward, unassigned patients
    included (for users and tokens alike)."""
    return ALL_WARDS in wards or (ward is not None and ward in wards)


@dataclass(frozen=True)
class Client:
    """The holder of an API token: its name, its wards ("*": all) and its scopes."""

    name: str
    wards: tuple[str, ...]
    scopes: frozenset[str]

    def sees_ward(self, ward: str | None) -> bool:
        return covers(self.wards, ward)

    def may(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def add_token(path: str, name: str, wards: list[str] | tuple[str, ...] = (ALL_WARDS,),
              scopes: list[str] | tuple[str, ...] = ("read",)) -> str:
    """Create a token named `name` for `wards` with `scopes`, store its hash in `path`, return
    the token (shown once)."""
    if not name or len(name) > 64 or any(c.isspace() or not c.isprintable() for c in name):
        raise ConfigError("a token name must be 1-64 printable characters without spaces")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ConfigError(f"--scopes: give some of {', '.join(SCOPES)} (not {unknown})")
    wards = [w for w in wards if w]
    if not wards:
        raise ConfigError("--wards: give the wards the token covers, or '*' for all")
    return issue(path, {"name": name, "wards": list(wards), "scopes": sorted(set(scopes))})


class TokenStore:
    """The token hashes of API_TOKENS_FILE, re-read when the file changes."""

    def __init__(self, path: str | None) -> None:
        self._file = CredentialFile(path)

    def check(self, authorization: str | None) -> Client | None:
        """The client of a valid `Authorization: Bearer <token>` header, else None."""
        rec = self._file.find(authorization)
        if rec is None:
            return None
        return Client(rec["name"], tuple(rec.get("wards", [ALL_WARDS])),
                      frozenset(rec.get("scopes", ["read"])))


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    wards: tuple[str, ...]  # ("*",): every ward
    password_hash: str

    def sees_ward(self, ward: str | None) -> bool:
        return covers(self.wards, ward)

    @property
    def can_act(self) -> bool:
        return self.role in ("clinician", "admin")


def _check_name(name: str) -> None:
    if not name or len(name) > 64 or any(c.isspace() or c in ":/" for c in name):
        raise ConfigError("a user name must be 1-64 characters without spaces, ':' or '/'")


def add_user(path: str, name: str, role: str, wards: list[str], password: str) -> User:
    """Create or replace the account `name` (a new password ends the user's sessions)."""
    _check_name(name)
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"the password must have at least {MIN_PASSWORD} characters")
    wards = [ALL_WARDS] if role == "admin" else [w for w in wards if w]
    if not wards:
        raise ConfigError("a viewer or clinician needs --wards (comma-separated, or '*' for all)")
    user = User(name, role, tuple(wards), generate_password_hash(password))  # type: ignore[arg-type]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if p.exists():
        kept = [line for line in p.read_text().splitlines()
                if line.strip() and json.loads(line)["name"] != name]
    kept.append(json.dumps({"name": name, "role": role, "wards": list(user.wards),
                            "password": user.password_hash}))
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(kept) + "\n")
    os.replace(tmp, p)  # atomic: a dashboard reading the file sees the old or the new one
    return user


class UserStore:
    """The accounts of USERS_FILE, re-read when the file changes."""

    def __init__(self, path: str | None) -> None:
        self._file = WatchedLines(path)

    def get(self, name: str) -> User | None:
        with self._file.lock:
            for rec in self._file.load():
                if rec["name"] == name:
                    return User(rec["name"], rec["role"], tuple(rec["wards"]), rec["password"])
        return None

    def users(self) -> list[User]:
        with self._file.lock:
            return [User(r["name"], r["role"], tuple(r["wards"]), r["password"])
                    for r in self._file.load()]

    def authenticate(self, name: str, password: str) -> User | None:
        user = self.get(name)
        if user is None:
            # hash anyway so a wrong name takes as long as a wrong password
            check_password_hash(_DUMMY_HASH, password)
            return None
        return user if check_password_hash(user.password_hash, password) else None


_DUMMY_HASH = generate_password_hash(secrets.token_urlsafe(16))
