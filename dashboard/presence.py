"""Presence in the ward (issue 21 item 1): clinicians of the same ward, in `/vr` or on the ward
page, see who else is there, where they stand and look, which bed each points at, and can call
colleagues to a bed (a shared focus marker per ward, with a HUD message and a short sound).

Routes, all behind the dashboard login (no session: 401):

- `POST /presence/pose` `{"ward", "x", "y", "z", "yaw", "pitch", "looking"?, "pointing"?}`
  -> 204: where this session's user stands (metres, in the ward's own frame: `wards` of
  `/vr/state.json`, so viewers whose scenes lay the wards out differently agree) and looks
  (radians). At most `POSE_RATE` a second per session (429 beyond). The name and role are the
  session's, never the client's.
- `POST /presence/call` `{"patient_id"}` -> 202: moves the ward's focus marker to that bed and
  tells everyone in the ward. At most `CALL_RATE` per `CALL_WINDOW_S` per session.
- `POST /presence/leave` -> 204.
- `GET /presence/stream`: Server-Sent Events, an `event: presence` with the whole visible
  picture (`snapshot`) whenever it changes; `GET /presence.json` the same once (the fallback
  poll of a page that gets no stream).

Shared by every replica through the compacted topic `dashboard.presence` (key `pose:<id>` for a
session's presence, `call:<ward>` for a ward's marker), which each replica follows; a replica
also applies its own writes at once, so its own viewers do not wait for the broker. A presence
is forgotten `EXPIRE_S` after its last update. A viewer sees the presences and calls of the
wards they may see, nothing else, and a patient id in a presence must be a patient of that
presence's ward whom its user may see. Joining, leaving, each new patient looked at and each
call are audited; poses are not.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

import msgspec
from flask import Blueprint, Response, jsonify, request, session

from dashboard import login
from dashboard.auth import User
from dashboard.context import Context
from dashboard.live import KEEPALIVE_S, RETRY_MS, STREAM_S, event_stream
from streams.config import Settings
from streams.follow import Follower, TopicWriter, record_key
from streams.messages import decode_with

EXPIRE_S = 10.0  # a presence without an update for this long has left (a closed headset)
CALL_SHOWN_S = 120.0  # a call's marker stays this long, unless another call moves it
POSE_RATE = 10  # pose updates a second per session; the pages send at most 5
CALL_RATE, CALL_WINDOW_S = 5, 60.0  # calls per session: enough to correct a wrong bed
COORD_MAX_M = 1000.0  # a ward row of 500 beds is 625 m long
BODY_MAX = 2048  # bytes of a request body: a pose is about 200
PUSH_MIN_S = 0.05  # a stream sends at most 20 pictures a second, a burst of poses as one
ID_LEN = 64  # longest ward or patient id accepted (longer ones exist nowhere)

Coord = Annotated[float, msgspec.Meta(ge=-COORD_MAX_M, le=COORD_MAX_M)]
Height = Annotated[float, msgspec.Meta(ge=-1.0, le=5.0)]  # eyes above the floor: sit to stand
Yaw = Annotated[float, msgspec.Meta(ge=-math.pi - 1e-6, le=math.pi + 1e-6)]
Pitch = Annotated[float, msgspec.Meta(ge=-math.pi / 2 - 1e-6, le=math.pi / 2 + 1e-6)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_LEN)]


class PoseIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A pose as a page sends it. No name or role: those are the session's."""

    ward: Id
    x: Coord = 0.0
    y: Height = 1.6
    z: Coord = 0.0
    yaw: Yaw = 0.0  # radians about the vertical, 0 = looking along -z (A-Frame's forward)
    pitch: Pitch = 0.0  # radians, up positive
    looking: Id | None = None  # the patient whose bed the gaze has rested on
    pointing: Id | None = None  # the patient whose bed the controller or mouse ray is on


class CallIn(msgspec.Struct, forbid_unknown_fields=True):
    patient_id: Id


class Pose(msgspec.Struct, frozen=True, kw_only=True, tag="pose"):
    """A session's presence (topic dashboard.presence, key `pose:<presence id>`)."""

    user: str  # the session's user name
    role: str
    ward: str
    device: Literal["vr", "desktop"]  # in the 3D scene, or on the ward page (no position)
    x: float = 0.0  # metres in the ward's frame
    y: float = 0.0
    z: float = 0.0
    yaw: float = 0.0  # radians
    pitch: float = 0.0
    looking: str | None = None
    pointing: str | None = None
    ts: float  # epoch seconds (the server's clock) of the update


