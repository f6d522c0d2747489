import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import wfdb

from devices.analyze import analyze
from devices.records import RecordError, read

DATA = Path(__file__).resolve().parents[1] / "data" / "mimic2-numerics"
RECORD = str(DATA / "s25047-2704-05-04-10-44n")
CHANNELS = ["hr", "rr", "spo2", "sbp", "dbp", "temp"]


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze") / "out.jsonl"
    summary = analyze([RECORD + ".hea"], str(out), progress=False)
    return summary, [json.loads(x) for x in out.read_text().splitlines()]


def test_one_line_per_step_with_the_documented_fields(lines):
    summary, rows = lines
    assert len(rows) == 72 == summary.steps
    for r in rows:
        assert set(r) >= {"t", "patient_id", "raw", "estimate", "sd", "news2", "news2_raw",
                          "artifacts", "alerts"}
        assert set(r["raw"]) == set(CHANNELS) == set(r["estimate"]) == set(r["sd"])
        assert set(r["artifacts"]) <= set(CHANNELS)
        for a in r["alerts"]:
            assert a["event"] in ("raised", "updated", "reminder", "escalated", "resolved")
            assert a["category"] in ("clinical", "technical")
            assert a["priority"] in ("high", "medium", "low")
    assert rows[0]["t"].startswith("2704-05-04T10:44:18")
    assert rows[1]["t"].startswith("2704-05-04T10:45:18")  # one minute apart


def test_raw_is_exactly_as_recorded_and_zeros_are_not_believed(lines):
    _, rows = lines
    rec = wfdb.rdrecord(RECORD)
    col = {n: i for i, n in enumerate(rec.sig_name)}
    for k, r in enumerate(rows):
        for ch, name in (("hr", "HR"), ("rr", "RESP"), ("spo2", "SpO2"), ("sbp", "NBPSys")):
            v = rec.p_signal[k, col[name]]
            assert r["raw"][ch] == (None if np.isnan(v) else pytest.approx(v))
    zero_spo2 = [r for r in rows[3:] if r["raw"]["spo2"] == 0]
    assert zero_spo2, "the record has sensor-off zeros"
    for r in zero_spo2:
        assert r["estimate"]["spo2"] > 80  # the twin keeps its belief, it does not follow zero
    # the first two minutes have only zeros for SpO2: no estimate rather than a guess
    assert rows[0]["estimate"]["spo2"] is None


def test_summary_counts(lines):
    summary, rows = lines
    assert summary.channels_seen >= {"hr", "rr", "spo2", "sbp", "dbp"}
    assert summary.artifacts == sum(len(r["artifacts"]) for r in rows)
    assert sum(summary.alerts.values()) == sum(len(r["alerts"]) for r in rows)
    assert summary.missing > 0


def test_csv_with_documented_columns(tmp_path):
    csv = tmp_path / "bed7.csv"
    csv.write_text("time,HR,SpO2,RESP,NBPSys,NBPDias,Temp\n"
                   "2026-01-01T00:00:00Z,80,97,16,120,80,37.1\n"
                   "2026-01-01T00:01:00Z,0,97,16,,,\n"
                   "2026-01-01T00:02:00Z,82,96,17,,,\n")
    rec = read(str(csv))
    assert rec.patient_id == "bed7" and rec.z.shape == (3, 6)
    assert rec.sources["sbp"] == "NBPSys"
    out = tmp_path / "o.jsonl"
    analyze([str(csv)], str(out), progress=False)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[1]["raw"]["hr"] == 0 and rows[1]["estimate"]["hr"] > 70
    assert rows[2]["estimate"]["temp"] == pytest.approx(37.1, abs=0.3)


@pytest.mark.parametrize("content,fragment", [
    (None, "no such file"),
    ("when,HR\n1,2\n", "no 'time' column"),
    ("time,HR\nyesterday,80\n", "not ISO-8601"),
    ("time,HR\n2026-01-01T00:00:00Z,fast\n", "not a number"),
    ("time,glucose\n2026-01-01T00:00:00Z,5\n", "no vital-sign column"),
])
def test_bad_csv_is_one_clear_error(tmp_path, content, fragment):
    p = tmp_path / "x.csv"
    if content is not None:
        p.write_text(content)
    with pytest.raises(RecordError, match=fragment):
        read(str(p))


def test_cli_missing_record_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "streams.cli", "analyze", str(tmp_path / "nope"),
                        "--out", str(tmp_path / "o.jsonl")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no such WFDB record" in r.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_analyze_writes_the_file_and_a_summary(tmp_path):
    out = tmp_path / "o.jsonl"
    r = subprocess.run([sys.executable, "-m", "streams.cli", "analyze", RECORD, "--out",
                        str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "72 steps" in r.stderr and "alert events by priority" in r.stderr
    assert len(out.read_text().splitlines()) == 72
