"""`patient-twin replay`: recorded vital signs back into Kafka as device messages.

One device per record (`REC-<record name>`), one message per recorded instant with every channel
recorded then, sent in time order across all records with the original spacing divided by
`--speed`. Values pass through exactly as recorded, monitor zeros included: deciding what to
believe is the twin's job. Timestamps are shifted so the earliest row is "now" (a de-identified
record's dates mean nothing live); `--keep-time` sends the recorded timestamps instead.
"""

from __future__ import annotations

import heapq
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np

from devices.records import read
from devices.run import (
    FileOutput,
    KafkaOutput,
    Output,
    SimulationStats,
    StopFlag,
    admit,
    pairing_records,
)
from streams import messages
from streams.config import Settings
from twin.channels import NAMES


@dataclass
class ReplayStats:
    records: int = 0
    messages: int = 0
    empty_rows: int = 0  # instants with nothing recorded: nothing to send
    errors: int = 0


def replay(settings: Settings, paths: list[str], *, speed: float, to: str = "kafka",
           keep_time: bool = False, progress: bool = True) -> ReplayStats:
    """Replay every record; returns the counts. RecordError (one line) for a bad record."""
    recs = [read(p) for p in paths]
    stats = ReplayStats(records=len(recs))
    sim_stats = SimulationStats()  # the Kafka output counts its delivery errors here
    t_first = min(float(r.t[0]) for r in recs if len(r.t))
    offset = 0.0 if keep_time else time.time() - t_first
    # Merge the records' rows by time: (t, record index, row index).
    rows = heapq.merge(*[((float(t), k, j) for j, t in enumerate(r.t))
                         for k, r in enumerate(recs)])
    stop = StopFlag()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    out: Output = KafkaOutput(settings, sim_stats, client_id="patient-twin-replay") \
        if to == "kafka" else FileOutput(to)
    if to == "kafka":
        # each record's patient, admitted with its replay device paired (the worker applies
        # readings only of admitted patients from paired devices)
        admit(settings, pairing_records({(r.patient_id, f"REC-{r.patient_id}") for r in recs},
                                        "replay", "replay", time.time()))
    t0 = time.monotonic()
    last_report = t0
    seq = [0] * len(recs)
    try:
        for t, k, j in rows:
            if stop.requested:
                break
            rec = recs[k]
            z = rec.z[j]
            vals = {ch: float(z[c]) for c, ch in enumerate(NAMES) if not np.isnan(z[c])}
            if not vals:
                stats.empty_rows += 1
                continue
            lag = t0 + (t - t_first) / speed - time.monotonic()
            if lag > 0:
                time.sleep(lag)
            seq[k] += 1
            msg = messages.reading(f"REC-{rec.patient_id}", rec.patient_id, seq[k],
                                   messages.utc(t + offset), vals)
            out.send(rec.patient_id.encode(), messages.encode(msg))
            stats.messages += 1
            now = time.monotonic()
            if progress and now - last_report >= 2.0:
                print(f"replay: sent={stats.messages} errors={sim_stats.errors}",
                      file=sys.stderr, flush=True)
                last_report = now
    finally:
        out.close()
        for s, h in old.items():
            signal.signal(s, h)
    stats.errors = sim_stats.errors
    return stats
