"""Webhook subscribers of alert events: subscriptions, signed deliveries, retries, dead letters.

Subscriptions live on a compacted topic (key = subscription id, a null value deletes), written by
the HTTP API (`dashboard/api.py`) and read by every dispatcher and dashboard replica. The
dispatcher (`patient-twin dispatcher`) reads the alerts topic in its own consumer group and, for
each event, delivers it to every matching subscription: an HTTP POST of the event's JSON, signed
`X-PatientTwin-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>." + body with the secret>`,
with `X-PatientTwin-Delivery` (stable across retries and restarts: receivers dedupe on it).
A failed delivery (network error or a non-2xx answer) is retried with exponential backoff; after
`WEBHOOK_MAX_ATTEMPTS` it goes to the webhook dead-letter topic with its delivery log. A queue
commits an alert's offset only once its delivery has succeeded or been dead-lettered, so a
restarted dispatcher delivers what was pending (at least once). A record that is not a valid alert
event or subscription is counted in `skipped` and passed over.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import httpx
import msgspec

from streams.config import Settings, kafka_python_consumer_config, kafka_python_producer_config
from streams.errors import InvalidMessage
from streams.follow import Follower, TopicWriter, record_key
from streams.messages import AlertEvent, decode_alert, decode_record, encode, reject
from streams.registry import Registry
from streams.watchdog import Watchdog
from twin.policy import KINDS, PRIORITIES

log = logging.getLogger("patient_twin.webhooks")

SIGNATURE_HEADER = "X-PatientTwin-Signature"
DELIVERY_HEADER = "X-PatientTwin-Delivery"
SUBSCRIPTION_SCHEMA = "patient-twin.subscription/1"
TOLERANCE_S = 300  # receivers reject signatures older than this (replay protection)
# The embedded broker (Tansu) answers a group's first JoinGroup after half the session timeout:
# with kafka-python's 45 s a new or restarted dispatcher delivered nothing for ~23 s. 10 s
# (Kafka's default before 3.0) joins in ~5 s; heartbeats go from kafka-python's own thread, so
# slow deliveries do not end the session.
QUEUE_SESSION_TIMEOUT_MS = 10_000


class Subscription(msgspec.Struct, frozen=True, kw_only=True):
    """A webhook subscription (compacted topic, key = id)."""

    schema: str = SUBSCRIPTION_SCHEMA
    id: str
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s]+$", max_length=2000)]
    secret: str  # shared HMAC key; needed to sign, so kept (the topic is access-controlled)
    wards: list[str] = []  # empty: any ward
    patients: list[str] = []  # empty: any patient
    min_priority: Literal["low", "medium", "high"] = "low"
    kinds: list[str] = []  # empty: any kind
    created_by: str
    created_at: datetime

    def public(self) -> dict[str, Any]:
        """As shown by the API: everything but the secret."""
        d = msgspec.to_builtins(self)
        d.pop("secret")
        return d


def new_subscription(*, url: str, created_by: str, wards: list[str] | None = None,
                     patients: list[str] | None = None, min_priority: str = "low",
                     kinds: list[str] | None = None, allow_loopback_http: bool = False
                     ) -> Subscription:
    """Validated subscription with a secret made here (256 bits; the creator sees it once):
    a secret chosen by a client may be short or reused. ValueError with what to fix."""
    if min_priority not in PRIORITIES:
        raise ValueError(f"min_priority must be one of {', '.join(PRIORITIES)}")
    unknown = [k for k in kinds or [] if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown kinds {unknown} (known: {', '.join(KINDS)})")
    check_target(url, allow_loopback_http)
    try:
        return msgspec.convert({
            "id": uuid.uuid4().hex, "url": url, "secret": secrets.token_urlsafe(32),
            "wards": wards or [], "patients": patients or [], "min_priority": min_priority,
            "kinds": kinds or [], "created_by": created_by,
            "created_at": datetime.now(UTC).isoformat()}, Subscription)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None


def matches(sub: Subscription, event: AlertEvent, ward: str | None) -> bool:
    """Does this alert event go to this subscription? (Silenced events never do.)"""
    if not event.notify:
        return False
    if sub.patients and event.patient_id not in sub.patients:
        return False
    if sub.wards and ward not in sub.wards:
        return False
    if sub.kinds and event.kind not in sub.kinds:
        return False
    return PRIORITIES.index(event.priority) >= PRIORITIES.index(sub.min_priority)


def sign(secret: str, timestamp: int, delivery_id: str, body: bytes) -> str:
    """The signature header value for a body sent at `timestamp` (unix seconds). The delivery
    id is signed too: a receiver deduplicates on it, so an attacker who could change it would
    make a replayed alert look new (or a new one look already seen)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{delivery_id}.".encode() + body,
                   hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, delivery_id: str, body: bytes, now: float | None = None,
           tolerance: float = TOLERANCE_S) -> bool:
    """What a receiver does: the signature matches this body and delivery id, and is recent."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
    except (ValueError, KeyError):
        return False
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, delivery_id, body), header)


class TargetRefused(ValueError):
    """A webhook URL the dispatcher will not send patient data to; the text says why."""


def _allowed_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                     allow_loopback: bool) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if ip.is_loopback:
        return allow_loopback
    # Global unicast only: not private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local
    # (169.254/16: cloud metadata services, fe80::/10), shared (100.64/10), reserved,
    # multicast or unspecified: none of those is a subscriber on the internet, and each may be
    # this site's own Kafka, InfluxDB or a cloud metadata endpoint.
    return ip.is_global and not ip.is_multicast


def check_target(url: str, allow_loopback_http: bool = False) -> httpx.URL:
    """The URL of a webhook as the dispatcher may use it: https (plain http only to loopback,
    with WEBHOOK_ALLOW_LOOPBACK_HTTP, a development setting), no credentials in it, a host
    name or address; TargetRefused with what to fix otherwise."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise TargetRefused(f"not a URL ({type(exc).__name__})") from None
    if u.scheme not in ("https", "http") or not u.host:
        raise TargetRefused("the URL must be https://host/...")
    if u.userinfo:
        raise TargetRefused("the URL must not hold credentials (the signature authenticates)")
    if u.scheme == "http" and not (allow_loopback_http and _loopback_name(u.host)):
        raise TargetRefused("the URL must be https:// (plain http carries patient data in clear)")
    return u


