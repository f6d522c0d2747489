"""Readers of derived topics against bad records: the decoders raise only InvalidMessage,
whatever the bytes, and the registry follower and the webhook dispatcher (its subscription view
and its alert queues) count bad records, pass over them and go on, on the real broker."""

from __future__ import annotations

import json
import logging
import threading
import time

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer

from streams import messages, topics
from streams.config import kafka_python_producer_config
from streams.errors import InvalidMessage
from streams.registry import Registry, change
from streams.webhooks import Dispatcher, new_subscription
from tests.conftest import wait_until
from tests.streams.test_webhooks import Receiver

T0 = time.time() - 600
SECRET = "SECRET-78"  # in bad records only: it must never reach a log


def _state_doc() -> dict:
    return msgspec.to_builtins(messages.TwinState(
        patient_id="P1", ts=messages.utc(T0), units={"hr": "/min"}, estimate={"hr": 70.0},
        sd={"hr": 1.0}, raw={"hr": 70.0}, age_s={"hr": 0.0}, forecasts=[], derived={},
        minutes_to_band={}, news2=1, news2_raw=1, news2_complete=False, news2_band="low",
        readings_applied=1, artifacts=0, missing=0, duplicates=0, late=0, sequence_gaps=0,
        battery=None, quality=None))


def _alert_doc(pid: str = "P1", n: int = 1) -> dict:
    return msgspec.to_builtins(messages.AlertEvent(
        alert_id=f"{pid}:news2:{n}", patient_id=pid, ts=messages.utc(time.time()),
        event="raised", kind="news2", category="clinical", priority="high", message="NEWS2 7",
        news2=7))


