"""PhysioNet Challenge data as arrays: 2019 sepsis (`.psv`, one row per ICU hour) and 2012 ICU
mortality (`Time,Parameter,Value` rows, first 48 h), for `patient-twin validate`.

Values come back as recorded except where a dataset's own documentation says a value means
"missing" (ICU 2012: -1, or 0 where it cannot be physiological): deciding what else to believe is
the twin's job. Stays are concatenated (CSR layout: stay s owns samples `start[s]:start[s + 1]`).

Sources: Reyna MA et al. Early prediction of sepsis from clinical data: the PhysioNet/Computing in
Cardiology Challenge 2019. Crit Care Med 2020;48(2):210-217. Silva I et al. Predicting in-hospital
mortality of ICU patients: the PhysioNet/Computing in Cardiology Challenge 2012. Comput Cardiol
2012;39:245-248. Goldberger AL et al. PhysioBank, PhysioToolkit, and PhysioNet. Circulation
2000;101(23):e215-e220.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from devices.records import RecordError
from streams.errors import ConfigError
from twin.channels import INDEX, C

# 2019 columns -> product channel. MAP is kept aside (`extra`): the twin derives it.
SEPSIS_COLUMNS: dict[str, str] = {
    "hr": "HR", "rr": "Resp", "spo2": "O2Sat", "sbp": "SBP", "dbp": "DBP", "temp": "Temp"}

# ICU 2012 parameters -> product channel. Blood pressure: the cuff (NI*) is preferred, because
# a remote-monitoring wearable measures by cuff; an arterial-line value is used at a time with no
# cuff value (`bp_source` says which, per sample). SaO2 (arterial blood gas, co-oximetry) feeds the
# spo2 channel: it is the quantity pulse oximetry estimates and its reference standard
# (ISO 80601-2-61 calibrates oximeters against co-oximetry SaO2), the only saturation in these
# data; it is sparse (a few gases a day) and often taken on supplemental oxygen.
ICU2012_CHANNELS: dict[str, tuple[str, ...]] = {
    "hr": ("HR",), "rr": ("RespRate",), "spo2": ("SaO2",),
    "sbp": ("NISysABP", "SysABP"), "dbp": ("NIDiasABP", "DiasABP"), "temp": ("Temp",)}
ICU2012_EXTRA: tuple[str, ...] = ("GCS", "NIMAP", "MAP", "FiO2", "MechVent")

BP_NONE, BP_CUFF, BP_ARTERIAL = 0, 1, 2


@dataclass(frozen=True)
class Stays:
    """Stays of one dataset, samples concatenated in stay order, each stay's in time order.

    ids: S stay ids; start: `(S + 1,)` int offsets of each stay's samples; t: `(M,)` seconds since
    ICU admission; z: `(M, C)` product channels (NaN: not recorded); extra: name -> `(M,)` other
    recorded values (NaN: not recorded); age: `(S,)` years; label: `(M,)` int8 SepsisLabel (2019
    only); hours: `(M,)` ICULOS (2019 only); bp_source: `(M,)` int8 `BP_*` (2012 only);
    death, saps: `(S,)` in-hospital death (0/1) and SAPS-I (2012 with outcomes; NaN: unknown).
    """

    ids: list[str]
    start: np.ndarray
    t: np.ndarray
    z: np.ndarray
    extra: dict[str, np.ndarray]
    age: np.ndarray
    label: np.ndarray | None = None
    hours: np.ndarray | None = None
    bp_source: np.ndarray | None = None
    death: np.ndarray | None = None
    saps: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def stay(self) -> np.ndarray:
        """Stay index of each sample, `(M,)`."""
        return np.repeat(np.arange(self.n), np.diff(self.start))


def _files(directory: str, suffix: str, limit: int | None) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"{directory}: no such directory")
    files = sorted(d.glob(f"*{suffix}"))
    if not files:
        raise ConfigError(f"{directory}: no *{suffix} files")
    return files if limit is None else files[:limit]


def _float(v: str, path: Path, line: int) -> float:
    try:
        return float(v)
    except ValueError as exc:
        raise RecordError(f"{path}: line {line}: {v!r} is not a number") from exc


def read_psv(path: Path) -> dict[str, np.ndarray]:
    """One 2019 Challenge stay: column name -> `(T,)` float (NaN as recorded)."""
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: unreadable ({type(exc).__name__})") from exc
    if len(lines) < 2:
        raise RecordError(f"{path}: no data rows")
    names = lines[0].split("|")
    need = [*SEPSIS_COLUMNS.values(), "MAP", "Age", "ICULOS", "SepsisLabel"]
    if missing := [n for n in need if n not in names]:
        raise RecordError(f"{path}: missing column(s) {', '.join(missing)}")
    try:
        table = np.array([ln.split("|") for ln in lines[1:]], dtype=float)
    except ValueError as exc:
        raise RecordError(f"{path}: malformed rows ({exc})") from exc
    if table.ndim != 2 or table.shape[1] != len(names):
        raise RecordError(f"{path}: rows do not match the header's {len(names)} columns")
    return {n: table[:, i] for i, n in enumerate(names)}


def read_sepsis(directory: str, limit: int | None = None) -> Stays:
    """The 2019 Challenge stays in `directory` (`p*.psv`), in file-name order.

    A row's time is its ICULOS hour (t = ICULOS h): the Challenge predicts at each row from that
    row and the ones before it. Raises ConfigError for a missing or empty directory, RecordError
    for an unreadable file.
    """
    files = _files(directory, ".psv", limit)
    ids, ts, zs, maps, labels, hours, age = [], [], [], [], [], [], []
    for p in files:
        cols = read_psv(p)
        ids.append(p.stem)
        hours.append(cols["ICULOS"])
        ts.append(cols["ICULOS"] * 3600.0)
        z = np.full((len(cols["ICULOS"]), C), np.nan)
        for ch, col in SEPSIS_COLUMNS.items():
            z[:, INDEX[ch]] = cols[col]
        zs.append(z)
        maps.append(cols["MAP"])
        labels.append(cols["SepsisLabel"].astype(np.int8))
        age.append(float(cols["Age"][0]))
    start = np.r_[0, np.cumsum([len(t) for t in ts])]
    return Stays(ids, start, np.concatenate(ts), np.concatenate(zs),
                 {"MAP": np.concatenate(maps)}, np.array(age),
                 label=np.concatenate(labels), hours=np.concatenate(hours))


def _minutes(hhmm: str, path: Path, line: int) -> float:
    h, sep, m = hhmm.partition(":")
    if not sep or not h.isdigit() or not m.isdigit():
        raise RecordError(f"{path}: line {line}: time {hhmm!r} is not hh:mm")
    return int(h) * 60.0 + int(m)


def read_icu2012_record(path: Path) -> tuple[dict[str, float], dict[str, tuple[np.ndarray,
                                                                               np.ndarray]]]:
    """One 2012 Challenge record: static descriptors (name -> value) and time series (name ->
    `(minutes (k,), values (k,))`, as recorded, in file order)."""
    static: dict[str, float] = {}
    series: dict[str, tuple[list[float], list[float]]] = {}
    try:
        with open(path, encoding="ascii", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RecordError(f"{path}: unreadable ({type(exc).__name__})") from exc
    if not rows or rows[0] != ["Time", "Parameter", "Value"]:
        raise RecordError(f"{path}: expected the header Time,Parameter,Value")
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != 3:
            raise RecordError(f"{path}: line {i}: expected 3 fields")
        tm, name, v = row
        if tm == "00:00" and name in ("RecordID", "Age", "Gender", "Height", "ICUType"):
            static[name] = _float(v, path, i)
            continue
        s = series.setdefault(name, ([], []))
        s[0].append(_minutes(tm, path, i))
        s[1].append(_float(v, path, i))
    return static, {k: (np.array(a), np.array(b)) for k, (a, b) in series.items()}


def read_outcomes(path: str) -> dict[str, tuple[float, int]]:
    """Outcomes-a.txt: RecordID -> (SAPS-I, in-hospital death 0/1). SAPS-I -1 (not computed) is
    NaN. Raises ConfigError for a missing file, RecordError for an unreadable one."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such outcomes file")
    try:
        with open(p, encoding="ascii", newline="") as f:
            rows = list(csv.DictReader(f))
        out = {}
        for r in rows:
            saps = float(r["SAPS-I"])
            out[str(int(float(r["RecordID"])))] = (np.nan if saps < 0 else saps,
                                                   int(r["In-hospital_death"]))
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, ValueError, TypeError) as exc:
        raise RecordError(f"{path}: unreadable outcomes file ({type(exc).__name__})") from exc
    if not out:
        raise RecordError(f"{path}: no outcome rows")
    return out


