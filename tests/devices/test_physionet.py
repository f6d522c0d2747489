from pathlib import Path

import numpy as np
import pytest

from devices import physionet
from devices.records import RecordError
from streams.errors import ConfigError
from twin.channels import INDEX

SHARED = Path("/work/shared/data")
# The challenge files are not redistributed in this repository (docs/validation.md cites them)
NO_DATA = f"the PhysioNet development files are not at {SHARED}"
SEPSIS = SHARED / "physionet-sepsis2019-dev" / "training"
ICU = SHARED / "physionet-icu2012-dev"
needs_data = pytest.mark.skipif(not SEPSIS.is_dir() or not ICU.is_dir(),
                                reason=NO_DATA)

HEADER = ("HR|O2Sat|Temp|SBP|MAP|DBP|Resp|EtCO2|Age|Gender|Unit1|Unit2|HospAdmTime|ICULOS|"
          "SepsisLabel")


def _psv(path: Path, rows: list[str]) -> None:
    path.write_text("\n".join([HEADER, *rows]) + "\n")


def test_read_sepsis_maps_columns_times_and_labels(tmp_path):
    _psv(tmp_path / "p1.psv", ["NaN|NaN|NaN|NaN|NaN|NaN|NaN|NaN|60|1|1|0|-3|1|0",
                               "90|95|37.2|110|80|60|18|NaN|60|1|1|0|-3|2|0",
                               "120|91|38.5|85|60|45|28|NaN|60|1|1|0|-3|3|1"])
    _psv(tmp_path / "p2.psv", ["70|98|36.8|130|90|75|14|NaN|45|0|0|1|-1|5|0"])
    s = physionet.read_sepsis(str(tmp_path))
    assert s.ids == ["p1", "p2"] and s.n == 2
    np.testing.assert_array_equal(s.start, [0, 3, 4])
    np.testing.assert_array_equal(s.t, [3600, 7200, 10800, 18000])  # ICULOS hours
    np.testing.assert_array_equal(s.label, [0, 0, 1, 0])
    assert s.z[2, INDEX["hr"]] == 120 and s.z[2, INDEX["spo2"]] == 91
    assert s.z[2, INDEX["rr"]] == 28 and s.z[2, INDEX["dbp"]] == 45
    assert s.z[2, INDEX["sbp"]] == 85 and s.z[2, INDEX["temp"]] == 38.5
    assert np.isnan(s.z[0]).all()
    assert s.extra["MAP"][1] == 80
    np.testing.assert_array_equal(s.age, [60, 45])
    np.testing.assert_array_equal(s.stay, [0, 0, 0, 1])
    one = physionet.subset(s, np.array([1]))
    assert one.ids == ["p2"] and one.t.tolist() == [18000] and one.label.tolist() == [0]


@pytest.mark.parametrize("setup, error, match", [
    (lambda d: d / "absent", ConfigError, "no such directory"),
    (lambda d: d, ConfigError, "no \\*.psv"),
    (lambda d: (d / "p1.psv").write_text("HR|O2Sat\n1|2\n") and d, RecordError, "missing col"),
    (lambda d: (d / "p1.psv").write_text(HEADER + "\n1|x\n") and d, RecordError, "p1.psv"),
    (lambda d: (d / "p1.psv").write_text(HEADER + "\n") and d, RecordError, "no data rows"),
])
def test_read_sepsis_errors_are_one_line(tmp_path, setup, error, match):
    target = setup(tmp_path)
    with pytest.raises(error, match=match) as e:
        physionet.read_sepsis(str(target))
    assert "\n" not in str(e.value)


def _icu(path: Path, rid: int, rows: list[str]) -> None:
    head = ["Time,Parameter,Value", f"00:00,RecordID,{rid}", "00:00,Age,70", "00:00,Gender,1",
            "00:00,Height,-1", "00:00,ICUType,2", "00:00,Weight,80"]
    path.write_text("\n".join(head + rows) + "\n")


