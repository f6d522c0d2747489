"""How many twin states a second one dashboard process can follow.

Every dashboard replica follows all of twin.state (`dashboard.feed.TwinFeed`: a kafka-python
consumer thread that decodes each state and folds it into the latest state and the trend ring of
its patient). At `TWIN_STATE_INTERVAL_S` = 1 s that is one state per patient per second, so the
rate it can fold is the number of patients one dashboard can show.

Real twin.state records (the simulated ward of `bench.dashboard_bench` run through the worker's
own `TwinProcessor`, re-keyed to `--patients` patient ids, `--rounds` seconds of them, each round
one second later) are written to twin.state on an embedded broker. Then, side by side in one run:
- fold: `TwinFeed.apply` over the same records in this process, without Kafka, each patient's
  first state (which allocates its trend ring) left out of the timing;
- follow: a new `TwinFeed` started as the dashboard starts it, timed from the first record it
  applies until it has applied every record (first states included); its CPU is this
  process's (kafka-python's I/O thread and the feed's consumer thread).

This is a catch-up: the broker hands over full fetches. With `--live-seconds S`, a new feed on
a new broker then follows `--patients` x 1 Hz written live by another process for S s, each
state stamped when sent: its CPU per state and cores after 5 s, and each state's lag from sent
to applied (the writer's own queueing included). Live fetches are smaller, so a state costs
more than in the catch-up. The records cycle through 50 patients' states, which compress
better than a ward's would.

The last line is JSON: patients, records, record_bytes, fold_per_s, fold_us, follow_per_s,
follow_cpu_per_s (records per CPU second), follow_cores, patients_followed, and with
`--live-seconds` live_sent, live_applied, live_per_s, live_cores, live_us, live_lag_p50_ms,
live_lag_p99_ms.

Run: `patient-twin bench dashboard-feed [--patients 5000] [--rounds 20] [--live-seconds 0]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta

import msgspec
import numpy as np

from streams import broker, config, messages, supervise, topics


def _samples() -> list[messages.TwinState]:
    """The simulated ward's latest twin states (50 patients), to re-key."""
    from bench.dashboard_memory import sample_states

    return [messages.decode_twin_state(b) for b in sample_states()]


def _record(samples: list[messages.TwinState], i: int,
            ts: datetime | None = None) -> tuple[bytes, bytes]:
    """(key, value): patient `i`'s twin.state, a sample re-keyed to it, at `ts` (None: the
    sample's own time)."""
    st, pid = samples[i % len(samples)], f"P{i:06d}"
    return pid.encode(), messages.encode(msgspec.structs.replace(
        st, patient_id=pid, ts=st.ts if ts is None else ts))


def records(patients: int, rounds: int) -> list[tuple[bytes, bytes]]:
    """(key, value) twin.state records: `rounds` states of each of `patients` patients, a
    second apart, made from the simulated ward's latest states."""
    samples = _samples()
    return [_record(samples, i, samples[i % len(samples)].ts + timedelta(seconds=r))
            for r in range(rounds) for i in range(patients)]


def fold(s: config.Settings, recs: list[tuple[bytes, bytes]], first: int) -> float:
    """Seconds of CPU `TwinFeed.apply` takes over `recs[first:]`, without Kafka, after the
    `first` (each patient's first state, which allocates its trend ring) went in untimed."""
    from dashboard.feed import TwinFeed

    feed = TwinFeed(s)
    for key, value in recs[:first]:
        feed.apply(s.topic_twin_state, key, value)
    t0 = time.process_time()
    for key, value in recs[first:]:
        feed.apply(s.topic_twin_state, key, value)
    return time.process_time() - t0


