"""How much memory `patient-twin demo` takes per reading, per process, and where the broker's goes.

Runs `patient-twin demo --patients N` as a user would (embedded Tansu broker on a free loopback
port, Mosquitto if installed, worker, dashboard, dispatcher, ingest, simulator) and every
`--interval` seconds samples the resident memory (VmRSS) of each of its processes and the
readings the demo's status line counts. At the end, while everything still runs, it reads every
topic of the broker from the start with raw Fetch requests and counts per topic the record
batches, records and bytes (the broker keeps each produced batch as it came, one object per
batch: docs/tansu.md), then stops the demo.

Reported: each process's RSS at the start and the end and its growth per second and per
reading (least squares over the samples after `--warmup`, and over each quarter of them: does it
flatten?), per topic: batches, records, bytes, and batches and bytes per reading; the load
average at the start and the end; and latency after the warm-up, read from the broker as it
happens (a reader polling every 20 ms): `raw_wait`, a vitals.raw record's arrival minus its
timestamp (when the ingest endpoint or the MQTT bridge sent it: their producers' linger and
the broker), and `reading_to_state`, a twin.state's arrival minus the timestamp of the vitals.raw
record that carried the reading it reflects (same patient and reading time: the linger, the
worker, the twin.state gate). Linux only (it reads /proc).

Run: `python -m bench.broker_memory [--patients 300] [--seconds 180] [--warmup 30]
[--interval 5]`, or `patient-twin bench broker-memory ...`. Each sample is a line on stderr;
Ctrl-C (or SIGTERM) ends a long run early and still reports. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from streams import config, supervise

ROLES = (("tansu", "broker"), ("streams.cli worker", "worker"),
         ("streams.cli dashboard", "dashboard"), ("streams.cli dispatcher", "dispatcher"),
         ("streams.cli ingest", "ingest"), ("streams.cli simulate", "simulator"),
         ("streams.cli mqtt-bridge", "mqtt-bridge"), ("mosquitto", "mosquitto"),
         ("streams.cli demo", "demo"))


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the fields start after the last ")"
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids[ppid].append(int(entry))
    return kids


def _tree(root: int) -> Iterator[int]:
    kids = _children()
    todo = [root]
    while todo:
        pid = todo.pop()
        yield pid
        todo.extend(kids.get(pid, ()))


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_by_role(root: int) -> dict[str, int]:
    """RSS of the demo and its processes, summed per role (a restarted worker is still one)."""
    out: dict[str, int] = defaultdict(int)
    for pid in _tree(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        role = next((r for needle, r in ROLES if needle in cmd), None)
        if role is not None:
            out[role] += rss_bytes(pid)
    return dict(out)


# --- a minimal Kafka client: only what counting the stored batches needs -------------------

def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


class _Conn:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.correlation = 0

    def call(self, api_key: int, version: int, body: bytes) -> bytes:
        self.correlation += 1
        header = struct.pack(">hhi", api_key, version, self.correlation) + _string("bench")
        msg = header + body
        self.sock.sendall(struct.pack(">i", len(msg)) + msg)
        size = struct.unpack(">i", self._read(4))[0]
        data = self._read(size)
        if struct.unpack_from(">i", data)[0] != self.correlation:
            raise RuntimeError("out-of-order Kafka response")
        return data[4:]

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        self.sock.close()


def _varint(data: bytes, at: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[at]
        at += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), at
        shift += 7


def _record_bytes(batch: bytes) -> tuple[int, int]:
    """(records, key + value + header bytes) of an uncompressed v2 record batch."""
    count = struct.unpack_from(">i", batch, 57)[0]
    if struct.unpack_from(">h", batch, 21)[0] & 0x07:
        return count, 0  # compressed: only the batch's own size is known
    at, payload = 61, 0
    for _ in range(count):
        length, at = _varint(batch, at)
        end = at + length
        at += 1  # attributes
        _, at = _varint(batch, at)  # timestamp delta
        _, at = _varint(batch, at)  # offset delta
        for _ in range(2):  # key, value
            n, at = _varint(batch, at)
            payload += max(n, 0)
            at += max(n, 0)
        headers, at = _varint(batch, at)
        for _ in range(headers * 2):
            n, at = _varint(batch, at)
            payload += max(n, 0)
            at += max(n, 0)
        at = end
    return count, payload


def _fetch(conn: _Conn, topic: str, partition: int, offset: int) -> tuple[int, bytes]:
    """Fetch v4 from `offset`: (error code, the record set's bytes)."""
    body = (struct.pack(">iiiib", -1, 100, 1, 8 << 20, 0) + struct.pack(">i", 1)
            + _string(topic) + struct.pack(">i", 1) + struct.pack(">iqi", partition, offset,
                                                                   8 << 20))
    data = conn.call(1, 4, body)
    at = 4 + 4  # throttle time, topics (one)
    n = struct.unpack_from(">h", data, at)[0]
    at += 2 + n + 4  # topic name, partitions (one)
    _, error = struct.unpack_from(">ih", data, at)
    at += 6 + 8 + 8  # high watermark, last stable offset
    aborted = struct.unpack_from(">i", data, at)[0]
    at += 4 + max(aborted, 0) * 16
    size = struct.unpack_from(">i", data, at)[0]
    at += 4
    return error, data[at:at + max(size, 0)]


def _partitions(conn: _Conn) -> dict[str, int]:
    """Every topic of the broker and its partition count (Metadata v1, all topics)."""
    data = conn.call(3, 1, struct.pack(">i", -1))
    at = 0
    brokers = struct.unpack_from(">i", data, at)[0]
    at += 4
    for _ in range(brokers):
        at += 4
        n = struct.unpack_from(">h", data, at)[0]
        at += 2 + n + 4
        n = struct.unpack_from(">h", data, at)[0]
        at += 2 + max(n, 0)
    at += 4  # controller id
    out = {}
    topics = struct.unpack_from(">i", data, at)[0]
    at += 4
    for _ in range(topics):
        at += 2  # error code
        n = struct.unpack_from(">h", data, at)[0]
        name = data[at + 2:at + 2 + n].decode()
        at += 2 + n + 1  # internal
        parts = struct.unpack_from(">i", data, at)[0]
        at += 4
        for _ in range(parts):
            at += 2 + 4 + 4
            for _ in range(2):  # replicas, isr
                at += 4 + 4 * struct.unpack_from(">i", data, at)[0]
        out[name] = parts
    return out


def topic_bytes(host: str, port: int, only: Collection[str] | None = None
                ) -> dict[str, dict[str, int]]:
    """Per topic (of `only`, or all): stored record batches, records, batch bytes,
    key+value+header bytes (of the uncompressed batches), how many batches are compressed and
    how many of those with zstd."""
    conn = _Conn(host, port)
    out: dict[str, dict[str, int]] = {}
    try:
        for topic, parts in sorted(_partitions(conn).items()):
            if only is not None and topic not in only:
                continue
            row = {"batches": 0, "records": 0, "bytes": 0, "payload": 0, "compressed": 0,
                   "zstd": 0}
            for p in range(parts):
                offset = 0
                while True:
                    error, data = _fetch(conn, topic, p, offset)
                    if error or not data:
                        break
                    at = 0
                    while at + 61 <= len(data):
                        base, length = struct.unpack_from(">qi", data, at)
                        if at + 12 + length > len(data):
                            break  # a partial batch at the end of the response
                        batch = data[at:at + 12 + length]
                        last_delta = struct.unpack_from(">i", batch, 23)[0]
                        at += 12 + length
                        if base + last_delta < offset:
                            continue  # a batch returned whole around the fetch offset
                        records, payload = _record_bytes(batch)
                        row["batches"] += 1
                        row["records"] += records
                        row["bytes"] += len(batch)
                        row["payload"] += payload
                        codec = struct.unpack_from(">h", batch, 21)[0] & 0x07
                        row["compressed"] += codec != 0
                        row["zstd"] += codec == 4  # the v2 batch's codec: 4 is zstd
                        offset = base + last_delta + 1
                    if at == 0:
                        break
            out[topic] = row
    finally:
        conn.close()
    return out


def _slope(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return None if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys,
                                                                        strict=True)) / var


