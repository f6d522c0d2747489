"""Session lifetimes and their revocation, shared by every dashboard replica.

A session lives in the signed cookie (Flask's, keyed by DASHBOARD_SECRET_KEY), which holds its
id, when it began and when its user last did something. A cookie alone cannot be taken back, so
logging out writes the session id to the compacted topic `dashboard.sessions` (key = session
id; value = until when the revocation matters, the session's absolute end), which every replica
follows: a cookie copied before the logout and replayed afterwards, on any replica, is refused.
The store holds revoked sessions only until they would have ended anyway, so it stays small.

Idle timeout (SESSION_IDLE_MINUTES) and absolute lifetime (SESSION_MAX_HOURS) are checked on
every request. Polls a page makes by itself (Dash intervals, the live push) are not activity: a
ward screen left open does not keep its session alive.
"""

from __future__ import annotations

import threading
import time

import msgspec

from streams.config import Settings
from streams.follow import Follower, TopicWriter, record_key
from streams.messages import decode_with


class Revocation(msgspec.Struct, frozen=True):
    """A logged-out session (topic dashboard.sessions, key = session id)."""

    until: float  # epoch seconds: the session's absolute end; forgotten after it


_decoder = msgspec.json.Decoder(Revocation)


class RevokedSessions:
    """The sessions logged out on any replica, read from and written to the sessions topic."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._writer = TopicWriter(settings, settings.topic_sessions)
        self.follower = Follower(settings, (settings.topic_sessions,), self.apply,
                                 "patient-twin-dashboard-sessions")

    def start(self) -> RevokedSessions:
        self.follower.start()
        return self

    def apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        sid = record_key(key)
        with self._lock:
            if value is None:
                self._until.pop(sid, None)
            else:
                self._until[sid] = decode_with(_decoder, value).until

    def revoke(self, sid: str, until: float) -> None:
        """End session `sid` everywhere; returns once the broker has it."""
        self.apply(self.settings.topic_sessions, sid.encode(), msgspec.json.encode(
            Revocation(until)))
        self._writer.put(sid, msgspec.json.encode(Revocation(until)), wait=True)

    def revoked(self, sid: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._lock:
            for gone in [s for s, t in self._until.items() if t < now]:
                del self._until[gone]  # ended anyway: its cookie is refused as expired
            return sid in self._until

    def close(self) -> None:
        self.follower.stop()
        self._writer.close()
