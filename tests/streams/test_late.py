"""Late readings through the real worker and broker: within WORKER_LATE_TOLERANCE_S a reading
delivered after later ones is applied in time order (across batches, through the twin table);
beyond it, it is counted late and skipped."""

from __future__ import annotations

import time

import msgspec
from kafka import KafkaProducer

from streams import messages
from streams.config import kafka_python_producer_config
from tests.conftest import admit, worker_metric
from tests.streams.test_dead_letters import _consume, _worker

PID = "P-LATE"


def _send(s, producer, seqs, t0):
    admit(s, {PID: "dev-late"})
    for k in seqs:
        msg = messages.reading("dev-late", PID, k, messages.utc(t0 + k),
                               {"hr": 70.0 + k % 7, "spo2": 96.0 + k % 3}, 0.9, 0.8)
        producer.send(s.topic_vitals_raw, key=PID.encode(), value=messages.encode(msg))
    producer.flush()


def _until_applied(s, n: int) -> messages.TwinState:
    def latest(seen):
        states = [msgspec.json.decode(r.value, type=messages.TwinState) for r in seen]
        return max(states, key=lambda st: (st.readings_applied, st.late), default=None)

    seen = _consume(s, s.topic_twin_state,
                    lambda seen: (st := latest(seen)) is not None and st.readings_applied >= n,
                    timeout=30)
    st = latest(seen)
    assert st is not None and st.readings_applied >= n
    return st


def test_late_reading_within_tolerance_is_applied_in_time_order(settings_factory, procs):
    s, _, port = _worker(settings_factory, procs)
    assert s.worker_late_tolerance_s == 30.0
    t0 = time.time() - 120
    producer = KafkaProducer(**kafka_python_producer_config(s))
    try:
        _send(s, producer, [k for k in range(1, 21) if k != 10], t0)
        first = _until_applied(s, 19)
        assert first.sequence_gaps == 1 and first.late == 0
        _send(s, producer, [10], t0)  # 10 s older than the twin: within the tolerance
        st = _until_applied(s, 20)
        assert (st.readings_applied, st.sequence_gaps, st.late, st.duplicates) == (20, 0, 0, 0)
        assert st.ts == messages.utc(t0 + 20)  # still the latest reading's time
        # a minute later, a reading 40 s older than the twin is beyond it: late, not applied
        _send(s, producer, range(21, 81), t0)
        _until_applied(s, 80)
        msg = messages.reading("dev-late", PID, 500, messages.utc(t0 + 40), {"hr": 150.0})
        producer.send(s.topic_vitals_raw, key=PID.encode(), value=messages.encode(msg))
        _send(s, producer, [81], t0)
        st = _until_applied(s, 81)
        assert (st.readings_applied, st.late) == (81, 1)
    finally:
        producer.close()
    assert worker_metric(port, "patient_twin_reordered_readings_total") == 1.0
    assert worker_metric(port, "patient_twin_late_readings_total") == 1.0