class _Ts(msgspec.Struct):
    patient_id: str
    ts: datetime


_ts_decoder = msgspec.json.Decoder(_Ts | list[_Ts])


class LatencyProbe:
    """Reads vitals.raw and twin.state as they grow (from their end when started) and times
    them: see the module's docstring (`raw_wait`, `reading_to_state`)."""

    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.raw_wait: list[float] = []
        self.to_state: list[float] = []
        self.unmatched = 0
        self._sent: dict[tuple[str, float], float] = {}  # (patient, reading time) -> sent at
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="latency-probe")

    def start(self) -> LatencyProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        s = self.settings
        cfg = config.kafka_python_consumer_config(s)
        cfg["fetch_max_wait_ms"] = 20  # Tansu answers when the wait runs out: keep it short
        consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, **cfg)
        try:
            tps = [TopicPartition(t, p) for t in (s.topic_vitals_raw, s.topic_twin_state)
                   for p in consumer.partitions_for_topic(t) or ()]
            consumer.assign(tps)
            consumer.seek_to_end(*tps)
            for tp in tps:
                consumer.position(tp)
            while not self._stop.is_set():
                for tp, recs in consumer.poll(timeout_ms=100, max_records=5000).items():
                    now = time.time()
                    for r in recs:
                        self._record(tp.topic == s.topic_vitals_raw, r, now)
                if len(self._sent) > 200_000:
                    self._sent.clear()
        finally:
            consumer.close()

    def _record(self, raw: bool, r: Any, now: float) -> None:
        try:
            got = _ts_decoder.decode(r.value)
        except (msgspec.DecodeError, TypeError):
            return  # malformed on purpose, or another format
        if raw:
            sent = r.timestamp / 1000
            self.raw_wait.append(now - sent)
            for reading in got if isinstance(got, list) else [got]:
                self._sent[(reading.patient_id, round(reading.ts.timestamp(), 3))] = sent
        elif isinstance(got, _Ts):
            sent_at = self._sent.get((got.patient_id, round(got.ts.timestamp(), 3)))
            if sent_at is None:
                self.unmatched += 1
            else:
                self.to_state.append(now - sent_at)

    def summary(self) -> dict[str, Any]:
        def pct(xs: list[float]) -> dict[str, Any]:
            if not xs:
                return {"n": 0}
            q = np.percentile(np.array(xs) * 1000, [50, 90, 99])
            return {"n": len(xs), "p50_ms": round(float(q[0])), "p90_ms": round(float(q[1])),
                    "p99_ms": round(float(q[2])), "max_ms": round(max(xs) * 1000)}

        return {"raw_wait": pct(self.raw_wait), "reading_to_state": pct(self.to_state),
                "states_unmatched": self.unmatched}


