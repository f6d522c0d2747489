"""The audit trail: who viewed which patient, who acknowledged or silenced what, who changed the
registry, every login. Records go to the append-only `audit` topic (key = user name), where
retention and access are the operator's; the process log gets only the user and the action,
never a patient id (logs are read by more people than the audit trail).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import msgspec

from streams.config import Settings
from streams.follow import TopicWriter
from streams.messages import AuditRecord

log = logging.getLogger("patient_twin.audit")


class AuditLog:
    def __init__(self, settings: Settings) -> None:
        self._writer = TopicWriter(settings, settings.topic_audit)

    def record(self, user: str, action: str, *, role: str | None = None,
               patient_id: str | None = None, alert_id: str | None = None,
               detail: str | None = None, remote_addr: str | None = None,
               wait: bool = False) -> AuditRecord:
        """Write one record; `wait` for the broker's acknowledgement (for actions that change
        something: the change is only made once its audit record is safe)."""
        rec = AuditRecord(ts=datetime.now(UTC), user=user, role=role, action=action,  # type: ignore[arg-type]
                          patient_id=patient_id, alert_id=alert_id, detail=detail,
                          remote_addr=remote_addr)
        self._writer.put(user, msgspec.json.encode(rec), wait=wait)
        # %r: a user name is typed by whoever logs in; quoted, a newline in it cannot forge a
        # log line
        log.info("audit: %r %s", user, action)
        return rec

    def close(self) -> None:
        self._writer.close()