def _loopback_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pin(url: str, allow_loopback_http: bool = False,
        resolve: Callable[..., list[Any]] = socket.getaddrinfo) -> tuple[httpx.URL, str]:
    """Resolve a webhook's host now, at delivery time, and refuse it unless every address is
    public (loopback too with the development setting): a name that resolved to a public
    address when subscribed may point inside the site later (DNS rebinding). Returns the URL
    with the checked address in place of the name, and the name (the Host header and the
    certificate's name), so the connection goes to the address that was checked."""
    u = check_target(url, allow_loopback_http)
    try:
        infos = resolve(u.host, u.port or (443 if u.scheme == "https" else 80),
                        type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise TargetRefused("the host name does not resolve") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise TargetRefused("the host name does not resolve")
    bad = [a for a in addresses if not _allowed_address(a, allow_loopback_http)]
    if bad:
        raise TargetRefused(f"the host resolves to a non-public address ({bad[0]})")
    return u.copy_with(host=str(addresses[0])), u.host


class SubscriptionView:
    """Current subscriptions and the ward of every patient, from their topics."""

    def __init__(self, settings: Settings, client_id: str = "patient-twin-subscriptions"
                 ) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self.subscriptions: dict[str, Subscription] = {}
        self.registry = Registry(settings)  # fed by this view's follower, not its own
        self._decoder = msgspec.json.Decoder(Subscription)
        self.follower = Follower(settings, (settings.topic_subscriptions,
                                            settings.topic_patients), self.apply, client_id,
                                 on_reset=self._write_back)

    def start(self) -> SubscriptionView:
        self.follower.start()
        return self

    def stop(self) -> None:
        self.follower.stop()

    @property
    def skipped(self) -> dict[str, int]:
        """Records passed over because they are not valid, by topic."""
        return dict(self.follower.skipped)

    def apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """Apply one record; InvalidMessage, the view unchanged, for a record that is not valid.
        """
        if topic == self.settings.topic_subscriptions:
            sid = record_key(key)
            if value is None:
                with self._lock:
                    self.subscriptions.pop(sid, None)
                return
            sub = decode_record(self._decoder, value)
            if sub.schema != SUBSCRIPTION_SCHEMA:
                raise reject(f"schema {sub.schema!r} is not supported (expected "
                             f"{SUBSCRIPTION_SCHEMA!r})", "wrong_schema")
            with self._lock:
                self.subscriptions[sid] = sub
        elif topic == self.settings.topic_patients:
            self.registry.apply(topic, key, value)

    def _write_back(self, lost: set[str]) -> None:
        """The broker lost the subscriptions topic's records (a restart of a memory-only broker):
        write back those this view holds, so that subscribers keep receiving alerts."""
        if self.settings.topic_subscriptions not in lost:
            return
        with self._lock:
            subs = dict(self.subscriptions)
        writer = TopicWriter(self.settings, self.settings.topic_subscriptions)
        try:
            n = writer.put_all((sid, msgspec.json.encode(sub)) for sid, sub in subs.items())
        finally:
            writer.close()
        log.warning("wrote back %d webhook subscription(s) the broker lost", n)

    def snapshot(self) -> tuple[list[Subscription], dict[str, str | None]]:
        with self._lock:
            subs = list(self.subscriptions.values())
        return subs, self.registry.wards()


class DeliveryAttempt(msgspec.Struct, frozen=True):
    at: datetime
    status: int | None  # HTTP status, None: no answer
    error: str | None


class WebhookDeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery that failed every attempt (topic alert.webhook-dlq)."""

    schema: str = "patient-twin.webhook-dead-letter/1"
    subscription_id: str
    url: str
    delivery_id: str
    event: AlertEvent
    attempts: list[DeliveryAttempt]


def post(client: httpx.Client, url: str, body: bytes, headers: dict[str, str],
         allow_loopback_http: bool = False) -> tuple[int | None, str | None]:
    """POST to the address `pin` checked; returns (status, error). Never raises for network
    trouble; TargetRefused if the target is not allowed. A redirect is an answer like any other
    non-2xx one: following it would send a signed alert wherever the receiver points (httpx
    does not follow redirects unless asked)."""
    target, host = pin(url, allow_loopback_http)
    try:
        resp = client.post(target, content=body,
                           headers={**headers, "Host": _host_header(target, host)},
                           extensions={"sni_hostname": host})
    except httpx.HTTPError as exc:
        return None, type(exc).__name__
    return resp.status_code, None if resp.is_success else f"HTTP {resp.status_code}"


def _host_header(target: httpx.URL, host: str) -> str:
    default = 443 if target.scheme == "https" else 80
    shown = f"[{host}]" if ":" in host else host
    return shown if target.port in (None, default) else f"{shown}:{target.port}"


class Dispatcher:
    """Delivers alert events to matching webhooks; run by `patient-twin dispatcher`."""

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.view = SubscriptionView(settings, "patient-twin-dispatcher-subscriptions")
        self.sleep = sleep
        self.clock = clock
        self.delivered = 0
        self.dead = 0
        self._skipped_alerts = 0  # by any subscription's queue: each reads every alert
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._producer: Any = None
        # One pool for every queue's deliveries (httpx clients are thread-safe): a subscriber
        # receiving a burst of alerts gets them over a kept-alive connection.
        self.http = httpx.Client(
            timeout=settings.webhook_timeout_seconds, follow_redirects=False,
            headers={"Content-Type": "application/json",
                     "User-Agent": "patient-twin-webhooks/1"})

    def deliver(self, sub: Subscription, event_body: bytes, delivery_id: str
                ) -> list[DeliveryAttempt]:
        """Try up to WEBHOOK_MAX_ATTEMPTS times; returns the attempts (the last one succeeded
        if its status is 2xx)."""
        s = self.settings
        attempts: list[DeliveryAttempt] = []
        delay = s.webhook_backoff_seconds
        for n in range(s.webhook_max_attempts):
            ts = int(self.clock())
            try:
                status, err = post(self.http, sub.url, event_body,
                                   {SIGNATURE_HEADER: sign(sub.secret, ts, delivery_id,
                                                           event_body),
                                    DELIVERY_HEADER: delivery_id},
                                   s.webhook_allow_loopback_http)
            except TargetRefused as exc:
                # policy, not a network fault: no retry changes it, the dead letter says why
                attempts.append(DeliveryAttempt(datetime.now(UTC), None, f"refused: {exc}"))
                return attempts
            attempts.append(DeliveryAttempt(datetime.now(UTC), status, err))
            if status is not None and 200 <= status < 300:
                return attempts
            if n + 1 < s.webhook_max_attempts and not self._stop.is_set():
                self.sleep(delay)
                delay *= 2
        return attempts

    def stop(self) -> None:
        self._stop.set()

    @property
    def skipped(self) -> dict[str, int]:
        """Records passed over because they are not valid, by topic: alert events (once per
        subscription that read them), subscriptions and registry records."""
        with self._lock:
            return {**self.view.skipped, self.settings.topic_alerts: self._skipped_alerts}

    def skip(self, rec: Any, exc: InvalidMessage) -> None:
        """Count and log an alert record that is not a valid alert event: where and why, never
        what it holds."""
        with self._lock:
            self._skipped_alerts += 1
        log.warning("skipped the record at %s partition %d offset %d (%s)",
                    rec.topic, rec.partition, rec.offset, exc.kind)

    def _raise(self, event: AlertEvent) -> None:
        """Send a watchdog alert and wait until Kafka has it (it raises if not)."""
        self._producer.send(self.settings.topic_alerts, key=event.patient_id.encode(),
                            value=encode(event)).get(timeout=30)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Until stop(): one delivery queue per subscription, started and stopped as
        subscriptions come and go. `ready` is called once every queue holds its partitions."""
        from kafka import KafkaProducer

        # First, so that no broker at all ends the process in the producer's bootstrap timeout
        # with the CLI's one line, not after the minute the subscriptions may take (it took
        # 90 s, the last 30 after a "starting anyway"; tests/streams/test_cli.py).
        self._producer = KafkaProducer(client_id="patient-twin-dispatcher", acks="all",
                                       **kafka_python_producer_config(self.settings))
        guard: threading.Thread | None = None
        queues: dict[str, SubscriberQueue] = {}
        try:
            self.view.start()
            # Know every subscription before the first alert is matched; a stop ends the wait.
            deadline = time.monotonic() + 60
            while not self.view.follower.caught_up.wait(0.5):
                if self._stop.is_set():
                    return
                if time.monotonic() >= deadline:
                    log.warning("subscriptions not fully read after 60 s; starting anyway")
                    break
            # The watchdog's alerts go through the alerts topic like the workers', so every
            # subscriber (these webhooks, the SSE stream, Kafka readers, the dashboard) gets
            # them.
            self.watchdog = Watchdog(self.settings, registry=self.view.registry)
            guard = threading.Thread(target=self.watchdog.run, args=(self._raise,), daemon=True,
                                     name="patient-twin-watchdog")
            guard.start()
            announced = False
            while not self._stop.is_set():
                subs = {sub.id: sub for sub in self.view.snapshot()[0]}
                for sid in [q for q in queues if q not in subs]:
                    queues.pop(sid).stop()  # deleted: its pending deliveries are dropped
                for sid, sub in subs.items():
                    if sid not in queues:
                        queues[sid] = SubscriberQueue(self, sub)
                        queues[sid].start()
                if not announced and all(q.joined.is_set() for q in queues.values()):
                    announced = True
                    if ready is not None:
                        ready()
                self._stop.wait(0.3)
        finally:
            if guard is not None:
                self.watchdog.stop()
                guard.join(timeout=10)
            for q in queues.values():
                q.stop()
            for q in queues.values():
                q.join(timeout=30)
            self._producer.flush(10)
            self._producer.close(5)
            self.view.stop()
            self.http.close()

    def handle(self, sub: Subscription, rec: Any, event: AlertEvent) -> None:
        """Deliver one alert event to one subscription, or dead-letter it with its log."""
        _, wards = self.view.snapshot()
        if not matches(sub, event, wards.get(event.patient_id)):
            return
        delivery_id = hashlib.sha256(
            f"{sub.id}:{rec.topic}:{rec.partition}:{rec.offset}".encode()).hexdigest()[:32]
        attempts = self.deliver(sub, rec.value, delivery_id)
        last = attempts[-1]
        ok = last.status is not None and 200 <= last.status < 300
        if not ok and self._stop.is_set() and len(attempts) < self.settings.webhook_max_attempts:
            raise _Stopped  # retries cut short by a stop: not dead, pending for the restart
        with self._lock:
            if ok:
                self.delivered += 1
                return
            self.dead += 1
        log.warning("webhook %s failed %d times; dead-lettered", sub.id, len(attempts))
        dead = WebhookDeadLetter(subscription_id=sub.id, url=sub.url,
                                 delivery_id=delivery_id, event=event, attempts=attempts)
        self._producer.send(self.settings.topic_webhook_dlq, key=sub.id.encode(),
                            value=msgspec.json.encode(dead)).get(timeout=30)


class _Stopped(Exception):
    pass


CLOSE_TIMEOUT_MS = 5000


class SubscriberQueue(threading.Thread):
    """One subscription's deliveries, in its own consumer group on the alerts topic: a failing or
    slow subscriber (retries, backoff, timeouts) never delays another, and each resumes from its
    own committed offset after a restart. A new subscription's group starts at the first alert
    produced after the subscription was created, whenever the dispatcher gets to it."""

    def __init__(self, dispatcher: Dispatcher, sub: Subscription) -> None:
        super().__init__(name=f"webhook-{sub.id}", daemon=True)
        self.d = dispatcher
        self.sub = sub
        self.joined = threading.Event()  # start positions set for the current assignment
        self._fresh = False  # the broker lost its records: start positions from the new logs
        self._halt = threading.Event()  # not _stop: Thread uses that name

    def stop(self) -> None:
        self._halt.set()

    def _start_positions(self, consumer: Any, fresh: bool = False) -> None:
        """Seek every assigned partition to where this subscription's deliveries continue: the
        committed offset, or for a partition never committed (all of them when `fresh`) the
        first alert after the subscription was created (committed at once, so a restart starts
        there too)."""
        from kafka import OffsetAndMetadata

        assigned = list(consumer.assignment())
        committed = {tp: None if fresh else consumer.committed(tp) for tp in assigned}
        new = [tp for tp in assigned if committed[tp] is None]
        start: dict[Any, int] = {tp: committed[tp] for tp in assigned if committed[tp] is not None}
        if new:
            since = int(self.sub.created_at.timestamp() * 1000)
            found = consumer.offsets_for_times({tp: since for tp in new})
            ends = consumer.end_offsets(new)
            for tp in new:
                start[tp] = found[tp].offset if found.get(tp) is not None else ends[tp]
            consumer.commit({tp: OffsetAndMetadata(start[tp], "", -1) for tp in new})
        for tp, off in start.items():
            consumer.seek(tp, off)

    def run(self) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer
        from kafka.errors import KafkaError

        s = self.d.settings
        queue = self

        class Positions(ConsumerRebalanceListener):
            """Every new assignment gets its start positions set again (`_deliver_batch`)."""

            def on_partitions_revoked(self, revoked: Any) -> None:
                pass

            def on_partitions_assigned(self, assigned: Any) -> None:
                queue.joined.clear()

        consumer = KafkaConsumer(group_id=f"{s.app_id}-webhook-{self.sub.id}",
                                 client_id=f"patient-twin-webhook-{self.sub.id}",
                                 enable_auto_commit=False, auto_offset_reset="latest",
                                 session_timeout_ms=QUEUE_SESSION_TIMEOUT_MS,
                                 **kafka_python_consumer_config(s))
        consumer.subscribe([s.topic_alerts], listener=Positions())
        resets = self.d.view.follower.resets
        try:
            while not self._halt.is_set() and not self.d.stopping:
                try:
                    if self.d.view.follower.resets != resets:
                        # The broker lost its records (the view found its topics replaced):
                        # the group's committed offsets are gone, and a rejoin would start at
                        # the new log's end. Everything in the new log came after the loss:
                        # start again from the first alert after the subscription's creation.
                        # The same consumer rejoins by itself: one closed mid-join stayed the
                        # new broker's group leader, and the group never settled (tried).
                        resets = self.d.view.follower.resets
                        self._fresh = True
                        self.joined.clear()
                    if not self._deliver_batch(consumer):
                        return
                except KafkaError as exc:  # the broker went away: the consumer rejoins
                    log.warning("webhook %s: Kafka error (%s); retrying", self.sub.id,
                                type(exc).__name__)
                    self.joined.clear()
                    self._halt.wait(1.0)
        finally:
            # bounded: kafka-python would wait up to its request timeout (305 s) for a
            # coordinator that may be gone
            consumer.close(autocommit=False, timeout_ms=CLOSE_TIMEOUT_MS)

    def _deliver_batch(self, consumer: Any) -> bool:
        """Poll once and deliver what came; False when stopping mid-batch (what was not
        delivered is not committed: delivered after the restart)."""
        from kafka import OffsetAndMetadata, TopicPartition

        batch = consumer.poll(timeout_ms=300, max_records=100)
        if not self.joined.is_set() and consumer.assignment():
            self._start_positions(consumer, self._fresh)
            self._fresh = False  # only once it worked: a failed try is tried again
            self.joined.set()
            return True  # this batch was read from before the positions were set
        for tp, records in batch.items():
            for rec in records:
                if self._halt.is_set():
                    return False
                try:
                    event = decode_alert(rec.value)
                except InvalidMessage as exc:
                    self.d.skip(rec, exc)
                else:
                    try:
                        self.d.handle(self.sub, rec, event)
                    except _Stopped:
                        return False
                consumer.commit({TopicPartition(tp.topic, tp.partition):
                                 OffsetAndMetadata(rec.offset + 1, "", -1)})
        return True