def run(patients: int, seconds: float, warmup: float, interval: float,
        extra_env: dict[str, str], stop: threading.Event | None = None) -> dict[str, Any]:
    """The demo sampled every `interval` s for `seconds` (or until `stop` is set: a long run
    stopped early still reports what it measured). Each sample is also one line on stderr."""
    stop = stop or threading.Event()
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    port = supervise.free_port()
    env.update(BROKER_PORT=str(port), PYTHONUNBUFFERED="1", **extra_env)
    demo = subprocess.Popen(supervise.python_argv("demo", "--patients", str(patients)),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    readings = [0]
    log: list[str] = []

    def follow() -> None:
        assert demo.stdout is not None
        for raw in demo.stdout:
            line = raw.decode(errors="replace").rstrip()
            log.append(line)
            m = re.search(r"readings sent (\d+)", line)
            if m:
                readings[0] = int(m.group(1))

    threading.Thread(target=follow, daemon=True).start()
    samples: list[dict[str, Any]] = []
    load = [os.getloadavg()]
    probe: LatencyProbe | None = None
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds and not stop.is_set():
            if demo.poll() is not None:
                raise RuntimeError("the demo stopped early:\n" + "\n".join(log[-20:]))
            if probe is None and time.monotonic() - t0 >= warmup:
                probe = LatencyProbe(config.load(env)).start()
            samples.append({"t": round(time.monotonic() - t0, 1), "readings": readings[0],
                            "rss": rss_by_role(demo.pid)})
            rss = samples[-1]["rss"]
            print(f"{samples[-1]['t']:8.0f} s  {readings[0]:9d} readings  all "
                  f"{sum(rss.values()) / 2**20:7.1f} MB  broker "
                  f"{rss.get('broker', 0) / 2**20:7.1f} MB", file=sys.stderr, flush=True)
            stop.wait(interval)
        load.append(os.getloadavg())
        if probe is not None:
            probe.stop()
        topics = topic_bytes("127.0.0.1", port)
    finally:
        if probe is not None:
            probe.stop()
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
    late = [s for s in samples if s["t"] >= warmup and s["readings"] > 0]
    roles = sorted({r for s in samples for r in s["rss"]})
    first, last = samples[0], samples[-1]
    span_s = late[-1]["t"] - late[0]["t"] if len(late) > 1 else 0.0
    span_r = late[-1]["readings"] - late[0]["readings"] if len(late) > 1 else 0
    per_role = {}
    for role in roles:
        ts = [s["t"] for s in late]
        rs = [float(s["readings"]) for s in late]
        ys = [float(s["rss"].get(role, 0)) for s in late]
        per_s, per_r = _slope(ts, ys), _slope(rs, ys)
        q = len(late) // 4
        quarters = [_slope(ts[i * q:(i + 1) * q + 1], ys[i * q:(i + 1) * q + 1])
                    for i in range(4)] if q >= 2 else []
        per_role[role] = {"rss_start_mb": round(first["rss"].get(role, 0) / 2**20, 1),
                          "rss_end_mb": round(last["rss"].get(role, 0) / 2**20, 1),
                          "bytes_per_s": None if per_s is None else round(per_s),
                          "bytes_per_reading": None if per_r is None else round(per_r),
                          "bytes_per_s_by_quarter": [None if x is None else round(x)
                                                     for x in quarters]}
    total_readings = topics.get(config.load(env).topic_vitals_raw, {}).get("records", 0)
    for row in topics.values():
        row["bytes_per_reading"] = round(row["bytes"] / total_readings, 1) \
            if total_readings else None
        row["batches_per_reading"] = round(row["batches"] / total_readings, 3) \
            if total_readings else None
    return {"patients": patients, "seconds": round(time.monotonic() - t0, 1) if stop.is_set()
            else seconds, "stopped_early": stop.is_set(), "warmup": warmup,
            "readings": last["readings"], "readings_per_s": round(span_r / span_s, 1)
            if span_s else None, "vitals_raw_records": total_readings,
            "processes": per_role, "total_rss_end_mb": round(sum(last["rss"].values()) / 2**20, 1),
            "topics": {k: v for k, v in topics.items() if v["records"]}, "extra_env": extra_env,
            "load_average": [[round(x, 2) for x in la] for la in load],
            "latency": probe.summary() if probe is not None else None,
            "samples": [{"t": s["t"], "readings": s["readings"],
                         **{r: round(b / 2**20, 1) for r, b in s["rss"].items()}}
                        for s in samples]}


def _print(res: dict[str, Any]) -> None:
    print(f"{res['patients']} patients, {res['seconds']:g} s, {res['readings']} readings "
          f"({res['readings_per_s']} /s after the {res['warmup']:g} s warm-up)")
    print("load average (1, 5, 15 min) at the start and the end: "
          + "; ".join(", ".join(f"{x:.2f}" for x in la) for la in res["load_average"]))
    print(f"{'process':12} {'RSS start MB':>12} {'RSS end MB':>10} {'B/s':>10} {'B/reading':>10}"
          "  B/s by quarter")
    for role, r in res["processes"].items():
        print(f"{role:12} {r['rss_start_mb']:12.1f} {r['rss_end_mb']:10.1f} "
              f"{r['bytes_per_s'] or 0:10,} {r['bytes_per_reading'] or 0:10,}  "
              + " ".join(f"{x or 0:,}" for x in r["bytes_per_s_by_quarter"]))
    print(f"all processes at the end: {res['total_rss_end_mb']:.0f} MB")
    print(f"{'topic':40} {'batches':>8} {'records':>8} {'MB':>8} {'B/record':>8} "
          f"{'B/reading':>9} {'batches/reading':>15}")
    for topic, t in sorted(res["topics"].items(), key=lambda kv: -kv[1]["bytes"]):
        print(f"{topic:40} {t['batches']:8} {t['records']:8} {t['bytes'] / 2**20:8.2f} "
              f"{t['bytes'] / max(t['records'], 1):8.0f} {t['bytes_per_reading'] or 0:9.1f} "
              f"{t['batches_per_reading'] or 0:15.3f}")
    lat = res["latency"] or {}
    for name in ("raw_wait", "reading_to_state"):
        x = lat.get(name) or {}
        if x.get("n"):
            print(f"latency {name}: p50 {x['p50_ms']} ms, p90 {x['p90_ms']} ms, p99 "
                  f"{x['p99_ms']} ms, max {x['max_ms']} ms ({x['n']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="patient-twin bench broker-memory",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--warmup", type=float, default=30.0,
                    help="samples before this are left out of the growth rates")
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting for every process of the demo (repeatable), e.g. "
                         "KAFKA_COMPRESSION=lz4")
    args = ap.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("bench broker-memory: reads /proc, so it runs on Linux only", file=sys.stderr)
        return 2
    extra = dict(kv.split("=", 1) for kv in args.env)
    stop = threading.Event()
    supervise.on_stop_signals(stop.set)  # Ctrl-C: stop sampling, measure and report
    res = run(args.patients, args.seconds, args.warmup, args.interval, extra, stop)
    _print(res)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
