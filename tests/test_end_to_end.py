"""The thin slice through everything, on a real broker: simulator -> worker -> twin.state ->
dashboard, plus a dead letter for a malformed message."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import msgspec
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from dashboard.app import close, create_app
from dashboard.auth import add_user
from dashboard.feed import TwinFeed
from streams import config, messages, supervise, topics
from streams.config import kafka_python_config, kafka_python_producer_config
from tests.conftest import admit, login, settings_env, wait_for_stable_assignment, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _consume_all(settings, topic, stop, timeout):
    consumer = KafkaConsumer(group_id=None, enable_auto_commit=False,
                             **kafka_python_config(settings))
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    seen = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not stop(seen):
            for recs in consumer.poll(timeout_ms=200).values():
                seen.extend(recs)
    finally:
        consumer.close()
    return seen


def test_twenty_patients_have_twin_states_within_30_s_and_dashboard_shows_them(
        settings_factory, procs, tmp_path):
    metrics_port = supervise.free_port()
    users = str(tmp_path / "users.jsonl")
    add_user(users, "nurse", "clinician", ["A"], "a long enough password")
    s = settings_factory(worker_metrics_port=metrics_port, users_file=users)
    topics.ensure(s)
    env = settings_env(s)
    t0 = time.monotonic()
    procs.start("worker", "worker", env=env)
    procs.start("simulator", "simulate", "--patients", "20", "--rate", "1", "--seed", "3",
                env=env)
    # a malformed message and one under the wrong key go to the dead-letter topic
    producer = KafkaProducer(**kafka_python_config(s))
    producer.send(s.topic_vitals_raw, key=b"P00001", value=b'{"schema": "patient-twin.reading/1"')
    good = messages.encode(messages.reading("d", "P00002", 1, messages.utc(time.time()),
                                            {"hr": 70.0}))
    producer.send(s.topic_vitals_raw, key=b"P00003", value=good)
    producer.flush()
    producer.close()

    states = _consume_all(s, s.topic_twin_state,
                          lambda seen: len({r.key for r in seen}) >= 20, timeout=30)
    elapsed = time.monotonic() - t0
    patients = {r.key.decode() for r in states}
    assert patients == {f"P{i:05d}" for i in range(1, 21)}, (
        f"only {len(patients)} twins after {elapsed:.0f} s\n{procs.log('worker')[-3000:]}")
    last = msgspec.json.decode(states[-1].value, type=messages.TwinState)
    assert last.estimate["hr"] is not None and last.units["hr"] == "/min"
    assert last.readings_applied >= 1

    dead = _consume_all(s, s.topic_vitals_dlq, lambda seen: len(seen) >= 2, timeout=15)
    reasons = sorted(json.loads(r.value)["kind"] for r in dead)
    assert reasons == ["not_json", "wrong_key"]
    first = json.loads(dead[0].value)
    assert first["topic"] == s.topic_vitals_raw and first["offset"] >= 0

    # The worker's metrics count what happened, by reason for dead letters; it reports healthy.
    base = f"http://127.0.0.1:{metrics_port}"
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
        assert resp.status == 200 and resp.read() == b"ok\n"
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'patient_twin_dead_letters_total{kind="not_json"} 1.0' in text
    assert 'patient_twin_dead_letters_total{kind="wrong_key"} 1.0' in text
    applied = float(re.search(r"^patient_twin_readings_applied_total (\S+)$", text, re.M)[1])
    assert applied >= 20
    assert "patient_twin_healthy 1.0" in text

    # The dashboard's own consumer sees every patient, and its HTTP callback renders 20 rows.
    feed = TwinFeed(s).start()
    stop: list = []
    try:
        assert wait_until(lambda: len(feed.snapshot()[0]) == 20, timeout=20)
        app = create_app(s, feed=feed)
        stop.append(app)
        client = app.server.test_client()
        assert client.get("/").status_code == 302  # to the login page
        resp = login(client, "nurse", "a long enough password")
        assert resp.status_code == 302 and resp.headers["Location"] == "/"
        assert client.get("/").status_code == 200
        payload = {
            "output": "..ward-table.data...ward-summary.children..",
            "outputs": [{"id": "ward-table", "property": "data"},
                        {"id": "ward-summary", "property": "children"}],
            "inputs": [{"id": "ward-refresh", "property": "n_intervals", "value": 1}],
            "changedPropIds": ["ward-refresh.n_intervals"], "state": [],
        }
        resp = client.post("/_dash-update-component", json=payload)
        assert resp.status_code == 200, resp.data[:500]
        body = resp.get_json()["response"]
        rows = body["ward-table"]["data"]
        assert len(rows) == 20
        assert body["ward-summary"]["children"].startswith("20 patients")
        ids = {r["id"] for r in rows}
        assert ids == patients  # the simulator admitted them all to ward A, the nurse's ward
    finally:
        for app in stop:
            close(app)
        feed.stop()


def test_worker_writes_readings_twins_and_alerts_to_influxdb(settings_factory, procs, victoria):
    port = supervise.free_port()
    s = settings_factory(influx_url=victoria.url, influx_token=config.Secret("t"),
                         influx_org="ward", influx_bucket="twins", worker_metrics_port=port)
    topics.ensure(s)
    procs.start("worker", "worker", env=settings_env(s))
    # exact counts below: send once the worker holds its partitions (rebalance drops are the
    # failover test's subject)
    wait_for_stable_assignment(port, s.kafka_partitions, "")
    admit(s, {"V1": "d-V1", "V2": "d-V2"})
    producer = KafkaProducer(**kafka_python_producer_config(s))
    t0 = time.time() - 120
    for k in range(1, 61):
        # a patient deteriorating fast enough to raise a NEWS2 band alert
        hr, rr, sbp = (72.0, 16.0, 124.0) if k < 20 else (135.0, 27.0, 88.0)
        for pid in ("V1", "V2"):
            vals = {"hr": hr, "rr": rr, "sbp": sbp} if pid == "V1" else {"hr": 70.0}
            msg = messages.reading(f"d-{pid}", pid, k, messages.utc(t0 + k), vals)
            producer.send(s.topic_vitals_raw, key=pid.encode(), value=messages.encode(msg))
    producer.flush()
    producer.close()

    def count(selector: str) -> int:
        return sum(len(x["values"]) for x in victoria.export(selector))

    assert wait_until(lambda: count('vitals_raw_hr{patient_id="V1"}') == 60, timeout=60), (
        procs.log("worker")[-3000:])
    assert count('vitals_raw_hr{patient_id="V2"}') == 60
    assert wait_until(lambda: count('twin_hr_est{patient_id="V1"}') >= 1, timeout=20)
    assert wait_until(lambda: count('{__name__=~"alert_.*",patient_id="V1"}') >= 1, timeout=20)
    alert = victoria.export('alert_news2{patient_id="V1",kind="news2"}')[0]["metric"]
    assert alert["category"] == "clinical" and alert["event"] in ("raised", "escalated")
