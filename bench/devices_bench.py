"""Simulator throughput into the embedded broker, beside a bare kafka-python producer, in one run.

(a) bare: a kafka-python producer (same settings as the simulator's) sending pre-serialised
messages of the simulator's mean size, keyed the same way; (b) simulator: `devices.run.Ward`
generating, faulting and encoding the same number of messages and sending them through its
Kafka output. Both count until the producer has flushed (every message acknowledged). Rounds
alternate a/b; medians are reported.

Run: `patient-twin bench devices [--patients 1000] [--messages 20000] [--rounds 3]
[--one-record-batches]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import msgspec

from devices.faults import DeviceEffects
from devices.run import KafkaOutput, SimulationStats, Ward
from streams import broker, config, supervise, topics


def _settings(port: int, tag: str) -> config.Settings:
    base = config.load({"BROKER_PORT": str(port)})
    return msgspec.structs.replace(base, topic_vitals_raw=f"bench.devices.{tag}")


def bare_rate(s: config.Settings, keys: list[bytes], size: int, n: int,
              **overrides: Any) -> float:
    out = KafkaOutput(s, SimulationStats(), client_id="bench-bare", **overrides)
    body = b"x" * size
    t = time.perf_counter()
    for i in range(n):
        out.send(keys[i % len(keys)], body)
    out.close()
    return n / (time.perf_counter() - t)


def simulator_rate(s: config.Settings, patients: int, n: int, seed: int,
                   **overrides: Any) -> tuple[float, int]:
    ward = Ward(patients, seed=seed, rate=1.0, mix="stable=0.6,sepsis=0.4", horizon_s=3600.0,
                start=time.time(), effects=DeviceEffects())
    out = KafkaOutput(s, ward.stats, client_id="bench-simulator", **overrides)
    t = time.perf_counter()
    while ward.stats.messages < n:
        ward.step(out)
    out.close()
    return ward.stats.messages / (time.perf_counter() - t), ward.stats.messages


def mean_size(patients: int) -> int:
    class Sizes:
        def __init__(self) -> None:
            self.total = self.n = 0

        def send(self, key: bytes, value: bytes) -> None:
            self.total += len(value)
            self.n += 1

        def close(self) -> None:
            pass

    ward = Ward(patients, seed=0, rate=1.0, mix="stable", horizon_s=3600.0, start=time.time(),
                effects=DeviceEffects())
    sizes = Sizes()
    for _ in range(10):
        ward.step(sizes)
    return round(sizes.total / sizes.n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="patient-twin bench devices", description=__doc__)
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=20000, help="messages per round and side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--one-record-batches", action="store_true",
                    help="both producers held to one record per batch (batch_size=1), the rule "
                    "the embedded broker needs only for topics read up to their end offset "
                    "(docs/tansu.md): what the rule would cost the devices")
    args = ap.parse_args(argv)
    overrides: dict[str, Any] = {"batch_size": 1} if args.one_record_batches else {}
    if args.patients < 1 or args.messages < 1 or args.rounds < 1:
        ap.error("--patients, --messages and --rounds must be >= 1")
    port = supervise.free_port()
    proc = broker.start(port)
    try:
        size = mean_size(args.patients)
        keys = [f"P{i + 1:05d}".encode() for i in range(args.patients)]
        bare, sim = [], []
        for k in range(args.rounds):
            for side in ("bare", "sim"):
                s = _settings(port, f"{side}{k}")
                topics.ensure(s)
                if side == "bare":
                    bare.append(bare_rate(s, keys, size, args.messages, **overrides))
                else:
                    sim.append(simulator_rate(s, args.patients, args.messages, seed=k,
                                              **overrides)[0])
            print(f"round {k + 1}: bare {bare[-1]:,.0f} msg/s, simulator {sim[-1]:,.0f} msg/s",
                  flush=True)
    finally:
        supervise.stop(proc)
    b, m = statistics.median(bare), statistics.median(sim)
    print(f"{'patients':>9} {'msg bytes':>10} {'bare msg/s':>11} {'simulator msg/s':>16} "
          f"{'ratio':>6}")
    print(f"{args.patients:>9} {size:>10} {b:>11,.0f} {m:>16,.0f} {m / b:>6.2f}")
    print("bare: kafka-python sending pre-serialised messages of the same size; simulator: "
          "generation, device faults, encoding and sending; both until flushed; medians over "
          f"{args.rounds} rounds on the embedded broker"
          f"{', one record per batch' if args.one_record_batches else ''}.")
    print(json.dumps({"patients": args.patients, "message_bytes": size, "bare_mps": b,
                      "simulator_mps": m, "ratio": m / b, "rounds": args.rounds,
                      "one_record_batches": args.one_record_batches}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
