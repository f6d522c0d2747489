"""Where a worker's CPU goes: a py-spy raw profile summed by stage.

Input: `py-spy record --format raw --subprocesses --threads` of a worker (what `patient-twin bench
pipeline --profile FILE` writes): one line per distinct stack, `frame;frame;...;frame count`,
starting with `process ...` and `thread (...)` frames. py-spy leaves out threads it sees idle,
but on this machine a thread parked in the event loop's `select`, or the decoding child waiting
on its pipe, is still sampled; those are counted as waiting, not CPU, and shares are of the rest.

Each sample goes to the deepest frame of its stack that a rule below names (so Faust's per-event
acknowledgement inside the record cache counts as Faust, the aiokafka batch builder inside the
changelog write as the Kafka client producing outputs). Coarse stages:
- decode: the decoding child (msgspec, validation, unit conversion, the readings' line protocol)
  and the main process's pickle round trip to it;
- twin step: `TwinProcessor.process` with the filter (`twin.history` / `twin.bank.step`), its
  outputs (forecasts, NEWS2, risk), the alert engine and the twin records;
- outputs: twin.state messages, encoding and queueing them and the changelog records (record
  cache, state gate, `BatchWriter`), the InfluxDB sink (points and its writer thread);
- Faust: faust and mode frames (stream iteration, events, acks, commits, the conductor);
- Kafka client: aiokafka (fetch, record parsing, the producer's sender, batch building) and the
  registry's kafka-python consumer;
- other: the event loop itself, /metrics, the rest.

Run: `python -m bench.profile_split FILE [FILE ...]` (several files: summed, and each printed).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

# (fine stage, coarse stage, pattern on "function (file:line)"); the deepest match wins
_RULES: list[tuple[str, str, str]] = [
    ("Faust", "Faust", r"\((faust|mode|venusian|croniter)/"),
    ("aiokafka consumer (fetch, parse)", "Kafka client", r"\(aiokafka/"),
    ("kafka-python (registry follower)", "Kafka client", r"\(kafka/"),
    ("our batch path (admission, dead letters, agent)", "other", r"\(streams/worker/app\.py"),
    ("decode: pickle round trip to the child", "decode", r"^(Decoder\.decode|_read|_write) "
     r"\(streams/worker/decoder\.py"),
    ("twin step: other (states in and out, rejects)", "twin step",
     r"^TwinProcessor\.process \("),
    ("twin step: filter + history", "twin step", r"\(twin/(history|bank|filter|model)\w*\.py"),
    ("twin step: forecasts, NEWS2, risk", "twin step", r"^(outputs|score_live|update_drift) "
     r"\(twin/|\(twin/(risk|scores|news2|forecast)\w*\.py"),
    ("twin step: alert engine", "twin step", r"\(twin/alerts\.py|^(alert_event|twin_view) "),
    ("twin step: twin records (to_bytes)", "twin step", r"^(to_bytes|record_bytes) \(twin/"),
    ("outputs: twin.state messages (build)", "outputs", r"^encode_states \(streams/worker/"),
    ("outputs: encode, gate, cache, queue", "outputs",
     r"\(streams/worker/(coalesce|changelog)\.py|^(Worker\.)?(send_states|send_alerts|"
     r"cache_records|flush_outputs|write_records) |^encode \(streams/messages"),
    ("aiokafka producing outputs (batch build, send)", "Kafka client",
     r"\(aiokafka/producer/(message_accumulator|producer|sender)\.py"),
    ("outputs: InfluxDB points + sink thread", "outputs",
     r"\(streams/worker/sink\.py|\(influxdb_client/"),
    ("/metrics", "other", r"\(streams/worker/metrics\.py|\(prometheus_client/"),
]
RULES = [(fine, coarse, re.compile(p)) for fine, coarse, p in _RULES]
WAIT = re.compile(r"^(EpollSelector\.select|select|_PollLikeSelector\.select) |"
                  r"^_read \(streams/worker/decoder\.py|^(Event|Condition)\.wait \(threading")
DECODER = "streams.worker.decoder"


def classify(frames: list[str]) -> tuple[str, str]:
    """(fine, coarse) stage of one sample's stack (frames root first)."""
    procs = [f for f in frames if f.startswith("process ")]
    body = [f for f in frames if not f.startswith(("process ", "thread "))]
    if not body:
        return "unknown", "other"
    if WAIT.search(body[-1]):
        return "waiting (select, pipe, lock)", "waiting"
    if any(DECODER in p for p in procs[1:]):
        return "decode: child process", "decode"
    thread = next((f for f in frames if f.startswith("thread ")), "")
    if "influx-sink" in thread:
        return "outputs: InfluxDB points + sink thread", "outputs"
    found = ("other (event loop, threads)", "other")
    for f in body:
        for fine, coarse, pat in RULES:
            if pat.search(f):
                found = (fine, coarse)
    # the registry's reader and /metrics have threads of their own
    if "registry" in thread:
        return "kafka-python (registry follower)", "Kafka client"
    return found


def split(lines: Iterable[str]) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, n = line.rsplit(" ", 1)
        counts[classify(stack.split(";"))] += int(n)
    return counts


COARSE = ("decode", "twin step", "outputs", "Faust", "Kafka client", "other")


def table(counts: Counter[tuple[str, str]]) -> str:
    busy = sum(n for (_, c), n in counts.items() if c != "waiting")
    waiting = sum(n for (_, c), n in counts.items() if c == "waiting")
    rows = [f"samples: {busy + waiting:,}, of which waiting {waiting:,}; shares of the "
            f"{busy:,} others", "| stage | share | of which |", "| --- | --- | --- |"]
    for coarse in COARSE:
        fines = sorted(((n, f) for (f, c), n in counts.items() if c == coarse), reverse=True)
        total = sum(n for n, _ in fines)
        detail = "; ".join(f"{f} {100 * n / busy:.1f} %" for n, f in fines)
        rows.append(f"| {coarse} | {100 * total / max(busy, 1):.1f} % | {detail} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile_split", description=__doc__)
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for path in args.files:
        if not path.is_file():
            ap.error(f"{path}: no such file (write one with `patient-twin bench pipeline "
                     "--profile FILE`)")
    total: Counter[tuple[str, str]] = Counter()
    for path in args.files:
        counts = split(path.read_text().splitlines())
        total += counts
        print(f"{path}:\n{table(counts)}\n")
    if len(args.files) > 1:
        print(f"all {len(args.files)} files:\n{table(total)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