def _missing_2012(name: str, v: np.ndarray) -> np.ndarray:
    """The dataset's convention: -1 means missing, and 0 where 0 cannot be physiological (every
    vital sign, GCS and saturation; FiO2 0 too; MechVent 0 is a real 'no')."""
    if name == "MechVent":
        return v < 0
    return v <= 0


def read_icu2012(directory: str, outcomes: str | None = None,
                 limit: int | None = None) -> Stays:
    """The 2012 Challenge records in `directory` (`*.txt`), in file-name order, one sample per
    distinct time with any vital sign or extra parameter. With `outcomes` (Outcomes-a.txt), each
    stay gets its death and SAPS-I; a stay absent from it raises RecordError.

    Raises ConfigError for a missing or empty directory or outcomes file.
    """
    files = _files(directory, ".txt", limit)
    outc = read_outcomes(outcomes) if outcomes is not None else None
    names = sorted({n for ns in ICU2012_CHANNELS.values() for n in ns} | set(ICU2012_EXTRA))
    col = {n: i for i, n in enumerate(names)}
    ids, ts, tables, age, death, saps = [], [], [], [], [], []
    for p in files:
        static, series = read_icu2012_record(p)
        rid = str(int(static["RecordID"])) if "RecordID" in static else p.stem
        ids.append(rid)
        a = static.get("Age", np.nan)
        age.append(np.nan if a < 0 else a)
        if outc is not None:
            if rid not in outc:
                raise RecordError(f"{outcomes}: no outcome for record {rid}")
            saps.append(outc[rid][0])
            death.append(outc[rid][1])
        used = {n: s for n, s in series.items() if n in col}
        times = np.unique(np.concatenate([s[0] for s in used.values()])) if used else np.empty(0)
        table = np.full((len(times), len(names)), np.nan)
        for n, (tm, v) in used.items():
            v = np.where(_missing_2012(n, v), np.nan, v)
            # a parameter recorded twice at one minute: the later row wins, as in the file
            table[np.searchsorted(times, tm), col[n]] = v
        ts.append(times * 60.0)
        tables.append(table)
    start = np.r_[0, np.cumsum([len(t) for t in ts])]
    allv = np.concatenate(tables) if tables else np.empty((0, len(names)))
    z = np.full((len(allv), C), np.nan)
    # one source per sample for both pressures, so systolic and diastolic never mix cuff and line
    cuff = ~np.isnan(allv[:, col["NISysABP"]])
    art = ~cuff & ~np.isnan(allv[:, col["SysABP"]])
    bp = np.where(cuff, BP_CUFF, np.where(art, BP_ARTERIAL, BP_NONE)).astype(np.int8)
    for ch, params in ICU2012_CHANNELS.items():
        v = allv[:, col[params[0]]]
        if len(params) > 1:
            v = np.where(cuff, v, allv[:, col[params[1]]])
        z[:, INDEX[ch]] = v
    extra = {n: allv[:, col[n]] for n in ICU2012_EXTRA}
    return Stays(ids, start, np.concatenate(ts) if ts else np.empty(0), z, extra,
                 np.array(age, dtype=float), bp_source=bp.astype(np.int8),
                 death=np.array(death, dtype=np.int8) if outc is not None else None,
                 saps=np.array(saps, dtype=float) if outc is not None else None)


def subset(stays: Stays, rows: np.ndarray) -> Stays:
    """The stays at indices `rows (K,)` (ascending), as a `Stays` of their own."""
    rows = np.asarray(rows)
    lens = np.diff(stays.start)[rows]
    start = np.r_[0, np.cumsum(lens)]
    # sample j of the subset is sample (j - its new start) + its old start
    idx = np.arange(start[-1]) + np.repeat(stays.start[rows] - start[:-1], lens)

    def per_sample(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[idx]

    def per_stay(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[rows]

    return Stays([stays.ids[r] for r in rows.tolist()], start,
                 stays.t[idx], stays.z[idx], {k: v[idx] for k, v in stays.extra.items()},
                 stays.age[rows], per_sample(stays.label), per_sample(stays.hours),
                 per_sample(stays.bp_source), per_stay(stays.death), per_stay(stays.saps))
