"""Sessions for people: the login page, logout, and the guard in front of every dashboard route.

Flask-Login keeps the session in a signed cookie (DASHBOARD_SECRET_KEY). The session id includes
a fragment of the password hash, so a password reset (`patient-twin users add` again) ends the
user's open sessions. Cookies are HttpOnly and SameSite=Lax (a cross-site page cannot post
to the dashboard with them), Secure under --https. `/api/*` has its own bearer-token check.
"""

from __future__ import annotations

import hmac
import html
import secrets
import threading
import time
from collections import OrderedDict, deque
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, redirect, request, session
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user

from dashboard.auth import User, UserStore
from dashboard.sessions import RevokedSessions
from streams.audit import AuditLog
from streams.config import Settings

PUBLIC_PREFIXES = ("/login", "/api/")
# answered 401, not redirected to the login page
DATA_PREFIXES = ("/_dash", "/vr/state.json", "/live/", "/presence")
NAME_MAX = 64  # longest user name (dashboard.auth)
FAILURES_ALLOWED = 5  # failed logins of a name from one address in FAILURE_WINDOW_S
ADDRESS_FAILURES_ALLOWED = 20  # failed logins from one address, any names
FAILURE_WINDOW_S = 300.0
MAX_KEYS = 100_000  # throttle entries kept (about 20 MB at most)


class SessionUser(UserMixin):
    def __init__(self, user: User) -> None:
        self.user = user

    def get_id(self) -> str:
        return f"{self.user.name}:{self.user.password_hash[-12:]}"

    @property
    def name(self) -> str:
        return self.user.name


def user() -> User | None:
    """The logged-in user of this request, or None."""
    return current_user.user if current_user.is_authenticated else None


class _Throttle:
    """Failed logins in the last FAILURE_WINDOW_S, per user name from one address and per
    address: FAILURES_ALLOWED for a name from an address (a guesser is stopped, and cannot lock
    a clinician out from anywhere else), ADDRESS_FAILURES_ALLOWED from an address across names
    (spraying one password over many names). At most MAX_KEYS keys, the least recently failed
    dropped first, so a flood of names or addresses cannot fill memory."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._fails: OrderedDict[str, deque[float]] = OrderedDict()
        self._max = max_keys
        self._lock = threading.Lock()

    @staticmethod
    def _keys(name: str, addr: str) -> tuple[tuple[str, int], ...]:
        return ((f"{addr}\x00{name}", FAILURES_ALLOWED), (addr, ADDRESS_FAILURES_ALLOWED))

    def blocked(self, name: str, addr: str, now: float) -> bool:
        with self._lock:
            for key, allowed in self._keys(name, addr):
                q = self._fails.get(key)
                while q and now - q[0] > FAILURE_WINDOW_S:
                    q.popleft()
                if q is not None and len(q) >= allowed:
                    return True
            return False

    def fail(self, name: str, addr: str, now: float) -> None:
        with self._lock:
            for key, _ in self._keys(name, addr):
                self._fails.setdefault(key, deque(maxlen=ADDRESS_FAILURES_ALLOWED)).append(now)
                self._fails.move_to_end(key)
            while len(self._fails) > self._max:
                self._fails.popitem(last=False)

    def clear(self, name: str, addr: str) -> None:
        with self._lock:
            self._fails.pop(self._keys(name, addr)[0][0], None)

    def __len__(self) -> int:
        return len(self._fails)


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>patient-twin · log in</title><meta name="viewport" content="width=device-width">
<style>body{{font-family:system-ui,sans-serif;background:#f3f5f7;display:flex;
justify-content:center;margin-top:12vh}}form{{background:#fff;padding:2em;border-radius:8px;
box-shadow:0 1px 4px #0002;min-width:18em}}label,input,button{{display:block;width:100%;
margin:.4em 0}}input{{padding:.5em;box-sizing:border-box}}button{{padding:.6em;background:#1f5f9f;
color:#fff;border:0;border-radius:4px}}.error{{color:#b00020}}:focus-visible{{outline:3px solid
#1f5f9f;outline-offset:2px}}</style></head><body><main>
<form method="post" action="/login"><h1>patient-twin</h1>{training}{error}
<input type="hidden" name="next" value="{next}"><input type="hidden" name="csrf" value="{csrf}">
<label for="username">User name</label><input id="username" name="username" required autofocus
autocomplete="username"><label for="password">Password</label><input id="password"
name="password" type="password" required autocomplete="current-password">
<button id="login" type="submit">Log in</button></form></main></body></html>"""


