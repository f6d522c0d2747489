"""Outputs at the rate people and stores need, not the rate readings arrive.

Two caches between the twin step and Kafka, in the manner of Kafka Streams' record cache:

- `StateGate`: a patient's twin.state goes out at most once per `interval_s` of the patient's
  readings; a newer state replaces the one waiting for its turn. What a clinician must see at
  once is never held: a patient's first state here, a NEWS2 band change, an alert change, a
  clinician's observation, a twin marked after a broker loss.
- `RecordCache`: the twin table's changelog records, the latest per patient, written once per
  flush interval instead of once per batch (a twin record with its history block is a few KB,
  and at 1 Hz a patient is in every tenth of the batches a second holds).

Exactly-once application survives a crash because the offsets of a batch's events are committed
only after what the batch changed is in Kafka: each processed event's message keeps one more
reference (Faust commits an offset only once every reference is released, as
`streams.worker.catchup` relies on too) until the cache holding its records has been written and
acknowledged and the states it held back have been sent. A worker killed in between leaves its
events uncommitted; the next owner restores the twin from the changelog as last written and
reads the events again: readings already in that twin are skipped as duplicates (their device
sequence numbers), the others are applied.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.messages import TwinState
from streams.worker.process import StateRows
from streams.worker.states import StateOut


@dataclass
class _Sent:
    at: float  # on the gate's clock
    ts: float  # the state's reading time (the device's clock), epoch s
    band: str
    history_lost_at: float | None  # epoch s


# A device's timestamps wobble by milliseconds: readings this much short of an interval apart
# (seconds, at most a tenth of the interval) still count as an interval of readings, so a 1 Hz
# device stamped 0.995 s apart is not held. Clock wobble does not grow with the interval, and a
# wider tolerance would let a fast device through more than once an interval.
READING_TOLERANCE_S = 0.05

# Least time between two states of a patient on the worker's clock, as a share of the interval,
# when the readings' own clock says a full interval has passed: a flood guard (a device whose
# clock runs fast, or a gateway replaying a buffer, gets at most two states an interval).
FLOOD_GUARD = 0.5


@dataclass
class StateGate:
    """Which twin states go out now, and the latest of the others until their turn.

    A state goes out at once when its reading time (`TwinState.ts`, the device's clock) is at
    least `interval_s` after the last one sent (less `READING_TOLERANCE_S`) and half an interval
    has passed on the worker's clock, or when a full interval has passed on the worker's clock.
    Timing it by the readings is what keeps a device that reads once an interval from being
    held: on the worker's clock alone, a batch that was late by d set every later state of that
    patient d late (each waited a full interval from the last send, and a state is never sent
    early), so the delay grew to the worst batch jitter seen and stayed there
    (docs/performance.md, session 17).

    States come as a batch's `StateRows` and are built only when they go out: one held for
    its turn and then replaced by a newer one never is.

    interval_s: the interval (0: no gate); clock: monotonic seconds (injectable for tests).
    """

    interval_s: float
    clock: Callable[[], float] = time.monotonic
    sent: dict[str, _Sent] = field(default_factory=dict)
    # patient -> its state waiting for its turn: (its batch's states, its position there)
    waiting: dict[str, tuple[StateRows, int]] = field(default_factory=dict)
    _due_at: dict[str, float] = field(default_factory=dict)  # when each waiting state is due
    _due: list[tuple[float, str]] = field(default_factory=list)  # heap of (due, patient)

    def offer(self, states: StateRows | Sequence[StateOut] | Sequence[TwinState],
              urgent: set[str] | frozenset[str] = frozenset()
              ) -> tuple[list[Any], float | None]:
        """The states to send now (built), and the latest time at which any of the others held
        here becomes due (None: none held). urgent: patients whose state goes out at once."""
        rows = states if isinstance(states, StateRows) else StateRows.of(states)
        now = self.clock()
        out: list[int] = []
        held_until: float | None = None
        interval = self.interval_s
        for i, pid in enumerate(rows.pids):
            last = self.sent.get(pid)
            ts, band, lost = rows.ts[i], rows.bands[i], rows.lost[i]
            if last is None or pid in urgent or last.band != band \
                    or last.history_lost_at != lost:
                due = now
            elif ts - last.ts >= interval - min(READING_TOLERANCE_S, 0.1 * interval):
                due = last.at + FLOOD_GUARD * interval
            else:
                due = last.at + interval
            if due <= now:
                self.waiting.pop(pid, None)
                self._due_at.pop(pid, None)
                self.sent[pid] = _Sent(now, ts, band, lost)
                out.append(i)
                continue
            if due < self._due_at.get(pid, float("inf")):
                # a newer state can be due sooner (its readings span an interval): a new turn;
                # the older heap entry is stale and skipped
                heapq.heappush(self._due, (due, pid))
                self._due_at[pid] = due
            self.waiting[pid] = (rows, i)
            due = self._due_at[pid]
            held_until = due if held_until is None else max(held_until, due)
        return rows.build(out), held_until

    def due(self, everything: bool = False, now: float | None = None) -> list[Any]:
        """The held states whose turn has come by `now` (default: the clock; all of them with
        `everything`: a rebalance or a shutdown), taken out of the gate and built."""
        now = self.clock() if now is None else now
        taken: dict[int, tuple[StateRows, list[int]]] = {}  # per batch: its positions due
        heap = self._due
        while heap and (everything or heap[0][0] <= now):
            at, pid = heapq.heappop(heap)
            if self._due_at.get(pid) != at:
                continue  # sent at once meanwhile, or a turn that came sooner
            del self._due_at[pid]
            rows, i = self.waiting.pop(pid)
            self.sent[pid] = _Sent(now, rows.ts[i], rows.bands[i], rows.lost[i])
            taken.setdefault(id(rows), (rows, []))[1].append(i)
        return [st for rows, idx in taken.values() for st in rows.build(idx)]

    def forget(self, pids: Iterable[str]) -> None:
        """Patients another worker owns now: their next state here goes out at once. (Their
        held states were sent when the rebalance started: `due(everything=True)`.)"""
        for p in pids:
            self.sent.pop(p, None)
            self.waiting.pop(p, None)
            self._due_at.pop(p, None)


@dataclass
class _Held:
    events: list[Any]
    ready_at: float  # monotonic: the states the batch held back are due by then
    taken: bool = False  # its twin records are being written
    written: bool = False  # its twin records are in Kafka
    lows: dict[Any, int] = field(default_factory=dict)  # partition -> its lowest offset here


@dataclass
class RecordCache:
    """The latest changelog record per key not yet written, and the events whose offsets must
    wait for it.

    interval_s: longest a record waits to be written (the flush interval); clock: monotonic.
    """

    interval_s: float
    clock: Callable[[], float] = time.monotonic
    records: dict[bytes, bytes] = field(default_factory=dict)
    held: list[_Held] = field(default_factory=list)
    since: float | None = None  # when the oldest unwritten record or event came
    events_held: int = 0

    def put(self, records: Mapping[bytes, bytes]) -> None:
        """Keep these records (key -> value) for the next write; a later one of a key wins."""
        if records and self.since is None:
            self.since = self.clock()
        self.records.update(records)

    def hold(self, events: list[Any], ready_at: float | None = None) -> None:
        """Keep `events` (Faust events) unacknowledged until the records put so far are written
        and `ready_at` (monotonic) has passed: one more reference on each message."""
        if not events:
            return
        for ev in events:
            ev.message.incref()
        if self.since is None:
            self.since = self.clock()
        self.held.append(_Held(events, self.clock() if ready_at is None else ready_at,
                               lows=lowest_offsets(events)))
        self.events_held += len(events)

    def lowest(self) -> dict[Any, int]:
        """Per partition, the lowest offset of the events held here (not yet released)."""
        lows: dict[Any, int] = {}
        for h in self.held:
            for tp, off in h.lows.items():
                if off < lows.get(tp, off + 1):
                    lows[tp] = off
        return lows

    def due(self) -> bool:
        """Something has waited `interval_s`."""
        return self.since is not None and self.clock() - self.since >= self.interval_s

    def take(self) -> dict[bytes, bytes]:
        """The records to write now; the events held so far become releasable once `written` is
        called (after the write is acknowledged)."""
        records, self.records = self.records, {}
        for h in self.held:
            h.taken = True
        self.since = None
        return records

    def written(self) -> None:
        """The records of the last `take` are in Kafka."""
        for h in self.held:
            if h.taken:
                h.written = True
        unwritten = [h for h in self.held if not h.written]
        if (self.records or unwritten) and self.since is None:
            self.since = self.clock()

    def release(self, everything: bool = False, now: float | None = None) -> int:
        """Acknowledge the events whose records are written and whose held states were due by
        `now` (default: the clock; all written ones with `everything`); returns how many. Give
        it the time the gate's `due` was asked at: a later one would release events whose held
        states became due after that, unsent."""
        now = self.clock() if now is None else now
        keep: list[_Held] = []
        n = 0
        for h in self.held:
            if h.written and (everything or h.ready_at <= now):
                for ev in h.events:
                    ev.ack()
                n += len(h.events)
            else:
                keep.append(h)
        self.held = keep
        self.events_held -= n
        return n


def lowest_offsets(events: Iterable[Any], lows: dict[Any, int] | None = None) -> dict[Any, int]:
    """Per partition, the lowest offset of these Faust events (into `lows` if given)."""
    lows = {} if lows is None else lows
    for ev in events:
        msg = ev.message
        tp, off = msg.tp, msg.offset
        if off < lows.get(tp, off + 1):
            lows[tp] = off
    return lows
