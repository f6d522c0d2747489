"""Devices over MQTT, tried as devices and attackers would: a real Mosquitto over TLS with a CA
made here, per-device passwords, its ACL, the bridge, the real broker and a real worker. A wrong
password is refused; a right one becomes a twin; a device cannot publish as another, nor send
readings of an unpaired patient (dead-lettered with the reason)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import msgspec
import paho.mqtt.client as mqtt
import pytest

from devices.faults import DeviceEffects
from devices.run import simulate
from devices.simulator import device_ids
from devices.transport import load_credentials
from streams import supervise, topics
from streams.config import Secret
from streams.enrol import enrol
from streams.errors import ConfigError
from streams.mqtt import (
    InOrderAcks,
    mosquitto_binary,
    password_line,
    run_bridge,
    set_passwords,
    write_site,
)
from tests.conftest import admit, settings_env, wait_for_stable_assignment, wait_until
from tests.streams.test_ingest import _cert, _reading, _serve
from tests.streams.test_webhooks import _consume

pytestmark = [pytest.mark.broker, pytest.mark.slow]
MOSQUITTO = mosquitto_binary() or "mosquitto"


def test_password_lines_are_what_mosquitto_passwd_writes(tmp_path):
    """Same format and hash as Mosquitto's own tool (so Mosquitto accepts them)."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([tool, "-c", "-b", str(tmp_path / "pw"), "d1", "s3cret"], check=True)
    import base64
    import hashlib

    theirs = (tmp_path / "pw").read_text().strip()
    _, _, it, salt, digest = theirs.split(":", 1)[1].split("$")
    assert base64.b64encode(hashlib.pbkdf2_hmac(
        "sha512", b"s3cret", base64.b64decode(salt), int(it))).decode() == digest
    ours = password_line("d1", "s3cret")
    assert ours.split("$")[:3] == theirs.split("$")[:3]  # user, $7$, iterations


