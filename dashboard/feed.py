"""The dashboard's own view of the twins: a Kafka consumer of twin.state, alerts and the registry.

Each dashboard replica reads the topics from the beginning without a consumer group, so it shows
the latest state at once on start and any number of replicas can run side by side.

Besides the latest state per patient it keeps a short history per patient for the trend plots
(`History`: one sample per `HISTORY_STEP_S`, `HISTORY_POINTS` samples, fixed-size numpy arrays so
memory is bounded: about 150 KB per patient) and the open alerts (raised and not yet resolved).

Every record is checked against its schema in streams.messages before it is shown; one that fails
is counted in `skipped` and passed over (streams.follow), since the feed replays its topics from
the beginning at every start.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from datetime import datetime
from typing import Annotated, Any

import msgspec
import numpy as np

from streams.config import Settings
from streams.follow import Follower
from streams.messages import (
    ALERT_SCHEMA,
    TWIN_STATE_SCHEMA,
    AlertEvent,
    Id,
    TwinState,
    check_ts,
    decode_record,
    reject,
)
from streams.registry import Registry
from twin.channels import NAMES

HISTORY_STEP_S = 10.0
HISTORY_POINTS = 720  # two hours at one sample per 10 s
C = len(NAMES)


class History:
    """A ring of one patient's recent twin states: `ts (L,)` epoch s, `estimate`, `sd`, `raw`
    `(L, C)` float (NaN: unknown), `rejected (L, C)` bool, `news2 (L,)` int."""

    def __init__(self, points: int = HISTORY_POINTS) -> None:
        self.ts = np.full(points, np.nan)
        self.estimate = np.full((points, C), np.nan)
        self.sd = np.full((points, C), np.nan)
        self.raw = np.full((points, C), np.nan)
        self.rejected = np.zeros((points, C), dtype=bool)
        self.news2 = np.zeros(points, dtype=np.int16)
        self.n = 0  # samples written in all

    def add(self, doc: dict[str, Any], t: float) -> None:
        last = self.ts[(self.n - 1) % len(self.ts)] if self.n else -np.inf
        rejected = doc.get("rejected") or []
        # a rejected artifact is kept even between samples: the trend shows it was ignored
        if t - last < HISTORY_STEP_S and not rejected:
            return
        i = self.n % len(self.ts)
        self.ts[i] = t
        for arr, key in ((self.estimate, "estimate"), (self.sd, "sd"), (self.raw, "raw")):
            vals = doc.get(key) or {}
            arr[i] = [np.nan if vals.get(ch) is None else vals[ch] for ch in NAMES]
        self.rejected[i] = [ch in rejected for ch in NAMES]
        self.news2[i] = int(doc.get("news2", 0))
        self.n += 1

    def series(self) -> dict[str, np.ndarray]:
        """The samples in time order (copies)."""
        L = len(self.ts)
        order = np.arange(self.n - min(self.n, L), self.n) % L
        return {"ts": self.ts[order], "estimate": self.estimate[order], "sd": self.sd[order],
                "raw": self.raw[order], "rejected": self.rejected[order],
                "news2": self.news2[order]}


ENDED: dict[str, Any] = {"event": "ended"}  # a live stream's last item: the feed stopped


class Listener(queue.Queue[dict[str, Any]]):
    """A live stream's queue. The feed never waits for a reader: when the queue is full an event
    is dropped and counted in `dropped`, so one stalled client cannot hold up the view."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.dropped = 0

    def offer(self, event: dict[str, Any]) -> None:
        try:
            self.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def end(self) -> None:
        """Tell the reader the stream is over: `ENDED` after what is queued (making room for
        it by dropping the oldest event if the queue is full)."""
        while True:
            try:
                self.put_nowait(ENDED)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self.get_nowait()
                    self.dropped += 1


_Aware = Annotated[datetime, msgspec.Meta(tz=True)]
_AWARE = {datetime: _Aware, datetime | None: _Aware | None}


def _view(schema: type[msgspec.Struct], folds_on: tuple[str, ...], **stricter: Any
          ) -> msgspec.json.Decoder[Any]:
    """A decoder of `schema` as the feed shows it: every field with the schema's type (or the
    stricter one given; times with a UTC offset, which the pages subtract from an aware now) and
    default, and absent (UNSET) allowed for a field the schema requires unless the feed folds on
    it. The worker writes whole records; tests and tools write partial ones, and the pages read
    most fields with a fallback."""
    fields: list[tuple[Any, ...]] = []
    for f in msgspec.structs.fields(schema):
        t = stricter.get(f.name, _AWARE.get(f.type, f.type))
        if not f.required:
            fields.append((f.name, t, f.default if f.default is not msgspec.NODEFAULT
                           else msgspec.field(default_factory=f.default_factory)))
        elif f.name in folds_on:
            fields.append((f.name, t))
        else:
            fields.append((f.name, t | msgspec.UnsetType, msgspec.UNSET))
    view = msgspec.defstruct(f"{schema.__name__}View", fields, kw_only=True, frozen=True)
    return msgspec.json.Decoder(view)


