"""Every malformed kind the simulator makes lands in vitals.dlq with its reason, counted by kind;
FHIR Observations from the simulator become twins like the project's own readings."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import msgspec
from kafka import KafkaConsumer, KafkaProducer

from devices import malformed
from streams import messages, supervise, topics
from streams.config import kafka_python_config, kafka_python_producer_config
from streams.errors import InvalidMessage
from streams.worker.app import DEAD_LETTER_ORIGINAL_MAX
from tests.conftest import ROOT, admit, settings_env, wait_for_stable_assignment


def _consume(s, topic: str, done, timeout: float) -> list:
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", enable_auto_commit=False,
                             **kafka_python_config(s))
    seen: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not done(seen):
            for recs in consumer.poll(timeout_ms=300).values():
                seen.extend(recs)
    finally:
        consumer.close()
    return seen


def _simulate(env: dict[str, str], *args: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "streams.cli", "simulate", "--no-progress",
                          *args], env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _worker(settings_factory, procs):
    """Settings, their environment and metrics port, with a worker holding every partition."""
    port = supervise.free_port()
    s = settings_factory(worker_metrics_port=port)
    topics.ensure(s)
    env = settings_env(s)
    procs.start("worker", "worker", env=env)
    wait_for_stable_assignment(port, s.kafka_partitions, "")
    return s, env, port


def test_every_malformed_kind_is_dead_lettered_with_its_reason(settings_factory, procs):
    s, env, port = _worker(settings_factory, procs)
    summary = _simulate(env, "--patients", "6", "--duration", "40", "--speed", "20",
                        "--bad-fraction", "0.25", "--clean-devices", "--seed", "5")
    sent = Counter(summary["malformed"])
    assert set(sent) == set(malformed.KINDS), sent  # every kind was produced
    # and one message under the wrong key
    p = KafkaProducer(**kafka_python_producer_config(s))
    good = messages.encode(messages.reading("d9", "P00001", 1, messages.utc(time.time()),
                                            {"hr": 70.0}))
    p.send(s.topic_vitals_raw, key=b"P00002", value=good)
    p.flush()
    p.close()
    sent["wrong_key"] += 1
    total = sum(sent.values())

    dead = _consume(s, s.topic_vitals_dlq, lambda seen: len(seen) >= total, timeout=60)
    letters = [msgspec.json.decode(r.value, type=messages.DeadLetter) for r in dead]
    assert Counter(d.kind for d in letters) == sent, procs.log("worker")[-3000:]
    for d in letters:
        assert d.reason and d.topic == s.topic_vitals_raw and d.offset >= 0
        assert 0 <= d.partition < s.kafka_partitions
        if d.kind != "wrong_key":
            # the original bytes, exactly: decoding them again gives the same verdict
            try:
                messages.decode_readings(d.original)
            except InvalidMessage as exc:
                assert exc.kind == d.kind and str(exc) == d.reason
            else:
                raise AssertionError(f"{d.kind}: original decodes fine")
    raw = json.loads(dead[0].value)
    assert base64.b64decode(raw["original"]) == letters[0].original

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for kind, n in sent.items():
        m = re.search(rf'^patient_twin_dead_letters_total{{kind="{kind}"}} (\S+)$', text, re.M)
        assert m and float(m[1]) == n, (kind, n)


def test_fhir_observations_become_twins(settings_factory, procs):
    s, env, _ = _worker(settings_factory, procs)
    summary = _simulate(env, "--patients", "4", "--duration", "20", "--speed", "10",
                        "--clean-devices", "--format", "fhir", "--seed", "2")
    expected = summary["readings"] // 4

    def done(seen):
        latest = {}
        for r in seen:
            st = msgspec.json.decode(r.value, type=messages.TwinState)
            latest[st.patient_id] = max(latest.get(st.patient_id, 0), st.readings_applied)
        return len(latest) == 4 and all(v == expected for v in latest.values())

    states = _consume(s, s.topic_twin_state, done, timeout=60)
    assert done(states), procs.log("worker")[-3000:]
    last = msgspec.json.decode(states[-1].value, type=messages.TwinState)
    assert last.estimate["hr"] is not None and last.battery == 1.0
    dead = _consume(s, s.topic_vitals_dlq, lambda seen: False, timeout=2)
    assert dead == []


def test_poison_between_good_readings_never_stops_the_worker(settings_factory, procs):
    """The messages that stopped a worker (and every restart after it) before: each is a dead
    letter, and every good reading around them is applied exactly once."""
    from streams import fhir

    s, env, port = _worker(settings_factory, procs)
    now = time.time()

    def good(pid: str, seq: int) -> bytes:
        return messages.encode(messages.reading(f"D-{pid}", pid, seq,
                                                messages.utc(now - 200 + seq), {"hr": 70.0}))

    def doc(pid: str, **change) -> bytes:
        d = json.loads(good(pid, 1))
        d.update(change)
        return json.dumps(d).encode()

    bad_fhir = fhir.encode_reading("D-P1", "P1", 1, "2026-01-01T00:00:00Z", {"hr": 70.0})
    for e in bad_fhir["entry"]:
        e["resource"]["identifier"][0]["value"] = "D-P1:²"
    poison = {  # kind -> message (key P1 .. P3)
        "wrong_type": doc("P1", seq=2**64 - 1),
        "ts_out_of_range": doc("P2", ts="2100-01-01T00:00:00Z"),
        "not_json": good("P3", 1).replace(b'"value":70.0', b'"value":NaN'),
        "oversized": b"[" * 300_000,
    }
    poison_fhir = json.dumps(bad_fhir).encode()
    admit(s, {pid: f"D-{pid}" for pid in ("P1", "P2", "P3")})
    p = KafkaProducer(**kafka_python_producer_config(s))
    sent_bad: Counter = Counter()
    for seq in range(1, 31):
        for pid in ("P1", "P2", "P3"):
            p.send(s.topic_vitals_raw, key=pid.encode(), value=good(pid, seq))
        if seq % 3 == 0:
            for (kind, value), key in zip(poison.items(), (b"P1", b"P2", b"P3", b"P1"),
                                          strict=True):
                p.send(s.topic_vitals_raw, key=key, value=value)
                sent_bad[kind] += 1
            p.send(s.topic_vitals_raw, key=b"P1", value=poison_fhir)
            sent_bad["wrong_type"] += 1
            p.send(s.topic_vitals_raw, key=b"P1", value=b"\xff\xfe" + good("P1", seq))
            sent_bad["not_json"] += 1
    # near Kafka's 1 MB limit: its dead letter, whole and in base64, was refused by Kafka and
    # the worker exited on it at every restart
    p.send(s.topic_vitals_raw, key=b"P2", value=b"x" * 900_000)
    sent_bad["oversized"] += 1
    p.flush()
    p.close()

    def done(seen):
        latest: dict[str, int] = {}
        for r in seen:
            st = msgspec.json.decode(r.value, type=messages.TwinState)
            latest[st.patient_id] = max(latest.get(st.patient_id, 0), st.readings_applied)
        return latest == {"P1": 30, "P2": 30, "P3": 30}

    states = _consume(s, s.topic_twin_state, done, timeout=60)
    assert done(states), procs.log("worker")[-3000:]
    total = sum(sent_bad.values())
    dead = _consume(s, s.topic_vitals_dlq, lambda seen: len(seen) >= total, timeout=30)
    letters = [msgspec.json.decode(r.value, type=messages.DeadLetter) for r in dead]
    assert Counter(d.kind for d in letters) == sent_bad
    (big,) = [d for d in letters if "of 900000 bytes" in d.reason]
    assert big.original == b"x" * DEAD_LETTER_ORIGINAL_MAX
    assert procs.items[0].poll() is None, procs.log("worker")[-3000:]  # still running
    final = [msgspec.json.decode(r.value, type=messages.TwinState) for r in states]
    assert max(st.duplicates for st in final) == 0  # each good reading applied once
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert re.search(r'^patient_twin_rejected_readings_total{cause="ts_out_of_range"} '
                     rf'{sent_bad["ts_out_of_range"]}\.0$', text, re.M), text[-2000:]


def test_only_admitted_patients_and_paired_devices_feed_twins(settings_factory, procs):
    s, env, port = _worker(settings_factory, procs)
    admit(s, {"P1": "D1"})
    now = time.time()

    def reading(pid: str, dev: str, seq: int = 1) -> bytes:
        return messages.encode(messages.reading(dev, pid, seq, messages.utc(now - 60 + seq),
                                                {"hr": 70.0}))

    p = KafkaProducer(**kafka_python_producer_config(s))
    p.send(s.topic_vitals_raw, key=b"P1", value=reading("P1", "D1"))
    p.send(s.topic_vitals_raw, key=b"P1", value=reading("P1", "D-OTHER"))  # not paired to P1
    unknown = [f"X{i:05d}" for i in range(500)]  # ids nobody admitted
    for pid in unknown:
        p.send(s.topic_vitals_raw, key=pid.encode(), value=reading(pid, f"D{pid}"))
    p.flush()
    # admitted with its device just before its first reading: applied, not refused
    admit(s, {"P2": "D2"})
    p.send(s.topic_vitals_raw, key=b"P2", value=reading("P2", "D2"))
    p.send(s.topic_vitals_raw, key=b"P1", value=reading("P1", "D1", 2))
    p.flush()
    p.close()

    dead = _consume(s, s.topic_vitals_dlq, lambda seen: len(seen) >= 501, timeout=60)
    letters = [msgspec.json.decode(r.value, type=messages.DeadLetter) for r in dead]
    assert Counter(d.kind for d in letters) == {"unknown_patient": 500, "unpaired_device": 1}
    assert all("registry" in d.reason for d in letters)

    def applied(seen) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in seen:
            st = msgspec.json.decode(r.value, type=messages.TwinState)
            out[st.patient_id] = max(out.get(st.patient_id, 0), st.readings_applied)
        return out

    # P1's second state may wait for its turn (the state gate) after P2's first went out
    states = _consume(s, s.topic_twin_state,
                      lambda seen: applied(seen).get("P1") == 2 and "P2" in applied(seen),
                      timeout=30)
    # no twin for an unknown id; P1's reading from the unpaired device was never applied
    assert applied(states) == {"P1": 2, "P2": 1}, procs.log("worker")[-2000:]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'patient_twin_dead_letters_total{kind="unknown_patient"} 500.0' in text
