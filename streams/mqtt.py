"""Devices over MQTT: a bridge from an MQTT broker (Mosquitto) into the ingest path.

Most wearables and IoT gateways speak MQTT. Each device connects to the site's Mosquitto with
its own user name (its device id) and password (the credential `patient-twin devices add`
issues, written hashed into MQTT_PASSWORD_FILE in Mosquitto's own format), over TLS, and
publishes its readings to `devices/<device id>/readings`; Mosquitto's ACL lets a device write
only its own topic (`pattern write devices/%u/readings`, docs/security.md). The bridge
(`patient-twin mqtt-bridge`) subscribes to `devices/+/readings` as its own user, runs the same
`streams.ingest.Gate` as the HTTPS endpoint (rate, decoding, own readings, paired patient),
sends what passes to `vitals.raw` and what does not to `vitals.dlq` with the reason (an MQTT
device gets no answer to read it from). A message is acknowledged to Mosquitto (QoS 1) only
once Kafka has it or its dead letter: a bridge that dies meanwhile gets it again. The bridge
does not wait for Kafka message by message: it sends on, and acknowledges each message, in the
order they came, when Kafka confirms it (`InOrderAcks`), so that on the embedded broker the
producer's linger (BROKER_LINGER_MS) puts many messages in one batch.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import logging
import os
import secrets
import shutil
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from streams import messages
from streams.config import Settings, kafka_python_producer_config
from streams.errors import ConfigError
from streams.ingest import Gate
from streams.registry import Registry

log = logging.getLogger("patient_twin.mqtt")

TOPIC = "devices/+/readings"
# Mosquitto 2's password hash: PBKDF2-HMAC-SHA512, 101 iterations, a 12-byte salt ("$7$",
# what mosquitto_passwd writes; checked against it in tests/streams/test_mqtt.py).
_ITERATIONS = 101


def password_line(user: str, password: str) -> str:
    """A line of a Mosquitto password file for `user`."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    return (f"{user}:$7${_ITERATIONS}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def set_passwords(path: str, users: dict[str, str]) -> None:
    """Set these users' passwords (user -> password) in the Mosquitto password file `path`
    (mode 600; written whole and renamed, so Mosquitto never reads half a file). Mosquitto
    reads it at start and on SIGHUP."""
    p = Path(path)
    kept = [line for line in (p.read_text().splitlines() if p.exists() else [])
            if line and line.split(":", 1)[0] not in users]
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join([*kept, *(password_line(u, pw) for u, pw in users.items())]) + "\n")
    os.replace(tmp, p)


def mosquitto_binary() -> str | None:
    """Mosquitto's executable (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def write_site(directory: Path, port: int, bridge_user: str,
               tls: tuple[str, str, str] | None) -> Path:
    """A Mosquitto configuration for devices in `directory`: a loopback listener on `port`
    (with `tls` = (CA, certificate, key): TLS; without, plain MQTT for development), no
    anonymous clients, the password file `passwd` beside it, and the ACL: devices may only
    publish to their own topic, the bridge may only read the device topics. Returns the
    configuration's path."""
    passwd, acl, conf = directory / "passwd", directory / "acl", directory / "mosquitto.conf"
    if not passwd.exists():
        set_passwords(str(passwd), {})
    acl.write_text(f"user {bridge_user}\ntopic read {TOPIC}\n\n"
                   "pattern write devices/%u/readings\n")
    lines = [f"listener {port} 127.0.0.1", f"password_file {passwd}", f"acl_file {acl}",
             "allow_anonymous false", "persistence false",
             # QoS 1 messages Mosquitto sends the bridge before it has their acknowledgements
             # (default 20): the bridge acknowledges each once Kafka has it, which on the
             # embedded broker is up to BROKER_LINGER_MS later, so 20 would cap it at 20 a linger
             "max_inflight_messages 1000",
             # started as root, Mosquitto would become user mosquitto, who cannot read our
             # private files
             f"user {getpass.getuser()}"]
    if tls is not None:
        ca, cert, key = tls
        lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
    conf.write_text("\n".join(lines) + "\n")
    return conf


class _Received:
    __slots__ = ("mid", "qos", "stored")

    def __init__(self, mid: int, qos: int) -> None:
        self.mid, self.qos = mid, qos
        self.stored: bool | None = None  # None: Kafka has not answered yet