# History keeps NEWS2 as int16; an aggregate score is never negative
_NEWS2 = Annotated[int, msgspec.Meta(ge=0, le=np.iinfo(np.int16).max)]
_STATE_VIEW = _view(TwinState, ("patient_id", "ts"), patient_id=Id, news2=_NEWS2)
_ALERT_VIEW = _view(AlertEvent, ("alert_id", "patient_id", "event", "ts"), patient_id=Id)


def _decode(decoder: msgspec.json.Decoder[Any], value: bytes | None, schema: str
            ) -> tuple[Any, float]:
    """A twin state or alert event as its view struct, and its time (epoch s); InvalidMessage
    with the reason otherwise."""
    rec = decode_record(decoder, value)
    if rec.schema != schema:
        raise reject(f"schema {rec.schema!r} is not supported (expected {schema!r})",
                     "wrong_schema")
    return rec, check_ts(rec.ts)


class TwinFeed:
    """Latest twin state, history and open alerts per patient, and the patient registry, kept
    current by a thread."""

    def __init__(self, settings: Settings, max_alerts: int = 500) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._states: dict[str, dict[str, Any]] = {}
        self._history: dict[str, History] = {}
        self._alerts: deque[dict[str, Any]] = deque(maxlen=max_alerts)
        self._open: dict[str, dict[str, Any]] = {}  # alert id -> latest event of an open alert
        # None: every alert event (the API's stream); a patient id: that patient's twin states
        # and alert events (the patient page's push)
        self._listeners: dict[str | None, list[Listener]] = {}
        self.registry = Registry(settings)
        self._follower: Follower | None = None

    def start(self) -> TwinFeed:
        s = self.settings
        self._follower = Follower(s, (s.topic_twin_state, s.topic_alerts, s.topic_patients),
                                  self.apply, "patient-twin-dashboard").start()
        return self

    def stop(self) -> None:
        self.end_streams()
        if self._follower is not None:
            self._follower.stop()

    def end_streams(self) -> None:
        """End every live stream now (a server stopping waits for the threads that serve
        them, which would otherwise wait out their keepalive)."""
        with self._lock:
            for qs in self._listeners.values():
                for q in qs:
                    q.end()

    @property
    def connected(self) -> bool:
        return self._follower is not None and self._follower.connected

    @property
    def caught_up(self) -> bool:
        return self._follower is not None and self._follower.caught_up.is_set()

    @property
    def skipped(self) -> dict[str, int]:
        """Records passed over because they are not valid, by topic."""
        return dict(self._follower.skipped) if self._follower is not None else {}

    def apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """Fold one record into the view (also used by tests and benchmarks without Kafka);
        InvalidMessage, the view unchanged, for a record that is not valid."""
        s = self.settings
        if topic == s.topic_patients:
            self.registry.apply(topic, key, value)
            return
        if topic == s.topic_twin_state:
            if value is None and key is not None:
                return  # a tombstone on the compacted topic (the worker writes none)
            rec, t = _decode(_STATE_VIEW, value, TWIN_STATE_SCHEMA)
        elif topic == s.topic_alerts:
            rec, t = _decode(_ALERT_VIEW, value, ALERT_SCHEMA)
        else:
            return
        # the pages read dicts: the record as the schema decoded it (times as ISO strings)
        doc = msgspec.to_builtins(rec)
        pid = rec.patient_id
        with self._lock:
            if topic == s.topic_twin_state:
                self._states[pid] = doc
                for q in self._listeners.get(pid, ()):
                    q.offer({"event": "state", "patient_id": pid, "ts": doc["ts"]})
                self._history.setdefault(pid, History()).add(doc, t)
            else:
                self._alerts.append(doc)
                if rec.event == "resolved":
                    self._open.pop(rec.alert_id, None)
                else:
                    self._open[rec.alert_id] = doc
                for q in (*self._listeners.get(None, ()), *self._listeners.get(pid, ())):
                    q.offer(doc)

    def listen(self, patient_id: str | None = None, maxsize: int = 10_000) -> Listener:
        """A queue of what happens from now on, for a live stream: every alert event (no
        `patient_id`), or one patient's twin states (`{"event": "state", ...}`) and alert
        events."""
        q = Listener(maxsize)
        with self._lock:
            self._listeners.setdefault(patient_id, []).append(q)
        return q

    def unlisten(self, q: Listener) -> None:
        with self._lock:
            for key, qs in list(self._listeners.items()):
                if q in qs:
                    qs.remove(q)
                if not qs:
                    del self._listeners[key]

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        with self._lock:
            return dict(self._states), list(self._alerts)

    def state(self, patient_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._states.get(patient_id)

    def history(self, patient_id: str) -> dict[str, np.ndarray] | None:
        with self._lock:
            h = self._history.get(patient_id)
            return None if h is None else h.series()

    def open_alerts(self, patient_id: str | None = None) -> list[dict[str, Any]]:
        """Open alerts (latest event of each), of one patient or all, highest priority first."""
        rank = {"high": 0, "medium": 1, "low": 2}
        with self._lock:
            alerts = [a for a in self._open.values()
                      if patient_id is None or a["patient_id"] == patient_id]
        return sorted(alerts, key=lambda a: (rank.get(a.get("priority"), 3), a.get("ts", "")))