def _patient_doc(pid: str = "P1") -> dict:
    return msgspec.to_builtins(change(None, pid, "admit", "t", ward="A"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12)


def _records(base: dict) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, arbitrary JSON, and the valid record `base` with one field replaced,
    dropped, or given a string that is not UTF-8, or cut short."""
    whole = msgspec.json.encode(base)
    return st.one_of(
        st.binary(max_size=200),
        json_values.map(msgspec.json.encode),
        st.tuples(st.sampled_from(sorted(base)), json_values).map(
            lambda fv: msgspec.json.encode({**base, fv[0]: fv[1]})),
        st.sampled_from(sorted(base)).map(
            lambda f: msgspec.json.encode({k: v for k, v in base.items() if k != f})),
        st.tuples(st.sampled_from(sorted(base)), st.binary(max_size=8)).map(
            lambda fb: whole[:-1] + b',"' + fb[0].encode() + b'":"' + fb[1] + b'"}'),
        st.integers(0, len(whole)).map(lambda n: whole[:n]),
    )


def _only_invalid_message(decode, struct, data: bytes) -> None:  # noqa: ANN001
    try:
        assert isinstance(decode(data), struct)
    except InvalidMessage as exc:
        assert exc.kind  # a kind for the count and the log


@settings(deadline=None)
@given(data=_records(_state_doc()))
@example(data=b'{"patient_id": "P1\xff"}')
def test_decode_twin_state_raises_only_invalid_message(data):
    _only_invalid_message(messages.decode_twin_state, messages.TwinState, data)


@settings(deadline=None)
@given(data=_records(_alert_doc()))
@example(data=b'{"patient_id": "P1\xff"}')
def test_decode_alert_raises_only_invalid_message(data):
    _only_invalid_message(messages.decode_alert, messages.AlertEvent, data)


@settings(deadline=None)
@given(data=_records(_patient_doc()))
@example(data=b'{"patient_id": "P1\xff"}')
def test_decode_patient_raises_only_invalid_message(data):
    _only_invalid_message(messages.decode_patient, messages.PatientRecord, data)


# (key, value) of records that are not valid, between good ones on partition 0
BAD_PATIENTS = [
    (b"\xff\xfe", None),  # a tombstone whose key is not UTF-8
    (b"", None),  # a tombstone of no one
    (b"P3", b"{not json"),
    (b"P3", b'{"patient_id": "P3\xff\xfe"}'),  # a string that is not UTF-8
    (b"P3", msgspec.json.encode({**_patient_doc("P3"), "schema": "patient-twin.patient/2"})),
    (b"P3", msgspec.json.encode({**_patient_doc("P3"), "ward": ["A", SECRET]})),
]


def _bad_subscriptions(good: dict) -> list[tuple[bytes | None, bytes | None]]:
    key = good["id"].encode()
    return [
        (b"\xff\xfe", None),  # a tombstone whose key is not UTF-8
        (b"", msgspec.json.encode(good)),  # no key to file it under
        (key, b"not json"),
        (key, b"[1, 2]"),
        (key, b'{"id": "\xff"}'),
        (key, msgspec.json.encode({**good, "schema": "patient-twin.subscription/2"})),
        (key, msgspec.json.encode({**good, "url": f"ftp://{SECRET}/"})),
        (key, b'"' + b"x" * 100_000 + b'"'),
    ]


BAD_ALERTS = [
    (b"P1", None),  # a null value on a topic that is not compacted
    (b"P1", b"\x00\x01binary"),
    (b"P1", b'{"patient_id": "P1\xff"}'),
    (b"P1", msgspec.json.encode({**_alert_doc(), "schema": "patient-twin.alert/2"})),
    (b"P1", msgspec.json.encode({**_alert_doc(), "priority": SECRET})),
    (b"P1", msgspec.json.encode([_alert_doc()])),
]


@pytest.mark.broker
def test_registry_and_dispatcher_count_and_pass_over_bad_records(settings_factory, caplog):
    caplog.set_level(logging.WARNING)
    s = settings_factory(webhook_backoff_seconds=0.01, webhook_allow_loopback_http=True)
    topics.ensure(s)
    receiver = Receiver()
    gone = new_subscription(url=receiver.url, created_by="t",  # deleted after the bad records
                            allow_loopback_http=True)
    sub = new_subscription(url=receiver.url, created_by="t", wards=["A"],
                           allow_loopback_http=True)
    producer = KafkaProducer(**kafka_python_producer_config(s))

    def send(topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
        for key, value in records:
            producer.send(topic, key=key, value=value, partition=0)
        producer.flush()

    bad_subs = _bad_subscriptions(msgspec.to_builtins(gone))
    d = Dispatcher(s)
    registry = Registry(s)
    th = threading.Thread(target=d.run, kwargs={"ready": (ready := threading.Event()).set},
                          daemon=True)
    try:
        send(s.topic_patients, [(b"P1", msgspec.json.encode(_patient_doc("P1"))),
                                *BAD_PATIENTS, (b"P2", msgspec.json.encode(_patient_doc("P2")))])
        send(s.topic_subscriptions, [(gone.id.encode(), msgspec.json.encode(gone)), *bad_subs,
                                     (sub.id.encode(), msgspec.json.encode(sub)),
                                     (gone.id.encode(), None)])
        registry.start()
        th.start()
        assert ready.wait(30), "the dispatcher did not join its group"
        assert [x.id for x in d.view.snapshot()[0]] == [sub.id]
        send(s.topic_alerts, [(b"P1", msgspec.json.encode(_alert_doc("P1"))), *BAD_ALERTS,
                              (b"P2", msgspec.json.encode(_alert_doc("P2")))])
        assert wait_until(lambda: len(receiver.got) == 2, timeout=10), d.skipped
        assert sorted(json.loads(b)["patient_id"] for _, b in receiver.got) == ["P1", "P2"]
        assert d.skipped == {s.topic_subscriptions: len(bad_subs),
                             s.topic_patients: len(BAD_PATIENTS),
                             s.topic_alerts: len(BAD_ALERTS)}
        assert registry.follower is not None and registry.follower.caught_up.wait(10)
        assert sorted(registry.admitted()) == ["P1", "P2"]
        assert registry.skipped == {s.topic_patients: len(BAD_PATIENTS)}
        assert th.is_alive() and d.view.follower._thread.is_alive()
    finally:
        d.stop()
        th.join(30)
        registry.stop()
        producer.close()
        receiver.close()
    skips = [r.getMessage() for r in caplog.records if "skipped the record" in r.getMessage()]
    # alerts: skipped by the subscription's queue and by the dispatcher's watchdog, which reads
    # its own past alerts back (streams.watchdog)
    assert len(skips) == len(bad_subs) + 2 * len(BAD_PATIENTS) + 2 * len(BAD_ALERTS)
    assert sum("patient-twin-watchdog skipped" in m for m in skips) == len(BAD_ALERTS)
    assert all(" partition 0 offset " in m for m in skips)
    assert SECRET not in caplog.text and not any("P1" in m or "P3" in m for m in skips)
