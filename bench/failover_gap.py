"""How long monitoring stops when the only worker crashes and a new one is started at once.

The parts are started as the README's quick start does, as child processes on loopback:
`patient-twin broker --port P`, `patient-twin topics`, one `patient-twin worker` and
`patient-twin simulate --patients N`. After `--warmup` seconds (and once every patient has a
twin.state) the worker is killed with SIGKILL and a new worker is started at once. Measured in
seconds from the new worker's start:

- assigned_s:    its first partition assignment (its log: Faust's "_on_partitions_assigned");
- ready_s:       the twin table restored from the changelog (Faust's "Worker ready");
- first_state_s: the first twin.state record produced after the kill (the record's timestamp,
                 set by the worker's producer; only the new worker is alive then);
- all_fresh_s:   every patient has a twin.state produced after the new worker's start;

and `gaps_added`: sequence gaps the twins counted from the kill to `--settle` seconds after the
end, i.e. readings the devices sent that were never applied. The simulated devices lose some
readings themselves (`gaps_warmup_per_s`: the rate during the warm-up); a failover that loses
nothing adds about that rate times the time measured.

Each variant runs on a broker of its own (memory only), so no group state carries over:

- baseline: the Faust settings of the worker before issue 18 item 7 (embedded broker: session
  and rebalance timeouts 10 s, Faust's 3 s heartbeat); the worker is started through this
  module, which overlays those values on `streams.worker.app.faust_app_config`'s;
- current:  `patient-twin worker` as it is.

`--override JSON` (e.g. '{"broker_session_timeout": 6}') adds a variant with those faust.App
keyword arguments overlaid on the current ones, for experiments.

The last line of output is one JSON object: per variant, the medians and every round's numbers
(a round that never got there counts as infinitely long in a median, printed as null).

Run: `python -m bench.failover_gap [--patients 300] [--warmup 60] [--rounds 1]
[--variants baseline,current] [--timeout 240] [--keep-logs]`. A round takes about warm-up +
gap + settle + 20 s; it needs about two cores (broker, simulator, worker and its decoder).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from streams import config, supervise

# What faust_app_config gave on the embedded broker before issue 18 item 7, for the keys that
# item changed (Faust's default heartbeat interval, no static membership).
BASELINE: dict[str, Any] = {
    "broker_session_timeout": 10.0,
    "broker_rebalance_timeout": 10.0,
    "broker_heartbeat_interval": 3.0,
    "consumer_group_instance_id": None,
}
_OVERLAY_ENV = "FAILOVER_GAP_OVERLAY"


def _worker_with_overlay() -> int:  # pragma: no cover - runs in the worker child
    """`patient-twin worker`, with the faust.App keyword arguments in $FAILOVER_GAP_OVERLAY
    (JSON) overlaid on `faust_app_config`'s."""
    from streams import cli
    from streams.worker import app as worker_app

    overlay = json.loads(os.environ.pop(_OVERLAY_ENV, "{}"))
    original = worker_app.faust_app_config

    def faust_app_config(settings: config.Settings) -> dict[str, Any]:
        return {**original(settings), **overlay}

    worker_app.faust_app_config = faust_app_config
    return cli.main(["worker"])


class StateWatch(threading.Thread):
    """Reads twin.state from the beginning (no consumer group): per patient, the newest record
    timestamp (the producing worker's clock, seconds) and when it arrived here."""

    def __init__(self, settings: config.Settings) -> None:
        super().__init__(daemon=True, name="state-watch")
        self.settings = settings
        self.latest: dict[str, float] = {}
        self.gaps: dict[str, int] = {}  # per patient: readings the devices sent, never applied
        self.arrivals: list[tuple[float, float, str]] = []  # (record ts, arrival, patient)
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        try:
            c = KafkaConsumer(group_id=None, enable_auto_commit=False,
                              **config.kafka_python_consumer_config(self.settings))
            topic = self.settings.topic_twin_state
            parts = [TopicPartition(topic, p)
                     for p in sorted(c.partitions_for_topic(topic) or ())]
            c.assign(parts)
            c.seek_to_beginning(*parts)
            while not self.done.is_set():
                batch = c.poll(timeout_ms=200, max_records=20_000)
                now = time.time()
                with self.lock:
                    for recs in batch.values():
                        for r in recs:
                            state = json.loads(r.value)
                            pid = state.get("patient_id")
                            ts = r.timestamp / 1000.0
                            if pid is None:
                                continue
                            if ts > self.latest.get(pid, 0.0):
                                self.latest[pid] = ts
                            gaps = state.get("sequence_gaps", 0)
                            self.gaps[pid] = max(gaps, self.gaps.get(pid, 0))
                            self.arrivals.append((ts, now, pid))
            c.close()
        except Exception as exc:  # noqa: BLE001 - reported by the run, which then fails
            self.error = f"{type(exc).__name__}: {exc}"

    def total_gaps(self) -> int:
        with self.lock:
            return sum(self.gaps.values())

    def patients(self) -> set[str]:
        with self.lock:
            return set(self.latest)

    def first_after(self, t: float) -> float | None:
        """Record timestamp of the first twin.state produced after t."""
        with self.lock:
            after = [ts for ts, _, _ in self.arrivals if ts > t]
        return min(after) if after else None

    def all_fresh_at(self, t: float, patients: set[str]) -> float | None:
        """Record timestamp at which the last of `patients` got a twin.state produced after t."""
        firsts: dict[str, float] = {}
        with self.lock:
            for ts, _, pid in self.arrivals:
                if ts > t and pid in patients and ts < firsts.get(pid, float("inf")):
                    firsts[pid] = ts
        return max(firsts.values()) if len(firsts) == len(patients) else None


