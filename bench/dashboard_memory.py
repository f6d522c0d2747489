"""What the dashboard holds per patient: its feed's latest twin state and trend history.

The dashboard keeps, for every patient whose twin.state it has seen, the latest state (decoded)
and a `dashboard.feed.History` ring of `HISTORY_POINTS` samples, allocated whole on the first
state. This folds real twin.state records (the simulated ward of `bench.dashboard_bench`, run
through the worker's own `TwinProcessor`; one record per patient, re-keyed to every patient id,
so each patient's objects are its own as when decoded from Kafka) into a `TwinFeed` for each
count of `--patients` (a new feed each), and reports per patient: the bytes Python allocated
(tracemalloc) and the growth of the process's resident memory (VmRSS, Linux). The history
rings are full-sized from the first sample, so the figure is that of a long run.

Run: `python -m bench.dashboard_memory [--patients 2000 10000]`. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import tracemalloc

import msgspec
import numpy as np

from streams import config, messages


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def sample_states(n: int = 50) -> list[bytes]:
    """Encoded twin.state records of `n` simulated patients after 10 minutes of readings (the
    ward `bench.dashboard_bench` builds), the latest of each patient."""
    from bench.dashboard_bench import build_ward

    s = config.load({})
    latest: dict[bytes, bytes] = {}

    class Latest:
        def apply(self, topic: str, key: bytes | None, value: bytes) -> None:
            if topic == s.topic_twin_state:
                latest[messages.decode_twin_state(value).patient_id.encode()] = value

    build_ward(s, Latest(), n, 10.0)
    return list(latest.values())


def measure(samples: list[bytes], patients: int) -> dict[str, float]:
    """Bytes per patient of a feed holding `patients` patients (one state each)."""
    from dashboard.feed import TwinFeed

    s = config.load({})
    decoded = [messages.decode_twin_state(b) for b in samples]
    records = [messages.encode(msgspec.structs.replace(decoded[i % len(decoded)],
                                                       patient_id=f"P{i:06d}"))
               for i in range(patients)]
    gc.collect()
    rss0 = _rss()
    tracemalloc.start()
    feed = TwinFeed(s)
    base, _ = tracemalloc.get_traced_memory()
    for rec in records:
        feed.apply(s.topic_twin_state, None, rec)
    gc.collect()
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = _rss()
    out = {"patients": patients, "traced_bytes_per_patient": (used - base) / patients,
           "rss_bytes_per_patient": (rss1 - rss0) / patients}
    del feed
    gc.collect()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dashboard_memory")
    ap.add_argument("--patients", type=int, nargs="+", default=[2000, 10000])
    args = ap.parse_args(argv)
    samples = sample_states()
    rows = [measure(samples, n) for n in args.patients]
    print(f"{'patients':>9} {'traced KB/patient':>18} {'RSS KB/patient':>15}")
    for r in rows:
        print(f"{r['patients']:>9,} {r['traced_bytes_per_patient'] / 1024:>18.1f} "
              f"{r['rss_bytes_per_patient'] / 1024:>15.1f}")
    print(json.dumps({"runs": rows, "state_record_bytes": int(np.mean([len(b) for b in samples]))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
