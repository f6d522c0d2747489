"""The stream pipeline beside a do-nothing Faust agent, on the embedded broker, in one run.

(a) bare: a do-nothing Faust agent (`bench.bare_agent`, the worker's Faust settings) over a
    pre-filled topic; events/s from its first to its last event.
(b) pipeline: `patient-twin worker` (validation, dedupe, one twin step per batch, the twin table,
    twin.state, alerts, dead letters; the InfluxDB sink on when VictoriaMetrics is installed) over
    the same topic; events/s from the first scrape of its /metrics (5 Hz) that sees events taken
    to the first that sees them all processed, like (a) without start-up (from its partition
    assignment when most of a small topic goes in its first takes).
(c) live: a worker fed by `--patients` patients at 1 Hz from a separate producer process (one
    reading per message, or with `--per-message K` each patient's last K readings uploaded every
    K s, as a gateway does); latency = time a twin state arrives on twin.state minus the
    measurement time of the newest reading it reflects. Also reported: twin states per patient
    per second (coalesced: TWIN_STATE_INTERVAL_S), changelog records written, the backlog
    (messages sent and not yet processed) halfway and at the end, how long the worker took to
    drain it after the last send, its CPU, and whether it kept up (`kept_up`). With `--workers N`
    the live run has N workers in one consumer group (they share KAFKA_PARTITIONS partitions);
    the CPU of each worker, the broker, the load generator, this process (the reader),
    VictoriaMetrics and the whole machine (busy cores of all) and each worker's RSS are printed;
    `--profile FILE` has py-spy record the first worker while the load is sent
    (`bench/profile_split.py` sums it by stage). Latency is read from twin.state's partition 0
    only (a reader of every state fell behind by itself at 5,000 states/s).

The topic of (a) and (b) holds simulated gateway uploads of `--per-message` readings each (real
wearable gateways upload batches), made by the device simulator with its faults on. Where
victoria-metrics is installed the workers write their points to it (on the same cores);
`--no-sink` leaves it out. The last line
of output is one JSON object: bare_eps, pipeline_eps, ratio, readings_per_s, p50_ms, p99_ms,
patients, readings, and the live run's figures.

(a) and (b) take turns `--rounds` times (default 3), each run a new consumer group over the same
topic; bare_eps and pipeline_eps are the medians of their runs (each run's are in the JSON too),
ratio = pipeline_eps / bare_eps: a single run of either side varies by up to a third here.

Run: `patient-twin bench pipeline [--readings 200000] [--per-message 5] [--live-seconds 30]
[--rounds 3] [--patients 1000] [--workers 1] [--no-sink] [--compression CODEC]
[--profile FILE]`; `--rounds 0` runs (c) only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import msgspec
import numpy as np

from devices.faults import DeviceEffects
from devices.run import (
    KafkaOutput,
    SimulationStats,
    Ward,
    admission_records,
    admit,
    pairing_records,
)
from streams import broker, config, messages, supervise, topics
from streams.topics import partition_of


def _settings(port: int, tag: str, **extra: object) -> config.Settings:
    base = config.load({"BROKER_PORT": str(port)})
    fields = {f: f"bench{tag}.{getattr(base, f)}" for f in config.FIELDS
              if f.startswith("topic_")}
    return msgspec.structs.replace(base, app_id=f"bench-{tag}", **fields, **extra)


def prefill(s: config.Settings, patients: int, readings: int, per_message: int) -> int:
    """Simulated gateway uploads into vitals.raw; returns the number of messages."""
    stats = SimulationStats()
    out = KafkaOutput(s, stats, client_id="bench-prefill")
    ward = Ward(patients, seed=7, rate=1.0, mix="stable=0.7,sepsis=0.3", horizon_s=3600.0,
                start=time.time() - 3600, effects=DeviceEffects(), batch=per_message)
    admit(s, admission_records(ward.cohort, ["A"], time.time()))
    while ward.stats.readings < readings:
        ward.step(out)
    ward.finish(out)
    out.close()
    if stats.errors:
        raise SystemExit(f"bench pipeline: {stats.errors} messages could not be sent")
    return ward.stats.messages


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m[1]) if m else None


def bare_eps(s: config.Settings, messages_n: int, log: Path) -> float:
    result = log.with_suffix(".json")
    with open(log, "wb") as f:
        p = supervise.spawn([sys.executable, "-m", "bench.bare_agent", "--events",
                             str(messages_n), "--out", str(result)], env=config.to_env(s),
                            stdout=f, stderr=subprocess.STDOUT)
        try:
            p.wait(timeout=600)
        finally:
            supervise.stop(p)
    try:
        r = json.loads(result.read_text())
    except (OSError, ValueError):
        raise SystemExit(f"bench pipeline: the bare agent failed; see {log}") from None
    return (r["events"] - 1) / (r["last"] - r["first"])


def pipeline_eps(s: config.Settings, messages_n: int, log: Path) -> float:
    port = supervise.free_port()
    env = {**config.to_env(s), "WORKER_METRICS_PORT": str(port)}
    with open(log, "wb") as f:
        p = supervise.spawn(supervise.python_argv("worker"), env=env, stdout=f,
                            stderr=subprocess.STDOUT)
    try:
        # Like the bare agent's (first event to last): from the first scrape that sees events
        # taken (a take of ~0.5 s; held ones count, streams.worker.catchup) to the one that sees
        # them all processed, so start-up and the first fetch count for neither side. Each scrape
        # costs the worker (at 20 Hz a tenth of its CPU went to /metrics), so 5 Hz; a scrape lags
        # by at most 0.2 s at either end, which about cancels.
        ready: float | None = None
        first: tuple[float, float] | None = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            now = time.monotonic()
            if ready is None and _metric(port, "patient_twin_assigned_partitions") == \
                    s.kafka_partitions:
                ready = now
            taken = _metric(port, "patient_twin_events_taken_total")
            if taken and first is None:
                first = (now, taken)
            n = _metric(port, "patient_twin_events_total")
            if first is not None and ready is not None and n is not None and n >= messages_n:
                if first[1] > messages_n / 2:
                    # most of a small topic in the first takes: from the assignment instead
                    # (which counts the first fetch against the pipeline: conservative)
                    return n / max(now - ready, 1e-9)
                return (n - first[1]) / max(now - first[0], 1e-9)
            if p.poll() is not None:
                break
            time.sleep(0.2)
        raise SystemExit(f"bench pipeline: the worker did not finish; see {log}")
    finally:
        supervise.stop(p)


def produce_live(env_patients: int, seconds: float, per_message: int) -> None:
    """The live load (run in its own process): `patients` patients at 1 Hz for `seconds`, each
    reading timed when it is sent, spread evenly over each second; with per_message K > 1 each
    patient's device uploads its last K readings every K seconds (a gateway), the patients'
    uploads staggered. Prints `sent <readings> <messages>` every second and `done <ticks>
    <readings> <messages> <CPU seconds while sending>` at the end.

    Written with aiokafka's record batches (as the worker writes its outputs): a kafka-python
    producer costs ~130 us a message here, more than one core at 10,000 messages a second, and
    the load would then measure its own producer."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    s = config.load()
    n, k_per = env_patients, per_message
    keys = [f"L{i:05d}" for i in range(n)]
    parts = [partition_of(k, s.kafka_partitions) for k in keys]
    encode = msgspec.json.Encoder().encode
    slices = 20  # patients send in 20 slices of each second, as devices do not tick together

    async def run() -> None:
        kafka = AIOKafkaProducer(bootstrap_servers=s.bootstrap, linger_ms=5,
                                 max_batch_size=1_048_576, enable_idempotence=False)
        await kafka.start()
        cpu0 = sum(os.times()[:2])
        pending: list[list[messages.Reading]] = [[] for _ in range(n)]
        readings = msgs = 0
        t0 = time.time()
        tick = 0
        try:
            while time.time() - t0 < seconds:
                tick += 1
                for sl in range(slices):
                    at = t0 + tick - 1 + sl / slices
                    if (lag := at - time.time()) > 0:
                        await asyncio.sleep(lag)
                    batches: dict[int, object] = {}
                    now = messages.utc(time.time())
                    for i in range(sl, n, slices):
                        r = messages.reading(f"LD{i:05d}", keys[i], tick, now,
                                             {"hr": 70.0 + i % 20, "spo2": 97.0, "rr": 15.0})
                        if k_per == 1:
                            body = encode(r)
                            readings += 1
                        else:
                            pending[i].append(r)
                            if (tick + i) % k_per:
                                continue
                            readings += len(pending[i])
                            body, pending[i] = encode(pending[i]), []
                        b = batches.get(parts[i])
                        if b is None:
                            b = batches[parts[i]] = kafka.create_batch()
                        if b.append(key=keys[i].encode(), value=body, timestamp=None) is None:
                            await kafka.send_batch(b, s.topic_vitals_raw, partition=parts[i])
                            b = batches[parts[i]] = kafka.create_batch()
                            b.append(key=keys[i].encode(), value=body, timestamp=None)
                        msgs += 1
                    for part, b in batches.items():
                        await kafka.send_batch(b, s.topic_vitals_raw, partition=part)
                print(f"sent {readings} {msgs} {time.time():.3f}", flush=True)
            await kafka.flush()
        finally:
            await kafka.stop()
        print(f"done {tick} {readings} {msgs} {sum(os.times()[:2]) - cpu0:.3f}", flush=True)

    asyncio.run(run())


