"""The HTTP API of alert subscribers, on the dashboard's web server (one origin for clinicians and
machines): webhook subscriptions and a live Server-Sent Events stream of alert events.

Every route needs `Authorization: Bearer <token>` (tokens from `patient-twin tokens add`, stored
hashed in API_TOKENS_FILE); nothing is served anonymously.

- `POST /api/subscriptions` `{"url", "wards"?, "patients"?, "min_priority"?, "kinds"?}` (https)
  -> 201 with the subscription and the secret the server made (shown once here; `GET` never)
- `GET /api/subscriptions` -> the subscriptions, without secrets
- `DELETE /api/subscriptions/<id>` -> 204, or 404
- `POST /api/alerts/<alert id>/acknowledge` `{"comment"?}` and `POST /api/silences`
  `{"patient_id", "kind", "reason", "minutes"}` -> 202: the action goes to the alert.actions topic
  and the worker that owns the patient applies it (the alert event then shows who and why)
- `GET /api/alerts/stream?patient=&ward=&min_priority=&kind=` -> `text/event-stream`: one event
  per alert event from now on (`id:` the alert id, `event:` raised/updated/.../resolved, `data:`
  the alert JSON), a comment every 15 s to keep proxies from closing it. A client that reads
  too slowly to keep up loses events rather than holding up the server; it is told with an
  `event: dropped` (`data: {"dropped": n}`, the count so far) and can re-read what it missed.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
from flask import Blueprint, Response, g, jsonify, request

from dashboard.auth import TokenStore
from dashboard.feed import TwinFeed
from dashboard.live import KEEPALIVE_S, event_stream
from streams.config import Settings
from streams.follow import TopicWriter
from streams.messages import AlertAction, AlertEvent, encode
from streams.webhooks import Subscription, SubscriptionView, matches, new_subscription
from twin.alerts import KINDS


def SubscriptionWriter(settings: Settings) -> TopicWriter:  # noqa: N802 - a named constructor
    return TopicWriter(settings, settings.topic_subscriptions)


def _error(status: int, message: str) -> tuple[Response, int]:
    resp = jsonify({"error": message})
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="patient-twin"'
    return resp, status


def blueprint(settings: Settings, feed: TwinFeed, view: SubscriptionView,
              tokens: TokenStore | None = None,
              writer: SubscriptionWriter | None = None) -> Blueprint:
    bp = Blueprint("api", __name__, url_prefix="/api")
    tokens = tokens or TokenStore(settings.api_tokens_file)
    writer = writer or SubscriptionWriter(settings)
    actions = TopicWriter(settings, settings.topic_alert_actions)
    bp.writers = (writer, actions)  # type: ignore[attr-defined]  # closed by dashboard.app.close

    @bp.before_request
    def authenticate() -> tuple[Response, int] | None:
        name = tokens.check(request.headers.get("Authorization"))
        if name is None:
            return _error(401, "a valid API token is required (Authorization: Bearer <token>)")
        g.client = name
        return None

    @bp.post("/subscriptions")
    def create() -> tuple[Response, int]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or "url" not in body:
            return _error(400, "expected a JSON object with at least \"url\"")
        # no "secret": the server makes it (a client's may be short or reused)
        allowed = {"url", "wards", "patients", "min_priority", "kinds"}
        extra = set(body) - allowed
        if extra:
            return _error(400, f"unknown fields {sorted(extra)} (allowed: {sorted(allowed)})")
        try:
            sub = new_subscription(created_by=g.client, **body,
                                   allow_loopback_http=settings.webhook_allow_loopback_http)
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))
        writer.put(sub.id, msgspec.json.encode(sub))
        view.apply(settings.topic_subscriptions, sub.id.encode(), msgspec.json.encode(sub))
        return jsonify({**sub.public(), "secret": sub.secret}), 201

    @bp.get("/subscriptions")
    def list_() -> Response:
        subs, _ = view.snapshot()
        return jsonify([s.public() for s in sorted(subs, key=lambda s: s.created_at)])

    @bp.delete("/subscriptions/<sub_id>")
    def delete(sub_id: str) -> tuple[Response | str, int]:
        subs, _ = view.snapshot()
        if sub_id not in {s.id for s in subs}:
            return _error(404, f"no subscription {sub_id}")
        writer.put(sub_id, None)
        view.apply(settings.topic_subscriptions, sub_id.encode(), None)
        return "", 204

    @bp.post("/alerts/<alert_id>/acknowledge")
    def acknowledge(alert_id: str) -> tuple[Response, int]:
        body = request.get_json(silent=True) or {}
        pid = alert_id.rsplit(":", 2)[0]
        action = AlertAction(action="acknowledge", patient_id=pid, by=g.client,
                             ts=datetime.now(UTC), alert_id=alert_id,
                             comment=body.get("comment"))
        actions.put(pid, msgspec.json.encode(action))
        return jsonify({"accepted": True, "alert_id": alert_id, "by": g.client}), 202

    @bp.post("/silences")
    def silence() -> tuple[Response, int]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "expected a JSON object with patient_id, kind, reason, minutes")
        try:
            minutes = float(body["minutes"])
            if not 0 < minutes <= settings.alert_silence_max_minutes:
                raise ValueError
            action = msgspec.convert({
                "action": "silence", "patient_id": body["patient_id"], "by": g.client,
                "ts": datetime.now(UTC).isoformat(), "kind": body["kind"],
                "reason": body["reason"],
                "until": (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()},
                AlertAction)
        except (KeyError, TypeError, ValueError, msgspec.ValidationError):
            return _error(400, "patient_id, kind, reason and minutes (at most "
                          f"{settings.alert_silence_max_minutes}) are required")
        if action.kind not in KINDS or not (action.reason or "").strip():
            return _error(400, f"kind must be one of {', '.join(KINDS)}, with a reason")
        actions.put(action.patient_id, msgspec.json.encode(action))
        return jsonify({"accepted": True, "until": action.until.isoformat()
                        if action.until else None}), 202

    @bp.get("/alerts/stream")
    def stream() -> Response | tuple[Response, int]:
        args = request.args
        try:
            flt = msgspec.convert({
                "id": "sse", "url": "http://sse", "secret": "-", "created_by": g.client,
                "created_at": datetime.now(UTC).isoformat(),
                "patients": args.getlist("patient"), "wards": args.getlist("ward"),
                "kinds": args.getlist("kind"),
                "min_priority": args.get("min_priority", "low")}, Subscription)
        except msgspec.ValidationError as exc:
            return _error(400, str(exc))
        q = feed.listen()

        def events() -> Iterator[str]:
            try:
                yield ": connected\n\n"
                dropped = 0
                while True:
                    try:
                        ev = q.get(timeout=KEEPALIVE_S)
                    except queue.Empty:
                        yield ": keepalive\n\n"
                        continue
                    if not isinstance(ev, AlertEvent):
                        return  # ENDED, the feed stopped: all else here is an alert event
                    if q.dropped > dropped:
                        # this client read too slowly: say so, so it can re-read the list
                        dropped = q.dropped
                        yield f'event: dropped\ndata: {{"dropped":{dropped}}}\n\n'
                    _, wards = view.snapshot()
                    if not matches(flt, ev, wards.get(ev.patient_id)):
                        continue
                    # the event as the worker wrote it on Kafka
                    yield (f"id: {ev.alert_id}\nevent: {ev.event}\n"
                           f"data: {encode(ev).decode()}\n\n")
            finally:
                feed.unlisten(q)

        return event_stream(events())

    return bp
