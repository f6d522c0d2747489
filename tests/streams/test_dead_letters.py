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
from tests.conftest import ROOT, settings_env, wait_for_stable_assignment


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
