"""How simulated devices deliver their messages: as a device would, with its own credential.

- `https://host:port/ingest` (`http://` only for loopback development): `POST` to the ingest
  endpoint with the device's bearer credential (streams.ingest). A device keeps its messages in
  order (one sender thread per device, chosen by hash), waits when told 429 (Retry-After) and
  sends again after 503 or a lost connection; a 4xx refusal is counted by its kind (malformed
  messages mixed in on purpose are refused here, at the edge).
- `mqtts://host:port` (`mqtt://` for development): one MQTT connection per device, user name
  the device id and password its credential, QoS 1 to `devices/<device id>/readings`
  (streams.mqtt bridges it into Kafka).

Credentials come from a file of JSON lines `{"device_id", "token"}` (mode 600): devices not in
it are enrolled (streams.enrol: DEVICES_FILE, MQTT_PASSWORD_FILE) and added to it, so a second
run reuses them.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import ssl
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from streams.config import Settings
from streams.errors import ConfigError

SEND_TRIES = 5  # per message, for 429, 503 and lost connections


def is_device_transport(to: str) -> bool:
    return to.split("://", 1)[0] in ("http", "https", "mqtt", "mqtts")


def check_url(to: str, allow_plain: bool) -> None:
    """A one-line error for a URL a device could not use."""
    u = urlsplit(to)
    if not u.hostname:
        raise ConfigError(f"--to {to}: no host; expected https://HOST:PORT/ingest or "
                          "mqtts://HOST:PORT")
    if u.scheme in ("http", "mqtt") and not allow_plain:
        raise ConfigError(f"--to {to}: readings are patient data; use https:// or mqtts://, "
                          "or set INGEST_ALLOW_HTTP=true for development on this machine")


def load_credentials(path: str, settings: Settings, device_ids: list[str]) -> dict[str, str]:
    """device id -> credential for every device in `device_ids`: read from `path`, the
    missing ones enrolled now and appended to it."""
    from streams.enrol import enrol

    p = Path(path)
    known: dict[str, str] = {}
    if p.exists():
        try:
            for line in p.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    known[rec["device_id"]] = rec["token"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"--credentials {path}: expected JSON lines "
                              '{"device_id": ..., "token": ...}') from None
    missing = [d for d in device_ids if d not in known]
    if missing:
        new = enrol(settings, missing)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            for d, tok in new.items():
                f.write(json.dumps({"device_id": d, "token": tok}) + "\n")
        known.update(new)
    return {d: known[d] for d in device_ids}


class DeviceCounts:
    """What the devices' transport saw: refusals by kind, failures after every try."""

    def __init__(self) -> None:
        self.refused: Counter[str] = Counter()
        self.errors = 0
        self.lock = threading.Lock()

    def refuse(self, kind: str) -> None:
        with self.lock:
            self.refused[kind] += 1

    def fail(self) -> None:
        with self.lock:
            self.errors += 1


class HttpOutput:
    """POSTs each message to the ingest endpoint as its device (patient key -> device)."""

    def __init__(self, url: str, devices: dict[bytes, tuple[str, str]], counts: DeviceCounts,
                 ca_file: str | None = None, senders: int = 8) -> None:
        import httpx

        # one INFO line per request would drown the simulator's own progress lines
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.url = url
        self.devices = devices
        self.counts = counts
        verify = ssl.create_default_context(cafile=ca_file)
        self._queues: list[queue.Queue[tuple[bytes, bytes] | None]] = []
        self._threads = []
        for i in range(senders):
            q: queue.Queue[tuple[bytes, bytes] | None] = queue.Queue(maxsize=10_000)
            client = httpx.Client(verify=verify, timeout=15.0, follow_redirects=False)
            t = threading.Thread(target=self._run, args=(q, client), daemon=True,
                                 name=f"device-http-{i}")
            t.start()
            self._queues.append(q)
            self._threads.append(t)

    def send(self, key: bytes, value: bytes) -> None:
        # one sender per device keeps a device's messages in order
        self._queues[zlib.crc32(key) % len(self._queues)].put((key, value))

    def _run(self, q: queue.Queue[tuple[bytes, bytes] | None], client: Any) -> None:
        import httpx

        with client:
            while (item := q.get()) is not None:
                key, value = item
                _, token = self.devices[key]
                headers = {"Authorization": f"Bearer {token}",
                           "Content-Type": "application/json"}
                for attempt in range(SEND_TRIES):
                    try:
                        r = client.post(self.url, content=value, headers=headers)
                    except httpx.HTTPError:
                        time.sleep(0.2 * 2 ** attempt)
                        continue
                    if r.status_code == 202:
                        break
                    if r.status_code == 429:
                        time.sleep(min(float(r.headers.get("Retry-After", "1")), 5.0))
                        continue
                    if r.status_code >= 500:
                        time.sleep(0.2 * 2 ** attempt)
                        continue
                    try:
                        kind = str(r.json().get("kind", r.status_code))
                    except ValueError:
                        kind = str(r.status_code)
                    self.counts.refuse(kind)
                    break
                else:
                    self.counts.fail()

    def close(self) -> None:
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join(60)


