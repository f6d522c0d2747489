"""The Dash app: `create_app(settings)` builds it around its own Kafka feed."""

from __future__ import annotations

from datetime import UTC, datetime

import dash
from dash import Dash, Input, Output, dcc, html

from dashboard import api, ward
from dashboard.feed import TwinFeed
from streams.config import Settings
from streams.webhooks import SubscriptionView


def ward_layout() -> html.Div:
    return html.Div([
        html.H2("Ward overview"),
        html.Div(id="ward-summary"),
        html.Table([html.Thead(ward.header()), html.Tbody(id="ward-body")], id="ward-table"),
        dcc.Interval(id="ward-refresh", interval=1000),
    ])


def create_app(settings: Settings, feed: TwinFeed | None = None,
               subscriptions: SubscriptionView | None = None) -> Dash:
    """The dashboard for these settings; `feed` and `subscriptions` default to started views of
    their Kafka topics."""
    feed = feed if feed is not None else TwinFeed(settings).start()
    if subscriptions is None:
        subscriptions = SubscriptionView(settings, "patient-twin-dashboard-subscriptions").start()
    app = Dash(__name__, use_pages=True, pages_folder="", title="patient-twin")
    dash.register_page("ward", path="/", layout=ward_layout, name="Ward")
    app.layout = html.Div([
        html.Header(html.H1("patient-twin")),
        dash.page_container,
    ])
    app.feed = feed  # type: ignore[attr-defined]
    app.server.register_blueprint(api.blueprint(settings, feed, subscriptions))

    @app.callback(Output("ward-body", "children"), Output("ward-summary", "children"),
                  Input("ward-refresh", "n_intervals"))
    def refresh(_n: int | None) -> tuple[list[html.Tr], str]:
        states, alerts = feed.snapshot()
        now = datetime.now(UTC)
        summary = (f"{len(states)} patients · {len(alerts)} recent alert events"
                   if feed.connected or states else "waiting for Kafka…")
        return ward.rows(states, now), summary

    return app


def serve(settings: Settings) -> None:
    """Serve the dashboard with waitress until interrupted."""
    from waitress import serve as waitress_serve

    app = create_app(settings)
    waitress_serve(app.server, host=settings.dashboard_host, port=settings.dashboard_port,
                   threads=32, _quiet=True)  # SSE clients hold a thread each