_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[\d+\] \[\w+\] (.*)$", re.M)
_PHASES = {  # Faust's and the worker's own log lines, first seen after the start
    "assigned_s": "Executing _on_partitions_assigned",
    "ready_s": "[^---Recovery]: Worker ready",
    "reread_s": "re-reading",
    "given_up_s": "given up after",
}


def phases(log: str, t0: float) -> dict[str, float | None]:
    """Seconds from t0 (time.time()) to the first log line of each phase; `rebalances`: how
    many partition assignments the worker logged."""
    out: dict[str, Any] = dict.fromkeys(_PHASES)
    out["rebalances"] = 0
    for m in _LOG_LINE.finditer(log):
        t = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - t0
        for key, text in _PHASES.items():
            if text in m[2]:
                out["rebalances"] += key == "assigned_s"
                if out[key] is None:
                    out[key] = round(t, 1)
    return out


class Run:
    """The parts of one measurement: children with their logs, stopped in reverse order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "wb") as log:
            p = supervise.spawn(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            supervise.stop(p)


def _worker_argv(overlay: dict[str, Any] | None) -> list[str]:
    if overlay is None:
        return supervise.python_argv("worker")
    return [sys.executable, "-m", "bench.failover_gap", "--as-worker"]


def measure(variant: str, overlay: dict[str, Any] | None, args: argparse.Namespace,
            log_dir: Path) -> dict[str, Any]:
    """One round: broker, topics, worker, simulator; SIGKILL of the worker and a new one."""
    port = supervise.free_port()
    settings = config.load({"BROKER_PORT": str(port)})
    env = config.to_env(settings)
    env.pop(_OVERLAY_ENV, None)
    run = Run(log_dir)
    watch = StateWatch(settings)
    result: dict[str, Any] = {"variant": variant}
    try:
        if args.tansu_log:  # diagnosis: Tansu itself, its log kept (the CLI silences it)
            from streams.broker import HOST, binary

            url = f"tcp://{HOST}:{port}"
            broker = run.start("broker", [binary(), "broker", "--listener-url", url,
                                          "--advertised-listener-url", url,
                                          "--storage-engine", "memory://tansu/"],
                               {**env, "RUST_LOG": args.tansu_log})
        else:
            broker = run.start("broker", supervise.python_argv("broker", "--port", str(port)),
                               env)
        if not supervise.wait_for_port(port, broker, timeout=30):
            raise RuntimeError(f"the broker did not start\n{run.log('broker')}")
        subprocess.run(supervise.python_argv("topics"), env=env, check=True, timeout=60,
                       stdout=subprocess.DEVNULL)
        watch.start()

        def worker_env() -> dict[str, str]:
            wenv = {**env, "WORKER_METRICS_PORT": str(supervise.free_port())}
            if overlay is not None:
                wenv[_OVERLAY_ENV] = json.dumps(overlay)
            return wenv

        first = run.start("worker-1", _worker_argv(overlay), worker_env())
        sim = run.start("simulate", supervise.python_argv(
            "simulate", "--patients", str(args.patients), "--no-progress",
            "--duration", str(args.warmup + args.timeout + 60)), env)
        t_sim, t_sim_wall = time.monotonic(), time.time()
        deadline = t_sim + args.warmup + 120
        while time.monotonic() < t_sim + args.warmup or (
                len(watch.patients()) < args.patients and time.monotonic() < deadline):
            if first.poll() is not None or sim.poll() is not None or watch.error:
                raise RuntimeError(f"a part stopped during the warm-up: worker "
                                   f"{first.returncode}, simulate {sim.returncode}, "
                                   f"{watch.error}\n{run.log('worker-1')[-3000:]}")
            time.sleep(0.5)
        patients = watch.patients()
        if len(patients) < args.patients:
            raise RuntimeError(f"only {len(patients)} of {args.patients} patients had a twin "
                               f"state after the warm-up\n{run.log('worker-1')[-3000:]}")

        gaps_at_kill = watch.total_gaps()
        t_kill = time.time()
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = run.start("worker-2", _worker_argv(overlay), worker_env())
        t_start = time.time()
        first_s = fresh_s = None
        stop_at = time.monotonic() + args.timeout
        while time.monotonic() < stop_at:
            if first_s is None and (ts := watch.first_after(t_kill)) is not None:
                first_s = ts - t_start
            if first_s is not None and (ts := watch.all_fresh_at(t_start, patients)):
                fresh_s = ts - t_start
                break
            if second.poll() is not None:
                break
            time.sleep(0.25)
        # Readings lost in the failover show as sequence gaps once each patient's next reading
        # is applied; the devices' own losses (simulated faults) count too, at the warm-up's
        # rate (gaps_warmup_per_s).
        time.sleep(args.settle)
        result.update(patients=len(patients), first_state_s=_round(first_s),
                      all_fresh_s=_round(fresh_s), **phases(run.log("worker-2"), t_start),
                      gaps_added=watch.total_gaps() - gaps_at_kill,
                      gaps_warmup_per_s=round(gaps_at_kill / (t_kill - t_sim_wall), 2),
                      worker_exit=second.poll())
        return result
    finally:
        watch.done.set()
        run.stop_all()
        watch.join(5)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.failover_gap", description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before the SIGKILL")
    ap.add_argument("--timeout", type=float, default=240.0,
                    help="seconds to wait for the new worker to cover every patient")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds after the measurement before counting sequence gaps")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--variants", default="baseline,current")
    ap.add_argument("--override", default=None, metavar="JSON",
                    help="an extra variant: these faust.App arguments over the current ones")
    ap.add_argument("--keep-logs", action="store_true", help="keep the children's logs")
    ap.add_argument("--tansu-log", default=None, metavar="RUST_LOG",
                    help="diagnosis: start Tansu directly with this RUST_LOG and keep its "
                    "log, e.g. tansu_broker::coordinator::group::administrator=info (it logs "
                    "every span: plain 'info' wrote 5 GB in two minutes)")
    ap.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.as_worker:
        return _worker_with_overlay()

    variants: dict[str, dict[str, Any] | None] = {}
    for name in filter(None, args.variants.split(",")):
        if name not in ("baseline", "current"):
            ap.error(f"unknown variant {name!r}")
        variants[name] = dict(BASELINE) if name == "baseline" else None
    if args.override:
        variants["override"] = json.loads(args.override)

    tmp = tempfile.mkdtemp(prefix="failover-gap-")
    rows: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for k in range(args.rounds):
        for name, overlay in variants.items():
            log_dir = Path(tmp) / f"{name}-{k}"
            log_dir.mkdir()
            try:
                r = measure(name, overlay, args, log_dir)
            except (RuntimeError, subprocess.SubprocessError) as exc:
                r = {"variant": name, "error": str(exc).splitlines()[0]}
                print(str(exc)[-3000:], file=sys.stderr)
            rows[name].append(r)
            print(f"round {k + 1} {name}: " + ", ".join(
                f"{key} {r.get(key)}" for key in (*_COLUMNS, "rebalances", "reread_s",
                                                   "given_up_s", "gaps_added",
                                                   "gaps_warmup_per_s", "error") if key in r)
                  + f" (logs {log_dir})", flush=True)
    summary: dict[str, Any] = {"patients": args.patients, "warmup_s": args.warmup}
    print(f"\nmedians, seconds from the new worker's start ({args.rounds} round(s))")
    print(f"{'variant':10s}" + "".join(f"{c:>15s}" for c in _COLUMNS))
    for name, rs in rows.items():
        med = {key: _median([r.get(key) for r in rs]) for key in _COLUMNS}
        print(f"{name:10s}" + "".join(f"{_fmt(med[c]):>15s}" for c in _COLUMNS))
        summary[name] = {**med, "runs": rs}
    if not args.keep_logs:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(summary), flush=True)
    return 0


_COLUMNS = ("assigned_s", "ready_s", "first_state_s", "all_fresh_s")


def _median(xs: list[float | None]) -> float | None:
    """Median of the runs; a run that never got there counts as infinitely long."""
    if not xs:
        return None
    m = statistics.median([float("inf") if x is None else x for x in xs])
    return None if m == float("inf") else round(m, 1)


def _fmt(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