def _family(pid: int) -> list[int]:
    """A process and its children (Linux /proc)."""
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return pids


def _rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children, bytes."""
    return sum(broker.rss_bytes(p) or 0 for p in _family(pid))


def _machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy so far (Linux /proc/stat: everything but
    idle and iowait), so a run can say whether its cores were full."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _stat_seconds(stat: str) -> float:
    """User + system CPU so far, seconds, from a /proc `stat` file (a process's or a thread's);
    NaN when it is gone."""
    try:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children so far (Linux /proc), seconds."""
    return float(np.nansum([_stat_seconds(f"/proc/{p}/stat") for p in _family(pid)]))  # gone: 0 s


def _main_thread_seconds(pid: int) -> float:
    """User + system CPU of a process's main thread so far (Linux /proc), seconds: a worker's
    twin step, outputs and Faust's event loop, without its decoding child and client threads."""
    return _stat_seconds(f"/proc/{pid}/task/{pid}/stat")


@dataclass
class LiveRun:
    latencies: list[float]  # seconds, per twin.state received
    readings: int  # readings sent
    messages: int
    seconds: float  # the producer's sending time
    states: int  # twin states received while the producer ran (+ the drain), of `read_patients`
    backlog: list[tuple[float, int]]  # (seconds since start, messages sent - processed)
    drain_s: float | None  # after the last send, until every message was processed (None: not
    # within the wait)
    worker_cpu_s: float  # the workers' CPU while the producer sent (decoding children included)
    changelog_records: int
    # cores used while the producer sent, per process: worker-1.., broker, load (the producer)
    cores: dict[str, float] | None = None
    worker_rss: list[int] | None = None  # bytes, each worker with its child, at the last send
    read_patients: int = 0  # the patients of the twin.state partition read (0: all of them)
    states_sent: int = 0  # twin states the workers sent (their metric)


