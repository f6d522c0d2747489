"""Sessions for people: the login page, logout, and the guard in front of every dashboard route.

Flask-Login keeps the session in a signed cookie (DASHBOARD_SECRET_KEY). The session id includes
a fragment of the password hash, so a password reset (`patient-twin users add` again) ends the
user's open sessions. Cookies are HttpOnly and SameSite=Lax (a cross-site page cannot post
to the dashboard with them), Secure under --https. `/api/*` has its own bearer-token check.
"""

from __future__ import annotations

import html
import secrets
import threading
import time
from collections import defaultdict, deque
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, redirect, request
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user

from dashboard.audit import AuditLog
from dashboard.auth import User, UserStore
from streams.config import Settings

PUBLIC_PREFIXES = ("/login", "/api/")
# answered 401, not redirected to the login page
DATA_PREFIXES = ("/_dash", "/vr/state.json", "/live/")
NAME_MAX = 64  # longest user name (dashboard.auth)
FAILURES_ALLOWED = 5  # failed logins per user name within FAILURE_WINDOW_S before a lockout
FAILURE_WINDOW_S = 300.0


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
    """Failed logins per user name: after FAILURES_ALLOWED in the window, refuse until it ends."""

    def __init__(self) -> None:
        self._fails: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def blocked(self, name: str, now: float) -> bool:
        with self._lock:
            q = self._fails[name]
            while q and now - q[0] > FAILURE_WINDOW_S:
                q.popleft()
            return len(q) >= FAILURES_ALLOWED

    def fail(self, name: str, now: float) -> None:
        with self._lock:
            self._fails[name].append(now)

    def clear(self, name: str) -> None:
        with self._lock:
            self._fails.pop(name, None)


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>patient-twin · log in</title><meta name="viewport" content="width=device-width">
<style>body{{font-family:system-ui,sans-serif;background:#f3f5f7;display:flex;
justify-content:center;margin-top:12vh}}form{{background:#fff;padding:2em;border-radius:8px;
box-shadow:0 1px 4px #0002;min-width:18em}}label,input,button{{display:block;width:100%;
margin:.4em 0}}input{{padding:.5em;box-sizing:border-box}}button{{padding:.6em;background:#1f5f9f;
color:#fff;border:0;border-radius:4px}}.error{{color:#b00020}}</style></head><body>
<form method="post" action="/login"><h1>patient-twin</h1>{error}
<input type="hidden" name="next" value="{next}">
<label for="username">User name</label><input id="username" name="username" required autofocus
autocomplete="username"><label for="password">Password</label><input id="password"
name="password" type="password" required autocomplete="current-password">
<button id="login" type="submit">Log in</button></form></body></html>"""


def _safe_next(target: str | None) -> str:
    """Only a local path: never redirect a fresh login to another site."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def install(server: Flask, settings: Settings, users: UserStore, audit: AuditLog,
            secure_cookies: bool = False) -> None:
    """Add login, logout and the guard to the dashboard's Flask server."""
    key = settings.dashboard_secret_key
    server.secret_key = key.get() if key is not None else secrets.token_hex(32)
    server.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                         SESSION_COOKIE_SECURE=secure_cookies,
                         REMEMBER_COOKIE_SECURE=secure_cookies)
    manager = LoginManager()
    manager.init_app(server)
    throttle = _Throttle()

    @manager.user_loader
    def load(session_id: str) -> SessionUser | None:
        name, _, fragment = session_id.rpartition(":")
        u = users.get(name)
        if u is None or u.password_hash[-12:] != fragment:
            return None  # account removed or password changed: the session is over
        return SessionUser(u)

    @server.before_request
    def guard() -> Any:
        path = request.path
        if path.startswith(PUBLIC_PREFIXES) or current_user.is_authenticated:
            return None
        if request.method == "GET" and not path.startswith(DATA_PREFIXES):
            return redirect(f"/login?next={path}")
        return jsonify({"error": "log in first"}), 401

    def page(error: str = "", next_: str = "/", status: int = 200) -> Response:
        body = _PAGE.format(error=f'<p class="error">{html.escape(error)}</p>' if error else "",
                            next=html.escape(next_, quote=True))
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
        now = time.monotonic()
        if throttle.blocked(name, now):
            audit.record(name or "-", "login_failed", detail="locked out",
                         remote_addr=request.remote_addr)
            return page("Too many failed attempts: try again in a few minutes.", next_, 429)
        u = users.authenticate(name, password)
        if u is None:
            throttle.fail(name, now)
            audit.record(name or "-", "login_failed", remote_addr=request.remote_addr)
            return page("Wrong user name or password.", next_, 401)
        throttle.clear(name)
        login_user(SessionUser(u))
        audit.record(u.name, "login", role=u.role, remote_addr=request.remote_addr)
        return redirect(next_)

    @server.route("/logout", methods=["GET", "POST"])
    def logout() -> Any:
        u = user()
        if u is not None:
            audit.record(u.name, "logout", role=u.role)
        logout_user()
        return redirect("/login")