class MqttOutput:
    """Publishes each message at QoS 1 on its device's own MQTT connection."""

    def __init__(self, url: str, devices: dict[bytes, tuple[str, str]], counts: DeviceCounts,
                 ca_file: str | None = None, connect_timeout: float = 15.0) -> None:
        import paho.mqtt.client as mqtt

        u = urlsplit(url)
        self.counts = counts
        self.devices = devices
        self._clients: dict[str, Any] = {}
        self._pending: list[Any] = []
        self._prune_at = 1_000
        refused: list[str] = []
        ready = threading.Semaphore(0)
        for device, token in {d: t for d, t in devices.values()}.items():
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device,
                            protocol=mqtt.MQTTv311)
            c.username_pw_set(device, token)
            if u.scheme == "mqtts":
                c.tls_set(ca_certs=ca_file)

            def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any,
                           device: str = device) -> None:
                if reason.is_failure:
                    refused.append(f"{device}: {reason}")
                ready.release()

            c.on_connect = on_connect
            c.connect_async(u.hostname, u.port or (8883 if u.scheme == "mqtts" else 1883))
            c.loop_start()  # reconnects by itself; QoS 1 messages wait in its queue
            self._clients[device] = c
        deadline = time.monotonic() + connect_timeout
        for _ in self._clients:
            if not ready.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
                break
        if refused:
            self.close()
            raise ConfigError(f"--to {url}: the MQTT broker refused {len(refused)} device(s), "
                              f"e.g. {refused[0]} (enrolled after Mosquitto started? it reads "
                              "its password file at start and on SIGHUP)")

    def send(self, key: bytes, value: bytes) -> None:
        device, _ = self.devices[key]
        info = self._clients[device].publish(f"devices/{device}/readings", value, qos=1)
        self._pending.append(info)
        # Each message's info holds a threading.Condition (~1.5 KB): drop the published ones
        # once a thousand wait (at 10,000 the simulator grew 15 MB before it levelled), and
        # let the list double before the next pass so a backlog is not rescanned every send.
        if len(self._pending) > self._prune_at:
            self._pending = [i for i in self._pending if not i.is_published()]
            self._prune_at = max(1_000, 2 * len(self._pending))

    def close(self) -> None:
        deadline = time.monotonic() + 60
        for info in self._pending:
            try:
                info.wait_for_publish(max(deadline - time.monotonic(), 0.01))
            except (RuntimeError, ValueError):
                pass
            if not info.is_published():
                self.counts.fail()
        self._pending = []
        for c in self._clients.values():
            c.disconnect()
            c.loop_stop()


class SplitOutput:
    """Patients spread over several outputs (a ward with mixed devices): patient i's messages
    go to output i mod n."""

    def __init__(self, outputs: list[Any], keys: list[bytes]) -> None:
        self.outputs = outputs
        self.route = {k: outputs[i % len(outputs)] for i, k in enumerate(keys)}

    def send(self, key: bytes, value: bytes) -> None:
        self.route[key].send(key, value)

    def close(self) -> None:
        for o in self.outputs:
            o.close()
