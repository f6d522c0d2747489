"""The dashboard's own view of the twins: a Kafka consumer of twin.state, alerts and the registry.

Each dashboard replica reads the topics from the beginning without a consumer group, so it shows
the latest state at once on start and any number of replicas can run side by side.

Besides the latest state per patient it keeps a short history per patient for the trend plots
(`History`: one sample per `HISTORY_STEP_S`, `HISTORY_POINTS` samples, fixed-size numpy arrays so
memory is bounded: about 70 KB per patient with the state) and the open alerts (raised and not
yet resolved).

Twin states and alert events are decoded as the structs the worker writes (`TwinState`,
`AlertEvent`: streams.messages' decoders, as the dispatcher and the watchdog read alerts) and kept
as such, so the pages read typed fields. A record that is not valid is counted in `skipped` and
passed over (streams.follow), since the feed replays its topics from the beginning at every start.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from typing import Literal

import msgspec
import numpy as np

from streams.config import Settings
from streams.follow import Follower
from streams.messages import AlertEvent, TwinState, decode_alert, decode_twin_state
from streams.registry import Registry
from twin.channels import NAMES

HISTORY_STEP_S = 10.0
HISTORY_POINTS = 720  # two hours at one sample per 10 s
# The values are kept in single precision, which holds a vital sign to 7 digits: the ring is
# most of what the dashboard holds per patient (121 KB in float64, ~69 KB so; `python -m
# bench.dashboard_memory`). `History.series` hands them out rounded to this many decimals, so a
# reading of 36.7 is shown as 36.7, not as its single-precision neighbour 36.70000076.
HISTORY_DECIMALS = 3
C = len(NAMES)


class History:
    """A ring of one patient's recent twin states: `ts (L,)` epoch s, `estimate`, `sd`, `raw`
    `(L, C)` float32 (NaN: unknown), `rejected (L, C)` bool, `news2 (L,)` int."""

    def __init__(self, points: int = HISTORY_POINTS) -> None:
        self.ts = np.full(points, np.nan)
        self.estimate = np.full((points, C), np.nan, dtype=np.float32)
        self.sd = np.full((points, C), np.nan, dtype=np.float32)
        self.raw = np.full((points, C), np.nan, dtype=np.float32)
        self.rejected = np.zeros((points, C), dtype=bool)
        self.news2 = np.zeros(points, dtype=np.int16)
        self.n = 0  # samples written in all

    def add(self, state: TwinState, t: float) -> None:
        last = self.ts[(self.n - 1) % len(self.ts)] if self.n else -np.inf
        # a rejected artifact is kept even between samples: the trend shows it was ignored
        if t - last < HISTORY_STEP_S and not state.rejected:
            return
        i = self.n % len(self.ts)
        self.ts[i] = t
        for arr, vals in ((self.estimate, state.estimate), (self.sd, state.sd),
                          (self.raw, state.raw)):
            arr[i] = [np.nan if vals.get(ch) is None else vals[ch] for ch in NAMES]
        self.rejected[i] = [ch in state.rejected for ch in NAMES]
        self.news2[i] = state.news2
        self.n += 1

    def series(self) -> dict[str, np.ndarray]:
        """The samples in time order (copies; values as float64 to `HISTORY_DECIMALS`)."""
        L = len(self.ts)
        order = np.arange(self.n - min(self.n, L), self.n) % L

        def values(a: np.ndarray) -> np.ndarray:
            return np.round(a[order].astype(np.float64), HISTORY_DECIMALS)

        return {"ts": self.ts[order], "estimate": values(self.estimate), "sd": values(self.sd),
                "raw": values(self.raw), "rejected": self.rejected[order],
                "news2": self.news2[order]}


class StateEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A live stream's word that a patient's twin state arrived. It carries no values: the page
    reads them through its callbacks, which check the user."""

    event: Literal["state"] = "state"
    patient_id: str


class Ended:
    """A live stream's last item: the feed stopped."""


ENDED = Ended()
# What a live stream's queue holds: every patient's alert events or one patient's, that
# patient's state events, and ENDED last.
LiveEvent = AlertEvent | StateEvent | Ended


class Listener(queue.Queue[LiveEvent]):
    """A live stream's queue. The feed never waits for a reader: when the queue is full an event
    is dropped and counted in `dropped`, so one stalled client cannot hold up the view."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.dropped = 0

    def offer(self, event: LiveEvent) -> None:
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


class TwinFeed:
    """Latest twin state, history and open alerts per patient, and the patient registry, kept
    current by a thread."""

    def __init__(self, settings: Settings, max_alerts: int = 500) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._states: dict[str, TwinState] = {}
        self._history: dict[str, History] = {}
        self._alerts: deque[AlertEvent] = deque(maxlen=max_alerts)
        self._open: dict[str, AlertEvent] = {}  # alert id -> latest event of an open alert
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
            self._apply_state(decode_twin_state(value))
        elif topic == s.topic_alerts:
            self._apply_alert(decode_alert(value))

    def _apply_state(self, st: TwinState) -> None:
        pid = st.patient_id
        with self._lock:
            self._states[pid] = st
            listeners = self._listeners.get(pid, ())
            if listeners:
                event = StateEvent(patient_id=pid)
                for q in listeners:
                    q.offer(event)
            # not setdefault(pid, History()): that built (and dropped) a ~70 KB ring for every
            # state, 30 % of what folding one cost (patient-twin bench dashboard-feed)
            h = self._history.get(pid)
            if h is None:
                h = self._history[pid] = History()
            h.add(st, st.ts.timestamp())

    def _apply_alert(self, ev: AlertEvent) -> None:
        with self._lock:
            self._alerts.append(ev)
            if ev.event == "resolved":
                self._open.pop(ev.alert_id, None)
            else:
                self._open[ev.alert_id] = ev
            for q in (*self._listeners.get(None, ()), *self._listeners.get(ev.patient_id, ())):
                q.offer(ev)

    def listen(self, patient_id: str | None = None, maxsize: int = 10_000) -> Listener:
        """A queue of what happens from now on, for a live stream: every alert event (no
        `patient_id`), or one patient's state events (`StateEvent`) and alert events."""
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

    def snapshot(self) -> tuple[dict[str, TwinState], list[AlertEvent]]:
        """The latest twin state per patient, and the latest alert events (`max_alerts`)."""
        with self._lock:
            return dict(self._states), list(self._alerts)

    def state(self, patient_id: str) -> TwinState | None:
        with self._lock:
            return self._states.get(patient_id)

    def history(self, patient_id: str) -> dict[str, np.ndarray] | None:
        with self._lock:
            h = self._history.get(patient_id)
            return None if h is None else h.series()

    def open_alerts(self, patient_id: str | None = None) -> list[AlertEvent]:
        """Open alerts (latest event of each), of one patient or all, highest priority first."""
        rank = {"high": 0, "medium": 1, "low": 2}
        with self._lock:
            alerts = [a for a in self._open.values()
                      if patient_id is None or a.patient_id == patient_id]
        return sorted(alerts, key=lambda a: (rank[a.priority], a.ts))
