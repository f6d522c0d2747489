"""The audit trail: who viewed which patient or ward, who acknowledged or silenced what, who
changed the registry, every login, every API call and refusal, from the dashboard, the VR page,
the API and the CLI; `read` (`patient-twin audit`) reads it back. Records go to the append-only
`audit` topic (key = user name), where retention and access are the operator's. The process
log gets only the user and the action, never a patient id (logs are read by more people than
the audit trail), and at DEBUG (a command's stderr holds only its one-line result).
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
        log.debug("audit: %r %s", user, action)
        return rec

    def close(self) -> None:
        self._writer.close()


_decoder = msgspec.json.Decoder(AuditRecord)


def read(settings: Settings, patient_id: str | None = None, user: str | None = None,
         since: datetime | None = None, timeout_s: float = 30.0) -> list[AuditRecord]:
    """The audit records now on the topic, oldest first, that match every filter given (a
    patient, a user, a time); records that are not audit records are skipped and counted in
    the log."""
    from streams.follow import read_all

    out: list[AuditRecord] = []
    skipped = 0
    for _, value in read_all(settings, settings.topic_audit, timeout_s):
        try:
            rec = _decoder.decode(value or b"")
        except (msgspec.ValidationError, msgspec.DecodeError):
            skipped += 1
            continue
        if ((patient_id is None or rec.patient_id == patient_id)
                and (user is None or rec.user == user)
                and (since is None or rec.ts >= since)):
            out.append(rec)
    if skipped:
        log.warning("skipped %d records of the audit topic that are not audit records", skipped)
    return sorted(out, key=lambda a: a.ts)