def _publish(port: int, ca: Path, user: str, password: str, topic: str, payload: bytes
             ) -> mqtt.ReasonCode | None:
    """Connect as a device, publish once at QoS 1; the CONNACK's reason if refused."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.time()}",
                    protocol=mqtt.MQTTv311)
    c.username_pw_set(user, password)
    c.tls_set(ca_certs=str(ca))
    result: dict = {}
    connected = threading.Event()

    def on_connect(_c, _u, _f, reason, _p) -> None:  # noqa: ANN001
        result["reason"] = reason
        connected.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        assert connected.wait(10)
        if result["reason"].is_failure:
            return result["reason"]
        c.publish(topic, payload, qos=1).wait_for_publish(10)
        return None
    finally:
        c.loop_stop()
        c.disconnect()


@pytest.fixture
def site(settings_factory, tmp_path: Path, procs):
    ca = _cert(tmp_path / "ca", "test CA", ca=True)
    _cert(tmp_path / "server", "127.0.0.1", issuer=ca, ip="127.0.0.1")
    port = supervise.free_port()
    passwd = tmp_path / "passwd"
    s = settings_factory(devices_file=str(tmp_path / "devices.jsonl"),
                         mqtt_url=f"mqtts://127.0.0.1:{port}",
                         mqtt_ca_file=str(tmp_path / "ca.pem"),
                         mqtt_password=Secret("bridge password 123"),
                         mqtt_password_file=str(passwd), ingest_rate_per_device=50.0)
    topics.ensure(s)
    tokens = enrol(s, ["D1", "D2"])
    set_passwords(str(passwd), {s.mqtt_username: "bridge password 123"})
    conf = write_site(tmp_path, port, s.mqtt_username, tls=(
        str(tmp_path / "ca.pem"), str(tmp_path / "server.pem"), str(tmp_path / "server.key")))
    log = open(tmp_path / "mosquitto.log", "wb")  # noqa: SIM115 - closed with the broker
    broker = supervise.spawn([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
    assert wait_until(lambda: not supervise.port_free(port), timeout=10), \
        (tmp_path / "mosquitto.log").read_text()
    mport = supervise.free_port()
    procs.start("worker", "worker", env={**settings_env(s), "WORKER_METRICS_PORT": str(mport)})
    wait_for_stable_assignment(mport, s.kafka_partitions, "")
    admit(s, {"P1": "D1"})
    stop, ready = threading.Event(), threading.Event()
    bridge = threading.Thread(target=run_bridge, args=(s, stop, ready.set), daemon=True)
    bridge.start()
    assert ready.wait(30), "the bridge did not subscribe"
    time.sleep(2)  # the bridge's registry view reads the admission
    try:
        yield s, port, tmp_path / "ca.pem", tokens, broker
    finally:
        stop.set()
        bridge.join(15)
        broker.terminate()
        broker.wait(10)
        log.close()


def test_mqtt_devices_in_wrong_passwords_and_impostors_out(site):
    s, port, ca, tokens, _ = site
    refused = _publish(port, ca, "D1", "wrong password", "devices/D1/readings",
                       _reading("D1", "P1", 1))
    assert refused is not None and refused.is_failure
    assert _publish(port, ca, "D1", tokens["D1"], "devices/D1/readings",
                    _reading("D1", "P1", 1)) is None
    # a right password becomes a twin
    def twin() -> list:
        return [json.loads(m.value) for m in _consume(s, s.topic_twin_state, 100, timeout=2)
                if m.key == b"P1"]

    assert wait_until(lambda: any(t["readings_applied"] >= 1 for t in twin()), timeout=60)
    # D2 (not paired with P1) publishing on D1's topic: Mosquitto's ACL drops it
    assert _publish(port, ca, "D2", tokens["D2"], "devices/D1/readings",
                    _reading("D1", "P1", 2)) is None
    # D2 on its own topic, for P1 or posing as D1: the bridge dead-letters both with why
    assert _publish(port, ca, "D2", tokens["D2"], "devices/D2/readings",
                    _reading("D2", "P1", 3)) is None
    assert _publish(port, ca, "D2", tokens["D2"], "devices/D2/readings",
                    _reading("D1", "P1", 4)) is None
    assert _publish(port, ca, "D1", tokens["D1"], "devices/D1/readings", b"\xff not json") is None

    def dead() -> list[tuple[str, str]]:
        return sorted((d["topic"], d["kind"]) for d in (
            json.loads(m.value) for m in _consume(s, s.topic_vitals_dlq, 100, timeout=2))
            if d["topic"].startswith("mqtt:"))

    want = sorted([("mqtt:devices/D2/readings", "unpaired_device"),
                   ("mqtt:devices/D2/readings", "wrong_device"),
                   ("mqtt:devices/D1/readings", "invalid_json")])
    assert wait_until(lambda: [k for _, k in dead()] and len(dead()) >= 3, timeout=20), dead()
    assert [t for t, _ in dead()] == [t for t, _ in want]
    assert {k for _, k in dead()} >= {"unpaired_device", "wrong_device"}
    # only D1's one good reading reached vitals.raw through MQTT
    raw = [json.loads(m.value) for m in _consume(s, s.topic_vitals_raw, 100, timeout=3)]
    assert [(r["device_id"], r["seq"]) for r in raw] == [("D1", 1)]


def test_acknowledgements_go_out_in_the_order_messages_came():
    """Kafka confirms in any order; MQTT 3.1.1 acknowledges in the order received. A message
    Kafka refused is passed over unacknowledged (Mosquitto sends it again on reconnection)."""
    acked: list[int] = []
    acks = InOrderAcks(lambda mid, qos: acked.append(mid))
    e = [acks.received(mid, 1) for mid in (1, 2, 3, 4)]
    acks.done(e[2], stored=True)
    assert acked == [] and acks.waiting == 4
    acks.done(e[0], stored=True)
    assert acked == [1]
    acks.done(e[1], stored=False)
    assert acked == [1, 3] and acks.waiting == 1
    acks.done(e[3], stored=True)
    assert acked == [1, 3, 4] and acks.waiting == 0


def test_the_bridge_fills_batches_on_the_embedded_broker(site):
    """The bridge sends on without waiting for each message, acknowledging each once Kafka
    has it: a device's burst goes into a few record batches (the embedded broker keeps each
    batch, ~1 KB apiece: BROKER_LINGER_MS), each message once."""
    from bench.broker_memory import topic_bytes

    s, port, ca, tokens, _ = site
    assert s.embedded_broker and s.broker_linger_ms > 0
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="D1-burst",
                    protocol=mqtt.MQTTv311)
    c.username_pw_set("D1", tokens["D1"])
    c.tls_set(ca_certs=str(ca))
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        sent = [c.publish("devices/D1/readings", _reading("D1", "P1", seq), qos=1)
                for seq in range(1, 31)]
        for info in sent:
            info.wait_for_publish(10)  # Mosquitto has it
    finally:
        c.loop_stop()
        c.disconnect()

    def seqs() -> list[int]:
        return [json.loads(m.value)["seq"] for m in _consume(s, s.topic_vitals_raw, 100,
                                                              timeout=2)]

    assert wait_until(lambda: len(seqs()) >= 30, timeout=30), seqs()
    assert sorted(seqs()) == list(range(1, 31))
    stored = topic_bytes("127.0.0.1", s.broker_port, only={s.topic_vitals_raw})
    assert stored[s.topic_vitals_raw]["batches"] <= 10, stored


def test_plain_mqtt_needs_the_development_setting(settings_factory):
    with pytest.raises(ConfigError, match="mqtts"):
        run_bridge(settings_factory(mqtt_url="mqtt://127.0.0.1:1883"), threading.Event())
    with pytest.raises(ConfigError, match="MQTT_URL"):
        run_bridge(settings_factory(), threading.Event())


def test_the_simulator_sends_as_its_devices_over_https_and_mqtts(site, tmp_path):
    """`simulate --to https://... --to mqtts://... --credentials FILE`: every device enrolled
    with its own credential, half the patients through the ingest endpoint, half through
    Mosquitto and the bridge; every reading reaches vitals.raw once, none refused."""
    s, port, ca, _, broker = site
    creds = tmp_path / "device-credentials.jsonl"
    # enrolled before the run, then Mosquitto told to read its password file again (SIGHUP),
    # as an operator would
    load_credentials(str(creds), s, device_ids(4, 7))
    assert oct(creds.stat().st_mode & 0o777) == "0o600"
    broker.send_signal(signal.SIGHUP)
    s = msgspec.structs.replace(s, ingest_port=supervise.free_port())
    serving = _serve(s, tmp_path)
    url = next(serving)
    try:
        stats = simulate(s, patients=4, rate=1.0, duration=6.0, speed=2.0, seed=7,
                         to=[url, f"mqtts://127.0.0.1:{port}"], credentials=str(creds),
                         ca_file=str(ca), wards=["A"], effects=DeviceEffects.clean(),
                         progress=False)
    finally:
        next(serving, None)
    assert (stats.errors, dict(stats.refused)) == (0, {})
    assert stats.messages == stats.delivered_readings == 4 * 6

    def raw() -> dict[str, int]:
        got: dict[str, int] = {}
        for m in _consume(s, s.topic_vitals_raw, 1000, timeout=2):
            d = json.loads(m.value)
            if d["device_id"].startswith("WR-"):
                got[d["device_id"]] = got.get(d["device_id"], 0) + 1
        return got

    assert wait_until(lambda: sum(raw().values()) >= 24, timeout=30), raw()
    assert raw() == {d: 6 for d in device_ids(4, 7)}  # each reading once, both transports
    # a second run reuses the file: nobody is enrolled twice
    before = Path(s.devices_file).read_text().count("WR-0007-")
    load_credentials(str(creds), s, device_ids(4, 7))
    assert Path(s.devices_file).read_text().count("WR-0007-") == before == 4