class InOrderAcks:
    """Acknowledges QoS 1 MQTT messages in the order they came, each once it is stored.

    MQTT 3.1.1 (4.6) has a client send its PUBACKs in the order the PUBLISHes came, while Kafka
    confirms records a batch at a time, partitions in any order. `received` when a message comes
    (before it is sent on), `done` when Kafka has it (stored) or refused it; a refused message is
    passed over unacknowledged, so Mosquitto sends it again when the bridge reconnects.
    `ack(mid, qos)` is the MQTT client's; it is called under a lock, from any thread.
    """

    def __init__(self, ack: Callable[[int, int], object]) -> None:
        self._ack = ack
        self._lock = threading.Lock()
        self._queue: deque[_Received] = deque()

    def received(self, mid: int, qos: int) -> _Received:
        entry = _Received(mid, qos)
        with self._lock:
            self._queue.append(entry)
        return entry

    def done(self, entry: _Received, stored: bool) -> None:
        with self._lock:
            entry.stored = stored
            queue = self._queue
            while queue and queue[0].stored is not None:
                first = queue.popleft()
                if first.stored:
                    self._ack(first.mid, first.qos)

    @property
    def waiting(self) -> int:
        """Messages received and not yet acknowledged or passed over."""
        return len(self._queue)


def run_bridge(settings: Settings, stop: threading.Event,
               on_ready: Callable[[], None] | None = None) -> None:
    """Bridge MQTT_URL's device topics into Kafka until `stop` is set; `on_ready` once
    subscribed."""
    import paho.mqtt.client as mqtt
    from kafka import KafkaProducer

    if settings.mqtt_url is None:
        raise ConfigError("MQTT_URL is not set: say where the devices' MQTT broker is "
                          "(mqtts://host:8883)")
    url = urlsplit(settings.mqtt_url)
    if url.scheme not in ("mqtts", "mqtt") or not url.hostname:
        raise ConfigError(f"MQTT_URL={settings.mqtt_url}: expected mqtts://host:port")
    if url.scheme == "mqtt" and not settings.ingest_allow_http:
        raise ConfigError("MQTT_URL is plain mqtt://: readings are patient data; use mqtts://, "
                          "or set INGEST_ALLOW_HTTP=true for development on this machine")
    registry = Registry(settings).start("patient-twin-mqtt-registry")
    producer = KafkaProducer(client_id="patient-twin-mqtt-bridge", acks="all",
                             **kafka_python_producer_config(settings, streamed=True))
    gate = Gate(settings, registry)
    # A persistent session (clean_session False): what devices publish while the bridge is
    # down waits in Mosquitto, and a message it did not acknowledge comes again.
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="patient-twin-bridge",
                         clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
    acks = InOrderAcks(client.ack)
    password = settings.mqtt_password.get() if settings.mqtt_password else None
    client.username_pw_set(settings.mqtt_username, password)
    if url.scheme == "mqtts":
        client.tls_set(ca_certs=settings.mqtt_ca_file)

    def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("the MQTT broker refused the bridge (%s)", reason)
            return
        c.subscribe(TOPIC, qos=1)

    def on_subscribe(_c: Any, _u: Any, _mid: Any, _codes: Any, _p: Any) -> None:
        log.info("bridging MQTT %s into %s", TOPIC, settings.topic_vitals_raw)
        if on_ready is not None:
            on_ready()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        entry = acks.received(msg.mid, msg.qos)
        try:
            future = deliver(msg)
        except Exception as exc:  # noqa: BLE001 - not acknowledged: Mosquitto sends it again
            refused(exc)
            acks.done(entry, stored=False)
            return
        # on the producer's I/O thread once Kafka answers (at once if it has already)
        future.add_callback(lambda _meta: acks.done(entry, stored=True))
        future.add_errback(lambda exc: (refused(exc), acks.done(entry, stored=False)))

    def refused(exc: BaseException) -> None:
        log.warning("an MQTT message was not stored (%s); not acknowledged",
                    type(exc).__name__)

    def deliver(msg: Any) -> Any:
        """Send the message on (or its dead letter); the producer's future."""
        parts = msg.topic.split("/")
        device = parts[1] if len(parts) == 3 else ""
        v = gate.check(device, msg.payload)
        if v.status == 202:
            return producer.send(settings.topic_vitals_raw, key=v.patient.encode(),
                                 value=msg.payload)
        dead = messages.DeadLetter(reason=v.error, kind=v.kind, topic=f"mqtt:{msg.topic}",
                                   partition=-1, offset=msg.mid, received=datetime.now(UTC),
                                   original=msg.payload)
        return producer.send(settings.topic_vitals_dlq, key=device.encode() or None,
                             value=messages.encode(dead))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(url.hostname, url.port or (8883 if url.scheme == "mqtts" else 1883))
        client.loop_start()  # reconnects by itself
        stop.wait()
    finally:
        # what Kafka has by now is acknowledged while the connection is still up
        with contextlib.suppress(Exception):
            producer.flush(timeout=10)
        client.loop_stop()
        client.disconnect()
        producer.close(timeout=10)
        registry.stop()
