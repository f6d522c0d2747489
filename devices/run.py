"""`patient-twin simulate`: drive a `Cohort` in (scaled) real time into Kafka or a JSONL file."""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from devices.simulator import Cohort
from streams import messages
from streams.config import Settings, kafka_python_producer_config
from twin.channels import NAMES


@dataclass
class SimulationStats:
    sent: int = 0
    errors: int = 0
    patients: int = 0


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: object) -> None:
        self.requested = True


def _messages(cohort: Cohort, start: float, elapsed: float, dt: float) -> list[tuple[bytes, bytes]]:
    values, due = cohort.tick(elapsed, dt)
    t = start + elapsed
    ts = messages.utc(t)
    out = []
    for i in np.nonzero(due)[0]:
        row = values[i]
        vals = {ch: float(row[j]) for j, ch in enumerate(NAMES) if not np.isnan(row[j])}
        msg = messages.reading(cohort.device_ids[i], cohort.patient_ids[i], int(cohort.seq[i]),
                               ts, vals, quality=0.95, battery=round(float(cohort.battery[i]), 3))
        out.append((cohort.patient_ids[i].encode(), messages.encode(msg)))
    return out


def simulate(settings: Settings, *, patients: int, rate: float, duration: float | None,
             speed: float, seed: int, to: str, progress: bool = True) -> SimulationStats:
    """Run until `duration` simulated seconds have passed (None: until SIGINT/SIGTERM)."""
    cohort = Cohort(patients, seed=seed)
    stats = SimulationStats(patients=patients)
    stop = _Stop()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    producer = None
    out: BinaryIO | None = None
    if to == "kafka":
        from kafka import KafkaProducer

        producer = KafkaProducer(client_id="patient-twin-simulator", linger_ms=20,
                                 retries=5, acks=1, **kafka_python_producer_config(settings))
    else:
        out = open(to, "wb")  # noqa: SIM115 - closed in finally

    def errback(exc: BaseException) -> None:
        stats.errors += 1

    dt = 1.0 / rate
    start_wall = time.time()
    t0 = time.monotonic()
    last_report = t0
    elapsed = 0.0
    try:
        while not stop.requested and (duration is None or elapsed < duration):
            for key, value in _messages(cohort, start_wall, elapsed, dt):
                if producer is not None:
                    producer.send(settings.topic_vitals_raw, key=key, value=value).add_errback(
                        errback)
                else:
                    assert out is not None
                    out.write(value + b"\n")
                stats.sent += 1
            elapsed += dt
            # Simulated time runs `speed` times faster than the wall clock.
            lag = t0 + elapsed / speed - time.monotonic()
            if lag > 0:
                time.sleep(lag)
            now = time.monotonic()
            if progress and now - last_report >= 2.0:
                rate_now = stats.sent / max(now - t0, 1e-9)
                print(f"simulate: sent={stats.sent} rate={rate_now:.0f}/s errors={stats.errors}",
                      file=sys.stderr, flush=True)
                last_report = now
    finally:
        # Flush on every exit path so nothing the producer accepted is lost.
        if producer is not None:
            producer.flush(timeout=30)
            producer.close(timeout=10)
        if out is not None:
            out.close()
        for s, h in old.items():
            signal.signal(s, h)
    return stats
