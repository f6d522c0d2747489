"""Recorded vital signs from files: WFDB numerics records (PhysioNet, MIMIC-II) and CSV.

Values come back exactly as recorded (zeros and out-of-range values included): deciding what to
believe is the twin's job. Used by `patient-twin analyze` (and by replay).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from streams.errors import PatientTwinError
from twin.channels import INDEX, NAMES, C

# Monitor signal names -> product channel, in order of preference: the first present wins. An
# arterial line reads continuously and more accurately than a cuff, so ABP beats NBP.
SIGNAL_MAP: dict[str, tuple[str, ...]] = {
    "hr": ("HR", "hr", "PULSE", "Pulse"),
    "rr": ("RESP", "Resp", "RR", "rr"),
    "spo2": ("SpO2", "SPO2", "%SpO2", "spo2"),
    "sbp": ("ABPSys", "ABP Sys", "ARTsys", "NBPSys", "NBP Sys", "sbp"),
    "dbp": ("ABPDias", "ABP Dias", "ARTdia", "NBPDias", "NBP Dias", "dbp"),
    "temp": ("TEMP", "Temp", "T", "temp"),
}


class RecordError(PatientTwinError):
    """A record is missing, unreadable or has nothing the twin can use."""


@dataclass(frozen=True)
class Recording:
    """One patient's recorded vital signs.

    t: `(T,)` epoch seconds; z: `(T, C)` values in product units, NaN where nothing was recorded;
    sources: channel -> the monitor signal it came from.
    """

    patient_id: str
    t: np.ndarray
    z: np.ndarray
    sources: dict[str, str]


def _pick(names: list[str]) -> dict[str, int]:
    """channel -> column index of the preferred monitor signal present in `names`."""
    out = {}
    for ch, candidates in SIGNAL_MAP.items():
        for cand in candidates:
            if cand in names:
                out[ch] = names.index(cand)
                break
    return out


def read_wfdb(path: str) -> Recording:
    """A WFDB record given as `name.hea` or as the record path without extension."""
    import wfdb

    base = path[:-4] if path.endswith(".hea") else path
    if not Path(base + ".hea").is_file():
        raise RecordError(f"{path}: no such WFDB record (expected {base}.hea)")
    try:
        rec = wfdb.rdrecord(base)
    except Exception as exc:  # wfdb raises bare ValueError/OSError/... on damaged files
        raise RecordError(f"{path}: unreadable WFDB record ({type(exc).__name__}: {exc})") from exc
    names = list(rec.sig_name or [])
    cols = _pick(names)
    if not cols:
        raise RecordError(f"{path}: none of its signals ({', '.join(names)}) is a vital sign "
                          "the twin models")
    if rec.p_signal is None or not rec.fs:
        raise RecordError(f"{path}: record has no physical signal or sampling frequency")
    T = rec.p_signal.shape[0]
    z = np.full((T, C), np.nan)
    for ch, j in cols.items():
        z[:, INDEX[ch]] = rec.p_signal[:, j]
    start = datetime.combine(rec.base_date or datetime(1970, 1, 1).date(),
                             rec.base_time or datetime.min.time(), tzinfo=UTC)
    t = start.timestamp() + np.arange(T) / float(rec.fs)
    return Recording(Path(base).name, t, z, {ch: names[j] for ch, j in cols.items()})


def read_csv(path: str) -> Recording:
    """A CSV file: a `time` column (ISO-8601, with or without offset; without = UTC), an optional
    `patient_id` column (default: the file name), and channel columns named as in SIGNAL_MAP."""
    p = Path(path)
    if not p.is_file():
        raise RecordError(f"{path}: no such file")
    try:
        with p.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RecordError(f"{path}: unreadable CSV ({exc})") from exc
    if not rows:
        raise RecordError(f"{path}: no data rows")
    names = list(rows[0].keys())
    if "time" not in names:
        raise RecordError(f"{path}: no 'time' column (columns: {', '.join(names)})")
    cols = {ch: names[j] for ch, j in _pick(names).items()}
    if not cols:
        raise RecordError(f"{path}: no vital-sign column (expected some of {', '.join(NAMES)})")
    T = len(rows)
    z = np.full((T, C), np.nan)
    t = np.empty(T)
    for i, row in enumerate(rows):
        try:
            ts = datetime.fromisoformat(row["time"])
        except (TypeError, ValueError):
            raise RecordError(f"{path}: row {i + 2}: time {row['time']!r} is not ISO-8601") \
                from None
        t[i] = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
        for ch, col in cols.items():
            v = (row.get(col) or "").strip()
            if v:
                try:
                    z[i, INDEX[ch]] = float(v)
                except ValueError:
                    raise RecordError(f"{path}: row {i + 2}: {col}={v!r} is not a number") \
                        from None
    pid = rows[0].get("patient_id") or p.stem
    return Recording(pid, t, z, cols)


def read(path: str) -> Recording:
    """A record by its path: `.csv` is CSV, anything else a WFDB record."""
    return read_csv(path) if path.lower().endswith(".csv") else read_wfdb(path)


def iso(t: float) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=float(t))).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
