"""`patient-twin simulate`: drive a simulated ward in (scaled) real time into Kafka or a file.

Per tick: the cohort samples what is due (`devices.simulator`), the delivery layer decides each
message's fate (`devices.faults`), messages are encoded (one reading per message, or a gateway
upload of several), malformed messages are mixed in on request, and everything goes to a
`Producer` (Kafka) or a JSONL file. The ground truth is written at the end (`devices.truth`).
"""

from __future__ import annotations

import heapq
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import numpy as np

from devices import malformed, transport, truth
from devices.faults import Delivery, DeviceEffects
from devices.simulator import Cohort
from streams import fhir, messages
from streams.config import Settings, kafka_python_producer_config
from streams.errors import ConfigError
from streams.messages import PATIENT_SCHEMA, PatientRecord, utc
from twin.channels import NAMES


@dataclass
class SimulationStats:
    """What a simulation did. Every count is exact; the final summary prints them."""

    patients: int = 0
    ticks: int = 0
    messages: int = 0  # handed to the output, malformed and duplicates included
    readings: int = 0  # good readings generated (including lost ones)
    delivered_readings: int = 0  # good readings handed to the output at least once
    errors: int = 0  # delivery errors reported by the producer
    lost: int = 0  # simulated dropouts: messages never sent
    duplicates: int = 0
    late: int = 0
    artifacts: int = 0
    zeros: int = 0
    low_battery: int = 0
    dead_batteries: int = 0
    samples: Counter[str] = field(default_factory=Counter)  # channel -> samples generated
    refused: Counter[str] = field(default_factory=Counter)  # kind -> refused at the edge
    malformed: Counter[str] = field(default_factory=Counter)  # kind -> messages
    elapsed_s: float = 0.0  # simulated seconds
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if not isinstance(v, Counter)}
        d["samples"] = dict(sorted(self.samples.items()))
        d["malformed"] = dict(sorted(self.malformed.items()))
        d["refused"] = dict(sorted(self.refused.items()))
        d["malformed_total"] = sum(self.malformed.values())
        d["elapsed_s"] = round(self.elapsed_s, 3)
        d["wall_s"] = round(self.wall_s, 3)
        return d


class Output(Protocol):
    def send(self, key: bytes, value: bytes) -> None: ...
    def close(self) -> None: ...


class FileOutput:
    """Messages as lines of a JSONL file (one message per line, malformed ones included)."""

    def __init__(self, path: str) -> None:
        self.f = open(path, "wb")  # noqa: SIM115 - closed in close()

    def send(self, key: bytes, value: bytes) -> None:
        self.f.write(value + b"\n")

    def close(self) -> None:
        self.f.close()


class KafkaOutput:
    """kafka-python producer keyed by patient id: batching, compression, retries; delivery errors
    are counted, and close() flushes so nothing accepted is lost on Ctrl-C."""

    def __init__(self, settings: Settings, stats: SimulationStats, topic: str | None = None,
                 client_id: str = "patient-twin-simulator", **overrides: Any) -> None:
        """overrides: kafka-python producer settings over the project's (`bench devices
        --one-record-batches` measures the embedded broker's one-record-per-batch rule)."""
        from kafka import KafkaProducer

        self.topic = topic or settings.topic_vitals_raw
        self.stats = stats
        cfg = kafka_python_producer_config(settings, streamed=True)
        # a tick's messages go out together: 20 ms gathers them (on the embedded broker up to
        # BROKER_LINGER_MS, which it sets)
        cfg["linger_ms"] = max(20, cfg.get("linger_ms", 0))
        self.producer = KafkaProducer(**{
            "client_id": client_id, "acks": "all", "retries": 10, "retry_backoff_ms": 200,
            **cfg, **overrides})

    def _errback(self, exc: BaseException) -> None:
        self.stats.errors += 1

    def send(self, key: bytes, value: bytes) -> None:
        self.producer.send(self.topic, key=key, value=value).add_errback(self._errback)

    def close(self) -> None:
        self.producer.flush(timeout=60)
        self.producer.close(timeout=10)