class Call(msgspec.Struct, frozen=True, kw_only=True, tag="call"):
    """A ward's shared focus marker (topic dashboard.presence, key `call:<ward>`)."""

    id: str  # new per call: the pages notify once per call
    by: str
    role: str
    ward: str
    patient_id: str
    ts: float


_decoder = msgspec.json.Decoder(Pose | Call)


def presence_id(sid: str) -> str:
    """The public id of a session's presence: the session id itself stays secret (it is what a
    logout revokes), so other users get a hash of it."""
    return hashlib.sha256(b"presence\x00" + sid.encode()).hexdigest()[:16]


class RateLimit:
    """At most `allowed` events per `window_s` per key, in a store of at most `max_keys` keys
    (the least recently used dropped first), so a flood of sessions cannot fill memory."""

    def __init__(self, allowed: int, window_s: float, max_keys: int = 100_000) -> None:
        self.allowed, self.window_s, self.max_keys = allowed, window_s, max_keys
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, now: float) -> bool:
        """Count one event of `key`; False if it is over the limit (then it is not counted)."""
        with self._lock:
            q = self._seen.setdefault(key, deque())
            self._seen.move_to_end(key)
            while q and now - q[0] >= self.window_s:
                q.popleft()
            if len(q) >= self.allowed:
                return False
            q.append(now)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
            return True


class PresenceBoard:
    """Every replica's presences and calls: read from and written to the presence topic, with a
    version that streams wait on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._poses: dict[str, Pose] = {}
        self._calls: dict[str, Call] = {}
        self._left: dict[str, float] = {}  # presence id -> when it left (its echo is older)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.version = 0
        self._writer = TopicWriter(settings, settings.topic_presence)
        self.follower = Follower(settings, (settings.topic_presence,), self.apply,
                                 "patient-twin-dashboard-presence")

    def start(self) -> PresenceBoard:
        self.follower.start()
        return self

    def close(self) -> None:
        self.follower.stop()
        self._writer.close()

    def apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        k = record_key(key)
        kind, _, name = k.partition(":")
        now = time.time()
        with self._changed:
            if kind == "pose":
                if value is None:
                    self._poses.pop(name, None)
                    self._left[name] = now
                else:
                    p = decode_with(_decoder, value)
                    old = self._poses.get(name)
                    # a replica's own write comes back from the broker after newer ones were
                    # applied here, and a pose sent just before leaving after the leave
                    if not isinstance(p, Pose) or (old is not None and p.ts < old.ts) or (
                            p.ts <= self._left.get(name, -1.0)):
                        return
                    self._poses[name] = p
            elif kind == "call":
                c = decode_with(_decoder, value) if value is not None else None
                if c is None:
                    self._calls.pop(name, None)
                elif isinstance(c, Call) and c.ts >= getattr(self._calls.get(name), "ts", 0.0):
                    self._calls[name] = c
            else:
                return
            self._prune(now)
            self.version += 1
            self._changed.notify_all()

    def _prune(self, now: float) -> None:
        """Forget expired presences, calls and leaves (under the lock): the store stays as small
        as the ward is full."""
        for d, keep in ((self._poses, EXPIRE_S), (self._calls, CALL_SHOWN_S)):
            for k in [k for k, v in d.items() if now - v.ts > keep]:
                del d[k]
        for k in [k for k, t in self._left.items() if now - t > EXPIRE_S]:
            del self._left[k]

    def put(self, key: str, value: Pose | Call | None) -> None:
        """Apply here at once, then share with the other replicas (not waited for: a pose is
        replaced a moment later anyway)."""
        data = msgspec.json.encode(value) if value is not None else None
        self.apply(self.settings.topic_presence, key.encode(), data)
        self._writer.put(key, data, wait=False)

    def pose(self, pid: str, now: float | None = None) -> Pose | None:
        now = time.time() if now is None else now
        with self._lock:
            p = self._poses.get(pid)
            return p if p is not None and now - p.ts <= EXPIRE_S else None

    def wait(self, version: int, timeout: float) -> int:
        """Wait until the version differs from `version` (or `timeout`); the version now."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != version, timeout=timeout)
            return self.version

    def snapshot(self, viewer: User, me: str | None, ward_of: Callable[[str], str | None],
                 now: float | None = None) -> dict[str, Any]:
        """What `viewer` may see: the presences and calls of their wards. A patient id is
        shown only while that patient is still in the presence's ward (a transfer since the
        update would otherwise show it to the wrong ward)."""
        now = time.time() if now is None else now
        with self._lock:
            poses = [(k, p) for k, p in self._poses.items()
                     if now - p.ts <= EXPIRE_S and viewer.sees_ward(p.ward)]
            calls = [c for c in self._calls.values()
                     if now - c.ts <= CALL_SHOWN_S and viewer.sees_ward(c.ward)]

        def same_ward(pid: str | None, ward: str) -> str | None:
            return pid if pid is not None and ward_of(pid) == ward else None

        people = [{"id": k, "me": k == me, "user": p.user, "role": p.role, "ward": p.ward,
                   "device": p.device, "x": p.x, "y": p.y, "z": p.z, "yaw": p.yaw,
                   "pitch": p.pitch, "looking": same_ward(p.looking, p.ward),
                   "pointing": same_ward(p.pointing, p.ward), "ts": p.ts}
                  for k, p in sorted(poses, key=lambda kp: (kp[1].ward, kp[1].user, kp[0]))]
        return {"people": people,
                "calls": [{"id": c.id, "by": c.by, "role": c.role, "ward": c.ward,
                           "patient_id": c.patient_id, "ts": c.ts}
                          for c in sorted(calls, key=lambda c: c.ward)
                          if ward_of(c.patient_id) == c.ward]}