_LOGOUT = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>patient-twin · log out</title></head><body><main><form method="post" action="/logout">
<input type="hidden" name="csrf" value="{csrf}"><button id="logout" type="submit">Log out</button>
</form></main></body></html>"""


def csrf_token() -> str:
    """This browser session's token for forms that change something (login, logout): a page of
    another site cannot read it, so it cannot post them in the user's name."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


def _csrf_ok() -> bool:
    sent, kept = request.form.get("csrf") or "", session.get("csrf") or ""
    return bool(kept) and hmac.compare_digest(sent.encode(), str(kept).encode())


def _passive() -> bool:
    """A request a page makes by itself (timers, live push, the VR scene's polling): not a
    sign that its user is there."""
    if request.path.startswith(("/live/", "/vr/state.json", "/presence/stream",
                                "/presence.json", "/presence/pose")):
        return True  # a headset's pose changes by itself: a call or a click is activity
    if request.path == "/_dash-update-component":
        body = request.get_json(silent=True) or {}
        changed = body.get("changedPropIds") or []
        return bool(changed) and all(str(c).endswith(".n_intervals") for c in changed)
    return False


def _safe_next(target: str | None) -> str:
    """Only a local path: never redirect a fresh login to another site."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def install(server: Flask, settings: Settings, users: UserStore, audit: AuditLog,
            revoked: RevokedSessions, https: bool = False) -> None:
    """Add login, logout and the guard to the dashboard's Flask server."""
    key = settings.dashboard_secret_key
    server.secret_key = key.get() if key is not None else secrets.token_hex(32)
    # Secure unless plain http was asked for (a development setting): a cookie that a browser
    # sends over http can be read by anyone on the ward network.
    secure = https or not settings.dashboard_allow_http
    server.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                         SESSION_COOKIE_SECURE=secure, REMEMBER_COOKIE_SECURE=secure)
    manager = LoginManager()
    manager.init_app(server)
    throttle = _Throttle()
    idle_s, max_s = settings.session_idle_minutes * 60.0, settings.session_max_hours * 3600.0

    def ended(now: float) -> str | None:
        """Why this request's session is over, or None while it lasts."""
        sid, began, seen = session.get("sid"), session.get("t0"), session.get("seen")
        if not sid or not isinstance(began, float | int) or not isinstance(seen, float | int):
            return "no session id"  # a cookie from before session ids, or forged shapes
        if revoked.revoked(sid, now):
            return "logged out"
        if now - began > max_s:
            return "absolute lifetime reached"
        if now - seen > idle_s:
            return "idle timeout"
        return None

    @manager.user_loader
    def load(session_id: str) -> SessionUser | None:
        name, _, fragment = session_id.rpartition(":")
        u = users.get(name)
        if u is None or u.password_hash[-12:] != fragment:
            return None  # account removed or password changed: the session is over
        return SessionUser(u)

    allowed = {urlsplit(o.strip()).netloc.lower()
               for o in (settings.dashboard_origins or "").split(",") if o.strip()}

    def foreign_origin() -> str | None:
        """Why a state-changing request comes from another site's page, or None. Defence in
        depth behind the SameSite cookie and the CSRF and JSON-only rules: a browser names the
        page's origin on every POST (and says cross-site in Sec-Fetch-Site); clients that are
        not browsers send neither and are judged by their credentials alone."""
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return None
        origin = request.headers.get("Origin")
        if origin is not None and origin != "null":
            host = urlsplit(origin).netloc.lower()
            # the scheme is left out: behind a TLS proxy the page is https and this server http
            if host and (host == request.host.lower() or host in allowed):
                return None
            return f"origin {origin[:100]!r}"
        # No origin, or "null": what our own pages send too (a form posted under Referrer-Policy
        # no-referrer), so the browser's Sec-Fetch-Site decides where it has one.
        site = request.headers.get("Sec-Fetch-Site")
        if site in (None, "same-origin", "none"):
            return None
        return f"{site[:20]!r} request"

    @server.before_request
    def guard() -> Any:
        path = request.path
        if (why := foreign_origin()) is not None:
            user = current_user.name if current_user.is_authenticated else "-"
            audit.record(user, "denied", detail=f"{request.method} {path[:200]}: {why}",
                         remote_addr=request.remote_addr)
            return jsonify({"error": "request from another site's page refused"}), 403
        if current_user.is_authenticated:
            now = time.time()
            why = ended(now)
            if why is None:
                if not _passive() and now - session["seen"] > 10:  # re-signed at most every 10 s
                    session["seen"] = now
                return None
            audit.record(current_user.name, "logout", role=current_user.user.role,
                         detail=f"session ended: {why}", remote_addr=request.remote_addr)
            logout_user()
            session.clear()
        if path.startswith(PUBLIC_PREFIXES):
            return None
        if request.method == "GET" and not path.startswith(DATA_PREFIXES):
            return redirect(f"/login?next={path}")
        return jsonify({"error": "log in first"}), 401

    def page(error: str = "", next_: str = "/", status: int = 200) -> Response:
        body = _PAGE.format(error=f'<p class="error">{html.escape(error)}</p>' if error else "",
                            training='<p class="training"><strong>TRAINING</strong> session: '
                            'simulated patients only</p>' if settings.training else "",
                            next=html.escape(next_, quote=True), csrf=csrf_token())
        return Response(body, status=status, mimetype="text/html")

    @server.get("/login")
    def login_form() -> Response:
        return page(next_=_safe_next(request.args.get("next")))

    @server.post("/login")
    def login_submit() -> Any:
        # A name no account can have (user names are 1-64 characters, no spaces) is recorded
        # cut, and never reaches the throttle's store whole: a megabyte of name per attempt
        # would fill it.
        name = (request.form.get("username") or "").strip()[:NAME_MAX + 1]
        password = request.form.get("password") or ""
        next_ = _safe_next(request.form.get("next"))
        addr = request.remote_addr or "-"
        if not _csrf_ok():  # a login posted by another site's page (login CSRF)
            audit.record(name or "-", "login_failed", detail="no valid CSRF token",
                         remote_addr=addr)
            return page("The login form expired: please try again.", next_, 400)
        now = time.monotonic()
        if throttle.blocked(name, addr, now):
            audit.record(name or "-", "login_failed", detail="locked out",
                         remote_addr=request.remote_addr)
            return page("Too many failed attempts: try again in a few minutes.", next_, 429)
        u = users.authenticate(name, password)
        if u is None:
            throttle.fail(name, addr, now)
            audit.record(name or "-", "login_failed", remote_addr=request.remote_addr)
            return page("Wrong user name or password.", next_, 401)
        throttle.clear(name, addr)
        session.clear()  # nothing of the anonymous session carries over (session fixation)
        wall = time.time()
        session.update(sid=secrets.token_urlsafe(24), t0=wall, seen=wall)
        login_user(SessionUser(u))
        audit.record(u.name, "login", role=u.role, remote_addr=request.remote_addr)
        return redirect(next_)

    @server.get("/logout")
    def logout_form() -> Response:
        return Response(_LOGOUT.format(csrf=csrf_token()), mimetype="text/html")

    @server.post("/logout")
    def logout() -> Any:
        if not _csrf_ok():  # another site's page cannot log a clinician out mid-task
            return Response("Log out from the dashboard's own page.", 400)
        u = user()
        if u is not None:
            # the cookie is refused from now on, on every replica, even if a copy was kept
            revoked.revoke(session["sid"], session["t0"] + max_s)
            audit.record(u.name, "logout", role=u.role, remote_addr=request.remote_addr)
        logout_user()
        session.clear()
        return redirect("/login")
