"""Security headers on every answer of the dashboard's web server.

Patient data must not be framed by another site (clickjacking an acknowledge button), cached by
a browser or a proxy on a shared ward computer, or sniffed into another content type. Over
https the browser is told to keep to https (HSTS). A Content-Security-Policy for scripts is not
set yet: Dash's inline renderer script and plotly's WebGL need their hashes and sources listed,
checked in a real browser (issue 19, item 5).
"""

from __future__ import annotations

from flask import Flask, Response, request

HSTS_MAX_AGE_S = 365 * 24 * 3600  # a year: what browsers' preload lists ask for
# Code, not data: Dash's versioned bundles, the app's assets and the pinned A-Frame build may be
# cached (plotly alone is megabytes, fetched again on every page over a slow link otherwise).
CACHEABLE_PREFIXES = ("/_dash-component-suites/", "/assets/", "/vr/aframe-v")


def install(server: Flask, https: bool) -> None:
    """Add the headers to every response of `server`."""

    @server.after_request
    def secure(resp: Response) -> Response:
        cacheable = request.path.startswith(CACHEABLE_PREFIXES)
        h = resp.headers
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "no-referrer")  # patient ids are in page paths
        if not cacheable:  # every page, callback answer and stream: patient data, a session
            h["Cache-Control"] = "no-store"
        if https:
            h.setdefault("Strict-Transport-Security", f"max-age={HSTS_MAX_AGE_S}")
        return resp