def follow(s: config.Settings, total: int,
           timeout: float = 600.0) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, patients held) for a started `TwinFeed` to
    apply `total` twin states, timed from the first one applied (not the consumer's start)."""
    from dashboard.feed import TwinFeed

    done = threading.Event()
    seen = [0]
    first: list[float] = []

    class Counting(TwinFeed):
        def apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
            super().apply(topic, key, value)
            if topic == s.topic_twin_state:
                if not first:
                    first.extend((time.perf_counter(), time.process_time()))
                seen[0] += 1
                if seen[0] >= total:
                    done.set()

    feed = Counting(s).start()
    try:
        if not done.wait(timeout):
            raise SystemExit(f"the feed applied {seen[0]:,} of {total:,} states in {timeout:g} s")
        wall, cpu = time.perf_counter() - first[0], time.process_time() - first[1]
        return wall, cpu, len(feed.snapshot()[0])
    finally:
        feed.stop()


def produce_live(port: int, patients: int, seconds: float) -> None:
    """In a process of its own: one twin.state per patient per second for `seconds`, each
    stamped with the time it is sent, spread over 20 slices of each second. Prints `start T`
    when the first goes out and `done T SENT` after the last is acknowledged."""
    from kafka import KafkaProducer

    s = config.load({"BROKER_PORT": str(port)})
    samples = _samples()
    producer = KafkaProducer(**config.kafka_python_producer_config(s, streamed=True))
    t0 = time.time()
    print(f"start {t0:.3f}", flush=True)
    sent = 0
    while time.time() - t0 < seconds:
        second = time.time()
        for j in range(20):
            for i in range(j, patients, 20):
                key, value = _record(samples, i, messages.utc(time.time()))
                producer.send(s.topic_twin_state, key=key, value=value)
                sent += 1
            time.sleep(max(0.0, second + (j + 1) / 20 - time.time()))
    producer.flush(60)
    producer.close()
    print(f"done {time.time():.3f} {sent}", flush=True)


def follow_live(patients: int, seconds: float, warmup: float = 5.0) -> dict[str, float]:
    """A started `TwinFeed` following `patients` x 1 Hz twin states written live for `seconds`
    by another process (`produce_live`): its CPU per state and cores after `warmup` s, and each
    state's lag from being sent to being applied."""
    from dashboard.feed import TwinFeed
    from streams.messages import TwinState

    port = supervise.free_port()
    proc = broker.start(port)
    lags: list[float] = []
    try:
        s = config.load({"BROKER_PORT": str(port)})
        topics.ensure(s)

        class Timed(TwinFeed):
            def _apply_state(self, st: TwinState) -> None:
                super()._apply_state(st)
                lags.append(time.time() - st.ts.timestamp())

        feed = Timed(s).start()
        try:
            gen = subprocess.Popen([sys.executable, "-m", "bench.dashboard_feed", "--produce",
                                    str(port), str(patients), str(seconds)],
                                   stdout=subprocess.PIPE, text=True)
            assert gen.stdout is not None
            t_start = float(gen.stdout.readline().split()[1])
            time.sleep(max(0.0, t_start + warmup - time.time()))
            c0, w0, n0 = time.process_time(), time.perf_counter(), len(lags)
            done = gen.stdout.readline().split()
            c1, w1, n1 = time.process_time(), time.perf_counter(), len(lags)
            gen.wait(30)
            sent = int(done[2])
            deadline = time.time() + 30
            while len(lags) < sent and time.time() < deadline:
                time.sleep(0.1)
        finally:
            feed.stop()
    finally:
        supervise.stop(proc)
    lag = np.array(lags[n0:n1] or [np.nan])
    return {"live_patients": patients, "live_sent": sent, "live_applied": len(lags),
            "live_per_s": (n1 - n0) / (w1 - w0), "live_cores": (c1 - c0) / (w1 - w0),
            "live_us": (c1 - c0) / max(n1 - n0, 1) * 1e6,
            "live_lag_p50_ms": float(np.percentile(lag, 50)) * 1000,
            "live_lag_p99_ms": float(np.percentile(lag, 99)) * 1000}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="patient-twin bench dashboard-feed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=20,
                    help="states of each patient, 1 s apart (the first allocates its ring)")
    ap.add_argument("--live-seconds", type=float, default=0.0,
                    help="then follow --patients x 1 Hz written live for this long (0: not)")
    ap.add_argument("--produce", nargs=3, help=argparse.SUPPRESS)  # the live run's writer
    args = ap.parse_args(argv)
    if args.produce:
        produce_live(int(args.produce[0]), int(args.produce[1]), float(args.produce[2]))
        return 0
    if args.patients < 1 or args.rounds < 2 or args.live_seconds < 0:
        ap.error("--patients must be positive, --rounds at least 2 and --live-seconds at "
                 "least 0")
    recs = records(args.patients, args.rounds)
    port = supervise.free_port()
    proc = broker.start(port)
    try:
        s = config.load({"BROKER_PORT": str(port)})
        topics.ensure(s)
        from kafka import KafkaProducer

        # twin.state is written in record batches, as the worker writes it (streamed: the
        # bulk producers' linger; the worker's own batches are bigger still)
        producer = KafkaProducer(**config.kafka_python_producer_config(s, streamed=True))
        for key, value in recs:
            producer.send(s.topic_twin_state, key=key, value=value)
        producer.flush(120)
        producer.close()
        fold_cpu = fold(s, recs, args.patients)
        wall, cpu, held = follow(s, len(recs))
    finally:
        supervise.stop(proc)
    n = len(recs)
    folded = n - args.patients
    out = {"patients": args.patients, "records": n,
           "record_bytes": round(sum(len(v) for _, v in recs) / n),
           "fold_per_s": folded / fold_cpu, "fold_us": fold_cpu / folded * 1e6,
           "follow_per_s": (n - 1) / wall, "follow_cpu_per_s": (n - 1) / cpu,
           "follow_cores": cpu / wall, "patients_followed": held}
    print(f"{n:,} twin states of {args.patients:,} patients ({out['record_bytes']:,} B each): "
          f"fold alone {out['fold_per_s']:,.0f}/s ({out['fold_us']:.1f} us each); followed "
          f"from the broker {out['follow_per_s']:,.0f}/s, {out['follow_cpu_per_s']:,.0f} per "
          f"CPU second, {out['follow_cores']:.2f} cores", flush=True)
    if args.live_seconds > 0:
        out.update(follow_live(args.patients, args.live_seconds))
        print(f"live: {args.patients:,} patients x 1 Hz for {args.live_seconds:g} s, "
              f"{out['live_applied']:,} of {out['live_sent']:,} states applied; "
              f"{out['live_per_s']:,.0f}/s on {out['live_cores']:.2f} cores "
              f"({out['live_us']:.1f} us of CPU a state); lag from sent to applied p50 "
              f"{out['live_lag_p50_ms']:,.0f} ms, p99 {out['live_lag_p99_ms']:,.0f} ms",
              flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
