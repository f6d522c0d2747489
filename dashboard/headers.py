"""Security headers on every answer of the dashboard's web server.

Patient data must not be framed by another site (clickjacking an acknowledge button), cached by
a browser or a proxy on a shared ward computer, or sniffed into another content type. Over
https the browser is told to keep to https (HSTS).

The Content-Security-Policy runs only the server's own scripts: files from this origin, and
Dash's inline scripts (its renderer start and the clientside callbacks) by their SHA-256
(`Dash.csp_hashes`), so a script an attacker slips into a page (a patient id rendered as
markup, a poisoned value) does not run and cannot send data anywhere but here. Styles may be
inline (plotly and A-Frame set them on elements; a style cannot run code); images may be `data:`
and `blob:` URLs (plotly's exports, A-Frame's canvas textures). Checked in Chromium on every
page (tests/dashboard/test_browser.py: no violation reports; an injected inline script is
blocked).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flask import Flask, Response, request

HSTS_MAX_AGE_S = 365 * 24 * 3600  # a year: what browsers' preload lists ask for
# Code, not data: Dash's versioned bundles, the app's assets and the pinned A-Frame build may be
# cached (plotly alone is megabytes, fetched again on every page over a slow link otherwise).
CACHEABLE_PREFIXES = ("/_dash-component-suites/", "/assets/", "/vr/aframe-v")


def policy(script_hashes: list[str]) -> str:
    """The Content-Security-Policy with these inline scripts (`'sha256-...'`) allowed."""
    return "; ".join([
        "default-src 'self'",
        "script-src " + " ".join(["'self'", *script_hashes]),
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


def install(server: Flask, https: bool,
            script_hashes: Callable[[], Sequence[str]] = lambda: ()) -> None:
    """Add the headers to every response of `server`; `script_hashes` gives Dash's inline
    scripts (`Dash.csp_hashes`). Asked at each response: Dash adds the pages' own clientside
    callbacks only when it serves its first request (hashing them costs microseconds)."""

    @server.after_request
    def secure(resp: Response) -> Response:
        cacheable = request.path.startswith(CACHEABLE_PREFIXES)
        h = resp.headers
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Content-Security-Policy", policy(list(script_hashes())))
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "no-referrer")  # patient ids are in page paths
        if not cacheable:  # every page, callback answer and stream: patient data, a session
            h["Cache-Control"] = "no-store"
        if https:
            h.setdefault("Strict-Transport-Security", f"max-age={HSTS_MAX_AGE_S}")
        return resp
