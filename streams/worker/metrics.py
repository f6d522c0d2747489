"""The worker's Prometheus metrics and its health endpoint, served on WORKER_METRICS_PORT.

`GET /metrics`: Prometheus text format. `GET /healthz`: 200 `ok`, or 503 with the reason the worker
is unhealthy. No patient data in either.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app


class WorkerMetrics:
    """One registry per worker app (not the global one, so tests can build several apps)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("patient_twin_events", "Messages consumed from vitals.raw",
                              registry=r)
        self.taken = Counter("patient_twin_events_taken",
                             "Messages taken from vitals.raw, held ones included "
                             "(streams.worker.catchup)",
                             registry=r)
        self.readings = Counter("patient_twin_readings", "Valid readings decoded", registry=r)
        self.applied = Counter("patient_twin_readings_applied", "Readings applied to twins",
                               registry=r)
        self.dead = Counter("patient_twin_dead_letters", "Messages sent to the dead-letter topic",
                            ["kind"], registry=r)
        self.duplicates = Counter("patient_twin_duplicates", "Readings skipped as duplicates",
                                  registry=r)
        self.late = Counter("patient_twin_late_readings",
                            "Readings skipped as older than the late tolerance", registry=r)
        self.reordered = Counter("patient_twin_reordered_readings",
                                 "Late readings within the tolerance, applied in time order",
                                 registry=r)
        self.gaps = Counter("patient_twin_sequence_gap_readings",
                            "Readings devices numbered that never reached a twin", registry=r)
        self.artifacts = Counter("patient_twin_artifacts", "Values rejected by the innovation gate",
                                 registry=r)
        self.missing = Counter("patient_twin_missing_values",
                               "Sensor-off or out-of-range values treated as missing", registry=r)
        self.rejected = Counter("patient_twin_rejected_readings",
                                "Readings not applied, by cause: duplicate, late (beyond the late "
                                "tolerance), ts_out_of_range (dead-lettered)", ["cause"],
                                registry=r)
        self.holes_given_up = Counter("patient_twin_offset_holes_given_up",
                                      "Offset holes accepted as never coming after 30 s (any "
                                      "messages in them were not processed)", registry=r)
        self.holes = Counter("patient_twin_reread_holes",
                             "Offset holes re-read (messages the consumer dropped in a rebalance)",
                             registry=r)
        self.states = Counter("patient_twin_states_sent", "Twin states published", registry=r)
        self.records = Counter("patient_twin_changelog_records",
                               "Twin records written to the table's changelog", registry=r)
        self.batches = Counter("patient_twin_batches", "Batches processed", registry=r)
        self.held = Counter("patient_twin_catchup_held_takes",
                            "Takes held for a bigger batch while behind (streams.worker.catchup)",
                            registry=r)
        self.alerts = Counter("patient_twin_alert_events", "Alert events published", ["priority"],
                              registry=r)
        # Alarm-fatigue figures (docs/alerts.md): raised, escalated, resolved by kind; time to
        # acknowledge; alerts per patient-day follow from raised over the patients twinned.
        self.alert_events = Counter("patient_twin_alert_lifecycle_events",
                                    "Alert lifecycle events by event and kind", ["event", "kind"],
                                    registry=r)
        self.ack_seconds = Histogram("patient_twin_alert_ack_seconds",
                                     "Seconds from raise to acknowledgement",
                                     buckets=(30, 60, 120, 300, 600, 1800, 3600), registry=r)
        self.quick_resolves = Counter("patient_twin_alerts_resolved_within_60s",
                                      "Alerts resolved within a minute of being raised (noise)",
                                      registry=r)
        self.actions = Counter("patient_twin_alert_actions", "Clinician actions on alerts",
                               ["action"], registry=r)
        self.batch_size = Histogram("patient_twin_batch_size", "Events per batch",
                                    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
                                    registry=r)
        self.step_seconds = Histogram("patient_twin_step_seconds",
                                      "Time of one vectorised twin step", registry=r)
        self.lag = Gauge("patient_twin_consumer_lag",
                         "Messages between position and end offset, per assigned partition "
                         "(unreliable on the embedded test broker)", ["partition"], registry=r)
        self.assigned = Gauge("patient_twin_assigned_partitions", "Assigned source partitions",
                              registry=r)
        self.since_progress = Gauge("patient_twin_seconds_since_progress",
                                    "Seconds since a position last moved (or all caught up)",
                                    registry=r)
        self.healthy = Gauge("patient_twin_healthy", "1 healthy, 0 unhealthy", registry=r)
        self.healthy.set(1)

    def total(self, counter: Counter) -> int:
        """Current value of a counter, summed over its labels."""
        return int(sum(s.value for m in counter.collect() for s in m.samples
                       if s.name.endswith("_total")))

    def sink_gauges(self, stats_fn: Callable[[], object]) -> None:
        for name, doc in (("written", "Points written to InfluxDB"),
                          ("errors", "Failed InfluxDB writes"),
                          ("dropped", "Points dropped because the sink buffer was full"),
                          ("buffered", "Points waiting in the sink buffer")):
            g = Gauge(f"patient_twin_sink_{name}", doc, registry=self.registry)
            g.set_function(lambda n=name: float(getattr(stats_fn(), n)))


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


def serve(metrics: WorkerMetrics, health: Callable[[], str | None], port: int,
          host: str = "127.0.0.1") -> WSGIServer:
    """Serve /metrics and /healthz in a daemon thread. `health()` returns None or the reason."""
    prom = make_wsgi_app(metrics.registry)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            reason = health()
            status = "200 OK" if reason is None else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [(reason or "ok").encode() + b"\n"]
        return prom(environ, start_response)

    server = make_server(host, port, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
