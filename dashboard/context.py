"""`Context`: what the pages (dashboard/pages/), the live push (dashboard/live.py) and the VR ward
(dashboard/vr.py) of one dashboard share: its settings, feed, audit log and writers, who is
logged in and what they may see. `dashboard.app.create_app` builds one per app and hands it to
each of them, so none of them imports the app that assembles them."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dashboard import login, ward
from dashboard.auth import User
from dashboard.feed import TwinFeed
from streams.audit import AuditLog
from streams.config import Settings
from streams.follow import TopicWriter
from streams.messages import PatientRecord
from streams.registry import RegistryWriter

if TYPE_CHECKING:
    from dashboard.presence import Presence


class Context:
    """One dashboard's shared state; `close` stops the writers it started."""

    def __init__(self, settings: Settings, feed: TwinFeed, audit: AuditLog) -> None:
        self.settings = settings
        self.feed = feed
        self.audit = audit
        self.actions = TopicWriter(settings, settings.topic_alert_actions)
        self.registry_writer = RegistryWriter(settings, feed.registry)
        self.observations = TopicWriter(settings, settings.topic_observations)
        # Each open Server-Sent Events stream (a patient page's live push, a VR or ward page's
        # presence) holds a web server thread: together they take at most half of them.
        self.stream_slots = threading.BoundedSemaphore(max(1, settings.dashboard_threads // 2))
        self.presence: Presence | None = None  # set by dashboard.app.create_app

    def close(self) -> None:
        for w in (self.actions, self.registry_writer, self.observations):
            w.close()

    def register(self, u: User, rec: PatientRecord, fields: dict[str, Any]) -> str:
        """Write a registry change (audited first) and show it at once in this replica."""
        self.audit.record(u.name, rec.event, role=u.role, patient_id=rec.patient_id,
                          detail=", ".join(f"{k}={v}" for k, v in fields.items()), wait=True)
        self.registry_writer.write(rec)
        return f"{rec.event} of {rec.patient_id} recorded by {u.name}."

    def user(self) -> User:
        u = login.user()
        if u is None:  # the guard in front of every route makes this unreachable
            raise PermissionError("not logged in")
        return u

    def may_see(self, u: User, patient_id: str) -> bool:
        rec = self.feed.registry.get(patient_id)
        ward_ = rec.ward if rec and rec.event != "discharge" else None
        return u.sees_ward(ward_)

    def visible_beds(self) -> list[ward.Bed]:
        """The patients the logged-in user may see, highest risk first (the ward overview, the
        3D ward and the VR ward)."""
        states, _ = self.feed.snapshot()
        return ward.beds(self.user(), states, self.feed.registry.admitted(),
                         self.feed.open_alerts(), datetime.now(UTC))
