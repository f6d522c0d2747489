"""`patient-twin ingest`: device readings over HTTP(S), each device with its own credential.

`POST /ingest` with `Authorization: Bearer <device token>` (issued by `patient-twin devices add
DEVICE_ID`, stored hashed in DEVICES_FILE) and a body in the project's reading schema (one
reading or a gateway's array) or FHIR R4 (an Observation or a Bundle): the same decoding and
checks the worker runs (streams/messages.py, streams/fhir.py). Then, before anything is written:

- every reading must be the authenticated device's own (`device_id`, the FHIR device reference);
- all of one patient, who is admitted and has this device paired in the registry;
- at most INGEST_RATE_PER_DEVICE messages a second per device (a burst of twice that).

202 `{"accepted": n}` once Kafka has the message on `vitals.raw` (key = the patient id): a
device may forget it then. 4xx with `{"error", "kind"}` says why nothing was written: 400 an
invalid message, 401 no or a wrong credential, 403 another device's or an unpaired patient's
readings, 413 too large, 429 too fast (with Retry-After); 503 when Kafka did not take it (send
again). The worker checks everything again: this is the edge, not the only gate.

Plain http only with INGEST_ALLOW_HTTP (development); otherwise `--cert/--key` serve TLS, and
`--client-ca` additionally asks devices for a client certificate signed by that CA.
"""

from __future__ import annotations

import logging
import math
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify, request

from streams import messages
from streams.config import Settings, kafka_python_producer_config
from streams.credentials import CredentialFile, issue
from streams.errors import ConfigError, InvalidMessage
from streams.registry import Registry

log = logging.getLogger("patient_twin.ingest")


def add_device(path: str, device_id: str) -> str:
    """Issue the credential of device `device_id` (printed once; its hash kept in `path`)."""
    return issue(path, {"device_id": check_device_id(device_id)})


def check_device_id(device_id: str) -> str:
    try:
        return messages.check_id(device_id, "device id")
    except InvalidMessage as exc:
        raise ConfigError(f"DEVICE_ID: {exc}") from None


class RateLimit:
    """A token bucket per key: `rate` a second, bursts of `burst`; at most `max_keys` buckets
    (the least recently used dropped), so unknown keys cannot fill memory."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, key: str, now: float) -> float:
        """0 if `key` may go now (and it is counted), else the seconds until it may."""
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            ok = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return 0.0 if ok else (1.0 - tokens) / self.rate


@dataclass(frozen=True)
class Verdict:
    """What the edge decided about one device message: `status` 202 with the `patient` it is
    for and how many readings, or a 4xx `status` with the `kind` and reason (`error`)."""

    status: int
    kind: str = ""
    error: str = ""
    patient: str = ""
    readings: int = 0
    retry_after_s: float = 0.0


class Gate:
    """The checks every transport runs on a device's message before Kafka sees it (HTTPS
    here, MQTT in streams.mqtt): rate, decoding as the worker does, own readings only, one
    paired patient."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.limit = RateLimit(settings.ingest_rate_per_device,
                               2 * settings.ingest_rate_per_device)

    def check(self, device: str, body: bytes) -> Verdict:
        s = self.settings
        wait = self.limit.wait(device, time.monotonic())
        if wait:
            return Verdict(429, "rate_limited", "too many messages from this device",
                           retry_after_s=wait)
        try:
            readings = messages.decode_readings(body, s.ingest_max_message_bytes,
                                                s.ingest_max_readings)
            now = time.time()
            for r in readings:
                messages.check_window(r.t, now, s.ingest_ts_max_age_s, s.ingest_ts_max_ahead_s)
        except InvalidMessage as exc:
            return Verdict(413 if exc.kind == "oversized" else 400, exc.kind, str(exc)[:500])
        if any(r.device_id != device for r in readings):
            return Verdict(403, "wrong_device", "a device may send only its own readings")
        patients = {r.patient_id for r in readings}
        if len(patients) != 1:
            return Verdict(400, "wrong_key", "one message holds one patient's readings")
        (patient,) = patients
        if not self._paired(patient, device):
            # Pairing travels through the registry topic, so a device paired a moment ago can
            # be ahead of this process's view: read the registry up to now once before
            # refusing (at most one read a second: the rate limit above bounds the waits).
            self.registry.sync(timeout=2.0)
            if not self._paired(patient, device):
                # the same answer whether the patient exists or not: nothing to learn
                return Verdict(403, "unpaired_device",
                               "this device is not paired with this patient")
        return Verdict(202, patient=patient, readings=len(readings))

    def _paired(self, patient: str, device: str) -> bool:
        rec = self.registry.get(patient)
        return self.registry.paired(patient) is not None and rec is not None \
            and device in rec.devices


