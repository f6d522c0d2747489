"""Issue 18 item 6: the embedded broker is SIGKILLed under a running demo, with devices sending.

The demo starts it again on its port (as a site's supervisor would), and every part finds its
way back by itself: the worker finds the broker's records lost, writes back the registry and
the twins it holds (each marked and alerted `history_lost`) and exits for a restart; the
dispatcher writes back the webhook subscriptions it holds; the dashboard, the dispatcher and the
simulator reconnect. Checked from outside, as a user would: twin.state on Kafka, the dashboard's
alert stream, and a webhook receiver.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from dashboard.auth import add_token
from tests.conftest import wait_until
from tests.streams.test_webhooks import Receiver
from tests.test_demo import alive, demo_env, descendants

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PATIENTS = 12
RESUME_S = 30.0  # the bound: monitoring resumes within 30 s


# Read in a child process: kafka-python leaks the sockets of connections refused while the
# broker is down (ResourceWarning at their collection), which is its business, not this test's.
_READ_TWIN_STATES = """
import json, sys, time
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
try:
    c = KafkaConsumer(group_id=None, bootstrap_servers="127.0.0.1:" + sys.argv[1],
                      enable_auto_commit=False, request_timeout_ms=5000,
                      allow_auto_create_topics=False)
    tps = [TopicPartition("twin.state", p) for p in c.partitions_for_topic("twin.state") or ()]
    if tps:
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        deadline = time.monotonic() + 10
        while any(c.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200, max_records=10_000).values():
                for r in recs:
                    d = json.loads(r.value)
                    print(json.dumps({"patient_id": d["patient_id"], "_at": r.timestamp / 1000,
                                      "history_lost_at": d.get("history_lost_at"),
                                      "readings_applied": d["readings_applied"]}))
except KafkaError:
    pass
"""


def twin_states(port: int) -> list[dict]:
    """Every twin.state record now on the broker (the fields this test reads, and its record
    time in `_at`); [] when the broker does not answer."""
    out = subprocess.run([sys.executable, "-c", _READ_TWIN_STATES, str(port)],
                         capture_output=True, text=True, timeout=60)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


class AlertStream(threading.Thread):
    """The dashboard's Server-Sent Events stream of alert events, as an API client reads it."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        self.events: list[dict] = []
        self.connected = threading.Event()

    def run(self) -> None:
        with urllib.request.urlopen(self.req, timeout=120) as resp:
            self.connected.set()
            for line in resp:
                if line.startswith(b"data:"):
                    self.events.append(json.loads(line[5:]))


def logs(demo: subprocess.Popen[str]) -> str:
    """Where the demo keeps its children's logs (for a failure message)."""
    return str(sorted(Path("/tmp").glob("patient-twin-demo-*"), key=lambda p: p.stat().st_mtime)
               [-1:])


def api(base: str, token: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_a_broker_restart_is_survived_and_said(tmp_path: Path):
    env = demo_env()
    port, dash = int(env["BROKER_PORT"]), env["DASHBOARD_PORT"]
    env["API_TOKENS_FILE"] = str(tmp_path / "tokens.jsonl")
    env["WEBHOOK_ALLOW_LOOPBACK_HTTP"] = "true"  # the receiver below is on loopback http
    token = add_token(env["API_TOKENS_FILE"], "restart-test")
    base = f"http://127.0.0.1:{dash}"
    receiver = Receiver()
    demo = subprocess.Popen([sys.executable, "-m", "streams.cli", "demo", "--patients",
                             str(PATIENTS), "--duration", "300"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(lambda: len({s["patient_id"] for s in twin_states(port)}) == PATIENTS,
                          timeout=90, interval=2), "the demo's twins never all came"
        patients = {s["patient_id"] for s in twin_states(port)}
        sub = api(base, token, "/api/subscriptions", {"url": receiver.url,
                                                      "kinds": ["history_lost"]})
        stream = AlertStream(f"{base}/api/alerts/stream?kind=history_lost", token)
        stream.start()
        assert stream.connected.wait(10)
        time.sleep(3)  # the dispatcher has read the subscription
        tansu = [p for p in descendants(demo.pid)
                 if "tansu" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
        assert len(tansu) == 1, tansu
        killed_at = time.time()
        os.kill(tansu[0], signal.SIGKILL)

        # Monitoring resumes: every patient's latest twin.state is made after the kill, and
        # marked. (A state the old worker made before it found the loss may be unmarked.)
        def latest() -> dict[str, dict]:
            out: dict[str, dict] = {}
            for s in twin_states(port):
                if s["_at"] >= out.get(s["patient_id"], {"_at": 0.0})["_at"]:
                    out[s["patient_id"]] = s
            return out

        def resumed() -> bool:
            now = latest()
            return set(now) == patients and all(
                s["_at"] > killed_at and s["history_lost_at"] is not None
                for s in now.values())

        assert wait_until(resumed, timeout=RESUME_S, interval=1), \
            f"monitoring did not resume with every twin marked within 30 s: {latest()}"
        resumed_s = time.time() - killed_at
        states = list(latest().values())
        lost_at = {s["history_lost_at"] for s in states}
        assert len(lost_at) == 1, lost_at  # one loss, one time for every twin
        # The twins carried on (the worker held them): counts go on from before the kill.
        assert min(s["readings_applied"] for s in states) > 5

        # Said, to the dashboard's clients and to subscribers: one technical alert a patient.
        def alerted(events: list[dict]) -> set[str]:
            return {e["patient_id"] for e in events
                    if e["kind"] == "history_lost" and e["event"] == "raised"}

        assert wait_until(lambda: alerted(stream.events) == patients, timeout=20), \
            f"the dashboard's stream said it for {sorted(alerted(stream.events))}"
        first = next(e for e in stream.events if e["kind"] == "history_lost")
        assert first["category"] == "technical" and first["state"] == "latched"
        assert "lost its stored records" in first["message"]
        # the dispatcher wrote the subscription back and delivered to it
        assert wait_until(lambda: alerted(
            [json.loads(body) for _, body in receiver.got]) == patients,
            timeout=30), (f"webhook deliveries: {len(receiver.got)} (subscription "
                          f"{sub['id']}; logs: {logs(demo)})")
        assert demo.poll() is None, "the demo stopped"
    finally:
        kids = descendants(demo.pid)
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=90)
        receiver.close()
    assert demo.returncode == 0, out[-3000:]
    assert "the broker exited with code -9; starting it again" in out
    assert "the worker exited with code 3; starting it again" in out
    assert wait_until(lambda: not alive(kids), timeout=20)
    print(f"every patient fresh and marked {resumed_s:.1f} s after the SIGKILL")