def test_read_icu2012_missing_values_bp_preference_and_outcomes(tmp_path):
    d = tmp_path / "set-a"
    d.mkdir()
    _icu(d / "1.txt", 1, [
        "00:10,HR,0",  # 0 is not a heart rate: missing
        "00:10,NISysABP,120", "00:10,NIDiasABP,70", "00:10,SysABP,140", "00:10,DiasABP,60",
        "00:10,GCS,15",
        "01:30,HR,95", "01:30,SysABP,100", "01:30,DiasABP,55",  # arterial only: used
        "01:30,RespRate,-1", "01:30,Temp,37.5", "01:30,SaO2,96",
        "47:59,HR,101", "47:59,Urine,200",  # Urine is not read: the time still counts via HR
    ])
    _icu(d / "2.txt", 2, ["02:00,HR,80"])
    out = tmp_path / "Outcomes-a.txt"
    out.write_text("RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
                   "1,14,3,5,-1,0\n2,-1,2,9,7,1\n")
    s = physionet.read_icu2012(str(d), str(out))
    assert s.ids == ["1", "2"]
    np.testing.assert_array_equal(s.start, [0, 3, 4])
    np.testing.assert_array_equal(s.t, [600, 5400, 47 * 3600 + 59 * 60, 7200])
    hr, sbp, dbp = INDEX["hr"], INDEX["sbp"], INDEX["dbp"]
    assert np.isnan(s.z[0, hr]) and s.z[1, hr] == 95
    # cuff preferred when both exist; arterial where there is no cuff value
    assert (s.z[0, sbp], s.z[0, dbp]) == (120, 70) and (s.z[1, sbp], s.z[1, dbp]) == (100, 55)
    assert s.bp_source.tolist() == [physionet.BP_CUFF, physionet.BP_ARTERIAL,
                                    physionet.BP_NONE, physionet.BP_NONE]
    assert np.isnan(s.z[1, INDEX["rr"]])  # -1: missing
    assert s.z[1, INDEX["spo2"]] == 96  # SaO2 feeds the spo2 channel (documented choice)
    assert s.extra["GCS"][0] == 15
    np.testing.assert_array_equal(s.death, [0, 1])
    assert s.saps[0] == 14 and np.isnan(s.saps[1])  # -1: not computed
    np.testing.assert_array_equal(s.age, [70, 70])


def test_read_icu2012_errors(tmp_path):
    d = tmp_path / "set-a"
    d.mkdir()
    _icu(d / "1.txt", 1, ["00:10,HR,80"])
    with pytest.raises(ConfigError, match="no such outcomes file"):
        physionet.read_icu2012(str(d), str(tmp_path / "nope.txt"))
    out = tmp_path / "Outcomes-a.txt"
    out.write_text("RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
                   "9,14,3,5,-1,0\n")
    with pytest.raises(RecordError, match="no outcome for record 1"):
        physionet.read_icu2012(str(d), str(out))
    (d / "2.txt").write_text("Time,Parameter,Value\nxx,HR,80\n")
    with pytest.raises(RecordError, match="2.txt: line 2"):
        physionet.read_icu2012(str(d))
    (d / "2.txt").write_text("garbage\n")
    with pytest.raises(RecordError, match="header"):
        physionet.read_icu2012(str(d))


@needs_data
def test_real_data_shapes_and_counts():
    s = physionet.read_sepsis(str(SEPSIS), limit=200)
    assert s.n == 200 and len(s.t) == s.start[-1] == len(s.label)
    assert np.all(np.diff(s.t)[np.diff(s.stay) == 0] == 3600)  # hourly rows
    i = physionet.read_icu2012(str(ICU / "set-a"), str(ICU / "Outcomes-a.txt"), limit=200)
    assert i.n == 200 and i.death.shape == (200,) and set(np.unique(i.death)) <= {0, 1}
    # no value the dataset marks as missing survives
    assert not (i.z <= 0).any()
    assert i.t.max() <= 48 * 3600
    inside = np.diff(i.stay) == 0
    assert (np.diff(i.t)[inside] > 0).all()  # one sample per distinct time, in order