class Refused(Exception):
    """A presence request that is not allowed: the status and the reason to answer."""

    def __init__(self, status: int, message: str, patient_id: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.patient_id = status, message, patient_id


class Presence:
    """The checks and writes of presence, shared by the HTTP routes (the VR page) and the ward
    page's callbacks (the desktop), so both go through the same rules and audit."""

    def __init__(self, c: Context, board: PresenceBoard) -> None:
        self.c = c
        self.board = board
        self.poses = RateLimit(POSE_RATE, 1.0)
        self.calls = RateLimit(CALL_RATE, CALL_WINDOW_S)

    def ward_of(self, pid: str) -> str | None:
        rec = self.c.feed.registry.get(pid)
        return rec.ward if rec is not None and rec.event != "discharge" else None

    def _patient(self, u: User, pid: str | None, ward: str) -> str | None:
        """`pid` if `u` may see that patient and they are in `ward`; else Refused (the same
        answer whether the patient exists or not)."""
        if pid is None:
            return None
        if not self.c.may_see(u, pid) or self.ward_of(pid) != ward:
            raise Refused(403, f"no patient {pid} in ward {ward} on your wards", pid)
        return pid

    def _denied(self, u: User, why: Refused) -> None:
        self.c.audit.record(u.name, "denied", role=u.role, patient_id=why.patient_id,
                            detail=f"presence: {why.message}", remote_addr=request.remote_addr)

    def update(self, u: User, sid: str, pose: PoseIn | None, device: Literal["vr", "desktop"],
               ward: str | None = None) -> str:
        """Record where `u` (session `sid`) is: a pose from the VR page, or (pose None) being on
        the ward page of `ward`. Audits a join and each new patient looked at. Returns the
        presence id; Refused when over the rate, outside the user's wards, or naming a patient
        they may not see there."""
        now = time.time()
        if not self.poses.take(sid, time.monotonic()):
            raise Refused(429, f"at most {POSE_RATE} pose updates a second")
        ward = pose.ward if pose is not None else ward
        if not ward or not u.sees_ward(ward):
            why = Refused(403, f"ward {ward} is not one of yours")
            self._denied(u, why)
            raise why
        try:
            looking = self._patient(u, pose.looking, ward) if pose else None
            pointing = self._patient(u, pose.pointing, ward) if pose else None
        except Refused as why:
            self._denied(u, why)
            raise
        pid = presence_id(sid)
        old = self.board.pose(pid, now)
        addr = request.remote_addr
        if old is None or old.ward != ward or old.device != device:
            self.c.audit.record(u.name, "join_presence", role=u.role,
                                detail=f"ward {ward} ({device})", remote_addr=addr)
        if looking is not None and (old is None or old.looking != looking):
            self.c.audit.record(u.name, "presence_focus", role=u.role, patient_id=looking,
                                detail=f"ward {ward}", remote_addr=addr)
        fields: dict[str, Any] = {}
        if pose is not None:
            fields = {"x": pose.x, "y": pose.y, "z": pose.z, "yaw": pose.yaw,
                      "pitch": pose.pitch, "looking": looking, "pointing": pointing}
        self.board.put(f"pose:{pid}", Pose(user=u.name, role=u.role, ward=ward, device=device,
                                           ts=now, **fields))
        return pid

    def call(self, u: User, sid: str, patient_id: str) -> Call:
        """Call the colleagues of the patient's ward to their bed: audited (and acknowledged by
        the broker) before the marker moves."""
        if not self.calls.take(sid, time.monotonic()):
            raise Refused(429, f"at most {CALL_RATE} calls a minute")
        ward = self.ward_of(patient_id)
        if ward is None or not self.c.may_see(u, patient_id):
            why = Refused(403, f"no patient {patient_id} on your wards", patient_id)
            self._denied(u, why)
            raise why
        self.c.audit.record(u.name, "presence_call", role=u.role, patient_id=patient_id,
                            detail=f"ward {ward}", remote_addr=request.remote_addr, wait=True)
        call = Call(id=secrets.token_hex(8), by=u.name, role=u.role, ward=ward,
                    patient_id=patient_id, ts=time.time())
        self.board.put(f"call:{ward}", call)
        return call

    def leave(self, u: User, sid: str) -> None:
        pid = presence_id(sid)
        old = self.board.pose(pid)
        if old is not None:
            self.c.audit.record(u.name, "leave_presence", role=u.role,
                                detail=f"ward {old.ward} ({old.device})",
                                remote_addr=request.remote_addr)
            self.board.put(f"pose:{pid}", None)

    def snapshot(self, u: User, sid: str | None) -> dict[str, Any]:
        return self.board.snapshot(u, presence_id(sid) if sid else None, self.ward_of)


def stream(board: PresenceBoard, picture: Callable[[], dict[str, Any]],
           stream_s: float = STREAM_S, keepalive_s: float = KEEPALIVE_S) -> Iterator[str]:
    """The stream's text: the picture at once, then each time it changes (checked at every
    board change and at least each second, for expiries), a `ping` after `keepalive_s` of
    quiet, for `stream_s` in all."""
    yield f"retry: {RETRY_MS}\n\n"
    end = time.monotonic() + stream_s
    last, version, quiet = "", -1, time.monotonic()
    while (left := end - time.monotonic()) > 0:
        doc = json.dumps(picture(), separators=(",", ":"))
        if doc != last:
            last, quiet = doc, time.monotonic()
            yield f"event: presence\ndata: {doc}\n\n"
            time.sleep(PUSH_MIN_S)
        elif time.monotonic() - quiet >= keepalive_s:
            quiet = time.monotonic()
            yield "event: ping\ndata: {}\n\n"
        version = board.wait(version, timeout=min(1.0, left))


def _body(kind: type[PoseIn] | type[CallIn]) -> Any:
    """The request's JSON body as `kind`; Refused otherwise. Only `application/json`: a form of
    another site cannot send that without the browser asking this server first (CORS), which it
    refuses, so no cross-site page can move or call in a clinician's name."""
    if request.mimetype != "application/json":
        raise Refused(415, "send application/json")
    if (request.content_length or 0) > BODY_MAX:
        raise Refused(413, f"at most {BODY_MAX} bytes")
    try:
        return msgspec.json.decode(request.get_data(cache=False)[:BODY_MAX + 1], type=kind)
    except msgspec.DecodeError as exc:
        raise Refused(400, f"invalid: {exc}") from None


def blueprint(c: Context, presence: Presence) -> Blueprint:
    bp = Blueprint("presence", __name__)

    def who() -> tuple[User, str]:
        u, sid = login.user(), session.get("sid")
        if u is None or not sid:  # the login guard answers first; this is its backstop
            raise Refused(401, "log in first")
        return u, str(sid)

    @bp.errorhandler(Refused)
    def refused(why: Refused) -> tuple[Response, int]:
        return jsonify({"error": why.message}), why.status

    @bp.post("/presence/pose")
    def pose() -> tuple[str, int]:
        u, sid = who()
        presence.update(u, sid, _body(PoseIn), "vr")
        return "", 204

    @bp.post("/presence/call")
    def call() -> tuple[Response, int]:
        u, sid = who()
        made = presence.call(u, sid, _body(CallIn).patient_id)
        return jsonify({"ward": made.ward, "patient_id": made.patient_id, "id": made.id}), 202

    @bp.post("/presence/leave")
    def leave() -> tuple[str, int]:
        u, sid = who()
        presence.leave(u, sid)
        return "", 204

    @bp.get("/presence.json")
    def picture() -> Response:
        u, sid = who()
        return jsonify(presence.snapshot(u, sid))

    @bp.get("/presence/stream")
    def stream_() -> Response:
        u, sid = who()
        if not c.stream_slots.acquire(blocking=False):
            return Response("too many live pages open: this page polls instead\n", status=503,
                            mimetype="text/plain")
        # the user and session are read here: the stream runs after the request context
        resp = event_stream(stream(presence.board, lambda: presence.snapshot(u, sid)))
        resp.call_on_close(c.stream_slots.release)
        return resp

    return bp
