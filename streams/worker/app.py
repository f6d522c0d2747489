"""The Faust application: vitals.raw -> validate -> batch -> twin step -> twin.state / alerts.

`Worker` declares the topics and the twin table and holds what the stages share; its methods
are the stages: the agent has a batch decoded (in a child process, `streams.worker.decoder`),
admitted, applied by the twin core once per batch through `TwinProcessor`, and sent.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

import faust
import numpy as np
from faust.types import TP

from streams import compat, messages, supervise, topics, watchdog
from streams.config import EMBEDDED_FETCH_MAX_WAIT_MS, Settings, faust_broker_config
from streams.errors import BrokerError, ConfigError, InvalidMessage, where
from streams.follow import WRITE_BACK_TRIES
from streams.registry import Registry, RegistryWriter
from streams.topics import TWIN_TABLE, partition_of
from streams.worker import admission
from streams.worker.batch import select
from streams.worker.catchup import CatchUp, lag_after
from streams.worker.changelog import BatchWriter
from streams.worker.coalesce import RecordCache, StateGate, lowest_offsets
from streams.worker.decoder import Bounds, Decoded, Decoder
from streams.worker.liveness import Liveness
from streams.worker.metrics import WorkerMetrics, serve
from streams.worker.offsets import OffsetTracker, read_from
from streams.worker.process import TwinProcessor
from streams.worker.sink import InfluxSink, alert_points
from streams.worker.source import SourceBuffer
from streams.worker.states import StateOut
from twin.alerts import REJECT_CAUSES
from twin.policy import AlertPolicy

log = logging.getLogger("patient_twin.worker")
# Longest a batch waits for the registry to catch up before refusing readings of patients it
# does not know (an admission written just before the patient's first readings).
ADMISSION_SYNC_S = 3.0
REGISTRY_WAIT_S = 60.0  # for the registry at start-up
# Most of an original message a dead letter keeps: base64 makes it ~683 KB, inside Kafka's
# default 1 MB request and record limits (the producers' max_request_size).
DEAD_LETTER_ORIGINAL_MAX = 512 * 1024


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
        # Faust commits what is released; the record cache (streams.worker.coalesce) releases
        # a batch's events only once its twins are written, every WORKER_COMMIT_INTERVAL_S:
        # checking every second commits them soon after.
        broker_commit_interval=min(1.0, settings.worker_commit_interval_s),
        web_enabled=False,
        # Not raised for the embedded broker as the bulk producers' BROKER_LINGER_MS is: the
        # twin states and twin records go in record batches the worker builds (`send_batch`,
        # streams.worker.changelog), which aiokafka never merges; a longer linger would only
        # hold each one back, and make the next batch of the same partition wait for it (tried:
        # five send_batch calls 20 ms apart stayed five batches at 200 ms, each call but the
        # first waiting ~180 ms)
        producer_linger_ms=5,
        # aiokafka holds one open batch per partition and makes a send wait while it is full and
        # in flight: 16 KB (the default) is eight twin states. A batch of a thousand patients'
        # twins and states is ~2.5 MB, so let each request carry up to 256 KB.
        producer_max_batch_size=262_144,
        **tuning,
    )



def _age(events: list) -> float | None:
    """Seconds since the newest of these events' Kafka timestamps (None: none has one)."""
    stamps = [ev.message.timestamp for ev in events if ev.message.timestamp]
    return time.time() - max(stamps) if stamps else None