def _refuse(status: int, kind: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": message, "kind": kind}), status


def create_app(settings: Settings, devices: CredentialFile, registry: Registry,
               producer: Any) -> Flask:
    """The ingest endpoint over these credentials, this registry view and this kafka-python
    producer (the caller starts and stops them)."""
    app = Flask("patient-twin-ingest")
    app.config["MAX_CONTENT_LENGTH"] = settings.ingest_max_message_bytes  # 413 beyond
    gate = Gate(settings, registry)

    @app.after_request
    def no_store(resp: Response) -> Response:
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(413)
    def too_large(_: Exception) -> tuple[Response, int]:
        return _refuse(413, "oversized", f"a message may hold at most "
                                         f"{settings.ingest_max_message_bytes} bytes")

    @app.post("/ingest")
    def ingest() -> tuple[Response, int]:
        holder = devices.find(request.headers.get("Authorization"))
        if holder is None:
            resp, status = _refuse(401, "unauthenticated",
                                   "a device credential is required (Authorization: Bearer)")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="patient-twin-ingest"'
            return resp, status
        body = request.get_data(cache=False)
        v = gate.check(holder["device_id"], body)
        if v.status != 202:
            resp, status = _refuse(v.status, v.kind, v.error)
            if v.retry_after_s:
                resp.headers["Retry-After"] = str(math.ceil(v.retry_after_s))
            return resp, status
        try:
            producer.send(settings.topic_vitals_raw, key=v.patient.encode(),
                          value=body).get(timeout=10)
        except Exception as exc:  # noqa: BLE001 - any Kafka failure: the device sends again
            log.warning("Kafka did not take a message (%s)", type(exc).__name__)
            return _refuse(503, "unavailable", "not stored: send again")
        return jsonify({"accepted": v.readings}), 202

    return app


def tls_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """TLS 1.2+ with this certificate; with `client_ca`, devices must show a certificate
    signed by it (mutual TLS) besides their bearer credential."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def serve(settings: Settings, cert: str | None = None, key: str | None = None,
          client_ca: str | None = None, on_ready: Callable[[str], None] | None = None,
          stop: threading.Event | None = None) -> None:
    """Serve the ingest endpoint on INGEST_HOST:INGEST_PORT until `stop` is set; `on_ready` is
    told its URL once it listens."""
    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter
    from kafka import KafkaProducer

    if settings.devices_file is None:
        raise ConfigError("DEVICES_FILE is not set: say where device credential hashes live "
                          "(`patient-twin devices add DEVICE_ID`)")
    if (cert is None) != (key is None):
        raise ConfigError("--cert and --key go together")
    if cert is None and not settings.ingest_allow_http:
        raise ConfigError("device readings are patient data: give --cert and --key, or set "
                          "INGEST_ALLOW_HTTP=true for development on this machine")
    registry = Registry(settings).start("patient-twin-ingest-registry")
    producer = KafkaProducer(client_id="patient-twin-ingest", acks="all",
                             **kafka_python_producer_config(settings, streamed=True))
    app = create_app(settings, CredentialFile(settings.devices_file), registry, producer)
    server = wsgi.Server((settings.ingest_host, settings.ingest_port), app,
                         numthreads=settings.ingest_threads, server_name="patient-twin-ingest")
    if cert is not None and key is not None:
        adapter = BuiltinSSLAdapter(cert, key, certificate_chain=client_ca)
        adapter.context = tls_context(cert, key, client_ca)
        server.ssl_adapter = adapter
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True, name="ingest-http")
    thread.start()
    if on_ready is not None:
        scheme = "https" if cert else "http"
        on_ready(f"{scheme}://{settings.ingest_host}:{settings.ingest_port}/ingest")
    try:
        (stop or threading.Event()).wait()
    finally:
        server.stop()
        producer.close(timeout=10)
        registry.stop()
