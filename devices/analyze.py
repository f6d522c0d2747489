"""`patient-twin analyze`: the stream processor's twin and alert logic over recorded data, offline.

Each time step of each record goes through `TwinProcessor.process`, exactly as a batch from
Kafka would; records are analysed side by side, one reading per patient per step.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field

import msgspec
import numpy as np
from tqdm import tqdm

from devices.records import Recording, iso, read
from streams.messages import ValidReading
from streams.worker.process import TwinProcessor
from twin.channels import NAMES

_enc = msgspec.json.Encoder()


@dataclass
class Summary:
    records: int = 0
    steps: int = 0
    channels_seen: set[str] = field(default_factory=set)
    artifacts: int = 0
    missing: int = 0
    alerts: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        by = ", ".join(f"{p} {self.alerts[p]}" for p in ("high", "medium", "low"))
        return (f"analyze: {self.records} record(s), {self.steps} steps; channels seen: "
                f"{', '.join(c for c in NAMES if c in self.channels_seen) or 'none'}; "
                f"artifacts rejected {self.artifacts}; values treated as missing "
                f"{self.missing}; alert events by priority: {by}")


def _num(v: float) -> float | int | None:
    if np.isnan(v):
        return None
    return int(v) if float(v).is_integer() else float(v)


def analyze(paths: list[str], out_path: str, progress: bool = True) -> Summary:
    """Analyse the records at `paths`, writing one JSON line per patient per step to out_path.

    Raises RecordError (one line) for a missing or unreadable record, before writing anything.
    """
    recs: list[Recording] = [read(p) for p in paths]
    summary = Summary(records=len(recs))
    proc = TwinProcessor()
    stored: dict[str, bytes] = {}
    steps = max(len(r.t) for r in recs)
    bar = tqdm(total=steps, unit="step", file=sys.stderr, disable=not progress or None,
               desc="analyze")
    with open(out_path, "wb") as out:
        for k in range(steps):
            batch = []
            active = [r for r in recs if k < len(r.t)]
            for r in active:
                row = r.z[k]
                # values exactly as recorded; NaN (nothing recorded) is simply absent
                values = {ch: float(row[j]) for j, ch in enumerate(NAMES) if not np.isnan(row[j])}
                summary.channels_seen.update(values)
                batch.append(ValidReading(f"record:{r.patient_id}", r.patient_id, k + 1,
                                          float(r.t[k]), values, None, None))
            res = proc.process(batch, stored, now=max(b.t for b in batch))
            stored.update(res.states)
            summary.steps += 1
            summary.artifacts += res.artifacts
            summary.missing += res.missing
            states = {st.patient_id: st for st in res.twin_states}
            alerts: dict[str, list[dict]] = {}
            for a in res.alerts:
                summary.alerts[a.priority] += 1
                alerts.setdefault(a.patient_id, []).append(
                    {"event": a.event, "kind": a.kind, "category": a.category,
                     "priority": a.priority, "channels": a.channels, "message": a.message})
            rep = res.report
            for i, (r, reading) in enumerate(zip(active, batch, strict=True)):
                st = states.get(r.patient_id)
                art = [] if rep is None else [NAMES[j] for j in np.nonzero(rep.artifact[i])[0]]
                seen_any = st is not None and any(v is not None for v in st.estimate.values())
                line = {
                    "t": iso(reading.t),
                    "patient_id": r.patient_id,
                    "raw": {ch: _num(r.z[k, j]) for j, ch in enumerate(NAMES)},
                    "estimate": st.estimate if st else {ch: None for ch in NAMES},
                    "sd": st.sd if st else {ch: None for ch in NAMES},
                    "news2": st.news2 if seen_any else None,
                    "news2_raw": st.news2_raw if seen_any else None,
                    "news2_complete": st.news2_complete if st else False,
                    "artifacts": art,
                    "alerts": alerts.get(r.patient_id, []),
                }
                out.write(_enc.encode(line) + b"\n")
            bar.update(1)
    bar.close()
    return summary