class StopFlag:
    """A signal handler that only records that a stop was asked for."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: object) -> None:
        self.requested = True


_encoder = msgspec.json.Encoder()


class Ward:
    """A cohort, its devices' delivery faults, and the message encoder: one `step` per tick."""

    def __init__(self, patients: int, *, seed: int, rate: float, mix: str, horizon_s: float,
                 start: float, effects: DeviceEffects, bad_fraction: float = 0.0,
                 batch: int = 1, fmt: str = "json", pace: float = 1.0) -> None:
        self.cohort = Cohort(patients, seed=seed, mix=mix, horizon_s=horizon_s, start=start,
                             rate=rate, effects=effects, pace=pace)
        # Separate streams so that faults and malformed messages never change the physiology.
        self.delivery = Delivery(patients, effects, np.random.default_rng([seed, 1]))
        self.bad_rng = np.random.default_rng([seed, 2])
        self.bad_fraction = bad_fraction
        self.batch = batch
        self.fmt = fmt
        self.dt = 1.0 / rate
        self.seq = np.zeros(patients, dtype=np.int64)
        self.keys = [p.encode() for p in self.cohort.patient_ids]
        self.pending: list[list[messages.Reading]] = [[] for _ in range(patients)]
        self.late: list[tuple[float, int, bytes, bytes]] = []  # heap of (release t, n, key, msg)
        self._n = 0
        self.t = 0.0
        self.stats = SimulationStats(patients=patients)

    def step(self, out: Output) -> None:
        """Advance one tick and send what the devices deliver at this simulated time."""
        st = self.stats
        t = self.t
        tick = self.cohort.tick(t)
        fate = self.delivery.step(t, self.dt)
        st.ticks += 1
        st.low_battery = int((~np.isnan(self.delivery.low_at)).sum())
        st.dead_batteries = int((~np.isnan(self.delivery.empty_at)).sum())
        due = tick.due & fate.alive[:, None]
        sending = due.any(axis=1)
        st.artifacts += int((tick.artifact & due).sum())
        st.zeros += int((tick.zero & due).sum())
        for j, ch in enumerate(NAMES):
            st.samples[ch] += int(due[:, j].sum())
        idx = np.nonzero(sending)[0]
        self.seq[idx] += 1
        start = self.cohort.start
        ts_epoch = start + t + self.delivery.skew_s
        quality = np.where(tick.active, 0.8, 0.95)  # optical sensors lose quality in motion
        battery = np.round(self.delivery.battery, 3)
        values = tick.values
        for i in idx:
            row = values[i]
            vals = {ch: float(row[j]) for j, ch in enumerate(NAMES) if row[j] == row[j]}
            r = messages.reading(self.cohort.device_ids[i], self.cohort.patient_ids[i],
                                 int(self.seq[i]), messages.utc(float(ts_epoch[i])), vals,
                                 quality=float(quality[i]), battery=float(battery[i]))
            st.readings += 1
            pend = self.pending[i]
            pend.append(r)
            if len(pend) < self.batch:
                continue
            self.pending[i] = []
            if fate.lost[i]:
                st.lost += len(pend)
                continue
            body = self._encode(pend)
            st.delivered_readings += len(pend)
            if fate.delay_s[i] > 0:
                st.late += 1
                self._n += 1
                heapq.heappush(self.late, (t + fate.delay_s[i], self._n, self.keys[i], body))
            else:
                self._send(out, self.keys[i], body)
            if fate.duplicate[i]:
                st.duplicates += 1
                self._send(out, self.keys[i], body)
        while self.late and self.late[0][0] <= t:
            _, _, key, body = heapq.heappop(self.late)
            self._send(out, key, body)
        self._malformed(out, len(idx), start + t)
        self.t += self.dt
        st.elapsed_s = self.t

    def _encode(self, readings: list[messages.Reading]) -> bytes:
        """One message: a reading, a gateway array, or (FHIR) one Bundle of Observations."""
        if self.fmt == "fhir":
            entries = []
            for r in readings:
                ts = r.ts.isoformat().replace("+00:00", "Z")
                vals = {ch: q.value for ch, q in r.values.items()}
                entries += fhir.encode_reading(r.device_id, r.patient_id, r.seq, ts, vals,
                                               r.quality, r.battery)["entry"]
            return _encoder.encode({"resourceType": "Bundle", "type": "collection",
                                    "entry": entries})
        return _encoder.encode(readings[0] if len(readings) == 1 else readings)

    def _send(self, out: Output, key: bytes, body: bytes) -> None:
        out.send(key, body)
        self.stats.messages += 1

    def _malformed(self, out: Output, good: int, now: float) -> None:
        """Mix in malformed messages so they make up `bad_fraction` of all messages."""
        f = self.bad_fraction
        if f <= 0 or good == 0:
            return
        k = int(self.bad_rng.binomial(good, f / (1.0 - f)))
        kinds = list(malformed.KINDS)
        ts = messages.utc(now).isoformat().replace("+00:00", "Z")
        for _ in range(k):
            kind = kinds[int(self.bad_rng.integers(len(kinds)))]
            i = int(self.bad_rng.integers(self.cohort.n))
            body = malformed.make(kind, self.bad_rng, patient_id=self.cohort.patient_ids[i],
                                  device_id=self.cohort.device_ids[i], seq=int(self.seq[i]),
                                  ts=ts)
            self._send(out, self.keys[i], body)
            self.stats.malformed[kind] += 1

    def finish(self, out: Output) -> None:
        """Deliver what the gateways still hold: partial uploads and late messages."""
        for i, pend in enumerate(self.pending):
            if pend:
                body = self._encode(pend)
                self.stats.delivered_readings += len(pend)
                self._send(out, self.keys[i], body)
                self.pending[i] = []
        while self.late:
            _, _, key, body = heapq.heappop(self.late)
            self._send(out, key, body)


