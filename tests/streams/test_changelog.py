"""The batch writer against the real embedded broker: every record arrives, in order per key, and
on the embedded broker each partition's high watermark is exact after a write (Faust's table
recovery reads up to that mark)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import AIOKafkaProducer
from kafka import KafkaConsumer, TopicPartition

from streams import topics
from streams.config import kafka_python_consumer_config
from streams.topics import partition_of as _partition
from streams.worker.changelog import BatchWriter
from tests.conftest import make_settings


def _read_all(s, topic: str, partitions: int) -> tuple[dict[int, int], list[tuple[bytes, bytes]]]:
    consumer = KafkaConsumer(group_id=None, enable_auto_commit=False,
                             **kafka_python_consumer_config(s))
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        ends = consumer.end_offsets(parts)
        consumer.seek_to_beginning(*parts)
        records = []
        for _ in range(50):
            for recs in consumer.poll(timeout_ms=200).values():
                records.extend((r.key, r.value) for r in recs)
        return {tp.partition: n for tp, n in ends.items()}, records
    finally:
        consumer.close()


def test_records_arrive_in_order_and_the_high_watermark_is_exact(broker_port: int) -> None:
    s = make_settings(broker_port, kafka_partitions=3)
    topic = s.topic_twin_state
    topics.ensure(s)
    keys = [f"P{i:03d}".encode() for i in range(40)]
    writes = [[(k, f"{k.decode()}:{w}".encode()) for k in keys] for w in range(3)]

    async def write() -> None:
        kafka = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{broker_port}", linger_ms=5,
                                 max_batch_size=262_144)
        await kafka.start()
        try:
            # the part of Faust's app the writer uses: its started producer
            app = SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: kafka))
            writer = BatchWriter(app, lambda key: _partition(key.decode(), 3), lone_last=True)
            for records in writes:
                await writer.send(topic, records, lone_last=True)
            await kafka.flush()
        finally:
            await kafka.stop()

    asyncio.run(write())
    ends, records = _read_all(s, topic, 3)
    assert len(records) == 3 * len(keys)
    per_partition = {p: sum(1 for k in keys if _partition(k.decode(), 3) == p) * 3
                     for p in range(3)}
    assert ends == per_partition  # exact: the last record of each write went alone
    for k in keys:  # each key's values in write order
        assert [v for key, v in records if key == k] == [v for w in writes for key, v in w
                                                         if key == k]
