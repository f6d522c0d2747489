"""The Faust application: vitals.raw -> validate -> batch -> twin step -> twin.state / alerts.

Topics and the twin table are declared in `create_app`; the agent has a batch decoded (in a
child process, `streams.worker.decoder`), calls the twin core once per batch through
`TwinProcessor`, and sends.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

import faust
import numpy as np
from faust.types import TP

from streams import compat, messages, topics, watchdog
from streams.config import EMBEDDED_FETCH_MAX_WAIT_MS, Settings, faust_broker_config
from streams.errors import BrokerError, ConfigError, InvalidMessage, where
from streams.registry import Registry, RegistryWriter
from streams.topics import partition_of
from streams.worker import admission
from streams.worker.catchup import CatchUp, lag_after
from streams.worker.changelog import BatchWriter
from streams.worker.decoder import Bounds, Decoded, Decoder
from streams.worker.liveness import Liveness
from streams.worker.metrics import WorkerMetrics, serve
from streams.worker.offsets import OffsetTracker
from streams.worker.process import TwinProcessor, select
from streams.worker.sink import InfluxSink, alert_points, state_points
from twin.alerts import REJECT_CAUSES, AlertPolicy

log = logging.getLogger("patient_twin.worker")
# Longest a batch waits for the registry to catch up before refusing readings of patients it
# does not know (an admission written just before the patient's first readings).
ADMISSION_SYNC_S = 3.0
REGISTRY_WAIT_S = 60.0  # for the registry at start-up


def faust_app_config(settings: Settings) -> dict[str, Any]:
    """faust.App keyword arguments for these settings (the worker's, and the benchmark's bare
    agent, so the two are measured on the same footing)."""
    tuning: dict[str, Any] = {}
    if settings.embedded_broker:
        # The embedded Tansu broker holds every JoinGroup for half the group's session timeout
        # (30 s with Faust's 60 s default), a follower's SyncGroup for up to 0.8 of it, and
        # drops a dead member only after a full session timeout without a heartbeat. A worker
        # started in place of a killed one got its partitions after about 21 s with 10 s, and
        # after about 5 s with 4 s and a heartbeat every second (bench/failover_gap.py,
        # docs/tansu.md). Real Kafka clusters keep Faust's defaults.
        tuning["broker_rebalance_timeout"] = 10.0
        tuning["broker_session_timeout"] = 4.0
        tuning["broker_heartbeat_interval"] = 1.0
        # Faust hard-codes a 1,500 ms fetch max wait for its worker consumer, which the
        # embedded broker always waits out (streams.config.EMBEDDED_FETCH_MAX_WAIT_MS)
        compat.set_faust_fetch_max_wait(EMBEDDED_FETCH_MAX_WAIT_MS)
    else:
        # Static membership (Kafka's group.instance.id), when the site gives each worker slot a
        # stable id of its own: a worker restarted under the same id takes its partitions back
        # at once instead of waiting for the group to drop the dead member (a session timeout).
        # Not on the embedded broker: it pauses static members 3 s in JoinGroup and again in
        # SyncGroup, and never fences a second worker with the same id (docs/tansu.md).
        if settings.worker_instance_id:
            tuning["consumer_group_instance_id"] = settings.worker_instance_id
    return dict(
        **faust_broker_config(settings),
        store="memory://",
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        # A twin batch may take a while on a cold start; never be evicted for a slow batch.
        broker_max_poll_interval=300.0,
        web_enabled=False,
        producer_linger_ms=5,
        # aiokafka holds one open batch per partition and makes a send wait while it is full and
        # in flight: 16 KB (the default) is eight twin states. A batch of a thousand patients'
        # twins and states is ~2.5 MB, so let each request carry up to 256 KB.
        producer_max_batch_size=262_144,
        **tuning,
    )


def create_app(settings: Settings, decoder: Decoder, sink: InfluxSink | None = None
               ) -> faust.App:
    """Build the worker's Faust app for these settings (decoder: the decoding child process;
    sink: the InfluxDB sink, if any)."""
    app = faust.App(settings.app_id, **faust_app_config(settings))
    # Device readings and clinicians' manual observations feed the same agent: both are keyed by
    # patient id with the same partition count, so a patient's twin sees both in one batch.
    raw_topic = app.topic(settings.topic_vitals_raw, settings.topic_observations,
                          key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw",
                          partitions=settings.kafka_partitions)
    dlq_topic = app.topic(settings.topic_vitals_dlq, key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw",
                          partitions=settings.kafka_partitions)
    alert_topic = app.topic(settings.topic_alerts, key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw",
                            partitions=settings.kafka_partitions)
    workers_topic = app.topic(settings.topic_workers, key_type=bytes, value_type=bytes,
                              key_serializer="raw", value_serializer="raw", partitions=1)
    worker_id = f"{settings.app_id}:{socket.gethostname()}:{os.getpid()}".encode()
    action_topic = app.topic(settings.topic_alert_actions, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw",
                             partitions=settings.kafka_partitions)
    # One record per patient. use_partitioner: the changelog partition comes from the key, so a
    # batch spanning partitions writes each twin to its own patient's partition, not to the
    # partition of the batch's last event. The key must be the raw patient id bytes, exactly as
    # the devices key vitals.raw (murmur2 of the same bytes): a JSON-serialised str key ('"P1"')
    # hashes elsewhere, and after a failover the new owner of a patient's readings would not own
    # the changelog partition holding its twin (seen: twins recovered one reading short).
    twins = app.Table("twins", key_type=bytes, value_type=bytes, default=None,
                      partitions=settings.kafka_partitions, use_partitioner=True)
    # Written once per batch through its store and changelog, one record batch per partition
    # (streams.worker.changelog: the table's per-key path costs more than the twin step); on the
    # embedded broker each changelog partition's last record goes alone in its Kafka batch,
    # which keeps the high watermark exact for recovery (docs/tansu.md). twin.state likewise.
    writer = BatchWriter(app, lambda key: partition_of(key.decode(), settings.kafka_partitions),
                         lone_last=settings.embedded_broker)
    registry = Registry(settings)
    app.registry = registry  # type: ignore[attr-defined]
    # When the broker lost its records (the registry's follower finds its topic replaced: a
    # restart of the memory-only embedded broker), the time it was found.
    broker_lost: dict[str, float] = {}
    app.on_broker_reset = lambda _topics: broker_lost.setdefault(  # type: ignore[attr-defined]
        "at", time.time())
    processor = TwinProcessor(
        policy=AlertPolicy(reject_alert_per_min=settings.reject_alert_per_min),
        spo2_scale=registry.spo2_scale, late_tolerance_s=settings.worker_late_tolerance_s)
    metrics = WorkerMetrics()
    liveness = Liveness(stall_seconds=settings.liveness_stall_seconds,
                        unassigned_seconds=settings.liveness_unassigned_seconds)
    tracker = OffsetTracker()
    app.metrics = metrics  # type: ignore[attr-defined]
    app.liveness = liveness  # type: ignore[attr-defined]
    if sink is not None:
        metrics.sink_gauges(lambda: sink.stats)

    catchup = CatchUp(settings.worker_catchup_max, settings.worker_catchup_seconds)
    batch_lock = asyncio.Lock()  # one batch at a time: the agent's, or held events flushed

    @app.agent(raw_topic)
    async def twin_agent(stream: faust.StreamT) -> None:
        flusher = asyncio.ensure_future(flush_held())
        try:
            async for batch in stream.take_events(settings.worker_batch_max,
                                                  within=settings.worker_batch_seconds):
                keep, seeks = tracker.admit((ev.message.tp, ev.message.offset) for ev in batch)
                events = [ev for ev, k in zip(batch, keep, strict=True) if k]
                taken = [(ev.message.tp, ev.message.offset) for ev in events]
                metrics.taken.inc(len(events))
                async with batch_lock:
                    if not seeks and not app.rebalancing and not app.should_stop and \
                            catchup.should_hold(len(events), behind(taken)):
                        catchup.hold(events)
                        tracker.done(taken)  # taken into the coming batch
                        metrics.held.inc()
                        continue
                    held = catchup.take()
                    await handle_or_exit(held + events)
                    catchup.release(held)
                tracker.done(taken)
                if seeks:
                    await seek(seeks)
        finally:
            flusher.cancel()

    def behind(taken: list[tuple[TP, int]]) -> int:
        last: dict[TP, int] = {}
        for tp, off in taken:
            last[tp] = max(off, last.get(tp, off))
        return lag_after(last, app.consumer.highwater)

    async def flush_held() -> None:
        """Process held events that waited long enough, or before a rebalance or a shutdown
        (Faust waits for their offsets to be released; module streams.worker.catchup)."""
        while True:
            await asyncio.sleep(0.1)
            if catchup.events and (catchup.due() or app.rebalancing or app.should_stop):
                async with batch_lock:
                    held = catchup.take()
                    if not held:
                        continue
                    await handle_or_exit(held)
                    catchup.release(held)

    async def handle_or_exit(events: list[Any]) -> None:
        """`handle`, or exit for the supervisor to restart the worker when it fails (a bug, or
        Kafka refusing the outputs). Faust would restart just the agent (or, in the flush task,
        say nothing), leaving the batch's messages unreleased: no offset could be committed
        past them while the worker went on. None of them was committed, so the restarted worker
        reads them again; readings already applied are skipped as duplicates."""
        try:
            await handle(events)
        except Exception as exc:
            log.error("processing a batch failed (%s); exiting for a restart", where(exc))
            exit_for_restart()

    def exit_for_restart() -> NoReturn:
        # exit code 3: the supervisor restarts the worker (README, "Running N workers")
        if sink is not None:
            sink.close(timeout=5)
        os._exit(3)

    async def handle(events: list[Any]) -> None:
        """Validate a batch's events (dead letters for the invalid) and advance their twins."""
        decoded = await decoder.decode_async(
            [ev.message.topic == settings.topic_observations for ev in events],
            [ev.key for ev in events], [ev.value for ev in events],
            Bounds.of(settings, time.time()))
        out_of_window: dict[tuple[str, str], int] = {}
        for i, reason, kind in decoded.rejects:
            ev = events[i]
            await dead_letter(ev, reason, kind)
            if kind == "ts_out_of_range":
                metrics.rejected.labels(kind).inc()
            if kind in REJECT_CAUSES and ev.key:
                key = (ev.key.decode("utf-8", "replace"), kind)
                out_of_window[key] = out_of_window.get(key, 0) + 1
        if out_of_window:
            processor.rejected(out_of_window, {p: twins.get(p.encode())
                                               for p, _ in out_of_window})
        metrics.batches.inc()
        metrics.events.inc(len(events))
        metrics.readings.inc(len(decoded.batch.readings.row))
        metrics.batch_size.observe(len(events))
        if decoded.batch.pids:
            decoded = await admit(decoded, events)
        if decoded.batch.pids:
            await process(decoded, events)

    async def admit(decoded: Decoded, events: list[Any]) -> Decoded:
        """The readings of admitted patients from their paired devices; the messages of any
        other go to the dead-letter topic (streams.worker.admission)."""
        why = admission.check(decoded.batch, registry.paired)
        if why.any() and await asyncio.get_running_loop().run_in_executor(
                None, registry.sync, ADMISSION_SYNC_S):
            # an admission or pairing written just before its first readings may not have
            # reached this worker's registry yet: read up to the registry's end, once, first
            why = admission.check(decoded.batch, registry.paired)
        if not why.any():
            return decoded
        refused = decoded.source[why != 0]
        codes = why[why != 0]
        first = dict(zip(refused.tolist()[::-1], codes.tolist()[::-1], strict=True))
        for m, code in sorted(first.items()):
            await dead_letter(events[m], admission.REASONS[code], admission.KINDS[code])
        keep = ~np.isin(decoded.source, refused)
        return Decoded(decoded.rejects, select(decoded.batch, keep),
                       [line for line, k in zip(decoded.lines, keep.tolist(), strict=False)
                        if k] if decoded.lines else [], decoded.source[keep])

    async def dead_letter(ev: Any, reason: str, kind: str) -> None:
        msg = ev.message
        metrics.dead.labels(kind).inc()
        dead = messages.DeadLetter(
            reason=reason, kind=kind, topic=msg.topic, partition=msg.partition,
            offset=msg.offset, received=datetime.now(UTC), original=ev.value or b"")
        await dlq_topic.send(key=ev.key, value=messages.encode(dead))

    async def seek(seeks: dict[TP, int]) -> None:
        log.warning("re-reading %d partition(s) from the first unprocessed offset (messages "
                    "the consumer dropped in a rebalance)", len(seeks))
        metrics.holes.inc(len(seeks))
        await app.consumer.seek_wait(seeks)
        tracker.sought_at(seeks)  # a retry waits from the seek, not from the batch before it

    async def process(decoded: Decoded, events: list[Any]) -> None:
        t0 = time.perf_counter()
        stored = {p: twins.get(p.encode()) for p in decoded.batch.pids}
        try:
            result = processor.process(decoded.batch, stored)
        except Exception as exc:  # noqa: BLE001 - find the message, keep the rest
            # Something in the batch breaks the twin step. Going round a restart would meet
            # the same message again, forever: apply the messages one by one instead, and
            # dead-letter the ones that fail.
            log.error("a twin step failed (%s); applying the batch message by message",
                      where(exc))
            result, failed = processor.process_each(decoded.batch, decoded.source, stored)
            for i, err in failed.items():
                await dead_letter(events[i], f"the twin step could not apply the message "
                                  f"({where(err)})", "apply_failed")
        metrics.step_seconds.observe(time.perf_counter() - t0)
        metrics.applied.inc(result.applied)
        metrics.duplicates.inc(result.duplicates)
        metrics.late.inc(result.late)
        metrics.rejected.labels("duplicate").inc(result.duplicates)
        metrics.rejected.labels("late").inc(result.late)
        metrics.reordered.inc(result.reordered)
        metrics.gaps.inc(result.gaps)
        metrics.artifacts.inc(result.artifacts)
        metrics.missing.inc(result.missing)
        # The twin table is written once per patient per batch, never per reading.
        await write_records({**result.states, **alert_records(result.other_alert_patients)})
        await writer.send(settings.topic_twin_state, [
            (st.patient_id.encode(), messages.encode(st)) for st in result.twin_states])
        metrics.states.inc(len(result.twin_states))
        if sink is not None:
            sink.add(decoded.lines + state_points(result.twin_states))
        await send_alerts(result.alerts)

    async def write_records(records: dict[str, bytes]) -> None:
        await writer.write_table(twins, {pid.encode(): blob for pid, blob in records.items()})

    def alert_records(pids: set[str]) -> dict[str, bytes]:
        """Stored twins with their patients' current alerts (alerts changed outside a batch)."""
        return processor.records(pids, {p: twins.get(p.encode()) for p in pids}) if pids else {}

    async def write_alerts_of(events: list[messages.AlertEvent]) -> None:
        """Keep the alerts of these events' patients in their twin records."""
        await write_records(alert_records({ev.patient_id for ev in events}))

    def release_unless(owned_partition: Callable[[int], bool]) -> None:
        """Forget the patients of partitions this worker no longer owns: another worker may own
        them now; if they come back, their alerts are restored from the table, which the new
        owner kept current."""
        processor.release({p for p in processor.owned | set(processor.last_arrival)
                           if not owned_partition(partition_of(p, settings.kafka_partitions))})

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: set[TP], **_: Any) -> None:
        lost = {tp.partition for tp in revoked if tp.topic == settings.topic_vitals_raw}
        release_unless(lambda part: part not in lost)

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
        tracker.retain(assigned)
        given_up = tracker.abandoned - source_end.get("given_up", 0)
        if given_up > 0:
            log.warning("%d offset hole(s) given up after 30 s", given_up)
            metrics.holes_given_up.inc(given_up)
            source_end["given_up"] = tracker.abandoned
        idle = tracker.idle_seeks(positions)
        if idle:
            await seek(idle)
        metrics.assigned.set(len(assigned))
        metrics.since_progress.set(liveness.seconds_since_progress())
        metrics.healthy.set(0 if reason else 1)
        if reason:
            log.error("worker unhealthy, exiting for a restart: %s", reason)
            exit_for_restart()
        # what the dispatcher's watchdog (streams.watchdog) knows this worker by
        try:
            await workers_topic.send(key=worker_id, value=watchdog.heartbeat(
                worker_id.decode(), [tp.partition for tp in assigned]))
        except Exception as exc:  # noqa: BLE001 - a timer that raises would stop the worker
            log.warning("heartbeat not sent (%s)", where(exc))

    @app.timer(interval=1.0)
    async def after_broker_loss() -> None:
        """The broker lost everything it stored (module docstring of streams.follow): write
        back what this worker holds, the registry and its twins, each twin marked and its
        patient alerted (`history_lost`), then exit for a restart. A restarted worker restores
        the twins from the changelog written here and reads the new logs from their start,
        which Faust and the offset bookkeeping here would not do in place: their positions and
        committed offsets are those of the old logs."""
        if "at" not in broker_lost or "handled" in broker_lost:
            return
        broker_lost["handled"] = time.time()
        log.error("the broker lost its stored records (a restart of a memory-only broker?): "
                  "writing back the registry and the twins held here, then restarting")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, topics.ensure, settings)
            writer_of_registry = RegistryWriter(settings, registry)
            try:
                n = await loop.run_in_executor(None, writer_of_registry.republish)
            finally:
                writer_of_registry.close()
            async with batch_lock:
                held = {k.decode(): v for k, v in twins.items() if v is not None}
                records, events = processor.history_lost(held, broker_lost["at"])
                await write_records(records)
                await send_alerts(events)
                await app.producer.flush()
            log.warning("wrote back %d registry records and %d twins", n, len(records))
        except Exception as exc:  # noqa: BLE001 - restart anyway; the loss is logged
            log.error("writing back after the broker's loss failed (%s)", where(exc))
        exit_for_restart()

    @app.timer(interval=5.0)
    async def alert_timers() -> None:
        # Reminders, escalations, and "no data" for this worker's silent patients. A patient
        # whose partition moved to another worker is that worker's business now.
        mine = {tp.partition for tp in app.consumer.assignment()
                if tp.topic == settings.topic_vitals_raw}
        release_unless(lambda part: part in mine)
        cands = processor.silent_candidates(time.time())
        events = processor.check_silent({p: twins.get(p.encode()) for p in cands})
        await write_alerts_of(events)
        await send_alerts(events)

    @app.agent(action_topic)
    async def alert_actions(stream: faust.StreamT) -> None:
        # Keyed by patient id like the readings: the worker that owns the patient's twin owns
        # its alerts, so the action reaches the engine that holds the alert.
        async for ev in stream.events():
            try:
                action = messages.decode_action(ev.value or b"")
                events = processor.act(action, stored=twins.get(action.patient_id.encode()))
            except InvalidMessage as exc:
                log.warning("alert action rejected: %s", exc.kind)
                metrics.actions.labels("rejected").inc()
                continue
            metrics.actions.labels(action.action).inc()
            await write_alerts_of(events)
            await send_alerts(events)

    async def send_alerts(events: list[messages.AlertEvent]) -> None:
        for alert in events:
            await alert_topic.send(key=alert.patient_id.encode(), value=messages.encode(alert))
            metrics.alerts.labels(alert.priority).inc()
            metrics.alert_events.labels(alert.event, alert.kind).inc()
            if alert.raised_at is not None:
                since = (alert.ts - alert.raised_at).total_seconds()
                if alert.event == "acknowledged":
                    metrics.ack_seconds.observe(since)
                elif alert.event == "resolved" and since <= 60:
                    metrics.quick_resolves.inc()
        if sink is not None and events:
            sink.add(alert_points(events))

    @app.timer(interval=10.0)
    async def report() -> None:
        m = metrics
        log.info("events=%d readings=%d applied=%d dead_letters=%d batches=%d states=%d "
                 "alerts=%d reread_holes=%d", m.total(m.events), m.total(m.readings),
                 m.total(m.applied), m.total(m.dead), m.total(m.batches), m.total(m.states),
                 m.total(m.alerts), m.total(m.holes))

    return app