def truth_path(to: list[str]) -> str | None:
    """Default ground-truth file: next to the first JSONL output; none without one (--truth)."""
    files = [t for t in to if t != "kafka" and not transport.is_device_transport(t)]
    if not files:
        return None
    return (files[0][:-6] if files[0].endswith(".jsonl") else files[0]) + ".truth.jsonl"


def open_output(settings: Settings, to: list[str], cohort: Cohort, stats: SimulationStats,
                counts: transport.DeviceCounts, credentials: str | None,
                ca_file: str | None) -> Output:
    """The output(s) `to` names; patients are spread over several round-robin."""
    devices: dict[bytes, tuple[str, str]] = {}
    if any(transport.is_device_transport(t) for t in to):
        for t in to:
            if transport.is_device_transport(t):
                transport.check_url(t, settings.ingest_allow_http)
        if credentials is None:
            raise ConfigError("--to https:// or mqtts:// sends as the devices: give "
                              "--credentials FILE (their credentials; devices not in it are "
                              "enrolled, which needs DEVICES_FILE)")
        tokens = transport.load_credentials(credentials, settings, cohort.device_ids)
        devices = {p.encode(): (d, tokens[d])
                   for p, d in zip(cohort.patient_ids, cohort.device_ids, strict=True)}
    outs: list[Output] = []
    try:
        for t in to:
            scheme = t.split("://", 1)[0]
            if t == "kafka":
                outs.append(KafkaOutput(settings, stats))
            elif scheme in ("http", "https"):
                outs.append(transport.HttpOutput(t, devices, counts, ca_file))
            elif scheme in ("mqtt", "mqtts"):
                outs.append(transport.MqttOutput(t, devices, counts, ca_file))
            else:
                outs.append(FileOutput(t))
    except BaseException:
        for o in outs:
            o.close()
        raise
    if len(outs) == 1:
        return outs[0]
    return transport.SplitOutput(outs, [p.encode() for p in cohort.patient_ids])


