"""Low-bandwidth mode (issue 21 item 5): for a tablet on a weak ward signal or a phone link.

On with `?lite=1` on any page (or the header's toggle), off with `?lite=0`; remembered in the
signed session cookie until logout. In this mode the pages carry no 3D (no plotly figure is
mounted, so plotly.js is never downloaded), open no live stream, and ask for new values at most
every `LITE_REFRESH_MS`; what they show is text. Measured sizes per update: docs/dashboard.md.
"""

from __future__ import annotations

from flask import Flask, has_request_context, request, session

LITE_REFRESH_MS = 5000


def on() -> bool:
    """Whether this request's session asked for the low-bandwidth mode."""
    return has_request_context() and bool(session.get("lite"))


def refresh_ms(full_ms: int) -> int:
    """A page's refresh period: `full_ms`, or at least LITE_REFRESH_MS in low-bandwidth mode."""
    return max(full_ms, LITE_REFRESH_MS) if on() else full_ms


def install(server: Flask) -> None:
    """Remember `?lite=1` / `?lite=0` of a page request in the session."""

    @server.before_request
    def remember() -> None:
        want = request.args.get("lite")
        if want in ("0", "1") and request.method == "GET":
            session["lite"] = want == "1"