# Cyclic garbage collection tuned for big batches: a batch of 8,000 messages makes millions of
# short-lived objects (decoded readings, twin.state dicts), which with Python's default gen0
# threshold of 700 start a collection every few hundred microseconds, and the full collections
# they trigger scan every long-lived object (the held Faust events, the table). Measured with
# `bench pipeline` (docs/performance.md, session 8): 6-11 % more events/s. Nearly all of the
# worker's garbage is freed by reference counting; cycles are still collected, less often.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Move what start-up made out of the collector's way (`gc.freeze`) and collect less often."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_worker(settings: Settings) -> int:
    """Run one worker until SIGTERM/SIGINT. Returns the exit code."""
    from faust.worker import Worker

    sink = InfluxSink(settings, max_buffer=settings.influx_max_buffer) \
        if settings.influx_enabled else None
    if sink is not None:
        atexit.register(sink.close, 5.0)
    decoder = Decoder(lines=sink is not None)
    atexit.register(decoder.close)
    app = create_app(settings, decoder, sink)
    # The registry is read to its end before the first batch: readings are applied only for
    # admitted patients from paired devices (streams.worker.admission), so a worker that started
    # with a partial registry would refuse valid readings, and score twins on the wrong SpO2 scale.
    registry = app.registry.start(  # type: ignore[attr-defined]
        "patient-twin-worker-registry", on_reset=app.on_broker_reset)  # type: ignore[attr-defined]
    if not registry.follower.caught_up.wait(REGISTRY_WAIT_S):
        registry.stop()
        raise BrokerError(f"could not read the patient registry ({settings.topic_patients}) "
                          f"within {REGISTRY_WAIT_S:g} s; the worker needs it to know whose "
                          "readings to apply (is Kafka up and are the topics created?)")
    if settings.worker_metrics_port:
        try:
            serve(app.metrics, lambda: app.liveness.reason,  # type: ignore[attr-defined]
                  settings.worker_metrics_port, settings.worker_metrics_host)
        except OSError as exc:
            raise ConfigError(f"WORKER_METRICS_PORT={settings.worker_metrics_port}: cannot "
                              f"listen there ({exc.strerror}); pick a free port or 0 for off") \
                from exc
    tune_gc()
    worker = Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()  # exits the process through sys.exit
    return 0
