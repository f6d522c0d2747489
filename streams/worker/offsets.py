"""Holes in what this worker processed per source partition, and the seeks that fill them.

faust-streaming 0.15 skips, and acknowledges, messages it prefetched before a rebalance when they
come out of its buffer after the generation changed (`Stream._py_aiter`, faust-streaming PR 223);
for a partition this worker keeps across the rebalance those readings are never processed
(measured here: a reading lost mid-stream in some two-worker SIGKILL runs, seen by the twin as a
sequence gap). Offsets of `vitals.raw` are contiguous (no compaction; producers do not use
transactions), so the worker can see the hole: an event whose offset is beyond the last processed
one + 1. It then processes nothing more of that partition in the batch and seeks the partition
back to the hole's start; the stream delivers the messages again, in order. Readings processed
twice are harmless (the twin skips a device sequence number at or below the last applied one),
and events at or below the last processed offset are dropped here so that dead letters are not
sent twice.

A hole that is not refilled within `give_up_seconds` (offsets that do not exist, e.g. transaction
markers written by a transactional producer) is accepted and counted, so a partition never
stalls. A hole at the very end of a partition has no later event to reveal it: `idle_seeks`
compares the consumer's fetch position with the last processed offset once the partition is quiet,
and seeks again when a partition went quiet with its hole still open.

A hole below the first event this worker sees of a partition has no earlier event to reveal it,
so each partition assigned to the worker is `seed`ed with where its group committed: a first
event beyond that is a hole like any other. The same record bounds the offset the worker may
commit (`limit`): faust-streaming 0.15 commits the first unbroken run of offsets its streams
acknowledged, and acknowledges offsets nobody applied (the stale prefetched messages above, and
the events held back here behind a hole); it checks where that run starts only when the
committed offset is known and non-zero, and lets a one-offset hole through even then
(`Consumer._new_offset`). A worker stopped or killed after such a commit and before the re-read
lost those readings (seen in CI: 4-5 readings of one partition's patients in the SIGTERM
catch-up test).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field


def read_from(committed: int | None, earliest: int, end: int) -> int:
    """Where a consumer group reads a partition from: its committed offset, or, with none or
    one outside the log (`earliest` to `end`: records deleted by retention, or a log recreated
    shorter), the log's first offset, as Kafka's auto_offset_reset "earliest" (Faust's default)
    resets it."""
    if committed is None or committed < earliest or committed > end:
        return earliest
    return committed


@dataclass
class OffsetTracker:
    """Per partition: last processed offset, pending seeks. Partitions are any hashable (TP)."""

    idle_seconds: float = 5.0
    # A pending hole whose re-read has not come this long after its seek is sought again, even
    # while the partition is busy: Faust can drop the re-read (module docstring).
    retry_seconds: float = 1.0
    give_up_seconds: float = 30.0
    forget_seconds: float = 60.0
    clock: Callable[[], float] = time.monotonic
    processed: dict[Hashable, int] = field(default_factory=dict)
    pending: dict[Hashable, tuple[int, float]] = field(default_factory=dict)  # tp -> (offset, t)
    sought: dict[Hashable, float] = field(default_factory=dict)  # tp -> time of the last seek
    last_event: dict[Hashable, float] = field(default_factory=dict)
    unassigned_since: dict[Hashable, float] = field(default_factory=dict)
    # partitions seeded since they were last assigned (`seed`); only these may be committed
    seeded: set[Hashable] = field(default_factory=set)
    holes: int = 0  # holes sought back to
    abandoned: int = 0  # holes accepted after give_up_seconds
    retries: int = 0  # seeks repeated for a hole whose re-read did not come

    def admit(self, events: Iterable[tuple[Hashable, int]]
              ) -> tuple[list[bool], dict[Hashable, int]]:
        """Decide which events of a batch to process.

        events: `(tp, offset)` in batch order. Returns `keep` (one bool per event) and the seeks
        to do after the batch (tp -> offset). Call `done` with the kept events once processed.
        """
        now = self.clock()
        evs = list(events)
        keep = [False] * len(evs)
        seeks: dict[Hashable, int] = {}
        by_tp: dict[Hashable, list[tuple[int, int]]] = {}
        for i, (tp, off) in enumerate(evs):
            by_tp.setdefault(tp, []).append((off, i))
        for tp, items in by_tp.items():
            items.sort()
            self.last_event[tp] = now
            last = self.processed.get(tp)
            for off, i in items:
                if last is not None and off <= last:
                    continue  # processed already (redelivered after a seek)
                if last is not None and off > last + 1:
                    target = last + 1
                    pend = self.pending.get(tp)
                    if pend is None or pend[0] != target:
                        self.holes += 1
                        seeks[tp] = target
                        self.pending[tp] = (target, now)
                        self.sought[tp] = now
                        break  # nothing more of this partition until the hole is refilled
                    if now - pend[1] < self.give_up_seconds:
                        # stale prefetched events; the re-read is on its way, unless Faust
                        # dropped it (seen after a table recovery: faust-streaming issue 596)
                        if now - self.sought.get(tp, pend[1]) >= self.retry_seconds:
                            seeks[tp] = target
                            self.sought[tp] = now
                            self.retries += 1
                        break
                    self.abandoned += 1  # offsets that never come: accept the hole
                keep[i] = True
                last = off
                self.pending.pop(tp, None)
                self.sought.pop(tp, None)
        return keep, seeks

    def reassigned(self, tps: Iterable[Hashable]) -> None:
        """These partitions were (re)assigned: each is to be `seed`ed again before its next
        commit (another worker may have committed it meanwhile)."""
        self.seeded.difference_update(tps)

    def unseeded(self, tps: Iterable[Hashable]) -> set[Hashable]:
        """Those of `tps` not seeded since they were last assigned."""
        return set(tps) - self.seeded

    def seed(self, starts: Mapping[Hashable, int]) -> None:
        """Where each partition's group will read from (tp -> its committed offset, or the log's
        first offset when none was committed): everything below it counts as processed, and
        an event beyond it is a hole. Offsets processed here already stay processed."""
        for tp, start in starts.items():
            last = max(self.processed.get(tp, start - 1), start - 1)
            self.processed[tp] = last
            pend = self.pending.get(tp)
            if pend is not None and pend[0] <= last:
                del self.pending[tp]
                self.sought.pop(tp, None)
            self.seeded.add(tp)

    def limit(self, tp: Hashable, unreleased: int | None = None) -> int | None:
        """The highest offset the group may commit for `tp`: one past the last offset processed
        here with nothing missing below it, and not beyond `unreleased` (the lowest offset
        processed but with its outputs not yet in Kafka). None: nothing may be committed (the
        partition is not seeded since it was assigned)."""
        last = self.processed.get(tp)
        if tp not in self.seeded or last is None:
            return None
        return last + 1 if unreleased is None else min(last + 1, unreleased)

    def sought_at(self, seeks: Iterable[Hashable]) -> None:
        """The seeks of `admit` or `idle_seeks` were done now (after the batch that found
        them): a retry for their holes waits `retry_seconds` from here."""
        now = self.clock()
        for tp in seeks:
            if tp in self.pending:
                self.sought[tp] = now

    def done(self, events: Iterable[tuple[Hashable, int]]) -> None:
        """Record processed events `(tp, offset)`."""
        for tp, off in events:
            if off > self.processed.get(tp, -1):
                self.processed[tp] = off

    def retain(self, assigned: Iterable[Hashable]) -> None:
        """Forget partitions not assigned for `forget_seconds` (another worker owns them now).

        Not at once: during a rebalance the assignment is briefly empty, and the partitions a
        worker keeps are exactly those whose prefetched messages the consumer may have dropped.
        """
        now = self.clock()
        keep = set(assigned)
        for tp in list(self.processed):
            if tp in keep:
                self.unassigned_since.pop(tp, None)
                continue
            since = self.unassigned_since.setdefault(tp, now)
            if now - since >= self.forget_seconds:
                for d in (self.processed, self.pending, self.sought, self.last_event,
                          self.unassigned_since):
                    d.pop(tp, None)
                self.seeded.discard(tp)

    def idle_seeks(self, positions: Mapping[Hashable, int | None]) -> dict[Hashable, int]:
        """Seeks for quiet partitions whose fetch position ran past unprocessed messages.

        positions: tp -> the consumer's next fetch offset. A partition is quiet when no event
        came for `idle_seconds`: whatever it fetched beyond the last processed offset was
        dropped, not buffered.
        """
        now = self.clock()
        seeks: dict[Hashable, int] = {}
        for tp, pos in positions.items():
            last = self.processed.get(tp)
            if pos is None or last is None or pos <= last + 1:
                continue
            if now - self.last_event.get(tp, now) < self.idle_seconds:
                continue
            pend = self.pending.get(tp)
            if pend is not None and pend[0] == last + 1:
                if now - pend[1] >= self.give_up_seconds:
                    self.abandoned += 1
                    self.processed[tp] = pos - 1
                    del self.pending[tp]
                elif now - pend[1] >= self.idle_seconds:
                    # Sought, yet the partition went quiet without the re-read: Faust can drop
                    # it (stale prefetched records delivered after the seek move its read offset
                    # past the hole; seen with a backlog at start-up). Ask again.
                    seeks[tp] = last + 1
                    self.sought[tp] = now
                    self.retries += 1
                continue
            self.holes += 1
            seeks[tp] = last + 1
            self.pending[tp] = (last + 1, now)
            self.sought[tp] = now
        return seeks