def admission_records(cohort: Cohort, wards: list[str], now: float) -> list[PatientRecord]:
    """Admit the cohort round-robin to `wards` (beds numbered per ward), each patient with their
    device, on the NEWS2 SpO2 scale their profile prescribes (scale 2 for hypercapnic COPD)."""
    out = []
    for i, pid in enumerate(cohort.patient_ids):
        out.append(PatientRecord(
            schema=PATIENT_SCHEMA, patient_id=pid, event="admit", ts=utc(now),
            ward=wards[i % len(wards)], bed=str(i // len(wards) + 1),
            devices=[cohort.device_ids[i]], spo2_scale=int(cohort.profiles.spo2_scale[i]),
            spo2_scale_set_by="simulator", by="simulator"))
    return out


def pairing_records(pairs: Iterable[tuple[str, str]], ward: str, by: str,
                    now: float) -> list[PatientRecord]:
    """Admit each (patient id, device id) to `ward` with that device paired (for replayed
    records, benchmarks and tests: the worker applies readings only of admitted patients from
    paired devices)."""
    return [PatientRecord(schema=PATIENT_SCHEMA, patient_id=pid, event="admit", ts=utc(now),
                          ward=ward, devices=[dev], by=by) for pid, dev in pairs]


def admit(settings: Settings, records: list[PatientRecord]) -> None:
    """Write admissions to the registry topic and wait until the broker has them."""
    from kafka import KafkaProducer

    producer = KafkaProducer(client_id="patient-twin-simulator-admit", acks="all",
                             **kafka_python_producer_config(settings))
    try:
        for rec in records:
            producer.send(settings.topic_patients, key=rec.patient_id.encode(),
                          value=_encoder.encode(rec))
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)


def simulate(settings: Settings, *, patients: int, rate: float, duration: float | None,
             speed: float, seed: int, to: str | list[str], mix: str | None = None,
             bad_fraction: float = 0.0, batch: int = 1, fmt: str = "json",
             truth_file: str | None = None, wards: list[str] | None = None,
             effects: DeviceEffects | None = None, start: float | None = None,
             credentials: str | None = None, ca_file: str | None = None,
             pace: float = 1.0, progress: bool = True) -> SimulationStats:
    """Run until `duration` simulated seconds have passed (None: until SIGINT/SIGTERM).

    to: "kafka", a FILE.jsonl, or the devices' transports (https://.../ingest, mqtts://...,
    devices.transport, with the devices' `credentials` file and the servers' `ca_file`); with
    several, patients are spread over them round-robin."""
    from devices.scenarios import DEFAULT_MIX

    wall0 = time.time()
    ward = Ward(patients, seed=seed, rate=rate, mix=mix or DEFAULT_MIX,
                horizon_s=duration or 7200.0, start=wall0 if start is None else start,
                effects=effects or DeviceEffects(), bad_fraction=bad_fraction, batch=batch,
                fmt=fmt, pace=pace)
    stats = ward.stats
    targets = [to] if isinstance(to, str) else list(to)
    counts = transport.DeviceCounts()
    out = open_output(settings, targets, ward.cohort, stats, counts, credentials, ca_file)
    if wards and any(t == "kafka" or transport.is_device_transport(t) for t in targets):
        # the devices' patients are admitted and paired, as a clinician would
        admit(settings, admission_records(ward.cohort, wards, time.time()))
    stop = StopFlag()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.monotonic()
    last_report = t0
    try:
        while not stop.requested and (duration is None or ward.t < duration):
            ward.step(out)
            # Simulated time runs `speed` times faster than the wall clock.
            lag = t0 + ward.t / speed - time.monotonic()
            if lag > 0:
                time.sleep(lag)
            now = time.monotonic()
            if progress and now - last_report >= 2.0:
                print(f"simulate: t={ward.t:.0f}s sent={stats.messages} "
                      f"rate={stats.messages / max(now - t0, 1e-9):.0f}/s "
                      f"errors={stats.errors}", file=sys.stderr, flush=True)
                last_report = now
        ward.finish(out)
    finally:
        # Flush on every exit path so nothing the producer accepted is lost.
        out.close()
        for s, h in old.items():
            signal.signal(s, h)
        stats.errors += counts.errors
        stats.refused.update(counts.refused)
    stats.wall_s = time.monotonic() - t0
    path = truth_file or truth_path(targets)
    if path:
        truth.write(path, truth.compute(ward.cohort, ward.t, ward.delivery))
    return stats
