"""A watchdog outside the workers: says so when no worker is processing a patient's readings.

A worker raises `no_data` for its own silent patients; a worker that is down raises nothing. So
each worker publishes a heartbeat every few seconds (topic `workers`, key = worker id: the
partitions of vitals.raw it holds), and the dispatcher (`patient-twin dispatcher`, which every
deployment runs to reach subscribers) watches them: a partition that no live worker has held
for `WATCHDOG_SILENT_S` leaves its patients unmonitored, and each admitted patient of it gets the
technical alert `monitoring_stopped` (high priority) on the alerts topic, for every subscriber;
it is resolved when a worker holds the partition again. A clinician acknowledges it like any
alert (an `acknowledge` on alert.actions, from the dashboard or the API): no worker holds it, so
the watchdog answers with the `acknowledged` event, and the alert stays open, acknowledged,
until a worker is back.

The alert ids are made from the patient and the time the partition was last held, so two
dispatchers that saw the same heartbeats raise the same alert (not for a partition never held
since they started), which subscribers deduplicate by `alert_id` and `event`. The watchdog
reads its own past alerts back from the alerts topic at start, so one restarted during an
outage (or after it) still resolves the alerts raised before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from streams import messages
from streams.config import Settings
from streams.errors import InvalidMessage, where
from streams.follow import Follower, record_key
from streams.registry import Registry
from streams.topics import partition_of
from twin.policy import make_alert_id, split_alert_id

log = logging.getLogger("patient_twin.watchdog")

KIND = "monitoring_stopped"
# Before any worker was seen, give the workers this long to start and join their group (the
# embedded broker's JoinGroup alone takes ~10 s) before their partitions count as unmonitored.
STARTUP_GRACE_S = 60.0


class Coverage:
    """Which partitions live workers hold, from their heartbeats (pure: every call takes `now`)."""

    def __init__(self, partitions: int, started: float) -> None:
        self.partitions = partitions
        self.started = started
        self.workers: dict[str, tuple[float, frozenset[int]]] = {}
        # partition -> last time a heartbeat said a worker held it
        self.held_at: dict[int, float] = {}

    def heartbeat(self, worker: str, ts: float, partitions: list[int]) -> None:
        held = frozenset(p for p in partitions if 0 <= p < self.partitions)
        if ts >= self.workers.get(worker, (-1.0, frozenset()))[0]:
            self.workers[worker] = (ts, held)
        for p in held:
            self.held_at[p] = max(ts, self.held_at.get(p, ts))

    def held(self, now: float, silent_s: float) -> set[int]:
        """Partitions a worker has held within `silent_s` (by a heartbeat seen)."""
        return {p for p, last in self.held_at.items() if now - last < silent_s}

    def unheld(self, now: float, silent_s: float) -> dict[int, float]:
        """Partitions no worker has held for `silent_s`, with the time they were last held
        (the watchdog's start for one never held, once the start-up grace is over)."""
        out = {}
        for p in range(self.partitions):
            last = self.held_at.get(p)
            if last is None:
                if now - self.started >= max(silent_s, STARTUP_GRACE_S):
                    out[p] = self.started
            elif now - last >= silent_s:
                out[p] = last
        return out


class Watchdog:
    """Turns `Coverage` into alert events for admitted patients (`check`); `run` does it every
    few seconds in a thread of the dispatcher, reading the heartbeats and the registry."""

    def __init__(self, settings: Settings, registry: Registry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """registry: one kept current by someone else (the dispatcher's subscription view);
        None: the watchdog follows the patients topic itself."""
        self.settings = settings
        self.clock = clock
        self.coverage = Coverage(settings.kafka_partitions, clock())
        self.own_registry = registry is None
        self.registry = registry or Registry(settings)
        self.open: dict[str, messages.AlertEvent] = {}  # patient id -> its raised alert
        # alert id -> the first acknowledgement of one of these alerts, not yet answered
        self.acks: dict[str, messages.AlertAction] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()  # `open`: the follower's thread and the checks'
        self._follower: Follower | None = None
        # what the last check changed for each event it made, (alert id, event) -> (the open
        # alert before it, the acknowledgement it answered): `_unsent` puts them back
        self._before: dict[tuple[str, str], tuple[messages.AlertEvent | None,
                                                  messages.AlertAction | None]] = {}

    def apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """A record of the workers, the alerts or the patients topic."""
        if topic == self.settings.topic_patients:
            self.registry.apply(topic, key, value)
            return
        if topic == self.settings.topic_alerts:
            ev = messages.decode_alert(value)
            if ev.kind != KIND:
                return
            with self._lock:
                raised = self.open.get(ev.patient_id)
                same = raised is not None and raised.alert_id == ev.alert_id
                if ev.event == "raised":
                    if not same:  # the same alert again (another dispatcher): keep its state
                        self.open[ev.patient_id] = ev
                elif ev.event == "acknowledged" and same:
                    # answered (by this watchdog or another): not again, after a restart too
                    self.open[ev.patient_id] = msgspec.structs.replace(
                        raised, state="acknowledged", by=ev.by, comment=ev.comment)
                    self.acks.pop(ev.alert_id, None)
                elif ev.event == "resolved" and same:
                    del self.open[ev.patient_id]
                    self.acks.pop(ev.alert_id, None)
            return
        if topic == self.settings.topic_alert_actions:
            try:
                action = messages.decode_action(value or b"")
            except InvalidMessage:
                return  # the worker dead-letters it; nothing of ours
            # the patient's own alert, under the patient's own key (as the dashboard writes it)
            if action.action == "acknowledge" and key == action.patient_id.encode() \
                    and split_alert_id(action.alert_id or "") == (action.patient_id, KIND):
                with self._lock:
                    self.acks.setdefault(action.alert_id, action)
            return
        worker = record_key(key)
        hb = messages.decode_heartbeat(value)
        now = self.clock()
        live = self._follower is not None and self._follower.caught_up.is_set()
        # Live heartbeats count at their arrival, on this clock: a worker whose clock is
        # behind must not look dead, nor one whose clock is ahead look alive. Replayed ones
        # (at start) by their own time, never later than now.
        self.coverage.heartbeat(worker, now if live else min(hb.ts.timestamp(), now),
                                hb.partitions)

    def check(self, now: float | None = None) -> list[messages.AlertEvent]:
        """Alert events for patients whose partition lost its worker, or got one back."""
        with self._lock:
            return self._check(self.clock() if now is None else now)

    def _check(self, now: float) -> list[messages.AlertEvent]:
        self._before = {}
        unheld = self.coverage.unheld(now, self.settings.watchdog_silent_s)
        # Resolved only when a heartbeat says a worker holds the partition: not merely "not
        # unheld", which a partition never held is during the start-up grace (a watchdog
        # restarted during an outage would have said "a worker processes this patient's
        # readings again" of the alerts it read back, then raised them anew)
        held = self.coverage.held(now, self.settings.watchdog_silent_s)
        events = []
        admitted = self.registry.admitted()
        for pid in admitted:
            part = partition_of(pid, self.settings.kafka_partitions)
            raised = self.open.get(pid)
            if part in unheld and raised is None:
                since = unheld[part]
                ev = messages.AlertEvent(
                    alert_id=make_alert_id(pid, KIND, since), patient_id=pid,
                    ts=messages.utc(now), event="raised", kind=KIND, category="technical",
                    priority="high", message=(
                        f"{'TRAINING: ' if self.settings.training else ''}no worker has "
                        f"processed this patient's readings for {now - since:.0f} s: the twin "
                        "is not being updated and no clinical alert can be raised"),
                    training=self.settings.training,
                    raised_at=messages.utc(now),
                    evidence={"partition": part, "since": messages.utc(since).isoformat()})
                self.open[pid] = ev
                self._before[(ev.alert_id, "raised")] = (None, None)
                events.append(ev)
            elif raised is not None and part in held:
                del self.open[pid]
                self._before[(raised.alert_id, "resolved")] = (raised, None)
                events.append(msgspec.structs.replace(
                    raised, ts=messages.utc(now), event="resolved", state="resolved",
                    message="a worker processes this patient's readings again"))
        for pid, raised in list(self.open.items()):
            ack = self.acks.pop(raised.alert_id, None)
            if ack is not None and raised.state != "acknowledged" and pid in admitted:
                self.open[pid] = msgspec.structs.replace(
                    raised, state="acknowledged", by=ack.by, comment=ack.comment)
                self._before[(raised.alert_id, "acknowledged")] = (raised, ack)
                events.append(msgspec.structs.replace(
                    raised, ts=messages.utc(now), event="acknowledged", state="acknowledged",
                    by=ack.by, comment=ack.comment,
                    message=f"{raised.message} (acknowledged; open until a worker is back)"))
        # acknowledgements of alerts no longer open (or never ours): nothing to answer
        self.acks = {a: v for a, v in self.acks.items()
                     if any(r.alert_id == a for r in self.open.values())}
        for pid in [p for p in self.open if p not in admitted]:  # discharged meanwhile
            raised = self.open.pop(pid)
            self._before[(raised.alert_id, "resolved")] = (raised, None)
            events.append(msgspec.structs.replace(
                raised, ts=messages.utc(now), event="resolved", state="resolved",
                message="the patient was discharged"))
        return events

    def run(self, send: Callable[[messages.AlertEvent], Any], interval: float = 5.0) -> None:
        """Until stop(): follow heartbeats and the registry, and `send` each event."""
        s = self.settings
        followed = (s.topic_workers, s.topic_alerts, s.topic_alert_actions) + \
            ((s.topic_patients,) if self.own_registry else ())
        self._follower = Follower(s, followed, self.apply, "patient-twin-watchdog",
                                  fetch_max_wait_ms=500).start()
        self.coverage.started = self.clock()
        try:
            while not self._stop.wait(interval):
                if not self._follower.caught_up.is_set():
                    continue  # judge only from the heartbeats up to now
                try:
                    events = self.check()
                except Exception as exc:  # noqa: BLE001 - the watchdog must outlive a bug
                    log.error("watchdog check failed (%s)", where(exc))
                    continue
                for ev in events:
                    log.warning("%s %s (partition %s)", ev.kind, ev.event,
                                ev.evidence.get("partition"))
                    try:
                        send(ev)
                    except Exception as exc:  # noqa: BLE001 - sent again at the next check
                        log.error("watchdog alert not sent (%s); trying again", where(exc))
                        self._unsent(ev)
        finally:
            self._follower.stop()

    def _unsent(self, ev: messages.AlertEvent) -> None:
        """Undo what `check` recorded for an event that was not sent, so the next check
        makes it again."""
        with self._lock:
            before, ack = self._before.pop((ev.alert_id, ev.event), (None, None))
            if before is not None:
                self.open[ev.patient_id] = before
            elif (cur := self.open.get(ev.patient_id)) is not None \
                    and cur.alert_id == ev.alert_id:
                del self.open[ev.patient_id]
            if ack is not None:
                self.acks[ev.alert_id] = ack

    def stop(self) -> None:
        self._stop.set()


def heartbeat(worker: str, partitions: list[int], now: float | None = None) -> bytes:
    """A worker's heartbeat record (topic workers, key = worker id)."""
    return messages.encode(messages.WorkerHeartbeat(
        worker=worker, ts=datetime.fromtimestamp(time.time() if now is None else now, UTC),
        partitions=sorted(partitions)))