class Worker:
    """The worker's Faust app and the stages of a batch, as methods over the state they share.

    A batch's path: `twin_batches` takes events (or `flush_held` the held ones) -> `enqueue`
    (decoding starts in the child process) -> `process_ready` -> `handle_or_exit` -> `handle`
    (invalid messages to `dead_letter`) -> `admit` ->
    `process` (twin step) -> `cache_records`, twin.state through the gate and `send_alerts`;
    `flush_outputs` writes the cached records and sends the held states, then releases the
    batch's events, and Faust commits their offsets (streams.worker.coalesce). `register` is the
    one place that hooks the methods into Faust (agents, timers, the rebalance signal); the rest
    only does the work.
    """

    def __init__(self, settings: Settings, decoder: Decoder,
                 sink: InfluxSink | None = None) -> None:
        """The app for these settings (decoder: the decoding child process; sink: the InfluxDB
        sink, if any), with its topics, table and agents registered."""
        self.settings = settings
        self.decoder = decoder
        self.sink = sink
        # Faust's consumer without four tasks per message (compat.faust_direct_handover): 5,522
        # against 3,455 events/s over a pre-filled topic of one-reading messages
        # (docs/performance.md)
        compat.faust_direct_handover()
        # Looked up at call time: bench/failover_gap.py overlays the module's faust_app_config.
        app = self.app = faust.App(settings.app_id, **faust_app_config(settings))
        # Device readings and clinicians' manual observations feed the same agent: both are
        # keyed by patient id with the same partition count, so a patient's twin sees both in
        # one batch.
        self.source_topics = (settings.topic_vitals_raw, settings.topic_observations)
        self.raw_topic = app.topic(*self.source_topics,
                                   key_type=bytes, value_type=bytes,
                                   key_serializer="raw", value_serializer="raw",
                                   partitions=settings.kafka_partitions)
        self.dlq_topic = app.topic(settings.topic_vitals_dlq, key_type=bytes, value_type=bytes,
                                   key_serializer="raw", value_serializer="raw",
                                   partitions=settings.kafka_partitions)
        self.alert_topic = app.topic(settings.topic_alerts, key_type=bytes, value_type=bytes,
                                     key_serializer="raw", value_serializer="raw",
                                     partitions=settings.kafka_partitions)
        self.workers_topic = app.topic(settings.topic_workers, key_type=bytes,
                                       value_type=bytes, key_serializer="raw",
                                       value_serializer="raw", partitions=1)
        self.worker_id = f"{settings.app_id}:{socket.gethostname()}:{os.getpid()}".encode()
        self.action_topic = app.topic(settings.topic_alert_actions, key_type=bytes,
                                      value_type=bytes, key_serializer="raw",
                                      value_serializer="raw",
                                      partitions=settings.kafka_partitions)
        # One record per patient. use_partitioner: the changelog partition comes from the key,
        # so a batch spanning partitions writes each twin to its own patient's partition, not to
        # the partition of the batch's last event. The key must be the raw patient id bytes,
        # exactly as the devices key vitals.raw (murmur2 of the same bytes): a JSON-serialised
        # str key ('"P1"') hashes elsewhere, and after a failover the new owner of a patient's
        # readings would not own the changelog partition holding its twin (seen: twins
        # recovered one reading short).
        self.twins = app.Table(TWIN_TABLE, key_type=bytes, value_type=bytes, default=None,
                               partitions=settings.kafka_partitions, use_partitioner=True)
        # Written once per batch through its store and changelog, one record batch per partition
        # (streams.worker.changelog: the table's per-key path costs more than the twin step); on
        # the embedded broker each changelog partition's last record goes alone in its Kafka
        # batch, which keeps the high watermark exact for recovery (docs/tansu.md). twin.state
        # likewise.
        self.writer = BatchWriter(
            app, lambda key: partition_of(key.decode(), settings.kafka_partitions),
            lone_last=settings.embedded_broker)
        # Outputs coalesced per patient (streams.worker.coalesce): twin.state at most every
        # TWIN_STATE_INTERVAL_S, and the changelog once per commit interval, with each batch's
        # offsets committed only once both are in Kafka.
        self.gate = StateGate(settings.twin_state_interval_s)
        self.cache = RecordCache(settings.worker_commit_interval_s)
        self.registry = Registry(settings)
        # When the broker lost its records (the registry's follower finds its topic replaced: a
        # restart of the memory-only embedded broker), the time it was found.
        self.broker_lost_at: float | None = None
        self.processor = TwinProcessor(
            policy=AlertPolicy(reject_alert_per_min=settings.reject_alert_per_min,
                               max_silence_s=settings.alert_silence_max_minutes * 60.0,
                               risk_alert=settings.alert_sepsis_risk,
                               trend_raise=settings.alert_trend_raise),
            spo2_scale=self.registry.spo2_scale,
            late_tolerance_s=settings.worker_late_tolerance_s, training=settings.training,
            lines=sink is not None)
        self.metrics = WorkerMetrics()
        self.liveness = Liveness(stall_seconds=settings.liveness_stall_seconds,
                                 unassigned_seconds=settings.liveness_unassigned_seconds)
        self.tracker = OffsetTracker()
        if sink is not None:
            self.metrics.sink_gauges(lambda: sink.stats)
        self.catchup = CatchUp(settings.worker_catchup_max, settings.worker_catchup_seconds,
                               settings.worker_catchup_behind_s)
        # one twin step at a time, and no output flush, alert change or broker-loss write-back
        # in the middle of one
        self.batch_lock = asyncio.Lock()
        # What check_liveness saw last: the source topic's total end offset (None before the
        # first look), and the offset holes given up so far that it has already reported.
        self.source_tps = [TP(settings.topic_vitals_raw, p)
                           for p in range(settings.kafka_partitions)]
        self.source_total: int | None = None
        self.holes_given_up_reported = 0
        # Batches queued or being stepped, in order, until the record cache holds them
        # (`commit_limits`); the queue itself; room for one decoded ahead of the one stepped.
        self.inflight: deque[list[Any]] = deque()
        self.ready: asyncio.Queue[tuple[list[Any], asyncio.Future[Decoded]]] = asyncio.Queue()
        self.pipeline_room = asyncio.Semaphore(2)
        # takes into batches one at a time (the agent's, or held events flushed): catch-up's
        # held events and the order of the queue
        self.take_lock = asyncio.Lock()
        # vitals.raw and observations reach the twin without a Faust event per message
        # (streams.worker.source): 5,522 events/s was all a do-nothing Faust agent did here
        self.source = SourceBuffer(app, settings.worker_batch_max,
                                   settings.worker_batch_seconds)
        self.register()

    def register(self) -> None:
        """Hook the methods into Faust: the agents, the rebalance signal and the timers."""
        app = self.app
        app.agent(self.raw_topic)(self.twin_agent)
        app.on_partitions_revoked.connect(self.on_revoked)
        app.on_partitions_assigned.connect(self.on_assigned)
        # the source topics' offsets are committed as far as the twins applied them, not as
        # far as Faust acknowledged them (streams.worker.offsets, streams.compat)
        compat.faust_commit_limits(app, self.commit_limits)
        compat.faust_source_handler(app, self.source_topics, self.source.on_message)
        app.timer(interval=5.0)(self.check_liveness)
        app.timer(interval=1.0)(self.after_broker_loss)
        app.timer(interval=5.0)(self.alert_timers)
        app.agent(self.action_topic)(self.alert_actions)
        app.timer(interval=10.0)(self.report)

    # A batch's path

    async def twin_agent(self, stream: faust.StreamT) -> None:
        """The agent over vitals.raw and observations. Its stream subscribes the worker to them
        and receives nothing: their messages go to `self.source` (streams.worker.source), and
        `twin_batches` takes them from there."""
        batches = asyncio.ensure_future(self.twin_batches())
        batches.add_done_callback(self._batches_ended)
        try:
            async for _ in stream.events():
                pass
        finally:
            batches.cancel()

    def _batches_ended(self, task: asyncio.Future[None]) -> None:
        if task.cancelled() or self.app.should_stop:
            return
        exc = task.exception()
        log.error("the twin's batch loop ended (%s); exiting for a restart",
                  where(exc) if exc is not None else "returned")
        self.exit_for_restart()

    async def twin_batches(self) -> None:
        """Takes of events, held while the worker is behind (streams.worker.catchup), decoded
        one batch ahead of the twin step (`enqueue`, `process_ready`)."""
        tracker, catchup = self.tracker, self.catchup
        flusher = asyncio.ensure_future(self.flush_held())
        stepper = asyncio.ensure_future(self.process_ready())
        try:
            async for batch in self.source.batches():
                fresh = tracker.unseeded({ev.message.tp for ev in batch})
                if fresh and not await self.seed(fresh):
                    log.error("could not read the committed offsets of newly assigned "
                              "partitions; exiting for a restart")
                    self.exit_for_restart()
                keep, seeks = tracker.admit((ev.message.tp, ev.message.offset) for ev in batch)
                events = [ev for ev, k in zip(batch, keep, strict=True) if k]
                taken = [(ev.message.tp, ev.message.offset) for ev in events]
                self.metrics.taken.inc(len(events))
                # the take's own reference goes when the next take is asked for: one more,
                # held or not, until the twin step is done with them (process_ready)
                for ev in events:
                    ev.message.incref()
                async with self.take_lock:
                    if not seeks and not self.app.rebalancing and not self.app.should_stop and \
                            catchup.should_hold(len(events), self.behind(taken),
                                                _age(events)):
                        catchup.hold(events)
                        self.metrics.held.inc()
                    else:
                        await self.enqueue(catchup.take() + events)
                tracker.done(taken)  # applied, or on their way (uncommitted meanwhile)
                if seeks:
                    await self.seek(seeks)
        finally:
            flusher.cancel()
            stepper.cancel()

    async def enqueue(self, events: list[Any]) -> None:
        """Start decoding a batch (each event with one reference of ours) in the child process
        and queue it for the twin step. At most one batch waits decoded or decoding while
        another is stepped: the child decodes the next batch while the main thread steps this
        one (it waited for the child, idle, for ~12 % of its time at 10,000 patients)."""
        await self.pipeline_room.acquire()
        self.inflight.append(events)  # uncommitted until the record cache holds them
        settings = self.settings
        decoding = asyncio.ensure_future(self.decoder.decode_async(
            [ev.message.topic == settings.topic_observations for ev in events],
            [ev.key for ev in events], [ev.value for ev in events],
            Bounds.of(settings, time.time())))
        self.ready.put_nowait((events, decoding))

    async def process_ready(self) -> None:
        """The twin step over the queued batches, in the order they were taken; each event's
        reference is released when its batch is done (the record cache keeps its own)."""
        while True:
            events, decoding = await self.ready.get()
            try:
                async with self.batch_lock:
                    await self.handle_or_exit(events, decoding)
            finally:
                for ev in events:
                    ev.ack()
                self.pipeline_room.release()

    def behind(self, taken: list[tuple[TP, int]]) -> int:
        """Messages still waiting in the partitions after the last of these taken offsets."""
        last: dict[TP, int] = {}
        for tp, off in taken:
            last[tp] = max(off, last.get(tp, off))
        return lag_after(last, self.app.consumer.highwater)

    async def flush_held(self) -> None:
        """Process held events that waited long enough, or before a rebalance or a shutdown
        (Faust waits for their offsets to be released; module streams.worker.catchup); send
        the twin states whose turn came and write the cached twin records when due
        (`flush_outputs`)."""
        catchup = self.catchup
        while True:
            await asyncio.sleep(0.05)
            leaving = self.app.rebalancing or self.app.should_stop
            if catchup.events and (catchup.due() or leaving):
                async with self.take_lock:
                    held = catchup.take()
                    if held:
                        await self.enqueue(held)  # their reference is released when done
            try:
                await self.flush_outputs(everything=leaving)
            except Exception as exc:
                if self.app.should_stop:
                    # stopping anyway; the events stay uncommitted and are read again
                    log.warning("the last twin outputs were not written (%s)", where(exc))
                    return
                log.error("writing the twins' outputs failed (%s); exiting for a restart",
                          where(exc))
                self.exit_for_restart()

    async def flush_outputs(self, everything: bool = False) -> None:
        """Send the held twin states whose turn came, write the cached twin records once they
        have waited a commit interval (all of both with `everything`: a rebalance or a
        shutdown waits for the held events), and release the events whose outputs are all in
        Kafka, so that Faust may commit their offsets."""
        cache = self.cache
        async with self.batch_lock:
            # one time for both: events are released only if their held states were sent
            now = self.gate.clock()
            await self.send_states(self.gate.due(everything, now))
            if not (everything and (cache.records or cache.held)) and not cache.due():
                cache.release(now=now)
                return
            records = cache.take()
            futures = await self.writer.log(self.twins, records)
        # acknowledged before any offset they cover may be committed; batches meanwhile go on
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        self.metrics.records.inc(len(records))
        async with self.batch_lock:
            cache.written()
            cache.release(everything, now)

    async def handle_or_exit(self, events: list[Any],
                             decoding: asyncio.Future[Decoded]) -> None:
        """`handle`, or exit for the supervisor to restart the worker when it fails (a bug, or
        Kafka refusing the outputs). Faust would restart just the agent (or, in the flush task,
        say nothing), leaving the batch's messages unreleased: no offset could be committed
        past them while the worker went on. None of them was committed, so the restarted worker
        reads them again; readings already applied are skipped as duplicates."""
        try:
            ready_at = await self.handle(events, await decoding)
        except Exception as exc:
            log.error("processing a batch failed (%s); exiting for a restart", where(exc))
            self.exit_for_restart()
        # uncommitted until the batch's twin records are written and its held states sent
        self.cache.hold(events, ready_at)
        done = self.inflight.popleft()
        assert done is events, "batches are stepped in the order they were queued"

    async def handle(self, events: list[Any], decoded: Decoded) -> float | None:
        """Dead letters for a batch's invalid events, and its valid readings (`decoded`, from
        the child process) into their twins. Returns when the twin states it held back are
        due (monotonic; None: none held)."""
        metrics = self.metrics
        out_of_window: dict[tuple[str, str], int] = {}
        for i, reason, kind in decoded.rejects:
            ev = events[i]
            await self.dead_letter(ev, reason, kind)
            if kind == "ts_out_of_range":
                metrics.rejected.labels(kind).inc()
            if kind in REJECT_CAUSES and ev.key:
                key = (ev.key.decode("utf-8", "replace"), kind)
                out_of_window[key] = out_of_window.get(key, 0) + 1
        if out_of_window:
            self.processor.rejected(out_of_window, {p: self.twins.get(p.encode())
                                                    for p, _ in out_of_window})
        metrics.batches.inc()
        metrics.events.inc(len(events))
        metrics.readings.inc(len(decoded.batch.readings.row))
        metrics.batch_size.observe(len(events))
        if decoded.batch.pids:
            decoded = await self.admit(decoded, events)
        if decoded.batch.pids:
            return await self.process(decoded, events)
        return None

    async def admit(self, decoded: Decoded, events: list[Any]) -> Decoded:
        """The readings of admitted patients from their paired devices; the messages of any
        other go to the dead-letter topic (streams.worker.admission)."""
        registry = self.registry
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
            await self.dead_letter(events[m], admission.REASONS[code], admission.KINDS[code])
        keep = ~np.isin(decoded.source, refused)
        return Decoded(decoded.rejects, select(decoded.batch, keep),
                       [line for line, k in zip(decoded.lines, keep.tolist(), strict=False)
                        if k] if decoded.lines else [], decoded.source[keep])

    async def process(self, decoded: Decoded, events: list[Any]) -> float | None:
        """The twin step over the batch, then its outputs: the twin records (cached until the
        next write), twin.state (now, or held for the patient's turn), the InfluxDB points and
        the alerts. Returns when the held states are due (None: none held)."""
        metrics, processor = self.metrics, self.processor
        t0 = time.perf_counter()
        stored = {p: self.twins.get(p.encode()) for p in decoded.batch.pids}
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
                await self.dead_letter(events[i], f"the twin step could not apply the message "
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
        # The twin table's store now, its changelog once per commit interval per patient.
        self.cache_records({**result.states, **self.alert_records(result.other_alert_patients)})
        # What a clinician must see at once: alert changes and their own observations (a band
        # change and a patient's first state the gate sees itself).
        urgent = {a.patient_id for a in result.alerts}
        manual = decoded.batch.readings.manual
        if manual is not None and manual.any():
            rows = np.unique(decoded.batch.readings.row[manual == 1])
            urgent.update(decoded.batch.pids[i] for i in rows.tolist())
        send_now, ready_at = self.gate.offer(result.pending, urgent)
        if self.sink is not None and decoded.lines:
            self.sink.add(decoded.lines)
        await self.send_states(send_now)
        await self.send_alerts(result.alerts)
        return ready_at

    async def send_states(self, states: list[StateOut]) -> None:
        """Twin states to twin.state (and their estimates to InfluxDB), counted."""
        if not states:
            return
        await self.writer.send(self.settings.topic_twin_state, [
            (st.patient_id.encode(), st.data) for st in states])
        self.metrics.states.inc(len(states))
        if self.sink is not None:
            self.sink.add([st.line for st in states if st.line is not None])

    def cache_records(self, records: dict[str, bytes]) -> None:
        """Twin records (patient id -> record) into the table's store at once and into the
        record cache for its changelog (`flush_outputs` writes them)."""
        if not records:
            return
        encoded = {pid.encode(): blob for pid, blob in records.items()}
        store = self.twins.data
        for key, value in encoded.items():
            store[key] = value
        self.cache.put(encoded)

    async def write_records(self, records: dict[str, bytes]) -> list[asyncio.Future[Any]]:
        """Twin records (patient id -> record) into the table and its changelog; returns the
        delivery futures (`BatchWriter.send`)."""
        return await self.writer.write_table(
            self.twins, {pid.encode(): blob for pid, blob in records.items()})

    def alert_records(self, pids: set[str]) -> dict[str, bytes]:
        """Stored twins with their patients' current alerts (alerts changed outside a batch)."""
        if not pids:
            return {}
        return self.processor.records(pids, {p: self.twins.get(p.encode()) for p in pids})

    async def send_alerts(self, events: list[messages.AlertEvent]) -> None:
        """Alert events to the alerts topic (and InfluxDB), counted."""
        metrics = self.metrics
        for alert in events:
            await self.alert_topic.send(key=alert.patient_id.encode(),
                                        value=messages.encode(alert))
            metrics.alerts.labels(alert.priority).inc()
            metrics.alert_events.labels(alert.event, alert.kind).inc()
            if alert.raised_at is not None:
                since = (alert.ts - alert.raised_at).total_seconds()
                if alert.event == "acknowledged":
                    metrics.ack_seconds.observe(since)
                elif alert.event == "resolved" and since <= 60:
                    metrics.quick_resolves.inc()
        if self.sink is not None and events:
            self.sink.add(alert_points(events))

    async def dead_letter(self, ev: Any, reason: str, kind: str) -> None:
        """An event's message to the dead-letter topic, with why. The original is kept up to
        `DEAD_LETTER_ORIGINAL_MAX` bytes: whole, a message near the broker's size limit made a
        dead letter (base64, a third larger) that Kafka refused, and the worker exited on it at
        every restart (found sending a 900 KB message to the demo's vitals.raw). Where it was
        read from is in the dead letter, to fetch all of it."""
        msg = ev.message
        self.metrics.dead.labels(kind).inc()
        original = ev.value or b""
        if len(original) > DEAD_LETTER_ORIGINAL_MAX:
            reason = (f"{reason} (original: the first {DEAD_LETTER_ORIGINAL_MAX} of "
                      f"{len(original)} bytes)")
            original = original[:DEAD_LETTER_ORIGINAL_MAX]
        dead = messages.DeadLetter(
            reason=reason, kind=kind, topic=msg.topic, partition=msg.partition,
            offset=msg.offset, received=datetime.now(UTC), original=original)
        await self.dlq_topic.send(key=ev.key, value=messages.encode(dead))

    async def seek(self, seeks: dict[TP, int]) -> None:
        """Re-read partitions from their first unprocessed offset (streams.worker.offsets)."""
        log.warning("re-reading %d partition(s) from the first unprocessed offset (messages "
                    "the consumer dropped in a rebalance)", len(seeks))
        self.metrics.holes.inc(len(seeks))
        await self.app.consumer.seek_wait(seeks)
        self.tracker.sought_at(seeks)  # a retry waits from the seek, not from the batch before it

    def exit_for_restart(self) -> NoReturn:
        """Exit code 3: the supervisor restarts the worker (README, "Running N workers")."""
        if self.sink is not None:
            self.sink.close(timeout=5)
        os._exit(supervise.RESTART_EXIT_CODE)

    # Offsets

    async def seed(self, tps: set[TP], tries: int = 3) -> bool:
        """Tell the offset tracker where the group reads these partitions from
        (`streams.worker.offsets.read_from`). False: the broker did not answer in `tries`
        tries."""
        consumer, order = self.app.consumer, sorted(tps)
        for n in range(1, tries + 1):
            try:
                committed = await compat.faust_committed_offsets(self.app, order)
                earliest = await consumer.earliest_offsets(*order)
                ends = await consumer.highwaters(*order)
                self.tracker.seed({tp: read_from(committed[tp], earliest[tp], ends[tp])
                                   for tp in order
                                   if earliest.get(tp) is not None and ends.get(tp) is not None})
                return not self.tracker.unseeded(tps)
            except Exception as exc:  # noqa: BLE001 - tried again, then the caller decides
                log.warning("committed offsets not read (%s); try %d of %d", where(exc), n,
                            tries)
                await asyncio.sleep(1.0)
        return False

    def commit_limits(self, tps: list[TP]) -> dict[TP, int | None]:
        """For Faust's commit (streams.compat.faust_commit_limits): the offset each source
        partition may be committed to. Not beyond an event whose twin records or held states
        are not yet in Kafka (the record cache), nor one held for the next batch (catch-up) or
        being handled, nor a hole (the offset tracker)."""
        # every assigned source partition, not only those Faust still has acknowledgements of:
        # it drops them for revoked partitions before the last commit of a rebalance
        mine = set(self.source_assignment()) | {tp for tp in tps
                                                 if tp.topic in self.source_topics}
        if not mine:
            return {}
        lows = self.cache.lowest()
        lowest_offsets(self.catchup.events, lows)
        for events in self.inflight:
            lowest_offsets(events, lows)
        return {tp: self.tracker.limit(tp, lows.get(tp)) for tp in mine}

    def source_assignment(self) -> list[TP]:
        """The partitions of vitals.raw and observations assigned to this worker."""
        return [tp for tp in self.app.consumer.assignment() if tp.topic in self.source_topics]

    async def on_assigned(self, sender: Any, assigned: set[TP], **_: Any) -> None:
        """Faust's partitions-assigned signal: each source partition is seeded again before its
        next commit (another worker may have committed it since this one last had it)."""
        self.tracker.reassigned(tp for tp in assigned if tp.topic in self.source_topics)

    # Partitions moving away

    async def on_revoked(self, sender: Any, revoked: set[TP], **_: Any) -> None:
        """Faust's partitions-revoked signal: forget the patients of the lost partitions."""
        lost = {tp.partition for tp in revoked if tp.topic == self.settings.topic_vitals_raw}
        self.release_unless(lambda part: part not in lost)

    def release_unless(self, owned_partition: Callable[[int], bool]) -> None:
        """Forget the patients of partitions this worker no longer owns: another worker may own
        them now; if they come back, their alerts are restored from the table, which the new
        owner kept current."""
        processor, partitions = self.processor, self.settings.kafka_partitions
        gone = {p for p in processor.owned | set(processor.last_arrival) | set(self.gate.sent)
                if not owned_partition(partition_of(p, partitions))}
        processor.release(gone)
        self.gate.forget(gone)

    # Timers

    async def check_liveness(self) -> None:
        """Every 5 s: lag and health metrics, offset holes of quiet partitions, the heartbeat to
        the dispatcher's watchdog; exit for a restart when stalled or out of the group."""
        consumer, metrics, tracker = self.app.consumer, self.metrics, self.tracker
        assigned = [tp for tp in consumer.assignment()
                    if tp.topic == self.settings.topic_vitals_raw]
        positions = {tp: await consumer.position(tp) for tp in assigned}
        highwaters = {tp: consumer.highwater(tp) for tp in assigned}
        for tp in assigned:
            if positions[tp] is not None and highwaters[tp] is not None:
                metrics.lag.labels(str(tp.partition)).set(max(highwaters[tp] - positions[tp], 0))
        try:
            ends = await consumer.highwaters(*self.source_tps)
        except Exception:  # noqa: BLE001 - best effort; growth then counts as unknown
            ends = {}
        total = sum(v for v in ends.values() if v is not None)
        growing = self.source_total is not None and total > self.source_total
        self.source_total = total
        reason = self.liveness.observe(positions, {tp: h for tp, h in highwaters.items()
                                                   if h is not None}, growing)
        # the offset bookkeeping covers both source topics (observations too)
        sources = self.source_assignment()
        source_positions = {**positions, **{tp: await consumer.position(tp) for tp in sources
                                            if tp not in positions}}
        tracker.retain(sources)
        # quiet partitions too, so that what was released of them is committed
        unseeded = tracker.unseeded(sources)
        if unseeded:
            await self.seed(unseeded, tries=1)
        given_up = tracker.abandoned - self.holes_given_up_reported
        if given_up > 0:
            log.warning("%d offset hole(s) given up after 30 s", given_up)
            metrics.holes_given_up.inc(given_up)
            self.holes_given_up_reported = tracker.abandoned
        idle = tracker.idle_seeks(source_positions)
        if idle:
            await self.seek(idle)
        metrics.assigned.set(len(assigned))
        metrics.since_progress.set(self.liveness.seconds_since_progress())
        metrics.healthy.set(0 if reason else 1)
        if reason:
            log.error("worker unhealthy, exiting for a restart: %s", reason)
            self.exit_for_restart()
        # what the dispatcher's watchdog (streams.watchdog) knows this worker by
        try:
            await self.workers_topic.send(key=self.worker_id, value=watchdog.heartbeat(
                self.worker_id.decode(), [tp.partition for tp in assigned]))
        except Exception as exc:  # noqa: BLE001 - a timer that raises would stop the worker
            log.warning("heartbeat not sent (%s)", where(exc))

    def on_broker_reset(self, _topics: set[str]) -> None:
        """The registry's follower found its topic replaced (called from its thread): note when,
        once; `after_broker_loss` acts on it."""
        if self.broker_lost_at is None:
            self.broker_lost_at = time.time()

    async def after_broker_loss(self) -> None:
        """Every second: once the broker lost everything it stored (module docstring of
        streams.follow), write back what this worker holds, the registry and its twins, each
        twin marked and its patient alerted (`history_lost`), then exit for a restart. A
        restarted worker restores the twins from the changelog written here and reads the new
        logs from their start, which Faust and the offset bookkeeping here would not do in
        place: their positions and committed offsets are those of the old logs."""
        # Faust runs a timer's calls one after another, and this one ends in the exit: it acts
        # once.
        lost_at = self.broker_lost_at
        if lost_at is None:
            return
        log.error("the broker lost its stored records (a restart of a memory-only broker?): "
                  "writing back the registry and the twins held here, then restarting")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, topics.ensure, self.settings)
            writer_of_registry = RegistryWriter(self.settings, self.registry)
            try:
                n = await loop.run_in_executor(None, writer_of_registry.republish)
            finally:
                writer_of_registry.close()
            log.warning("wrote back %d registry records", n)
        except Exception as exc:  # noqa: BLE001 - the twins go back all the same
            log.error("writing back the registry after the broker's loss failed (%s)",
                      where(exc))
        try:
            async with self.batch_lock:
                held = {k.decode(): v for k, v in self.twins.items() if v is not None}
                records, events = self.processor.history_lost(held, lost_at)
                tries = await self.write_back(records)
                await self.send_alerts(events)
                await self.app.producer.flush()
            log.warning("wrote back %d twins (%d tries)", len(records), tries)
        except Exception as exc:  # noqa: BLE001 - restart anyway; the loss is logged
            log.error("writing back the twins after the broker's loss failed (%s)", where(exc))
        self.exit_for_restart()

    async def write_back(self, records: dict[str, bytes], tries: int = WRITE_BACK_TRIES) -> int:
        """Write the held twins' records until the broker has them all; returns the tries it
        took. These records are the only copy of the twins (the broker lost its own), and the
        first sends to a restarted broker may fail (aiokafka UnknownError for some batches,
        seen in CI: the restarted worker then recovered 8 of 12 twins): a failed try writes all
        of them again, which a compacted changelog takes as the same latest value."""
        for n in range(1, tries + 1):
            results = await asyncio.gather(*await self.write_records(records),
                                           return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if not failed:
                return n
            log.warning("%d of %d record batches of the write-back failed (%s); again in 1 s",
                        len(failed), len(results), where(failed[0]))
            await asyncio.sleep(1.0)
        raise RuntimeError(f"the write-back failed {tries} times")

    async def alert_timers(self) -> None:
        """Every 5 s: reminders, escalations, and "no data" for this worker's silent patients."""
        # A patient whose partition moved to another worker is that worker's business now.
        mine = {tp.partition for tp in self.app.consumer.assignment()
                if tp.topic == self.settings.topic_vitals_raw}
        self.release_unless(lambda part: part in mine)
        cands = self.processor.silent_candidates(time.time())
        async with self.batch_lock:
            events = self.processor.check_silent({p: self.twins.get(p.encode())
                                                  for p in cands})
            await self.write_alerts_of(events)
            await self.send_alerts(events)

    async def report(self) -> None:
        """Every 10 s: the running totals, in the log."""
        m = self.metrics
        log.info("events=%d readings=%d applied=%d dead_letters=%d batches=%d states=%d "
                 "alerts=%d reread_holes=%d", m.total(m.events), m.total(m.readings),
                 m.total(m.applied), m.total(m.dead), m.total(m.batches), m.total(m.states),
                 m.total(m.alerts), m.total(m.holes))

    # Clinicians' actions on alerts

    async def alert_actions(self, stream: faust.StreamT) -> None:
        """The agent over alert actions (acknowledge, escalate, ...)."""
        # Keyed by patient id like the readings: the worker that owns the patient's twin owns
        # its alerts, so the action reaches the engine that holds the alert.
        async for ev in stream.events():
            try:
                action = messages.decode_action(ev.value or b"")
                if ev.key != action.patient_id.encode():
                    # the key routed it to the worker holding the key's patient; an action
                    # naming another patient would act on a twin this worker does not own
                    raise messages.reject("message key must be the action's patient_id",
                                          "wrong_key")
                events = self.processor.act(
                    action, stored=self.twins.get(action.patient_id.encode()))
            except InvalidMessage as exc:
                log.warning("alert action rejected: %s", exc.kind)
                self.metrics.actions.labels("rejected").inc()
                continue
            self.metrics.actions.labels(action.action).inc()
            async with self.batch_lock:
                await self.write_alerts_of(events)
                await self.send_alerts(events)
                # the action's offset waits for the alerts it changed to be in the table
                self.cache.hold([ev])

    async def write_alerts_of(self, events: list[messages.AlertEvent]) -> None:
        """Keep the alerts of these events' patients in their twin records."""
        self.cache_records(self.alert_records({ev.patient_id for ev in events}))


# Cyclic garbage collection tuned for big batches: a batch of 8,000 messages makes millions of
# short-lived objects (decoded readings, alert and output objects), which with Python's default
# gen0 threshold of 700 start a collection every few hundred microseconds, and the full collections
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
    from faust.worker import Worker as FaustWorker

    sink = InfluxSink(settings, max_buffer=settings.influx_max_buffer) \
        if settings.influx_enabled else None
    if sink is not None:
        atexit.register(sink.close, 5.0)
    decoder = Decoder(lines=sink is not None)
    atexit.register(decoder.close)
    worker = Worker(settings, decoder, sink)
    # The registry is read to its end before the first batch: readings are applied only for
    # admitted patients from paired devices (streams.worker.admission), so a worker that started
    # with a partial registry would refuse valid readings, and score twins on the wrong SpO2 scale.
    registry = worker.registry.start("patient-twin-worker-registry",
                                     on_reset=worker.on_broker_reset)
    if not registry.follower.caught_up.wait(REGISTRY_WAIT_S):
        registry.stop()
        raise BrokerError(f"could not read the patient registry ({settings.topic_patients}) "
                          f"within {REGISTRY_WAIT_S:g} s; the worker needs it to know whose "
                          "readings to apply (is Kafka up and are the topics created?)")
    if settings.worker_metrics_port:
        try:
            serve(worker.metrics, lambda: worker.liveness.reason,
                  settings.worker_metrics_port, settings.worker_metrics_host)
        except OSError as exc:
            raise ConfigError(f"WORKER_METRICS_PORT={settings.worker_metrics_port}: cannot "
                              f"listen there ({exc.strerror}); pick a free port or 0 for off") \
                from exc
    tune_gc()
    faust_worker = FaustWorker(worker.app, loglevel=settings.log_level.lower(), quiet=True)
    faust_worker.execute_from_commandline()  # exits the process through sys.exit
    return 0
