"""The Faust application: vitals.raw -> validate -> batch -> twin step -> twin.state / alerts.

Topics and the twin table are declared in `create_app`; the agent only decodes, calls the twin
core once per batch through `TwinProcessor`, and sends.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

import faust
from faust.types import TP

from streams import messages
from streams.config import Settings, faust_broker_config
from streams.errors import ConfigError, InvalidMessage
from streams.liveness import Liveness
from streams.metrics import WorkerMetrics, serve
from streams.process import TwinProcessor
from streams.sink import InfluxSink, alert_points, reading_points, state_points

log = logging.getLogger("patient_twin.worker")


class Counters:
    """Totals since start, for the periodic log line and tests. No patient data."""

    def __init__(self) -> None:
        self.events = 0
        self.readings = 0
        self.applied = 0
        self.dead = 0
        self.batches = 0
        self.states_sent = 0
        self.alerts = 0
        self.last_batch_monotonic = time.monotonic()


def create_app(settings: Settings, sink: InfluxSink | None = None) -> faust.App:
    """Build the worker's Faust app for these settings (sink: the InfluxDB sink, if any)."""
    tuning: dict[str, Any] = {}
    if settings.embedded_broker:
        # The embedded Tansu broker holds a JoinGroup for about half the session timeout (30 s
        # with Faust's 60 s default) and for the rebalance timeout, so keep both short there;
        # real Kafka clusters keep Faust's defaults (docs/tansu.md).
        tuning["broker_rebalance_timeout"] = 10.0
        tuning["broker_session_timeout"] = 10.0
    app = faust.App(
        settings.app_id,
        **faust_broker_config(settings),
        store="memory://",
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        # A twin batch may take a while on a cold start; never be evicted for a slow batch.
        broker_max_poll_interval=300.0,
        web_enabled=False,
        producer_linger_ms=5,
        **tuning,
    )
    raw_topic = app.topic(settings.topic_vitals_raw, key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw",
                          partitions=settings.kafka_partitions)
    dlq_topic = app.topic(settings.topic_vitals_dlq, key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw",
                          partitions=settings.kafka_partitions)
    state_topic = app.topic(settings.topic_twin_state, key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw",
                            partitions=settings.kafka_partitions)
    alert_topic = app.topic(settings.topic_alerts, key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw",
                            partitions=settings.kafka_partitions)
    # One record per patient. use_partitioner: the changelog partition comes from the key (the
    # patient id, murmur2 like the producers), so a batch spanning partitions writes each twin to
    # its own patient's partition, not to the partition of the batch's last event.
    twins = app.Table("twins", key_type=str, value_type=bytes, default=None,
                      partitions=settings.kafka_partitions, use_partitioner=True)
    processor = TwinProcessor()
    counters = Counters()
    metrics = WorkerMetrics()
    liveness = Liveness(stall_seconds=settings.liveness_stall_seconds,
                        unassigned_seconds=settings.liveness_unassigned_seconds)
    app.counters = counters  # type: ignore[attr-defined]
    app.metrics = metrics  # type: ignore[attr-defined]
    app.liveness = liveness  # type: ignore[attr-defined]
    if sink is not None:
        metrics.sink_gauges(lambda: sink.stats)

    @app.agent(raw_topic)
    async def twin_agent(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.worker_batch_max,
                                               within=settings.worker_batch_seconds):
            valid: list[messages.ValidReading] = []
            for ev in events:
                msg = ev.message
                try:
                    readings = messages.decode_readings(ev.value)
                    key = ev.key.decode("utf-8", "replace") if ev.key else None
                    if any(r.patient_id != key for r in readings):
                        raise messages.reject(
                            "message key must be the patient_id of every reading in it "
                            "(partitioning keeps a patient's twin on one worker)", "wrong_key")
                except InvalidMessage as exc:
                    counters.dead += 1
                    metrics.dead.labels(getattr(exc, "kind", "invalid")).inc()
                    dead = messages.DeadLetter(
                        reason=str(exc), kind=getattr(exc, "kind", "invalid"), topic=msg.topic,
                        partition=msg.partition, offset=msg.offset,
                        received=datetime.now(UTC), original=ev.value or b"")
                    await dlq_topic.send(key=ev.key, value=messages.encode(dead))
                    continue
                valid.extend(readings)
            counters.events += len(events)
            counters.readings += len(valid)
            counters.batches += 1
            counters.last_batch_monotonic = time.monotonic()
            metrics.events.inc(len(events))
            metrics.readings.inc(len(valid))
            metrics.batch_size.observe(len(events))
            if not valid:
                continue
            pids = {r.patient_id for r in valid}
            t0 = time.perf_counter()
            result = processor.process(valid, {p: twins.get(p) for p in pids})
            metrics.step_seconds.observe(time.perf_counter() - t0)
            counters.applied += result.applied
            metrics.applied.inc(result.applied)
            metrics.duplicates.inc(result.duplicates)
            metrics.late.inc(result.late)
            metrics.gaps.inc(result.gaps)
            metrics.artifacts.inc(result.artifacts)
            metrics.missing.inc(result.missing)
            # The twin table is written once per patient per batch, never per reading.
            for pid, blob in result.states.items():
                twins[pid] = blob
            for st in result.twin_states:
                await state_topic.send(key=st.patient_id.encode(), value=messages.encode(st))
            for alert in result.alerts:
                await alert_topic.send(key=alert.patient_id.encode(),
                                       value=messages.encode(alert))
            counters.states_sent += len(result.twin_states)
            counters.alerts += len(result.alerts)
            for alert in result.alerts:
                metrics.alerts.labels(alert.priority).inc()
            if sink is not None:
                sink.add(reading_points(valid) + state_points(result.twin_states)
                         + alert_points(result.alerts))

    source_end: dict[str, int] = {}
    source_tps = [TP(settings.topic_vitals_raw, p) for p in range(settings.kafka_partitions)]

    @app.timer(interval=5.0)
    async def check_liveness() -> None:
        consumer = app.consumer
        assigned = [tp for tp in consumer.assignment() if tp.topic == settings.topic_vitals_raw]
        positions = {tp: await consumer.position(tp) for tp in assigned}
        highwaters = {tp: consumer.highwater(tp) for tp in assigned}
        for tp in assigned:
            if positions[tp] is not None and highwaters[tp] is not None:
                metrics.lag.labels(str(tp.partition)).set(max(highwaters[tp] - positions[tp], 0))
        try:
            ends = await consumer.highwaters(*source_tps)
        except Exception:  # noqa: BLE001 - best effort; growth then counts as unknown
            ends = {}
        total = sum(v for v in ends.values() if v is not None)
        growing = total > source_end.get("total", total)
        source_end["total"] = total
        reason = liveness.observe(positions, {tp: h for tp, h in highwaters.items()
                                              if h is not None}, growing)
        metrics.assigned.set(len(assigned))
        metrics.since_progress.set(liveness.seconds_since_progress())
        metrics.healthy.set(0 if reason else 1)
        if reason:
            log.error("worker unhealthy, exiting for a restart: %s", reason)
            if sink is not None:
                sink.close(timeout=5)
            os._exit(3)

    @app.timer(interval=10.0)
    async def report() -> None:
        log.info("events=%d readings=%d applied=%d dead_letters=%d batches=%d states=%d "
                 "alerts=%d", counters.events, counters.readings, counters.applied,
                 counters.dead, counters.batches, counters.states_sent, counters.alerts)

    return app


def run_worker(settings: Settings) -> int:
    """Run one worker until SIGTERM/SIGINT. Returns the exit code."""
    from faust.worker import Worker

    sink = InfluxSink(settings, max_buffer=settings.influx_max_buffer) \
        if settings.influx_enabled else None
    if sink is not None:
        atexit.register(sink.close, 5.0)
    app = create_app(settings, sink)
    if settings.worker_metrics_port:
        try:
            serve(app.metrics, lambda: app.liveness.reason,  # type: ignore[attr-defined]
                  settings.worker_metrics_port, settings.worker_metrics_host)
        except OSError as exc:
            raise ConfigError(f"WORKER_METRICS_PORT={settings.worker_metrics_port}: cannot "
                              f"listen there ({exc.strerror}); pick a free port or 0 for off") \
                from exc
    worker = Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()  # exits the process through sys.exit
    return 0
