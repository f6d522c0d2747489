"""The Dash app: `create_app(settings)` builds it around its own Kafka feed; `serve` runs it.

Pages: `/` ward overview, `/ward3d` the ward in 3D, `/patient/<id>` the patient's twin (each a
module of dashboard/pages/ with its layout and callbacks), `/vr` the WebXR ward (dashboard/vr.py),
`/api/*` the subscribers' API (dashboard/api.py),
`/presence/*` who else is in the ward (dashboard/presence.py). Every page needs a logged-in user
(dashboard/login.py); what a user sees is limited to their wards. This module builds the app
around them: the frame of every page (a skip link, the header with the navigation and the
low-bandwidth toggle of dashboard/lite.py, `<main>`), the Kafka views and writers, and their
closing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import dash
from dash import Dash, Input, Output, dcc, html

from dashboard import api, headers, lite, live, login, presence, training, vr
from dashboard.auth import UserStore
from dashboard.context import Context
from dashboard.feed import TwinFeed
from dashboard.pages import patient, ward, ward3d
from dashboard.sessions import RevokedSessions
from streams.audit import AuditLog
from streams.config import Settings
from streams.errors import ConfigError
from streams.webhooks import SubscriptionView

__all__ = ["close", "create_app", "serve"]

log = logging.getLogger("patient_twin.dashboard")


def _nav() -> html.Nav:
    if lite.on():
        links = [dcc.Link("Ward", href="/"), " · ", dcc.Link("Beds (list)", href="/ward3d"),
                 " · ", html.A("Low bandwidth: on (switch off)", href="?lite=0",
                               id="lite-toggle")]
    else:
        links = [dcc.Link("Ward", href="/"), " · ", dcc.Link("3D ward", href="/ward3d"), " · ",
                 html.A("VR ward", href="/vr"), " · ",
                 html.A("Low bandwidth: off (switch on)", href="?lite=1", id="lite-toggle")]
    return html.Nav([*links, " · ", html.Span(id="whoami"), " · ",
                     html.A("Log out", href="/logout")], className="nav",
                    **{"aria-label": "main"})


TRAINING_TEXT = "TRAINING: simulated patients of a training session, not real patients"


def _layout(training: bool) -> Callable[[], html.Div]:
    """The frame of every page, built per page load (the low-bandwidth mode changes the nav):
    a skip link to the page's content first, for keyboard and screen-reader users; on a
    training ward, the TRAINING banner above everything."""
    def frame() -> html.Div:
        banner = [html.Div([TRAINING_TEXT, " · ", html.A("Debrief", href="/debrief")],
                           className="training-banner", role="status")] if training else []
        return html.Div([*banner, html.A("Skip to content", href="#main", className="skip-link"),
                         html.Header([html.H1("patient-twin"), _nav()]),
                         html.Main(dash.page_container, id="main", tabIndex="-1")])
    return frame


def _register_nav(app: Dash, c: Context) -> None:
    @app.callback(Output("whoami", "children"), Input("whoami", "id"))
    def whoami(_: str) -> str:
        u = c.user()
        wards = "all wards" if "*" in u.wards else "wards " + ", ".join(u.wards)
        return f"{u.name} ({u.role}, {wards})"


def create_app(settings: Settings, feed: TwinFeed | None = None,
               subscriptions: SubscriptionView | None = None,
               users: UserStore | None = None, audit: AuditLog | None = None,
               https: bool = False) -> Dash:
    """The dashboard for these settings; `feed` and `subscriptions` default to started views of
    their Kafka topics, `users` to USERS_FILE."""
    if users is None:
        if settings.users_file is None:
            raise ConfigError("USERS_FILE is not set: the dashboard has no anonymous access; "
                              "create an account with `patient-twin users add NAME --role admin`"
                              " and set USERS_FILE to its file")
        users = UserStore(settings.users_file)
    started: list[Any] = []  # what this function started, stopped by `close`
    if feed is None:
        feed = TwinFeed(settings).start()
        started.append(feed)
    if subscriptions is None:
        subscriptions = SubscriptionView(settings, "patient-twin-dashboard-subscriptions").start()
        started.append(subscriptions)
    if audit is None:
        audit = AuditLog(settings)
        started.append(audit)
    c = Context(settings, feed, audit)
    board = presence.PresenceBoard(settings).start()
    started.append(board)
    c.presence = presence.Presence(c, board)
    app = Dash(__name__, use_pages=True, pages_folder="", title="patient-twin",
               suppress_callback_exceptions=True)
    for page in (ward, ward3d, patient):
        page.register(app, c)
    app.index_string = app.index_string.replace("<html>", '<html lang="en">', 1)
    app.layout = _layout(settings.training)
    _register_nav(app, c)
    app.feed = feed  # type: ignore[attr-defined]
    app.closers = [*started, c]  # type: ignore[attr-defined]
    revoked = RevokedSessions(settings).start()
    app.closers.append(revoked)  # type: ignore[attr-defined]
    login.install(app.server, settings, users, audit, revoked, https=https)
    lite.install(app.server)
    headers.install(app.server, https=https, script_hashes=app.csp_hashes)
    api_bp = api.blueprint(settings, feed, subscriptions, audit=audit)
    app.server.register_blueprint(api_bp)
    app.closers += list(api_bp.writers)  # type: ignore[attr-defined]
    app.server.register_blueprint(vr.blueprint(c))
    app.server.register_blueprint(training.blueprint(c, users))
    app.server.register_blueprint(live.blueprint(c))
    app.server.register_blueprint(presence.blueprint(c, c.presence))
    return app


def close(app: Dash) -> None:
    """Stop the Kafka views and writers `create_app` started (tests, benchmarks)."""
    for item in getattr(app, "closers", []):
        (item.stop if hasattr(item, "stop") else item.close)()


def serve(settings: Settings, https: bool = False, cert: str | None = None,
          key: str | None = None) -> None:
    """Serve the dashboard with cheroot (threads for long-lived SSE and VR clients) until
    interrupted; over TLS with `https` (the given certificate, or a generated self-signed one)."""
    from cheroot import wsgi

    from dashboard import tls

    if not https and not settings.dashboard_allow_http:
        raise ConfigError("the dashboard serves patient data: use --https (or a TLS proxy), or "
                          "set DASHBOARD_ALLOW_HTTP=true for development on this machine")
    app = create_app(settings, https=https)
    server = wsgi.Server((settings.dashboard_host, settings.dashboard_port), app.server,
                         numthreads=settings.dashboard_threads, server_name="patient-twin")
    if https:
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        cert, key = tls.certificate(settings, cert, key)
        server.ssl_adapter = BuiltinSSLAdapter(cert, key)
    try:
        server.start()
    except OSError as exc:
        # cheroot says "No socket could be created -- ((host, port): [Errno 98] Address already
        # in use)" without an errno of its own
        if "in use" not in str(exc):
            raise
        raise ConfigError(f"the dashboard cannot listen on {settings.dashboard_host}:"
                          f"{settings.dashboard_port}: the port is in use (set DASHBOARD_PORT "
                          "to a free one)") from None
    finally:
        app.feed.end_streams()  # type: ignore[attr-defined]  # or stop() waits for each
        server.stop()
