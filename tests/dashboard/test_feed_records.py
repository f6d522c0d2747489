"""The dashboard's feed on the real broker: bad records on twin.state, alerts and patients, in
among good ones, are counted and passed over, never stop the feed, and are logged without what
they hold; a restarted feed replays past them the same way."""

from __future__ import annotations

import logging
import time

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer

from dashboard.feed import TwinFeed
from streams import config, messages, topics
from streams.config import kafka_python_producer_config
from streams.errors import InvalidMessage
from streams.registry import change
from tests.conftest import wait_until
from tests.streams.test_reader_records import _records

T0 = time.time() - 600
SECRET = "SECRET-77"  # in bad records only: it must never reach a log


def _state(pid: str, hr: float, t: float, **fields: object) -> bytes:
    st = messages.TwinState(
        patient_id=pid, ts=messages.utc(t), units={"hr": "/min"}, estimate={"hr": hr},
        sd={"hr": 1.0}, raw={"hr": hr}, age_s={"hr": 0.0}, forecasts=[], derived={},
        minutes_to_band={}, news2=1, news2_raw=1, news2_complete=False, news2_band="low",
        readings_applied=1, artifacts=0, missing=0, duplicates=0, late=0, sequence_gaps=0,
        battery=None, quality=None)
    return msgspec.json.encode({**msgspec.to_builtins(st), **fields})


def _alert(pid: str, n: int, event: str = "raised", **fields: object) -> bytes:
    a = messages.AlertEvent(alert_id=f"{pid}:news2:{n}", patient_id=pid,
                            ts=messages.utc(T0 + n), event=event, kind="news2",
                            category="clinical", priority="high", message="NEWS2 7", news2=7)
    return msgspec.json.encode({**msgspec.to_builtins(a), **fields})


def _patient(pid: str, **fields: object) -> bytes:
    rec = msgspec.to_builtins(change(None, pid, "admit", "t", ward="A"))
    return msgspec.json.encode({**rec, **fields})


# (key, value) of records that are not valid, each on partition 0 between good records
BAD_STATES = [
    (b"P1", b"not json {"),
    (b"P1", b"[1, 2, 3]"),  # JSON, but a list
    (b"P1", b'"' + b"x" * 100_000 + b'"'),  # a 100 KB string
    (b"P1", msgspec.json.encode({"patient_id": [SECRET], "ts": "2026-01-01T00:00:00Z"})),
    (b"P1", _state("P1", 99.0, T0 + 30, schema="patient-twin.twin-state/2")),
    (b"P1", _state("P1", 99.0, T0 + 30, estimate={"hr": SECRET})),
    (b"P1", b'{"patient_id": "P1\xff\xfe", "ts": "2026-01-01T00:00:00Z"}'),  # invalid UTF-8
    (b"P1", _state("P1", 99.0, T0 + 30, news2=1_000_000)),  # beyond any score
    (b"P1", _state("P1", 99.0, T0 + 30, ts="2026-01-01T00:00:00")),  # no UTC offset
    (b"P1", _state("P1", 99.0, T0 + 30, applied_at="2026-01-01T00:00:00")),
]
BAD_ALERTS = [
    (b"P1", None),  # a null value on a topic that is not compacted
    (b"P1", b"\x00\x01binary"),
    (b"P1", msgspec.json.encode({"patient_id": {"id": SECRET}, "alert_id": "x",
                                 "event": "raised", "ts": "2026-01-01T00:00:00Z"})),
    (b"P1", _alert("P1", 5, schema="patient-twin.alert/2")),
    (b"P1", _alert("P1", 5, event="exploded")),
    (b"P1", b'[{"patient_id": "P1"}]'),
    (b"P1", _alert("P1", 5, raised_at="2026-01-01T00:00:00")),  # no UTC offset
]
BAD_PATIENTS = [
    (b"\xff\xfe", None),  # a tombstone whose key is not UTF-8
    (b"", None),  # a tombstone of no one
    (b"P3", b"{not json"),
    (b"P3", _patient("P3", schema="patient-twin.patient/2")),
    (b"P3", _patient("P3", ward=["A", SECRET])),
]


