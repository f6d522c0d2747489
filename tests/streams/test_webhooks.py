"""Webhook subscribers: signatures, filters, delivery to a real local HTTP server with retries and
dead letters, a dispatcher restart, and the authenticated API with its live SSE stream."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import msgspec
import pytest
from kafka import KafkaConsumer, KafkaProducer

from dashboard.api import SubscriptionWriter, blueprint
from dashboard.auth import TokenStore, add_token
from dashboard.feed import TwinFeed
from streams import messages, supervise, topics
from streams.config import kafka_python_config, kafka_python_producer_config
from streams.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    Dispatcher,
    SubscriptionView,
    TargetRefused,
    matches,
    new_subscription,
    pin,
    sign,
    verify,
)
from tests.conftest import admit, settings_env, wait_for_stable_assignment, wait_until

# The receivers here are on loopback over plain http: allowed only by the development setting.
DEV = {"allow_loopback_http": True}


class Receiver:
    """A real HTTP server on loopback recording deliveries; answers from a script of statuses."""

    def __init__(self, statuses: list[int] | None = None, default: int = 200,
                 location: str | None = None) -> None:
        self.statuses = list(statuses or [])
        self.default = default
        self.location = location  # sent with every answer (a redirect's target)
        self.got: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = outer.statuses.pop(0) if outer.statuses else outer.default
                self.send_response(status)
                if outer.location:
                    self.send_header("Location", outer.location)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _event(pid: str = "P1", priority: str = "high", kind: str = "news2", event: str = "raised",
           notify: bool = True) -> messages.AlertEvent:
    return messages.AlertEvent(
        alert_id=f"{pid}:{kind}:1", patient_id=pid, ts=messages.utc(time.time()), event=event,
        kind=kind, category="clinical", priority=priority, message="NEWS2 7", news2=7,
        notify=notify)


def _alert(*args: str, **kw: object) -> dict:
    """The event as a Kafka writer other than ours might hold it: plain JSON."""
    return msgspec.to_builtins(_event(*args, **kw))


def test_signature_verifies_and_rejects_tampering_and_replays():
    body = b'{"a":1}'
    header = sign("s3cret", 1_800_000_000, "d-1", body)
    assert verify("s3cret", header, "d-1", body, now=1_800_000_010)
    assert not verify("s3cret", header, "d-1", b'{"a":2}', now=1_800_000_010)  # tampered body
    assert not verify("other", header, "d-1", body, now=1_800_000_010)  # wrong secret
    assert not verify("s3cret", header, "d-1", body, now=1_800_000_000 + 301)  # too old: replay
    assert not verify("s3cret", "garbage", "d-1", body)
    # a replayed alert under a new delivery id (to pass the receiver's dedupe) does not verify
    assert not verify("s3cret", header, "d-2", body, now=1_800_000_010)


def test_filters_by_patient_ward_priority_kind_and_silence():
    sub = new_subscription(url="https://x.example/", created_by="t", wards=["W1"],
                           min_priority="medium",
                           kinds=["news2"])
    assert matches(sub, _event(priority="high"), "W1")
    assert not matches(sub, _event(priority="low"), "W1")
    assert not matches(sub, _event(), "W2")
    assert not matches(sub, _event(kind="no_data"), "W1")
    assert not matches(sub, _event(notify=False), "W1")
    only = new_subscription(url="https://x.example/", created_by="t", patients=["P2"])
    assert matches(only, _event(pid="P2", priority="low"), None)
    assert not matches(only, _event(pid="P1"), None)
    with pytest.raises(ValueError, match="min_priority"):
        new_subscription(url="https://x.example/", created_by="t", min_priority="urgent")
    with pytest.raises(ValueError, match="unknown kinds"):
        new_subscription(url="https://x.example/", created_by="t", kinds=["flu"])
    with pytest.raises(ValueError):
        new_subscription(url="ftp://x/", created_by="t")


def test_delivery_is_signed_and_retried_after_a_500(settings_factory):
    s = settings_factory(webhook_allow_loopback_http=True,
                         webhook_backoff_seconds=0.01, webhook_max_attempts=3)
    r = Receiver(statuses=[500])
    try:
        sub = new_subscription(url=r.url, created_by="t", **DEV)
        body = json.dumps(_alert()).encode()
        attempts = Dispatcher(s).deliver(sub, body, "d-1")
        assert [a.status for a in attempts] == [500, 200]
        assert len(r.got) == 2
        for headers, got in r.got:
            assert got == body and headers[DELIVERY_HEADER.lower()] == "d-1"
            assert verify(sub.secret, headers[SIGNATURE_HEADER.lower()], "d-1", got)
    finally:
        r.close()


def test_a_redirect_is_not_followed(settings_factory, receiver):
    """A receiver (or whoever took over its address) answering 307 must not get the signed
    alert sent on to another address, e.g. an internal service: it counts as a failure."""
    s = settings_factory(webhook_allow_loopback_http=True,
                         webhook_backoff_seconds=0.01, webhook_max_attempts=2)
    bouncer = Receiver(default=307, location=receiver.url)
    try:
        sub = new_subscription(url=bouncer.url, created_by="t", **DEV)
        attempts = Dispatcher(s).deliver(sub, messages.encode(_event()), "d-2")
        assert [a.status for a in attempts] == [307, 307]
        assert len(bouncer.got) == 2 and receiver.got == []
    finally:
        bouncer.close()


def test_a_subscription_must_be_https_without_credentials():
    for url, why in [("http://pager.example/hook", "https"),
                     ("http://127.0.0.1:9092/", "https"),  # the broker, without the dev setting
                     ("https://user:pw@pager.example/", "credentials"),
                     ("gopher://pager.example/", "https"), ("https:///hook", "https")]:
        with pytest.raises(ValueError, match=why):
            new_subscription(url=url, created_by="t")
    # the development setting opens plain http to loopback only
    with pytest.raises(ValueError, match="https"):
        new_subscription(url="http://10.0.0.5/", created_by="t", **DEV)
    assert new_subscription(url="http://localhost:8/", created_by="t", **DEV).secret


def test_a_subscription_secret_is_made_by_the_server_and_strong():
    a = new_subscription(url="https://x.example/", created_by="t")
    b = new_subscription(url="https://x.example/", created_by="t")
    assert a.secret != b.secret and len(a.secret) >= 43  # 32 random bytes, base64url
    with pytest.raises(TypeError):
        new_subscription(url="https://x.example/", created_by="t", secret="x")


def _resolving_to(*addresses: str):
    def resolve(host, port, **_):
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in addresses]
    return resolve


@pytest.mark.parametrize("address", [
    "127.0.0.1", "::1", "::ffff:127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.20",
    "169.254.169.254",  # cloud metadata service
    "100.64.0.1", "0.0.0.0", "fd00::1", "fe80::1", "224.0.0.1", "240.0.0.1"])
def test_a_name_pointing_inside_the_site_is_refused_at_delivery(address):
    with pytest.raises(TargetRefused, match="non-public"):
        pin("https://hooks.example/x", resolve=_resolving_to(address))
    # one bad address among good ones is enough: the client may connect to any of them
    with pytest.raises(TargetRefused):
        pin("https://hooks.example/x", resolve=_resolving_to("93.184.216.34", address))


def test_a_delivery_goes_to_the_address_that_was_checked():
    url, host = pin("https://hooks.example:8443/x?a=1", resolve=_resolving_to("93.184.216.34"))
    assert (str(url), host) == ("https://93.184.216.34:8443/x?a=1", "hooks.example")


def test_delivery_to_loopback_is_refused_without_the_development_setting(settings_factory,
                                                                         receiver):
    s = settings_factory(webhook_backoff_seconds=0.01, webhook_max_attempts=3)
    sub = new_subscription(url=receiver.url, created_by="t", **DEV)  # as if made elsewhere
    attempts = Dispatcher(s).deliver(sub, messages.encode(_event()), "d-3")
    assert len(attempts) == 1 and attempts[0].status is None  # policy: no retries
    assert attempts[0].error.startswith("refused: ") and receiver.got == []


def test_a_pinned_delivery_keeps_the_host_name(settings_factory, receiver):
    s = settings_factory(webhook_allow_loopback_http=True)
    port = receiver.url.split(":")[2].split("/")[0]
    sub = new_subscription(url=f"http://localhost:{port}/hook", created_by="t", **DEV)
    attempts = Dispatcher(s).deliver(sub, messages.encode(_event()), "d-4")
    assert attempts[-1].status == 200
    assert receiver.got[0][0]["host"] == f"localhost:{port}"


def _consume(s, topic: str, n: int, timeout: float = 30) -> list:
    c = KafkaConsumer(topic, auto_offset_reset="earliest", enable_auto_commit=False,
                      **kafka_python_config(s))
    out: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(out) < n:
        for recs in c.poll(timeout_ms=300).values():
            out.extend(recs)
    c.close()
    return out


def _run_dispatcher(s) -> tuple[Dispatcher, threading.Thread]:
    d = Dispatcher(s)
    ready = threading.Event()
    th = threading.Thread(target=d.run, kwargs={"ready": ready.set}, daemon=True)
    th.start()
    assert ready.wait(60), "the dispatcher did not join its group"
    return d, th


def test_dispatcher_delivers_dead_letters_and_survives_a_restart(settings_factory, receiver):
    s = settings_factory(webhook_allow_loopback_http=True,
                         webhook_backoff_seconds=0.01, webhook_max_attempts=3)
    topics.ensure(s)
    failing = Receiver(default=500)
    writer = SubscriptionWriter(s)
    good = new_subscription(url=receiver.url, created_by="t", min_priority="medium", **DEV)
    bad = new_subscription(url=failing.url, created_by="t", patients=["P9"], **DEV)
    writer.put(good.id, msgspec.json.encode(good))
    writer.put(bad.id, msgspec.json.encode(bad))
    producer = KafkaProducer(**kafka_python_producer_config(s))

    def send(ev: dict) -> None:
        producer.send(s.topic_alerts, key=ev["patient_id"].encode(),
                      value=json.dumps(ev).encode()).get(timeout=10)

    try:
        d, th = _run_dispatcher(s)
        send(_alert("P1", "high"))
        send(_alert("P2", "low"))  # below the good subscription's minimum priority
        send(_alert("P9", "medium"))  # to both; the failing receiver always answers 500
        assert wait_until(lambda: len(receiver.got) == 2 and d.dead == 1, timeout=30)
        pids = sorted(json.loads(b)["patient_id"] for _, b in receiver.got)
        assert pids == ["P1", "P9"]  # alerts of different patients may arrive in any order
        assert all(verify(good.secret, h[SIGNATURE_HEADER.lower()], h[DELIVERY_HEADER.lower()], b)
                   for h, b in receiver.got)
        (dead,) = _consume(s, s.topic_webhook_dlq, 1)
        letter = json.loads(dead.value)
        assert letter["subscription_id"] == bad.id and letter["event"]["patient_id"] == "P9"
        assert [a["status"] for a in letter["attempts"]] == [500, 500, 500]
        assert len(failing.got) == 3

        # stopped, an alert arrives, a new dispatcher delivers it (and nothing twice)
        d.stop()
        th.join(30)
        send(_alert("P3", "high"))
        d2, th2 = _run_dispatcher(s)
        assert wait_until(lambda: len(receiver.got) == 3, timeout=30)
        time.sleep(1)
        assert sorted(json.loads(b)["patient_id"] for _, b in receiver.got) == ["P1", "P3", "P9"]
        d2.stop()
        th2.join(30)
    finally:
        failing.close()
        producer.close()
        writer.close()


def test_a_failing_subscriber_never_delays_another(settings_factory, receiver):
    # the failing one retries for 1 + 2 + 4 = 7 s per alert before its dead letter
    s = settings_factory(webhook_allow_loopback_http=True,
                         webhook_backoff_seconds=1.0, webhook_max_attempts=4)
    topics.ensure(s)
    failing = Receiver(default=503)
    writer = SubscriptionWriter(s)
    producer = KafkaProducer(**kafka_python_producer_config(s))

    def send(ev: dict) -> None:
        producer.send(s.topic_alerts, key=ev["patient_id"].encode(),
                      value=json.dumps(ev).encode()).get(timeout=10)

    try:
        for url in (failing.url, receiver.url):
            sub = new_subscription(url=url, created_by="t", **DEV)
            writer.put(sub.id, msgspec.json.encode(sub))
        time.sleep(0.05)
        # an alert raised after the subscriptions exist but before any dispatcher runs is
        # delivered all the same: a new subscription's queue starts at its creation time
        send(_alert("P1"))
        d, th = _run_dispatcher(s)
        t0 = time.monotonic()
        send(_alert("P2"))
        send(_alert("P3"))
        assert wait_until(lambda: len(receiver.got) == 3, timeout=6)
        good_s = time.monotonic() - t0
        # meanwhile the failing subscriber is still on its first alert's retries
        assert len(failing.got) < 4 and d.dead == 0
        assert sorted(json.loads(b)["patient_id"] for _, b in receiver.got) == ["P1", "P2", "P3"]
        assert good_s < 5.0
        assert wait_until(lambda: d.dead >= 1, timeout=20)
        d.stop()
        th.join(30)
    finally:
        failing.close()
        producer.close()
        writer.close()


@pytest.fixture
def api(settings_factory, tmp_path):
    """The API blueprint on a real cheroot server (loopback), with one token."""
    from cheroot import wsgi
    from flask import Flask

    tokens = tmp_path / "tokens.jsonl"
    s = settings_factory(api_tokens_file=str(tokens), api_max_subscriptions=3)
    topics.ensure(s)
    token = add_token(str(tokens), "integration-1", ["*"], ["read", "act"])
    assert token not in tokens.read_text()  # hashed at rest
    feed = TwinFeed(s).start()
    view = SubscriptionView(s).start()
    app = Flask("t")
    bp = blueprint(s, feed, view, TokenStore(str(tokens)))
    app.register_blueprint(bp)
    port = supervise.free_port()
    server = wsgi.Server(("127.0.0.1", port), app, numthreads=8)
    server.prepare()
    th = threading.Thread(target=server.serve, daemon=True)
    th.start()
    yield s, port, token
    feed.stop()  # first: it ends the live streams, which the server's stop waits for
    server.stop()
    th.join(5)
    view.stop()
    for w in bp.writers:
        w.close()


def _req(port: int, method: str, path: str, token: str | None = None, body: dict | None = None
         ) -> tuple[int, dict | list | None]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else None


def test_api_refuses_anonymous_and_wrong_tokens(api):
    _, port, token = api
    for method, path in [("GET", "/api/subscriptions"), ("POST", "/api/subscriptions"),
                         ("DELETE", "/api/subscriptions/x"), ("GET", "/api/alerts/stream")]:
        for bad in (None, "not-a-token", token + "x"):
            status, body = _req(port, method, path, bad, {} if method == "POST" else None)
            assert status == 401, (method, path, bad)
            assert "token" in body["error"]


def test_api_creates_lists_and_deletes_subscriptions(api):
    s, port, token = api
    status, created = _req(port, "POST", "/api/subscriptions", token,
                           {"url": "https://pager.example/hook", "min_priority": "high"})
    assert status == 201 and created["secret"] and created["created_by"] == "integration-1"
    # an attacker's integration: a webhook at the site's own services, or its own secret
    for bad in ({"url": "http://127.0.0.1:9092/"}, {"url": "http://pager.example/hook"},
                {"url": "https://pager.example/hook", "secret": "x"}):
        status, err = _req(port, "POST", "/api/subscriptions", token, bad)
        assert status == 400, bad
    status, listed = _req(port, "GET", "/api/subscriptions", token)
    assert status == 200 and [x["id"] for x in listed] == [created["id"]]
    assert "secret" not in listed[0]
    assert _req(port, "POST", "/api/subscriptions", token, {"url": "x"})[0] == 400
    assert _req(port, "POST", "/api/subscriptions", token,
                {"url": "http://a/", "colour": "red"})[0] == 400
    assert _req(port, "DELETE", f"/api/subscriptions/{created['id']}", token)[0] == 204
    assert _req(port, "DELETE", f"/api/subscriptions/{created['id']}", token)[0] == 404
    assert _req(port, "GET", "/api/subscriptions", token)[1] == []
    # a second view (another replica, the dispatcher) sees the same through the topic
    other = SubscriptionView(s).start()
    try:
        assert other.follower.caught_up.wait(30)
        assert other.snapshot()[0] == []
    finally:
        other.stop()


def test_sse_stream_delivers_matching_alert_events_to_a_real_client(api):
    s, port, token = api
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/api/alerts/stream?min_priority=medium&patient=P1",
              headers={"Authorization": f"Bearer {token}"})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    assert r.readline() == b": connected\n"
    r.readline()
    producer = KafkaProducer(**kafka_python_producer_config(s))
    for ev in (_alert("P1", "low"), _alert("P2", "high"), _alert("P1", "high", event="raised")):
        producer.send(s.topic_alerts, key=ev["patient_id"].encode(),
                      value=json.dumps(ev).encode())
    producer.flush()
    producer.close()
    lines = [r.readline() for _ in range(4)]
    assert lines[0] == b"id: P1:news2:1\n" and lines[1] == b"event: raised\n"
    data = json.loads(lines[2][len(b"data: "):])
    assert data["patient_id"] == "P1" and data["priority"] == "high"
    assert lines[3] == b"\n"
    c.close()


def _wards_known(s, pids: set[str]) -> None:
    """Wait until the registry (as the API's view reads it) holds these patients' wards."""
    other = SubscriptionView(s).start()
    try:
        assert wait_until(lambda: pids <= set(other.snapshot()[1]), timeout=30)
    finally:
        other.stop()
    time.sleep(1)  # the API's own view reads the same topic alongside


def test_a_ward_scoped_token_sees_and_acts_on_its_wards_only(api):
    """Crafted requests of an integrator holding a ward-7 token: no ward-8 event on the
    stream, whatever its filters; no action on a ward-8 patient; no subscription beyond ward 7;
    no read-only acknowledgement; and each refusal audited."""
    s, port, _ = api
    admit(s, {"P7": "d7"}, ward="7")
    admit(s, {"P8": "d8"}, ward="8")
    _wards_known(s, {"P7", "P8"})
    ward7 = add_token(s.api_tokens_file, "ward-7", ["7"], ["read", "act"])
    reader = add_token(s.api_tokens_file, "ward-7-reader", ["7"], ["read"])
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/api/alerts/stream?ward=8&patient=P8",  # asks for ward 8 explicitly
              headers={"Authorization": f"Bearer {ward7}"})
    r = c.getresponse()
    assert r.status == 200 and r.readline() == b": connected\n"
    r.readline()
    producer = KafkaProducer(**kafka_python_producer_config(s))
    for ev in (_alert("P8", "high"), _alert("P8", "high", event="updated"), _alert("P7", "low")):
        producer.send(s.topic_alerts, key=ev["patient_id"].encode(),
                      value=json.dumps(ev).encode())
    producer.flush()
    producer.close()
    c2 = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c2.request("GET", "/api/alerts/stream", headers={"Authorization": f"Bearer {ward7}"})
    r2 = c2.getresponse()
    assert r2.readline() == b": connected\n"
    r2.readline()
    producer = KafkaProducer(**kafka_python_producer_config(s))
    for ev in (_alert("P8", "high"), _alert("P7", "low")):
        producer.send(s.topic_alerts, key=ev["patient_id"].encode(),
                      value=json.dumps(ev).encode())
    producer.flush()
    producer.close()
    # unfiltered, the ward-7 token's stream skips P8 and shows P7
    assert r2.readline() == b"id: P7:news2:1\n"
    c2.close()
    # the stream that asked for ward 8 got nothing at all (P7 is not what it filters for)
    c.sock.settimeout(3)
    with pytest.raises(TimeoutError):
        r.readline()
    c.close()
    assert _req(port, "POST", "/api/alerts/P8:news2:1/acknowledge", ward7, {})[0] == 403
    assert _req(port, "POST", "/api/silences", ward7, {"patient_id": "P8", "kind": "news2",
                                                       "reason": "x", "minutes": 15})[0] == 403
    assert _req(port, "POST", "/api/alerts/P7:news2:1/acknowledge", reader, {})[0] == 403
    assert _req(port, "POST", "/api/alerts/P7:news2:1/acknowledge", ward7, {})[0] == 202
    assert _req(port, "POST", "/api/subscriptions", ward7,
                {"url": "https://pager.example/", "wards": ["7", "8"]})[0] == 403
    status, sub = _req(port, "POST", "/api/subscriptions", ward7, {"url": "https://p.example/"})
    assert status == 201 and sub["wards"] == ["7"]  # narrowed to the token's wards
    audit = [json.loads(r.value) for r in _consume(s, s.topic_audit, 100, timeout=5)]
    denied = [a for a in audit if a["action"] == "denied"]
    assert {a["user"] for a in denied} == {"token:ward-7", "token:ward-7-reader"}
    assert len(denied) == 4
    assert any(a["action"] == "view_alerts" and a["user"] == "token:ward-7" for a in audit)


def test_subscriptions_belong_to_their_token_and_are_limited(api):
    s, port, admin_token = api
    a = add_token(s.api_tokens_file, "client-a", ["*"], ["read"])
    b = add_token(s.api_tokens_file, "client-b", ["*"], ["read"])
    boss = add_token(s.api_tokens_file, "ops", ["*"], ["admin"])
    status, sub = _req(port, "POST", "/api/subscriptions", a, {"url": "https://a.example/"})
    assert status == 201
    assert _req(port, "GET", "/api/subscriptions", b)[1] == []  # b does not see a's
    assert _req(port, "DELETE", f"/api/subscriptions/{sub['id']}", b)[0] == 404
    assert [x["id"] for x in _req(port, "GET", "/api/subscriptions", boss)[1]] == [sub["id"]]
    for _ in range(s.api_max_subscriptions - 1):
        assert _req(port, "POST", "/api/subscriptions", a, {"url": "https://a.example/"})[0] == 201
    assert _req(port, "POST", "/api/subscriptions", a, {"url": "https://a.example/"})[0] == 403
    assert _req(port, "POST", "/api/subscriptions", b, {"url": "https://b.example/"})[0] == 201
    assert _req(port, "DELETE", f"/api/subscriptions/{sub['id']}", a)[0] == 204


def test_acknowledge_and_silence_through_the_api_reach_the_worker_end_to_end(api, procs):
    s, port, token = api
    mport = supervise.free_port()
    env = {**settings_env(s), "WORKER_METRICS_PORT": str(mport)}
    procs.start("worker", "worker", env=env)
    wait_for_stable_assignment(mport, s.kafka_partitions, "")
    admit(s, {"A1": "d-A1"})
    producer = KafkaProducer(**kafka_python_producer_config(s))
    t0 = time.time() - 60
    for k in range(1, 41):  # a patient in the NEWS2 emergency band: raised at once, high
        msg = messages.reading("d-A1", "A1", k, messages.utc(t0 + k),
                               {"hr": 140.0, "rr": 29.0, "sbp": 85.0})
        producer.send(s.topic_vitals_raw, key=b"A1", value=messages.encode(msg))
    producer.flush()
    producer.close()

    def events() -> list[dict]:
        return [json.loads(r.value) for r in _consume(s, s.topic_alerts, 10_000, timeout=2)]

    assert wait_until(lambda: any(e["event"] == "raised" and e["kind"] == "news2"
                                  for e in events()), timeout=60), procs.log("worker")[-3000:]
    raised = next(e for e in events() if e["event"] == "raised" and e["kind"] == "news2")
    assert raised["priority"] == "high" and raised["evidence"]["estimate"]["hr"] > 120
    # Crafted straight onto alert.actions: an acknowledge of A1's alert in the name of B1 (a
    # patient the writer might be allowed to act on), keyed B1 and keyed A1. Neither touches it.
    forged = messages.AlertAction(action="acknowledge", patient_id="B1", by="intruder",
                                  ts=datetime.now(UTC), alert_id=raised["alert_id"])
    crafted = KafkaProducer(**kafka_python_producer_config(s))
    for key in (b"B1", b"A1"):
        crafted.send(s.topic_alert_actions, key=key, value=messages.encode(forged))
    crafted.flush()
    crafted.close()
    # escalate first: the rapid-response team told now, by this client
    status, _ = _req(port, "POST", f"/api/alerts/{raised['alert_id']}/escalate", token,
                     {"comment": "looks worse"})
    assert status == 202
    assert wait_until(lambda: any(e["event"] == "escalated" and e.get("by") == "integration-1"
                                  for e in events()), timeout=30)
    esc = next(e for e in events() if e["event"] == "escalated")
    assert esc["audience"] == "ward+rapid-response" and esc["alert_id"] == raised["alert_id"]
    assert _req(port, "POST", f"/api/alerts/{raised['alert_id']}/escalate", token,
                {"comment": 7})[0] == 400
    status, body = _req(port, "POST", f"/api/alerts/{raised['alert_id']}/acknowledge", token,
                        {"comment": "rapid response called"})
    assert status == 202 and body["by"] == "integration-1"
    assert wait_until(lambda: any(e["event"] == "acknowledged" for e in events()), timeout=30)
    ack = next(e for e in events() if e["event"] == "acknowledged")
    assert (ack["alert_id"], ack["by"], ack["comment"]) == (
        raised["alert_id"], "integration-1", "rapid response called")
    assert ack["state"] == "acknowledged"
    status, _ = _req(port, "POST", "/api/silences", token,
                     {"patient_id": "A1", "kind": "news2", "reason": "end-of-life care plan",
                      "minutes": 60})
    assert status == 202
    assert wait_until(lambda: any(e["event"] == "silenced" for e in events()), timeout=30)
    silenced = next(e for e in events() if e["event"] == "silenced")
    assert "end-of-life care plan" in silenced["message"] and silenced["by"] == "integration-1"
    assert _req(port, "POST", "/api/silences", token,
                {"patient_id": "A1", "kind": "flu", "reason": "x", "minutes": 5})[0] == 400
    ten_years = 10 * 365 * 24 * 60  # beyond ALERT_SILENCE_MAX_MINUTES (240)
    assert _req(port, "POST", "/api/silences", token,
                {"patient_id": "A1", "kind": "news2", "reason": "x", "minutes": ten_years}
                )[0] == 400
    assert not any(e.get("by") == "intruder" for e in events())
    assert [e["by"] for e in events() if e["event"] == "acknowledged"] == ["integration-1"]


def test_a_stop_while_the_subscriptions_are_read_ends_the_dispatcher_and_closes_it(
        settings_factory):
    """Before its subscriptions are read (here never: no topics) the dispatcher waited out a
    minute whatever happened; a stop now ends the wait, and its producer is closed."""
    s = settings_factory()  # no topics.ensure: the subscriptions topic does not exist
    d = Dispatcher(s)
    th = threading.Thread(target=d.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while getattr(d, "_producer", None) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d._producer is not None, "the dispatcher did not reach its broker"
    time.sleep(1.0)
    assert th.is_alive()  # still waiting for its subscriptions
    t0 = time.monotonic()
    d.stop()
    th.join(15)
    assert not th.is_alive() and time.monotonic() - t0 < 5
    assert d._producer._closed and not d.view.follower._thread.is_alive()
