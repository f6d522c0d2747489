"""The InfluxDB sink: readings, twin estimates, scores and alert events as points.

The stream processor never waits for InfluxDB. Points go into a bounded buffer; a background thread
writes them in batches with influxdb-client and retries with exponential backoff. When InfluxDB is
down or slow the buffer fills up to its bound, then the oldest points are dropped and counted; when
InfluxDB comes back the thread drains what is left by itself. Measurement and tag design:
docs/influxdb.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streams.config import Settings
from streams.messages import AlertEvent, ValidReading

if TYPE_CHECKING:
    from influxdb_client import Point

log = logging.getLogger("patient_twin.sink")


@dataclass
class SinkStats:
    written: int = 0  # points acknowledged by the server
    dropped: int = 0  # points dropped because the buffer was full
    errors: int = 0  # failed write attempts
    buffered: int = 0


def reading_points(readings: Iterable[ValidReading]) -> list[str]:
    """`vitals_raw`: one point per reading, a field per channel, as recorded.

    Written as line protocol directly (influxdb-client's write accepts it): a batch holds thousands
    of readings, and building a `Point` per reading cost the worker more than its twin step. Ids
    need no escaping (the schema allows only `A-Za-z0-9._:-`); values are finite (validated).
    """
    # values are floats already (messages.canonical_values); a list, not a generator, for join
    return [f"vitals_raw,device_id={r.device_id},patient_id={r.patient_id} "
            f"{','.join([f'{ch}={v!r}' for ch, v in r.values.items()])} {round(r.t * 1e9)}"
            for r in readings]


def alert_points(alerts: Iterable[AlertEvent]) -> list[Point]:
    """`alert`: one point per alert event."""
    from influxdb_client import Point, WritePrecision

    out = []
    for a in alerts:
        p = (Point("alert").tag("patient_id", a.patient_id).tag("kind", a.kind)
             .tag("priority", a.priority).tag("category", a.category).tag("event", a.event)
             .field("alert_id", a.alert_id).field("message", a.message))
        if a.news2 is not None:
            p = p.field("news2", a.news2)
        out.append(p.time(a.ts, WritePrecision.NS))
    return out


class InfluxSink:
    """Buffered, retrying writer. `add` never blocks; `close` flushes what it can."""

    def __init__(self, settings: Settings, *, max_buffer: int = 100_000, batch_size: int = 5000,
                 flush_interval: float = 1.0, max_backoff: float = 30.0,
                 timeout_ms: int = 10_000) -> None:
        if not settings.influx_enabled:
            raise ValueError("InfluxSink needs INFLUX_URL")
        # here, not at the top: the decoding child imports this module for `reading_points`
        # and writes nothing (influxdb-client is ~20 MB of its memory)
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        token = settings.influx_token.get() if settings.influx_token else ""
        self._client = InfluxDBClient(
            url=settings.influx_url or "", token=token, org=settings.influx_org,
            verify_ssl=settings.influx_verify_ssl, ssl_ca_cert=settings.influx_ca_cert,
            timeout=timeout_ms)
        self._write = self._client.write_api(write_options=SYNCHRONOUS)
        self._bucket = settings.influx_bucket or ""
        self._org = settings.influx_org or ""
        self._buf: deque[Point | str] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self.stats = SinkStats()
        self._thread = threading.Thread(target=self._run, name="influx-sink", daemon=True)
        self._thread.start()

    def add(self, points: list[Point | str]) -> None:
        with self._lock:
            self._buf.extend(points)
            self._bound()
        if len(self._buf) >= self.batch_size:
            self._wake.set()

    def _bound(self) -> None:
        """Drop the oldest points beyond the bound (caller holds the lock). Keep the newest: a
        clinician looks at now; the oldest are the least useful."""
        over = len(self._buf) - self.max_buffer
        if over > 0:
            for _ in range(over):
                self._buf.popleft()
            self.stats.dropped += over
        self.stats.buffered = len(self._buf)

    def _take(self) -> list[Point | str]:
        with self._lock:
            n = min(self.batch_size, len(self._buf))
            return [self._buf.popleft() for _ in range(n)]

    def _give_back(self, batch: list[Point | str]) -> None:
        with self._lock:
            self._buf.extendleft(reversed(batch))
            self._bound()

    def _run(self) -> None:
        backoff = 0.5
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            while self._buf:
                batch = self._take()
                # Line-protocol strings go as one bytes payload: the client would otherwise
                # encode and append each of thousands of lines one by one.
                lines = [p for p in batch if isinstance(p, str)]
                record = [p for p in batch if not isinstance(p, str)]
                if lines:
                    record.append("\n".join(lines).encode())
                try:
                    self._write.write(bucket=self._bucket, org=self._org, record=record)
                except Exception as exc:  # noqa: BLE001 - any failure is retried the same way
                    self.stats.errors += 1
                    self._give_back(batch)
                    log.warning("InfluxDB write failed (%s); retrying in %.1f s",
                                type(exc).__name__, backoff)
                    if self._stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                backoff = 0.5
                self.stats.written += len(batch)
                with self._lock:
                    self.stats.buffered = len(self._buf)
            if self._stop.is_set():
                return

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the buffer is empty (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self._buf and time.monotonic() < deadline:
            time.sleep(0.05)
            self._wake.set()
        return not self._buf

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self._write.close()
        self._client.close()
