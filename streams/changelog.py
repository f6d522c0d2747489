"""Writing a batch of twin records to the Faust table: its local store and its changelog topic.

A Faust Table sends one changelog message per key through its producer buffer, a `FutureMessage`
with callbacks each: measured at about 230 us per record in the worker, a quarter of a batch of a
thousand patients. The twin table is written once per batch, so the worker writes the store and
the changelog itself: the same key, value and partition the table would have used (the raw
patient id, murmur2 over the changelog's partitions, as `use_partitioner=True` does), straight
into the producer. Recovery is Faust's own, from the same changelog topic.

On the embedded Tansu broker a partition's high watermark is its last record batch's base offset
+ 1, and Faust's recovery stops at the watermark, so the last record of each partition written
here goes in a Kafka batch of its own: the mark is then exact (docs/tansu.md).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any


class ChangelogWriter:
    """Writes records to `table` (a Faust Table of bytes -> bytes) once per batch.

    partition: key -> changelog partition (the producers' murmur2). lone_last: put each
    partition's last record in a Kafka batch of its own (the embedded broker).
    """

    def __init__(self, app: Any, table: Any, partition: Callable[[bytes], int],
                 lone_last: bool) -> None:
        self.app = app
        self.table = table
        self.partition = partition
        self.lone_last = lone_last
        # One writer at a time: another coroutine's record must not join a partition's lone
        # last batch before this write is done (after it, the next write ends with its own).
        self._lock = asyncio.Lock()

    async def write(self, records: Mapping[bytes, bytes]) -> None:
        """Store and log `records` (key -> value)."""
        if not records:
            return
        topic = self.table.changelog_topic.get_topic_name()
        store = self.table.data
        by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        for key, value in records.items():
            store[key] = value
            by_partition[self.partition(key)].append((key, value))
        producer = self.app.producer
        async with self._lock:
            lone = []
            for part, items in by_partition.items():
                if self.lone_last:
                    lone.append((part, items.pop()))
                for key, value in items:
                    await producer.send(topic, key, value, part, None, None)
            if lone:
                # Faust's producer has no batch API; aiokafka's does: send_batch queues a batch
                # after the partition's open one, never into it (it waits for that one to be
                # taken by the sender, so the partitions wait side by side).
                kafka = producer._ensure_producer()
                await asyncio.gather(*(self._send_alone(kafka, topic, part, key, value)
                                       for part, (key, value) in lone))

    @staticmethod
    async def _send_alone(kafka: Any, topic: str, part: int, key: bytes, value: bytes) -> None:
        batch = kafka.create_batch()
        batch.append(key=key, value=value, timestamp=None)
        await kafka.send_batch(batch, topic, partition=part)
