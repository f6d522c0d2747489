"""`patient-twin simulate` and `replay` through the real broker and into files."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
from kafka import KafkaConsumer

from devices import truth
from devices.records import read
from streams import messages, topics
from streams.config import kafka_python_config
from tests.conftest import ROOT, settings_env
from twin.channels import NAMES

MIMIC = str(ROOT / "tests" / "data" / "mimic2-numerics" / "s25047-2704-05-04-10-44n")


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _consume(s, topic: str, expected: int, timeout: float = 60) -> list:
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", enable_auto_commit=False,
                             **kafka_python_config(s))
    seen: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(seen) < expected:
            for recs in consumer.poll(timeout_ms=300).values():
                seen.extend(recs)
        end = time.monotonic() + 2  # and nothing more than expected
        while time.monotonic() < end:
            for recs in consumer.poll(timeout_ms=300).values():
                seen.extend(recs)
    finally:
        consumer.close()
    return seen


def test_simulate_delivers_every_message_to_kafka_keyed_by_patient(settings_factory, tmp_path):
    s = settings_factory()
    topics.ensure(s)
    truth_file = tmp_path / "truth.jsonl"
    res = _cli("simulate", "--patients", "8", "--duration", "60", "--speed", "20",
               "--bad-fraction", "0.05", "--truth", str(truth_file), "--no-progress",
               env=settings_env(s))
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["errors"] == 0 and summary["patients"] == 8
    recs = _consume(s, s.topic_vitals_raw, summary["messages"])
    assert len(recs) == summary["messages"]
    bad = 0
    for r in recs:
        try:
            for reading in messages.decode_readings(r.value):
                assert r.key.decode() == reading.patient_id
        except messages.InvalidMessage:
            bad += 1
    assert bad == summary["malformed_total"] > 0
    tr = truth.read(str(truth_file))
    assert [t.patient_id for t in tr] == [f"P{i:05d}" for i in range(1, 9)]


def test_simulate_to_file_writes_messages_and_truth(tmp_path):
    out = tmp_path / "ward.jsonl"
    res = _cli("simulate", "--patients", "5", "--duration", "600", "--speed", "100000",
               "--to", str(out), "--seed", "4", "--no-progress")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    lines = out.read_bytes().splitlines()
    assert len(lines) == summary["messages"] > 2900
    tr = truth.read(str(tmp_path / "ward.truth.jsonl"))
    assert len(tr) == 5 and all(t.profile["spo2_scale"] in (1, 2) for t in tr)


def test_simulate_refuses_bad_arguments_in_one_line():
    for args, word in [(("--scenarios", "flu=1"), "unknown scenario"),
                       (("--bad-fraction", "1"), "--bad-fraction"),
                       (("--batch", "0"), "--batch")]:
        res = _cli("simulate", "--to", "/dev/null", "--duration", "1", *args)
        assert res.returncode == 2
        assert len(res.stderr.strip().splitlines()) == 1 and word in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


def test_replay_sends_the_mimic_record_unchanged_with_its_timing(settings_factory):
    rec = read(MIMIC)
    rows = ~np.isnan(rec.z).all(axis=1)
    s = settings_factory()
    topics.ensure(s)
    res = _cli("replay", MIMIC, "--speed", "1000000", "--no-progress", env=settings_env(s))
    assert res.returncode == 0, res.stderr
    recs = _consume(s, s.topic_vitals_raw, int(rows.sum()))
    assert len(recs) == rows.sum() == 72
    got = [messages.decode_readings(r.value)[0] for r in recs]
    got.sort(key=lambda r: r.seq)
    assert [r.seq for r in got] == list(range(1, 73))
    # Timing preserved (shifted to now), values exactly as recorded, zeros included.
    t = np.array([r.t for r in got])
    np.testing.assert_allclose(np.diff(t), np.diff(rec.t[rows]), atol=1e-3)
    assert abs(t[0] - time.time()) < 120
    zeros = 0
    for r, z in zip(got, rec.z[rows], strict=True):
        for j, ch in enumerate(NAMES):
            if np.isnan(z[j]):
                assert ch not in r.values
            else:
                assert r.values[ch] == z[j]
                zeros += z[j] == 0
    assert zeros > 0  # the monitor's sensor-off zeros pass through for the twin to judge


def test_replay_keep_time_and_speed(tmp_path):
    out = tmp_path / "replay.jsonl"
    t0 = time.monotonic()
    # the record spans 71 minutes: at 600x that is ~7 s of wall time
    res = _cli("replay", MIMIC, "--speed", "600", "--to", str(out), "--keep-time",
               "--no-progress")
    wall = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    rec = read(MIMIC)
    span = rec.t[-1] - rec.t[0]
    assert span / 600 - 1 < wall < span / 600 + 15
    first = messages.decode_readings(out.read_bytes().splitlines()[0])[0]
    assert first.t == rec.t[0]


def test_replay_of_a_missing_record_is_one_line(tmp_path):
    res = _cli("replay", str(tmp_path / "nope.csv"), "--to", str(tmp_path / "x.jsonl"))
    assert res.returncode == 2 and "no such file" in res.stderr
    assert "Traceback" not in res.stderr