class _TsOnly(msgspec.Struct):
    ts: datetime


def _metric_sum(ports: list[int], name: str) -> float | None:
    """A metric summed over workers (None when none answers)."""
    values = [v for v in (_metric(p, name) for p in ports) if v is not None]
    return sum(values) if values else None


def live_latency(s: config.Settings, patients: int, seconds: float, log: Path,
                 per_message: int = 1, workers: int = 1, broker_pid: int | None = None,
                 profile: Path | None = None, vm_pid: int | None = None) -> LiveRun:
    """The live run (c) on `workers` workers of one consumer group; profile: py-spy records the
    first worker (and its decoding child) while the producer sends, raw format, into this file."""
    from kafka import KafkaConsumer, TopicPartition

    ports = [supervise.free_port() for _ in range(workers)]
    procs: list[subprocess.Popen[bytes]] = []
    for i, port in enumerate(ports):
        env = {**config.to_env(s), "WORKER_METRICS_PORT": str(port)}
        with open(log.with_name(f"{log.stem}-{i + 1}{log.suffix}") if workers > 1 else log,
                  "wb") as f:
            procs.append(supervise.spawn(supervise.python_argv("worker"), env=env, stdout=f,
                                         stderr=subprocess.STDOUT))
    spy: subprocess.Popen[bytes] | None = None
    lat: list[float] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _metric_sum(
                ports, "patient_twin_assigned_partitions") != s.kafka_partitions:
            time.sleep(0.5)
        time.sleep(5)  # let the group settle (the embedded broker rebalances slowly)
        consumer = KafkaConsumer(group_id=None, enable_auto_commit=False,
                                 max_partition_fetch_bytes=8 * 1024 * 1024,
                                 **config.kafka_python_consumer_config(s))
        # One partition (a quarter of the patients with the default 4): a kafka-python reader
        # of every state fell behind at 5,000+ states/s (p50 12 s with the workers' backlog
        # at 1 s) and measured itself; a partition's patients are a hash-chosen sample.
        parts = [TopicPartition(s.topic_twin_state, 0)]
        consumer.assign(parts)
        consumer.seek_to_end(*parts)
        for tp in parts:
            consumer.position(tp)
        stop = threading.Event()
        # only the time: decoding whole states here took CPU from the worker on 2 cores
        decoder = msgspec.json.Decoder(_TsOnly)

        def consume() -> None:
            while not stop.is_set():
                for recs in consumer.poll(timeout_ms=100, max_records=20000).values():
                    now = time.time()
                    for r in recs:
                        lat.append(now - decoder.decode(r.value).ts.timestamp())

        th = threading.Thread(target=consume, daemon=True)
        th.start()
        admit(s, pairing_records([(f"L{i:05d}", f"LD{i:05d}") for i in range(patients)], "A",
                                 "bench", time.time()))
        events0 = _metric_sum(ports, "patient_twin_events_total") or 0.0
        cpu0 = [_cpu_seconds(w.pid) for w in procs]
        main0 = [_main_thread_seconds(w.pid) for w in procs]
        broker_cpu0 = _cpu_seconds(broker_pid) if broker_pid else 0.0
        vm_cpu0 = _cpu_seconds(vm_pid) if vm_pid else 0.0
        own_cpu0, busy0 = sum(os.times()[:2]), _machine_busy_seconds()
        prod = supervise.spawn(
            [sys.executable, "-c", "from bench.pipeline_bench import produce_live; "
             f"produce_live({patients}, {seconds}, {per_message})"],
            env=config.to_env(s), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        t_start = time.time()
        if profile is not None:
            # --nonblocking: sampling without pausing the worker (py-spy's own CPU is on the
            # same 2 cores all the same); idle threads are left out, so samples are CPU
            spy = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "-p",
                 str(procs[0].pid), "--subprocesses", "--threads", "--nonblocking",
                 "--format", "raw", "-d", str(max(int(seconds) - 2, 1)), "-o", str(profile)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        backlog: list[tuple[float, int]] = []
        done: list[float] = [0, 0, 0, 0.0]
        sent_msgs = 0
        assert prod.stdout is not None
        for line in prod.stdout:
            word, *nums = line.decode().split()
            if word == "sent":
                sent_msgs = int(nums[1])
                processed = (_metric_sum(ports, "patient_twin_events_total") or events0) \
                    - events0
                backlog.append((time.time() - t_start, int(sent_msgs - processed)))
            elif word == "done":
                done = [float(x) for x in nums]
        prod.wait(30)
        t_sent = time.time()
        # over the sending, as the rate is
        cpus = [_cpu_seconds(w.pid) - c0 for w, c0 in zip(procs, cpu0, strict=True)]
        mains = [_main_thread_seconds(w.pid) - m0 for w, m0 in zip(procs, main0, strict=True)]
        broker_cpu = _cpu_seconds(broker_pid) - broker_cpu0 if broker_pid else float("nan")
        vm_cpu = _cpu_seconds(vm_pid) - vm_cpu0 if vm_pid else float("nan")
        own_cpu, busy = sum(os.times()[:2]) - own_cpu0, _machine_busy_seconds() - busy0
        rss = [_rss_bytes(w.pid) for w in procs]
        span = max(t_sent - t_start, 1e-9)
        cores = {**{f"worker-{i + 1}": c / span for i, c in enumerate(cpus)},
                 # of which its main thread: one worker's ceiling is this one thread's core
                 **{f"worker-{i + 1}-main": m / span for i, m in enumerate(mains)},
                 "broker": broker_cpu / span, "load": done[3] / span,
                 # this process: the twin.state reader's thread, metrics polling
                 "reader": own_cpu / span, "victoria-metrics": vm_cpu / span,
                 "machine": busy / span, "machine_cores": float(os.cpu_count() or 0)}
        drain: float | None = None
        while time.time() - t_sent < 120:
            processed = (_metric_sum(ports, "patient_twin_events_total") or events0) - events0
            if processed >= done[2]:
                drain = time.time() - t_sent
                break
            time.sleep(0.25)
        time.sleep(2)  # the last readings' states (held up to TWIN_STATE_INTERVAL_S)
        stop.set()
        th.join(10)
        consumer.close()
        read = sum(1 for i in range(patients)
                   if partition_of(f"L{i:05d}", s.kafka_partitions) == 0)
        return LiveRun(lat, int(done[1]), int(done[2]), t_sent - t_start, len(lat), backlog,
                       drain, sum(cpus),
                       int(_metric_sum(ports, "patient_twin_changelog_records_total") or 0),
                       cores, rss, read,
                       int(_metric_sum(ports, "patient_twin_states_sent_total") or 0))
    finally:
        if spy is not None:
            try:
                spy.wait(30)  # it writes the file when its duration ends
            except subprocess.TimeoutExpired:
                spy.terminate()
        for w in procs:
            supervise.stop(w)


# The most the backlog may grow over the run's second half, as a share of the messages offered a
# second, for a run to count as kept up: a worker that processes 99 % of what arrives falls 36 s
# further behind every hour, so this is a bench's tolerance for a 45-s fit, not a steady state.
KEPT_UP_GROWTH = 0.01


def backlog_growth(backlog: list[tuple[float, int]]) -> tuple[float, float]:
    """(slope, its standard error), messages a second, of the backlog over the second half of
    the samples: least squares (one sample a second jitters by a batch either way; session 20's
    halfway-to-end ratio passed a backlog growing by a third). NaN, NaN with fewer than 3."""
    half = backlog[len(backlog) // 2:]
    if len(half) < 3:
        return float("nan"), float("nan")
    t = np.array([x for x, _ in half], dtype=np.float64)
    b = np.array([y for _, y in half], dtype=np.float64)
    t -= t.mean()
    sxx = float(t @ t)
    slope = float(t @ (b - b.mean())) / sxx
    resid = b - b.mean() - slope * t
    return slope, float(np.sqrt(resid @ resid / (len(half) - 2) / sxx))


def kept_up(backlog: list[tuple[float, int]], drain_s: float | None,
            per_s: float) -> dict[str, object]:
    """Whether the workers kept up with `per_s` messages a second: every message processed
    within 5 s of the last send, and the backlog (messages sent, not yet processed) growing over
    the second half by at most KEPT_UP_GROWTH of the offered rate, or by no more than its own
    jitter can explain (under two standard errors: a short run's few samples). Not kept up with
    fewer than 3 samples in the second half (not measured)."""
    mid = backlog[len(backlog) // 2][1] if backlog else 0
    end = backlog[-1][1] if backlog else 0
    growth, se = backlog_growth(backlog)
    steady = growth <= KEPT_UP_GROWTH * per_s or growth <= 2 * se  # False for NaN
    kept = steady and drain_s is not None and drain_s <= 5.0
    return {"backlog_mid": mid, "backlog_end": end, "backlog_growth_per_s": growth,
            "backlog_growth_se": se, "kept_up": kept}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="patient-twin bench pipeline", description=__doc__)
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--per-message", type=int, default=None,
                    help="readings per device message, in (a)/(b)'s topic and the live run "
                    "(default: 5 in the topic, as gateways upload; 1 live)")
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--live-seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of (a) and of (b), taking turns; their medians are compared (0: "
                    "the live run (c) only)")
    ap.add_argument("--batch-max", type=int, default=None,
                    help="WORKER_BATCH_MAX for the worker (default: the configured one)")
    ap.add_argument("--batch-seconds", type=float, default=None,
                    help="WORKER_BATCH_SECONDS for the worker (default: the configured one)")
    ap.add_argument("--catchup-seconds", type=float, default=None,
                    help="WORKER_CATCHUP_SECONDS for the worker (default: the configured one)")
    ap.add_argument("--state-interval", type=float, default=None,
                    help="TWIN_STATE_INTERVAL_S for the worker (default: the configured one)")
    ap.add_argument("--compression", choices=["none", "lz4", "zstd", "gzip"],
                    help="KAFKA_COMPRESSION for every producer of the run (default: the "
                         "configured one)")
    ap.add_argument("--no-sink", action="store_true",
                    help="no InfluxDB sink (VictoriaMetrics) on this machine: the workers write "
                         "no points, as if the time-series server were elsewhere and free")
    ap.add_argument("--workers", type=int, default=1,
                    help="workers in the live run's consumer group (they share the "
                    "KAFKA_PARTITIONS partitions; default 1)")
    ap.add_argument("--profile", type=Path, default=None, metavar="FILE",
                    help="py-spy records the live run's first worker and its decoding child "
                    "while the load is sent (raw format; `python -m bench.profile_split FILE` "
                    "sums it by stage)")
    args = ap.parse_args(argv)
    live_per_message = args.per_message or 1
    args.per_message = args.per_message or 5
    if min(args.readings, args.per_message, args.patients, args.workers) < 1 \
            or args.rounds < 0 or args.live_seconds <= 0:
        ap.error("--readings, --per-message, --patients, --workers and --live-seconds must be "
                 "positive, --rounds at least 0")
    logs = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    port = supervise.free_port()
    proc = broker.start(port)
    vm = None
    try:
        extra: dict[str, object] = {"worker_metrics_port": 0}
        if args.batch_max:
            extra["worker_batch_max"] = args.batch_max
        if args.batch_seconds:
            extra["worker_batch_seconds"] = args.batch_seconds
        if args.catchup_seconds is not None:
            extra["worker_catchup_seconds"] = args.catchup_seconds
        if args.state_interval is not None:
            extra["twin_state_interval_s"] = args.state_interval
        if args.compression is not None:
            extra["kafka_compression"] = args.compression
        vm_bin = None if args.no_sink else shutil.which("victoria-metrics")
        if vm_bin:
            vm_port = supervise.free_port()
            vm = supervise.spawn([vm_bin, f"-storageDataPath={logs / 'vm'}",
                                  f"-httpListenAddr=127.0.0.1:{vm_port}", "-loggerLevel=ERROR"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            supervise.wait_for_port(vm_port, vm, timeout=15)
            extra.update(influx_url=f"http://127.0.0.1:{vm_port}",
                         influx_token=config.Secret("bench"), influx_org="bench",
                         influx_bucket="bench")
        sink = "on" if vm else "off: --no-sink" if args.no_sink else \
            "off: victoria-metrics not installed"
        filled = _settings(port, "fill", **extra)
        topics.ensure(filled)
        n_msgs = 0
        if args.rounds:
            t = time.monotonic()
            n_msgs = prefill(filled, args.patients, args.readings, args.per_message)
            print(f"pre-filled {n_msgs:,} messages ({args.readings:,}+ readings) in "
                  f"{time.monotonic() - t:.0f} s", flush=True)
        # (a) and (b) take turns, each on its own consumer group from the topic's start, and each
        # side's median counts: one run of either varies by up to a third on this machine.
        bares: list[float] = []
        pipes: list[float] = []
        for i in range(args.rounds):
            bares.append(bare_eps(msgspec.structs.replace(filled, app_id=f"bench-bare-{i}"),
                                  n_msgs, logs / f"bare-{i}.log"))
            print(f"(a) round {i + 1}: bare Faust agent: {bares[-1]:,.0f} events/s", flush=True)
            pipes.append(pipeline_eps(
                msgspec.structs.replace(filled, app_id=f"bench-pipeline-{i}"), n_msgs,
                logs / f"pipeline-{i}.log"))
            print(f"(b) round {i + 1}: pipeline: {pipes[-1]:,.0f} events/s = "
                  f"{pipes[-1] * args.per_message:,.0f} readings/s (sink {sink}); "
                  f"ratio {pipes[-1] / bares[-1]:.2f}", flush=True)
        bare = float(np.median(bares)) if bares else float("nan")
        pipe = float(np.median(pipes)) if pipes else float("nan")
        live = _settings(port, "live", **extra)
        topics.ensure(live)
        run = live_latency(live, args.patients, args.live_seconds, logs / "live.log",
                           live_per_message, args.workers, proc.pid, args.profile,
                           vm.pid if vm is not None else None)
        lat = run.latencies
        if not lat:
            raise SystemExit(f"bench pipeline: no twin state arrived in the live run; see {logs}")
        p50, p99 = (float(np.percentile(lat, q)) * 1000 for q in (50, 99))
        kept = kept_up(run.backlog, run.drain_s, args.patients / live_per_message)
        print(f"(c) live {args.patients:,} patients x 1 Hz on {args.workers} worker(s) (sink "
              f"{sink}), "
              f"{live_per_message} reading(s) a "
              f"message: {run.readings:,} readings in {run.messages:,} messages over "
              f"{run.seconds:.0f} s ({run.readings / run.seconds:,.0f} readings/s sent); "
              f"twin-state latency p50 {p50:,.0f} ms, p99 {p99:,.0f} ms; "
              f"{run.states:,} states read of {run.read_patients:,} patients = "
              f"{run.states / max(run.read_patients, 1) / run.seconds:.2f} per "
              f"patient per s ({run.states_sent:,} sent in all); changelog records "
              f"{run.changelog_records:,}; backlog "
              f"{kept['backlog_mid']:,} messages mid-run, {kept['backlog_end']:,} at the end, "
              f"growing {kept['backlog_growth_per_s']:,.0f} +- "
              f"{kept['backlog_growth_se']:,.0f}/s over the second half "
              f"({kept['backlog_growth_per_s'] * live_per_message / args.patients:.1%} of "
              "the offered rate); "
              f"drained {'never' if run.drain_s is None else f'in {run.drain_s:.1f} s'}; "
              f"worker CPU {run.worker_cpu_s / run.seconds:.2f} cores; kept up: "
              f"{'yes' if kept['kept_up'] else 'no'}", flush=True)
        print("    cores while sending: " + ", ".join(
            f"{k} {v:.2f}" for k, v in (run.cores or {}).items()) + "; worker RSS "
            + ", ".join(f"{b / 2**20:,.0f} MB" for b in run.worker_rss or []), flush=True)
    finally:
        if vm is not None:
            supervise.stop(vm)
        supervise.stop(proc)
    if args.rounds > 1:
        print(f"medians of {args.rounds} rounds:")
    print(f"{'bare ev/s':>10} {'pipeline ev/s':>14} {'ratio':>6} {'readings/s':>11} "
          f"{'p50 ms':>7} {'p99 ms':>7}")  # (a)/(b) are nan with --rounds 0
    print(f"{bare:>10,.0f} {pipe:>14,.0f} {pipe / bare:>6.2f} {pipe * args.per_message:>11,.0f} "
          f"{p50:>7,.0f} {p99:>7,.0f}")
    print(f"logs: {logs}")
    print(json.dumps({"bare_eps": bare, "pipeline_eps": pipe, "ratio": pipe / bare,
                      "readings_per_s": pipe * args.per_message,
                      "readings_per_message": args.per_message, "p50_ms": p50, "p99_ms": p99,
                      "patients": args.patients, "readings": args.readings,
                      "messages": n_msgs, "live_readings": run.readings,
                      "latency_samples": len(lat), "sink": bool(vm),
                      "live_readings_per_message": live_per_message,
                      "live_messages": run.messages, "live_seconds": run.seconds,
                      "live_readings_per_s": run.readings / run.seconds,
                      "states_per_patient_s": run.states / max(run.read_patients, 1)
                      / run.seconds, "read_patients": run.read_patients,
                      "states_sent": run.states_sent,
                      "changelog_records": run.changelog_records,
                      "worker_cores": run.worker_cpu_s / run.seconds,
                      "drain_s": run.drain_s, **kept, "workers": args.workers,
                      "cores": run.cores, "worker_rss_bytes": run.worker_rss,
                      "rounds": args.rounds, "bare_eps_runs": bares,
                      "pipeline_eps_runs": pipes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
