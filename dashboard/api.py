"""The HTTP API of alert subscribers, on the dashboard's web server (one origin for clinicians and
machines): webhook subscriptions and a live Server-Sent Events stream of alert events.

Every route needs `Authorization: Bearer <token>` (tokens from `patient-twin tokens add`, stored
hashed in API_TOKENS_FILE); nothing is served anonymously.

- `POST /api/subscriptions` `{"url", "wards"?, "patients"?, "min_priority"?, "kinds"?}` (https)
  -> 201 with the subscription and the secret the server made (shown once here; `GET` never)
- `GET /api/subscriptions` -> the subscriptions, without secrets
- `DELETE /api/subscriptions/<id>` -> 204, or 404
- `POST /api/alerts/<alert id>/acknowledge` or `/escalate` `{"comment"?}` and `POST /api/silences`
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

from dashboard.auth import Client, TokenStore
from dashboard.feed import TwinFeed
from dashboard.live import KEEPALIVE_S, event_stream
from streams.audit import AuditLog
from streams.config import Settings
from streams.follow import TopicWriter
from streams.messages import AlertAction, AlertEvent, encode
from streams.webhooks import Subscription, SubscriptionView, matches, new_subscription
from twin.policy import KINDS, split_alert_id


def SubscriptionWriter(settings: Settings) -> TopicWriter:  # noqa: N802 - a named constructor
    return TopicWriter(settings, settings.topic_subscriptions)


def _error(status: int, message: str) -> tuple[Response, int]:
    resp = jsonify({"error": message})
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="patient-twin"'
    return resp, status


def blueprint(settings: Settings, feed: TwinFeed, view: SubscriptionView,
              tokens: TokenStore | None = None,
              writer: SubscriptionWriter | None = None,
              audit: AuditLog | None = None) -> Blueprint:
    bp = Blueprint("api", __name__, url_prefix="/api")
    tokens = tokens or TokenStore(settings.api_tokens_file)
    writer = writer or SubscriptionWriter(settings)
    actions = TopicWriter(settings, settings.topic_alert_actions)
    own_audit = [] if audit is not None else [AuditLog(settings)]
    audit = audit or own_audit[0]
    # closed by dashboard.app.close
    bp.writers = (writer, actions, *own_audit)  # type: ignore[attr-defined]

    def client() -> Client:
        return g.client  # type: ignore[no-any-return]

    def record(action: str, *, patient_id: str | None = None, alert_id: str | None = None,
               detail: str | None = None, wait: bool = False) -> None:
        """Every API read and action is audited, under the token's name."""
        audit.record(f"token:{client().name}", action, role="api", patient_id=patient_id,
                     alert_id=alert_id, detail=detail, remote_addr=request.remote_addr,
                     wait=wait)

    def refuse(status: int, message: str, **about: str | None) -> tuple[Response, int]:
        record("denied", detail=f"{request.method} {request.path}: {message}", **about)
        return _error(status, message)

    def may_act_on(patient_id: str) -> bool:
        return client().may("act") and client().sees_ward(view.snapshot()[1].get(patient_id))

    @bp.before_request
    def authenticate() -> tuple[Response, int] | None:
        found = tokens.check(request.headers.get("Authorization"))
        if found is None:
            return _error(401, "a valid API token is required (Authorization: Bearer <token>)")
        g.client = found
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
        me = client()
        wards = body.pop("wards", None) or []
        if not me.sees_ward(None):  # a token of some wards subscribes to those only
            if not isinstance(wards, list) or not set(wards) <= set(me.wards):
                return refuse(403, f"this token covers wards {sorted(me.wards)} only")
            wards = wards or list(me.wards)
        subs, _ = view.snapshot()
        if sum(s.created_by == me.name for s in subs) >= settings.api_max_subscriptions:
            return refuse(403, f"this token has {settings.api_max_subscriptions} subscriptions"
                               " already (API_MAX_SUBSCRIPTIONS)")
        try:
            sub = new_subscription(created_by=me.name, wards=wards, **body,
                                   allow_loopback_http=settings.webhook_allow_loopback_http)
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))
        record("subscribe", detail=f"{sub.id} wards={sub.wards}", wait=True)
        writer.put(sub.id, msgspec.json.encode(sub))
        view.apply(settings.topic_subscriptions, sub.id.encode(), msgspec.json.encode(sub))
        return jsonify({**sub.public(), "secret": sub.secret}), 201

    def own(subs: list[Subscription]) -> list[Subscription]:
        """The subscriptions this token may see and delete: its own (admin: every one)."""
        me = client()
        return subs if me.may("admin") else [s for s in subs if s.created_by == me.name]

    @bp.get("/subscriptions")
    def list_() -> Response:
        subs, _ = view.snapshot()
        record("view_subscriptions")
        return jsonify([s.public() for s in sorted(own(subs), key=lambda s: s.created_at)])

    @bp.delete("/subscriptions/<sub_id>")
    def delete(sub_id: str) -> tuple[Response | str, int]:
        subs, _ = view.snapshot()
        if sub_id not in {s.id for s in own(subs)}:  # another client's: as if it did not exist
            return refuse(404, f"no subscription {sub_id}")
        record("unsubscribe", detail=sub_id, wait=True)
        writer.put(sub_id, None)
        view.apply(settings.topic_subscriptions, sub_id.encode(), None)
        return "", 204

    @bp.post("/alerts/<alert_id>/<any(acknowledge, escalate):verb>")
    def act(alert_id: str, verb: str) -> tuple[Response, int]:
        body = request.get_json(silent=True)
        body = body if isinstance(body, dict) else {}
        comment = body.get("comment")
        if comment is not None and not (isinstance(comment, str) and len(comment) <= 500):
            return _error(400, "comment must be text of at most 500 characters")
        pid = split_alert_id(alert_id)[0]
        if not may_act_on(pid):
            return refuse(403, "this token may not act on this patient's alerts",
                          patient_id=pid, alert_id=alert_id)
        me = client().name
        action = AlertAction(action=verb, patient_id=pid, by=me,  # type: ignore[arg-type]
                             ts=datetime.now(UTC), alert_id=alert_id, comment=comment)
        record(verb, patient_id=pid, alert_id=alert_id, wait=True)
        actions.put(pid, msgspec.json.encode(action))
        return jsonify({"accepted": True, "alert_id": alert_id, "by": me}), 202

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
                "action": "silence", "patient_id": body["patient_id"], "by": client().name,
                "ts": datetime.now(UTC).isoformat(), "kind": body["kind"],
                "reason": body["reason"],
                "until": (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()},
                AlertAction)
        except (KeyError, TypeError, ValueError, msgspec.ValidationError):
            return _error(400, "patient_id, kind, reason and minutes (at most "
                          f"{settings.alert_silence_max_minutes}) are required")
        if action.kind not in KINDS or not (action.reason or "").strip():
            return _error(400, f"kind must be one of {', '.join(KINDS)}, with a reason")
        if not may_act_on(action.patient_id):
            return refuse(403, "this token may not act on this patient's alerts",
                          patient_id=action.patient_id)
        record("silence", patient_id=action.patient_id,
               detail=f"{action.kind} for {minutes:g} min: {action.reason}", wait=True)
        actions.put(action.patient_id, msgspec.json.encode(action))
        return jsonify({"accepted": True, "until": action.until.isoformat()
                        if action.until else None}), 202

    @bp.get("/alerts/stream")
    def stream() -> Response | tuple[Response, int]:
        args = request.args
        try:
            flt = msgspec.convert({
                "id": "sse", "url": "http://sse", "secret": "-", "created_by": client().name,
                "created_at": datetime.now(UTC).isoformat(),
                "patients": args.getlist("patient"), "wards": args.getlist("ward"),
                "kinds": args.getlist("kind"),
                "min_priority": args.get("min_priority", "low")}, Subscription)
        except msgspec.ValidationError as exc:
            return _error(400, str(exc))
        me = client()
        record("view_alerts", detail=request.query_string.decode(errors="replace")[:200])
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
                    ward = view.snapshot()[1].get(ev.patient_id)
                    if not me.sees_ward(ward) or not matches(flt, ev, ward):
                        continue
                    # the event as the worker wrote it on Kafka
                    yield (f"id: {ev.alert_id}\nevent: {ev.event}\n"
                           f"data: {encode(ev).decode()}\n\n")
            finally:
                feed.unlisten(q)

        return event_stream(events())

    return bp