@pytest.mark.broker
def test_feed_counts_and_passes_over_bad_records_and_survives_a_restart(settings_factory,
                                                                        caplog):
    caplog.set_level(logging.WARNING, logger="patient_twin.follow")
    s = settings_factory()
    topics.ensure(s)
    producer = KafkaProducer(**kafka_python_producer_config(s))

    def send(topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
        for key, value in records:
            producer.send(topic, key=key, value=value, partition=0)

    try:
        send(s.topic_twin_state, [(b"P1", _state("P1", 70.0, T0))])
        send(s.topic_alerts, [(b"P1", _alert("P1", 1))])
        send(s.topic_patients, [(b"P1", _patient("P1"))])
        send(s.topic_twin_state, BAD_STATES)
        send(s.topic_twin_state, [(b"P1", None)])  # a tombstone: valid, left alone
        send(s.topic_alerts, BAD_ALERTS)
        send(s.topic_patients, BAD_PATIENTS)
        send(s.topic_twin_state, [(b"P1", _state("P1", 80.0, T0 + 60)),
                                  (b"P2", _state("P2", 60.0, T0 + 60))])
        send(s.topic_alerts, [(b"P1", _alert("P1", 1, "resolved")), (b"P2", _alert("P2", 2))])
        send(s.topic_patients, [(b"P2", _patient("P2"))])
        producer.flush()
    finally:
        producer.close()
    expected = {s.topic_twin_state: len(BAD_STATES), s.topic_alerts: len(BAD_ALERTS),
                s.topic_patients: len(BAD_PATIENTS)}

    def done(feed: TwinFeed) -> bool:
        return (feed.state("P2") is not None and len(feed.snapshot()[1]) == 3
                and feed.registry.get("P2") is not None)

    feed = TwinFeed(s).start()
    try:
        assert wait_until(lambda: done(feed), timeout=10), feed.skipped
        assert feed._follower is not None and feed._follower._thread is not None
        assert feed._follower._thread.is_alive()
        assert feed.skipped == expected
        assert feed.state("P1").estimate["hr"] == 80.0
        assert list(feed.history("P1")["estimate"][:, 0]) == [70.0, 80.0]
        assert [a.alert_id for a in feed.open_alerts()] == ["P2:news2:2"]
        assert sorted(feed.registry.admitted()) == ["P1", "P2"]
    finally:
        feed.stop()
    skips = [r.getMessage() for r in caplog.records
             if r.name == "patient_twin.follow" and "skipped" in r.getMessage()]
    assert len(skips) == sum(expected.values())
    assert all(" partition 0 offset " in m for m in skips)
    assert SECRET not in caplog.text and not any("P1" in m or "P3" in m for m in skips)

    # a restarted feed replays the same records: the same view, the same count
    again = TwinFeed(s).start()
    try:
        assert wait_until(lambda: done(again), timeout=10), again.skipped
        assert again.skipped == expected
        assert again.state("P1") == feed.state("P1")
    finally:
        again.stop()


def test_feed_apply_refuses_bad_records_and_keeps_its_view():
    """Without Kafka: `apply` raises InvalidMessage for a bad record, the view unchanged."""
    s = config.load({})
    feed = TwinFeed(s)
    feed.apply(s.topic_twin_state, b"P1", _state("P1", 70.0, T0))
    before = feed.state("P1")
    # kafka-python cannot send a record without key and value; other clients can
    for topic, records in ((s.topic_twin_state, BAD_STATES), (s.topic_alerts, BAD_ALERTS),
                           (s.topic_patients, BAD_PATIENTS)):
        for key, value in [*records, (None, None)]:
            with pytest.raises(InvalidMessage):
                feed.apply(topic, key, value)
    assert feed.state("P1") == before and feed.snapshot()[1] == []
    assert feed.registry.admitted() == {}


def test_feed_keeps_the_records_as_the_worker_writes_them_and_refuses_partial_ones():
    """The feed decodes the schemas' structs: typed fields for the pages, a record missing a
    field the worker always writes is refused (counted and passed over on Kafka), and one from
    an older worker without the fields added since is read with their defaults."""
    s = config.load({})
    feed = TwinFeed(s)
    older = msgspec.json.decode(_state("P1", 70.0, T0))
    del older["applied_at"], older["history_lost_at"]
    feed.apply(s.topic_twin_state, b"P1", msgspec.json.encode(older))
    feed.apply(s.topic_alerts, b"P1", _alert("P1", 1))
    st = feed.state("P1")
    assert isinstance(st, messages.TwinState) and st.applied_at is None
    assert st.estimate["hr"] == 70.0 and st.ts == messages.utc(T0)
    (alert,) = feed.open_alerts("P1")
    assert isinstance(alert, messages.AlertEvent) and alert.priority == "high"
    partial_state = {"patient_id": "P1", "ts": "2026-01-01T00:00:00Z", "estimate": {"hr": 1}}
    partial_alert = {"patient_id": "P1", "alert_id": "P1:news2:9", "event": "raised",
                     "priority": "high", "ts": "2026-01-01T00:00:00Z"}
    for topic, doc in ((s.topic_twin_state, partial_state), (s.topic_alerts, partial_alert)):
        with pytest.raises(InvalidMessage, match="missing required field") as exc:
            feed.apply(topic, b"P1", msgspec.json.encode(doc))
        assert exc.value.kind == "missing_field"
    assert feed.state("P1") == st and feed.open_alerts() == [alert]


_S = config.load({})


@settings(deadline=None)
@given(record=st.one_of(
    st.tuples(st.just(_S.topic_twin_state), _records(msgspec.json.decode(_state("P1", 70, T0)))),
    st.tuples(st.just(_S.topic_alerts), _records(msgspec.json.decode(_alert("P1", 1)))),
    st.tuples(st.just(_S.topic_patients), _records(msgspec.json.decode(_patient("P1"))))))
def test_feed_apply_raises_only_invalid_message(record):
    topic, value = record
    feed = TwinFeed(_S)
    try:
        feed.apply(topic, b"P1", value)
    except InvalidMessage as exc:
        assert exc.kind
