"""vitals.raw and observations into batches without a Faust event per message.

Faust hands every message to an agent as an event: the conductor decodes it into an `Event`, puts
it on the channel's queue, and the stream takes it off again, sets context variables, calls the
sensors and the take buffer's processor, and acknowledges it. A do-nothing Faust agent does
about 5,500 of those a second on this machine (docs/performance.md), so at one reading a message
Faust's per-event path alone is a core at 5,500 patients x 1 Hz. The twin step works on batches
and needs none of it.

`SourceBuffer` is the conductor's callback for the source topics' partitions instead
(`streams.compat.faust_source_handler`): each message goes straight into a list, and `batches`
takes up to `max_batch` of them at least every `within_s`, as `Stream.take_events` did. What
Faust's path did that the worker relies on is kept:

- the fetch waits while Faust's flow control is suspended (a rebalance), and a message of an
  older consumer generation is dropped when taken (a prefetched message of a partition that may
  have moved; `streams.worker.offsets` re-reads what a dropped message leaves missing);
- buffered messages are dropped when Faust clears its queues for a rebalance (they are not
  tracked yet: Faust's own queued events are not either);
- a taken message is tracked as unacknowledged and holds one reference until the batch's body is
  done, so Faust waits for it in a rebalance and at shutdown, and the record cache's and
  catch-up's references (`streams.worker.coalesce`) keep it until its outputs are in Kafka;
- the fetch waits when `max_buffered` messages are waiting, as a full channel queue made it;
- Faust's monitor hears that each partition taken is being processed (its consumer logs a
  partition whose stream never processes anything as stalled).

The offsets committed are the worker's own (`streams.compat.faust_commit_limits`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any


class SourceEvent:
    """One source message, with the part of Faust's `Event` the worker uses: `message`, `key`,
    `value` (raw bytes) and `ack` (release one reference)."""

    __slots__ = ("message", "consumer")

    def __init__(self, message: Any, consumer: Any) -> None:
        self.message = message
        self.consumer = consumer

    @property
    def key(self) -> bytes | None:
        return self.message.key

    @property
    def value(self) -> bytes | None:
        return self.message.value

    def ack(self) -> bool:
        return self.message.ack(self.consumer)


class SourceBuffer:
    """Messages of the source partitions, waiting for the twin's next batch.

    app: the Faust app (its consumer, flow control and generation id); max_batch: most events a
    batch; within_s: longest a message waits for a batch to fill; max_buffered: the fetch waits
    while this many are buffered."""

    def __init__(self, app: Any, max_batch: int, within_s: float,
                 max_buffered: int | None = None) -> None:
        self.app = app
        self.max_batch = max_batch
        self.within_s = within_s
        self.max_buffered = max_buffered or 2 * max_batch
        self.events: list[SourceEvent] = []
        self.full = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.dropped_stale = 0  # messages of an older consumer generation, dropped
        self.dropped_cleared = 0  # buffered messages dropped when a rebalance cleared them
        # Faust clears the queues it manages when a rebalance starts and ends
        app.flow_control.manage_queue(self)

    async def on_message(self, message: Any) -> None:
        """The conductor's callback for a source partition's message."""
        await self.app.flow_control.acquire()
        self.events.append(SourceEvent(message, self.app.consumer))
        n = len(self.events)
        if n >= self.max_batch:
            self.full.set()
            if n >= self.max_buffered:
                self.room.clear()
                await self.room.wait()

    def clear(self) -> None:
        """Drop what is buffered (Faust's flow control, at a rebalance): not taken, so neither
        tracked nor referenced; read again from the committed offsets."""
        self.dropped_cleared += len(self.events)
        self.events = []
        self.full.clear()
        self.room.set()

    def take(self) -> list[SourceEvent]:
        """Up to `max_batch` buffered events of the current consumer generation, each tracked
        as unacknowledged with one reference (release it with `SourceEvent.ack`)."""
        batch = self.events[:self.max_batch]
        del self.events[:self.max_batch]
        if len(self.events) < self.max_batch:
            self.full.clear()
        if len(self.events) < self.max_buffered:
            self.room.set()
        generation = self.app.consumer_generation_id
        fresh = [ev for ev in batch if ev.message.generation_id == generation]
        self.dropped_stale += len(batch) - len(fresh)
        track: Callable[[Any], None] = self.app.consumer._unacked_messages.add
        for ev in fresh:
            msg = ev.message
            msg.incref()
            if not msg.tracked:
                msg.tracked = True
                track(msg)
        # what Faust's stream would have told its monitor: the partition is being processed
        # (else its consumer logs the source partitions as stalled, "Stream has not started
        # processing")
        monitor = getattr(self.app, "monitor", None)
        if monitor is not None and fresh:
            inbound = monitor.stream_inbound_time
            now = time.monotonic()
            for tp in {ev.message.tp for ev in fresh}:
                inbound[tp] = now
        return fresh

    async def batches(self) -> AsyncIterator[list[SourceEvent]]:
        """Batches of events, as `Stream.take_events(max_batch, within_s)` gives them: each
        event's reference is released when the caller asks for the next batch."""
        while True:
            if not self.full.is_set():
                try:
                    await asyncio.wait_for(self.full.wait(), timeout=self.within_s)
                except TimeoutError:
                    pass
            if not self.events:
                continue
            batch = self.take()
            if not batch:
                continue
            try:
                yield batch
            finally:
                for ev in batch:
                    ev.ack()
