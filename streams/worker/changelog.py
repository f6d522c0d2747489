"""Sending a batch's records at once: the twin table (store + changelog) and twin.state.

A Faust Table sends one changelog message per key through its producer buffer, a `FutureMessage`
with callbacks each: about 230 us per record in the worker, more than the twin step of the same
batch. Even a plain producer `send` builds a future per message. The worker writes a thousand
patients per batch, so it builds one Kafka record batch per partition itself (aiokafka's
`create_batch`/`send_batch`, the producer Faust already runs) with the same key, value and
partition the table would have used (the raw patient id, murmur2 over the partitions, as
`use_partitioner=True` does). Recovery is Faust's own, from the same changelog topic.

On the embedded Tansu broker a partition's high watermark is its last record batch's base offset
+ 1, and Faust's recovery stops at the watermark, so there the last changelog record of each
partition goes in a Kafka batch of its own: the mark is then exact (docs/tansu.md).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from streams import compat


class BatchWriter:
    """Keyed records -> one record batch per partition (more when a batch fills).

    app: the Faust app (its started producer is used); partition: key -> partition, the same for
    every topic written here (they share the partition count); lone_last: end each partition of
    a table write with a batch holding only its last record (the embedded broker).
    """

    def __init__(self, app: Any, partition: Callable[[bytes], int], lone_last: bool) -> None:
        self.app = app
        self.partition = partition
        self.lone_last = lone_last
        # One write at a time: another write's record must not join a partition's lone last
        # batch before this one is queued (after it, the next write ends with its own).
        self._lock = asyncio.Lock()

    async def write_table(self, table: Any, records: Mapping[bytes, bytes]
                          ) -> list[asyncio.Future[Any]]:
        """Store `records` (key -> value) in a Faust table of bytes and log them to its
        changelog topic; returns the record batches' delivery futures (see `send`)."""
        store = table.data
        for key, value in records.items():
            store[key] = value
        return await self.log(table, records)

    async def log(self, table: Any, records: Mapping[bytes, bytes]) -> list[asyncio.Future[Any]]:
        """Log `records` to a table's changelog topic only (its store holds them already: the
        worker's record cache, streams.worker.coalesce); returns the delivery futures."""
        return await self.send(table.changelog_topic.get_topic_name(), records.items(),
                               lone_last=self.lone_last)

    async def send(self, topic: str, records: Iterable[tuple[bytes, bytes]],
                   lone_last: bool = False) -> list[asyncio.Future[Any]]:
        """Queue `records` (key, value) on `topic`, in order per partition. Returns once they are
        queued (the producer delivers them; Faust flushes it before committing offsets), with
        each record batch's delivery future, for a caller that must know they arrived."""
        by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        for key, value in records:
            by_partition[self.partition(key)].append((key, value))
        if not by_partition:
            return []
        kafka = compat.faust_kafka_producer(self.app)
        async with self._lock:
            chains = []
            for part, items in by_partition.items():
                tail = [items.pop()] if lone_last else []
                chains.append(self._send_in_order(kafka, topic, part,
                                                  _batches(kafka, items) + _batches(kafka, tail)))
            # partitions side by side: each batch waits for its partition's previous one to be
            # taken by the sender
            sent = await asyncio.gather(*chains)
        return [f for futures in sent for f in futures]

    @staticmethod
    async def _send_in_order(kafka: Any, topic: str, part: int, batches: list[Any]
                             ) -> list[asyncio.Future[Any]]:
        return [await kafka.send_batch(batch, topic, partition=part) for batch in batches]


def _batches(kafka: Any, items: list[tuple[bytes, bytes]]) -> list[Any]:
    """Record batches (aiokafka BatchBuilder) holding `items` in order."""
    out: list[Any] = []
    for key, value in items:
        if not out or out[-1].append(key=key, value=value, timestamp=None) is None:
            out.append(kafka.create_batch())
            if out[-1].append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a record of {len(value)} bytes does not fit the producer's "
                                 "batch size")
    return out
