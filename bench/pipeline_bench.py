"""The stream pipeline beside a do-nothing Faust agent, on the embedded broker, in one run.

(a) bare: a do-nothing Faust agent (`bench.bare_agent`, the worker's Faust settings) over a
    pre-filled topic; events/s from its first to its last event.
(b) pipeline: `patient-twin worker` (validation, dedupe, one twin step per batch, the twin table,
    twin.state, alerts, dead letters; the InfluxDB sink on when VictoriaMetrics is installed) over
    the same topic; events/s from the first scrape of its /metrics (5 Hz) that sees events taken
    to the first that sees them all processed, like (a) without start-up (from its partition
    assignment when most of a small topic goes in its first takes).
(c) live: a worker fed by 1,000 simulated patients at 1 Hz (one reading per message, sent by a
    separate producer process); latency = time a twin state arrives on twin.state minus the
    measurement time of the reading it reflects.

The topic holds simulated gateway uploads of `--per-message` readings each (real wearable gateways
upload batches), made by the device simulator with its faults on. The last line of output is one
JSON object: bare_eps, pipeline_eps, ratio, readings_per_s, p50_ms, p99_ms, patients, readings.

(a) and (b) take turns `--rounds` times (default 3), each run a new consumer group over the same
topic; bare_eps and pipeline_eps are the medians of their runs (each run's are in the JSON too),
ratio = pipeline_eps / bare_eps: a single run of either side varies by up to a third here.

Run: `patient-twin bench pipeline [--readings 200000] [--per-message 5] [--live-seconds 30]
[--rounds 3]`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
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


def _producer_process(s: config.Settings, patients: int, seconds: float) -> subprocess.Popen:
    code = (
        "import sys,time\n"
        "from streams import config, messages\n"
        "from devices.run import KafkaOutput, SimulationStats\n"
        "s = config.load(); st = SimulationStats(); out = KafkaOutput(s, st)\n"
        f"n, dur = {patients}, {seconds}\n"
        "keys = [f'L{i:05d}'.encode() for i in range(n)]\n"
        "t0 = time.time(); k = 0\n"
        "while time.time() - t0 < dur:\n"
        "    k += 1; tick = t0 + k - 1\n"
        "    for i in range(n):\n"
        "        now = time.time()\n"
        "        r = messages.reading(f'LD{i:05d}', keys[i].decode(), k, messages.utc(now),\n"
        "                             {'hr': 70.0 + i % 20, 'spo2': 97.0, 'rr': 15.0})\n"
        "        out.send(keys[i], messages.encode(r))\n"
        "    lag = tick + 1 - time.time()\n"
        "    if lag > 0: time.sleep(lag)\n"
        "out.close(); print(k, st.errors, flush=True)\n"
    )
    return supervise.spawn([sys.executable, "-c", code], env=config.to_env(s),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def live_latency(s: config.Settings, patients: int, seconds: float, log: Path,
                 ) -> tuple[list[float], int]:
    from kafka import KafkaConsumer, TopicPartition

    port = supervise.free_port()
    env = {**config.to_env(s), "WORKER_METRICS_PORT": str(port)}
    with open(log, "wb") as f:
        worker = supervise.spawn(supervise.python_argv("worker"), env=env, stdout=f,
                                 stderr=subprocess.STDOUT)
    lat: list[float] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _metric(
                port, "patient_twin_assigned_partitions") != s.kafka_partitions:
            time.sleep(0.5)
        time.sleep(5)  # let the group settle (the embedded broker rebalances slowly)
        consumer = KafkaConsumer(group_id=None, enable_auto_commit=False,
                                 **config.kafka_python_consumer_config(s))
        parts = [TopicPartition(s.topic_twin_state, p) for p in range(s.kafka_partitions)]
        consumer.assign(parts)
        consumer.seek_to_end(*parts)
        for tp in parts:
            consumer.position(tp)
        stop = threading.Event()
        decoder = msgspec.json.Decoder(messages.TwinState)

        def consume() -> None:
            while not stop.is_set():
                for recs in consumer.poll(timeout_ms=100, max_records=5000).values():
                    now = time.time()
                    for r in recs:
                        lat.append(now - decoder.decode(r.value).ts.timestamp())

        th = threading.Thread(target=consume, daemon=True)
        th.start()
        admit(s, pairing_records([(f"L{i:05d}", f"LD{i:05d}") for i in range(patients)], "A",
                                 "bench", time.time()))
        prod = _producer_process(s, patients, seconds)
        out, _ = prod.communicate(timeout=seconds + 120)
        time.sleep(3)  # the last readings' states
        stop.set()
        th.join(10)
        consumer.close()
        ticks = int(out.split()[0]) if out.strip() else 0
        return lat, ticks * patients
    finally:
        supervise.stop(worker)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="patient-twin bench pipeline", description=__doc__)
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--per-message", type=int, default=5)
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--live-seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of (a) and of (b), taking turns; their medians are compared")
    ap.add_argument("--batch-max", type=int, default=None,
                    help="WORKER_BATCH_MAX for the worker (default: the configured one)")
    ap.add_argument("--batch-seconds", type=float, default=None,
                    help="WORKER_BATCH_SECONDS for the worker (default: the configured one)")
    ap.add_argument("--catchup-seconds", type=float, default=None,
                    help="WORKER_CATCHUP_SECONDS for the worker (default: the configured one)")
    args = ap.parse_args(argv)
    if min(args.readings, args.per_message, args.patients, args.rounds) < 1 \
            or args.live_seconds <= 0:
        ap.error("--readings, --per-message, --patients, --rounds and --live-seconds must be "
                 "positive")
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
        vm_bin = shutil.which("victoria-metrics")
        if vm_bin:
            vm_port = supervise.free_port()
            vm = supervise.spawn([vm_bin, f"-storageDataPath={logs / 'vm'}",
                                  f"-httpListenAddr=127.0.0.1:{vm_port}", "-loggerLevel=ERROR"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            supervise.wait_for_port(vm_port, vm, timeout=15)
            extra.update(influx_url=f"http://127.0.0.1:{vm_port}",
                         influx_token=config.Secret("bench"), influx_org="bench",
                         influx_bucket="bench")
        filled = _settings(port, "fill", **extra)
        topics.ensure(filled)
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
                  f"{pipes[-1] * args.per_message:,.0f} readings/s (sink "
                  f"{'on' if vm else 'off: victoria-metrics not installed'}); "
                  f"ratio {pipes[-1] / bares[-1]:.2f}", flush=True)
        bare, pipe = float(np.median(bares)), float(np.median(pipes))
        live = _settings(port, "live", **extra)
        topics.ensure(live)
        lat, sent = live_latency(live, args.patients, args.live_seconds, logs / "live.log")
        if not lat:
            raise SystemExit(f"bench pipeline: no twin state arrived in the live run; see {logs}")
        p50, p99 = (float(np.percentile(lat, q)) * 1000 for q in (50, 99))
        print(f"(c) live {args.patients} patients x 1 Hz, {sent:,} readings: twin-state latency "
              f"p50 {p50:,.0f} ms, p99 {p99:,.0f} ms ({len(lat):,} states)", flush=True)
    finally:
        if vm is not None:
            supervise.stop(vm)
        supervise.stop(proc)
    if args.rounds > 1:
        print(f"medians of {args.rounds} rounds:")
    print(f"{'bare ev/s':>10} {'pipeline ev/s':>14} {'ratio':>6} {'readings/s':>11} "
          f"{'p50 ms':>7} {'p99 ms':>7}")
    print(f"{bare:>10,.0f} {pipe:>14,.0f} {pipe / bare:>6.2f} {pipe * args.per_message:>11,.0f} "
          f"{p50:>7,.0f} {p99:>7,.0f}")
    print(f"logs: {logs}")
    print(json.dumps({"bare_eps": bare, "pipeline_eps": pipe, "ratio": pipe / bare,
                      "readings_per_s": pipe * args.per_message,
                      "readings_per_message": args.per_message, "p50_ms": p50, "p99_ms": p99,
                      "patients": args.patients, "readings": args.readings,
                      "messages": n_msgs, "live_readings": sent,
                      "latency_samples": len(lat), "sink": bool(vm),
                      "rounds": args.rounds, "bare_eps_runs": bares,
                      "pipeline_eps_runs": pipes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
