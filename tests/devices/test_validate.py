import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from devices import physionet, scoring, validate
from streams import cli, config
from streams.errors import ConfigError
from streams.worker.process import TwinProcessor
from twin import news2, risk
from twin.channels import INDEX

SHARED = Path("/work/shared/data")
# The challenge files are not redistributed in this repository (docs/validation.md cites them)
NO_DATA = f"the PhysioNet development files are not at {SHARED}"
SEPSIS = SHARED / "physionet-sepsis2019-dev" / "training"
ICU = SHARED / "physionet-icu2012-dev"
pytestmark = pytest.mark.skipif(not SEPSIS.is_dir() or not ICU.is_dir(),
                                reason=NO_DATA)


@pytest.fixture(scope="module")
def sepsis_stays():
    """60 stays of the first 400: 20 that become septic, 40 that do not."""
    s = physionet.read_sepsis(str(SEPSIS), limit=400)
    septic = np.zeros(s.n, dtype=int)
    np.maximum.at(septic, s.stay, s.label.astype(int))
    pick = np.sort(np.r_[np.flatnonzero(septic)[:20], np.flatnonzero(septic == 0)[:40]])
    return physionet.subset(s, pick)


@pytest.fixture(scope="module")
def icu_stays():
    return physionet.read_icu2012(str(ICU / "set-a"), str(ICU / "Outcomes-a.txt"), limit=60)


def _check_auroc(e, folds=5):
    assert 0.0 <= e["auroc"] <= 1.0
    lo, hi = e["ci95"]
    assert lo <= e["auroc"] <= hi and hi - lo > 0
    # the spread over the cross-validation folds, one AUROC per fold (issue 20)
    per = [v for v in e["fold_auroc"] if v is not None]
    assert len(e["fold_auroc"]) == folds and len(per) >= 2
    assert e["fold_auroc_range"] == [min(per), max(per)] and e["fold_auroc_sd"] > 0


def _check_calibration(c, rows, bins):
    """The reliability table covers every scored row once, in ascending bins of prediction."""
    assert len(c["bins"]) == bins and sum(b["n"] for b in c["bins"]) == rows
    pred = [b["predicted"] for b in c["bins"]]
    assert pred == sorted(pred)
    for b in c["bins"]:
        assert b["low95"] <= b["observed"] <= b["high95"]
    # a slope may be anything on 60 stays (a model can rank worse than chance out of fold)
    assert 0.0 < c["brier"] < 0.25 and np.isfinite(c["slope"]) and np.isfinite(c["intercept"])


def test_sepsis_side_by_side(sepsis_stays):
    res, models = validate.validate("sepsis2019", sepsis_stays, folds=5, seed=0, progress=False)
    assert res["stays"] == 60 and res["septic_stays"] == 20
    assert set(res["methods"]) == {"twin_risk", "twin_risk_live", "raw_logistic",
                                   "twin_plus_raw", "news2_twin", "news2_raw"}
    for name, e in res["methods"].items():
        _check_auroc(e)
        if not name.startswith("news2"):
            _check_calibration(e["calibration"], res["hours"],
                               validate.CALIBRATION_BINS["sepsis2019"])
        assert e["n"] == res["hours"]
        assert -2.0 <= e["utility"] <= 1.0
        assert 0.0 <= e["detected"] <= 1.0
        assert 0.0 <= e["alert_hours_per_patient_day"] <= 24.0
        if e["median_lead_h"] is not None:
            assert -3.0 <= e["median_lead_h"] <= 12.0
    # every learned risk also at raw NEWS2 >= 5's alert burden: the same alert-hours
    rule = res["methods"]["news2_raw"]["rule_news2_ge5"]
    for name in ("twin_risk", "twin_risk_live", "raw_logistic", "twin_plus_raw"):
        same = res["methods"][name]["at_news2_ge5_burden"]
        assert same["alert_hours_per_patient_day"] == rule["alert_hours_per_patient_day"]
    # the drift trends' trigger probability against what came an hour later
    tt = res["trend_trigger"]
    assert sum(b["n"] for b in tt["bins"]) > 100 and tt["horizon_min"] == 60.0
    for b in tt["bins"]:
        if b["n"]:
            assert b["p_low"] <= b["mean_p"] <= b["p_high"] and 0.0 <= b["triggered"] <= 1.0
    assert 0.0 <= tt["alert_hours_per_patient_day"] <= 24.0
    best = res["methods"]["news2_raw"]["utility_best_any_threshold"]
    assert best >= rule["utility"] and best >= res["methods"]["news2_raw"]["utility"]
    m = models["sepsis2019"]
    # scored out of fold: the final model, fitted on every stay, looks better on its own
    # training stays than the cross-validated figure (equal would mean leakage)
    run = validate.run_twin(sepsis_stays, sepsis_stays.start, sepsis_stays.t, progress=False)
    stay = sepsis_stays.stay
    x = np.c_[run.features, sepsis_stays.hours, sepsis_stays.age[stay]]
    in_sample = scoring.auroc(risk.predict(m, x), sepsis_stays.label)
    assert in_sample > res["methods"]["twin_risk"]["auroc"] + 0.05
    assert m.names[:len(risk.FEATURES)] == risk.FEATURES
    assert m.meta["cv_auroc"] == res["methods"]["twin_risk"]["auroc"]
    # the live model: the live feature columns, with an operating point inside (0, 1)
    live = models[risk.LIVE_MODEL]
    assert live.names == risk.LIVE_FEATURES and 0.0 < risk.threshold(live) < 1.0
    assert live.meta["cv_auroc"] == res["methods"]["twin_risk_live"]["auroc"]
    assert run.live.shape == (res["hours"], len(risk.LIVE_FEATURES))
    # forecast intervals checked against the readings that came, per horizon and channel
    cov = res["forecast_coverage_90"]
    assert list(cov) == ["60min", "120min", "240min"]
    for per in cov.values():
        assert set(per) == {"hr", "rr", "spo2", "sbp", "dbp", "temp"}
        assert per["hr"]["n"] > 100 and 0.0 <= per["hr"]["coverage"] <= 1.0
    # a longer horizon is a wider interval
    assert cov["240min"]["hr"]["median_width"] > cov["60min"]["hr"]["median_width"]


def test_nested_lambda_never_looks_at_the_held_out_fold():
    """The strength chosen for a fold, and that fold's probabilities, are the same whatever
    the fold's own labels are: they are chosen on the other folds only."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 4))
    y = (x[:, 0] + rng.normal(size=600) > 1.0).astype(np.int64)
    fold = np.repeat(np.arange(4), 150)
    names = ("a", "b", "c", "d")
    gain = validate._youden_gain(y)
    prob, _, lam = validate.nested_cross_validate(x, y, fold, names, validate.LAM_GRID, gain)
    assert len(lam) == 4 and set(lam) <= set(validate.LAM_GRID)
    y2 = y.copy()
    y2[fold == 0] = 1 - y2[fold == 0]
    prob2, _, lam2 = validate.nested_cross_validate(x, y2, fold, names, validate.LAM_GRID,
                                                    validate._youden_gain(y2))
    assert lam2[0] == lam[0]
    np.testing.assert_array_equal(prob2[fold == 0], prob[fold == 0])
    # the other folds trained on the flipped labels: they change
    assert not np.allclose(prob2[fold == 1], prob[fold == 1])
    # a signal this strong is told apart out of fold
    assert scoring.auroc(prob, y) > 0.75


def test_forecast_coverage_counts_a_reading_inside_or_outside(sepsis_stays):
    """The coverage is what it says: readings moved far outside the intervals are not
    covered, and the same readings are, where they were."""
    run = validate.run_twin(sepsis_stays, sepsis_stays.start, sepsis_stays.t, progress=False)
    base = validate.forecast_coverage(run, sepsis_stays)["60min"]["hr"]
    far = dataclasses.replace(sepsis_stays, z=sepsis_stays.z.copy())
    far.z[:, 0] += 80.0  # most beyond the interval, still plausible heart rates
    moved = validate.forecast_coverage(run, far)["60min"]["hr"]
    assert base["coverage"] > 0.9
    assert moved["n"] > 0.9 * base["n"] and moved["coverage"] < base["coverage"] - 0.4


def test_forecast_coupling_sees_channels_that_move_together(sepsis_stays):
    """The cross-channel check measures what it says: later diastolic readings made to follow
    the systolic ones' errors correlate with them, and an unrelated shuffle does not."""
    run = validate.run_twin(sepsis_stays, sepsis_stays.start, sepsis_stays.t, progress=False)
    base = validate.forecast_coupling(run, sepsis_stays)["60min"]
    s, d = INDEX["sbp"], INDEX["dbp"]
    tied = dataclasses.replace(sepsis_stays, z=sepsis_stays.z.copy())
    # DBP = 0.4 SBP + its own noise: errors of the two now share a part
    rng = np.random.default_rng(0)
    tied.z[:, d] = 0.4 * tied.z[:, s] + 30.0 + rng.normal(0, 1.0, len(tied.z))
    tied_run = validate.run_twin(tied, tied.start, tied.t, progress=False)
    coupled = validate.forecast_coupling(tied_run, tied)["60min"]
    assert coupled["error_correlation"]["sbp-dbp"] > 0.8
    assert coupled["error_correlation"]["sbp-dbp"] > base["error_correlation"]["sbp-dbp"] + 0.2
    for c in (base, coupled):
        assert all(v is None or -1.0 <= v <= 1.0 for v in c["error_correlation"].values())
        mc = c["map_coverage_90"]
        # a positive correlation only widens MAP's interval
        assert mc["bp_correlation"] >= mc["independent"] and c["n_map"] > 100


def test_icu2012_side_by_side(icu_stays):
    res, models = validate.validate("icu2012", icu_stays, folds=5, seed=0, progress=False)
    assert res["stays"] == 60 and res["deaths"] == int(icu_stays.death.sum())
    assert {"twin_risk", "twin_vitals_only", "raw_logistic", "raw_vitals_only", "twin_plus_raw",
            "news2_twin_max", "news2_raw_max", "news2_twin_mean", "news2_raw_mean",
            "saps1"} == set(res["methods"])
    # the risk is "from the first 48 h of vital signs, GCS and age" (issue 20): GCS is in it
    assert any(n.startswith("GCS_") for n in models["icu2012"].names)
    assert any(n.startswith("GCS_") for n in risk.load("icu2012").names)  # the shipped one too
    for name, e in res["methods"].items():
        _check_auroc(e)
        if not name.startswith(("news2", "saps")):
            _check_calibration(e["calibration"], 60, validate.CALIBRATION_BINS["icu2012"])
        assert 0.0 <= e["sensitivity"] <= 1.0 and 0.0 <= e["alerted"] <= 1.0
    assert res["methods"]["saps1"]["n"] == int(np.isfinite(icu_stays.saps).sum())
    assert "icu2012" in models


def test_twin_is_vectorised_without_mixing_patients(sepsis_stays):
    """Running stays together gives what each stay gives alone."""
    stays = physionet.subset(sepsis_stays, np.arange(6))
    together = validate.run_twin(stays, stays.start, stays.t, progress=False)
    for s in (0, 3, 5):
        one = physionet.subset(stays, np.array([s]))
        alone = validate.run_twin(one, one.start, one.t, progress=False)
        rows = together.stay == s
        np.testing.assert_allclose(together.features[rows], alone.features, equal_nan=True)
        np.testing.assert_array_equal(together.news2[rows], alone.news2)


def test_raw_news2_is_last_value_carried_forward(sepsis_stays):
    """The bank's raw NEWS2 equals NEWS2 of each channel's last recorded value (one outside the
    plausibility limits scoring 0), computed here independently stay by stay."""
    stays = physionet.subset(sepsis_stays, np.arange(10))
    run = validate.run_twin(stays, stays.start, stays.t, progress=False)
    z = stays.z
    expected = []
    for s in range(stays.n):  # the per-patient reference
        kept = np.full(z.shape[1], np.nan)
        for row in z[stays.start[s]:stays.start[s + 1]]:
            kept = np.where(np.isnan(row), kept, row)
            last = validate.plausible(kept[None])[0]
            total, _, _ = news2.news2(last[INDEX["rr"]], last[INDEX["spo2"]],
                                      last[INDEX["temp"]], last[INDEX["sbp"]],
                                      last[INDEX["hr"]], 0.0, 1.0)
            expected.append(int(total))
    np.testing.assert_array_equal(run.news2_raw, expected)


def test_raw_sepsis_features_by_hand(sepsis_stays):
    stays = physionet.subset(sepsis_stays, np.arange(3))
    x = validate.raw_sepsis_features(stays)
    col = {n: i for i, n in enumerate(validate.RAW_SEPSIS_FEATURES)}
    hr = validate.plausible(stays.z)[:, INDEX["hr"]]
    s0 = slice(stays.start[0], stays.start[1])
    v = hr[s0]
    k = 20
    window = v[k - 11:k + 1]
    assert x[s0][k, col["hr_max_12h"]] == np.nanmax(window)
    assert x[s0][k, col["hr_min_12h"]] == np.nanmin(window)
    last = v[:k + 1][~np.isnan(v[:k + 1])][-1]
    assert x[s0][k, col["hr_last"]] == last
    assert x[s0][k, col["hours_in_icu"]] == stays.hours[s0][k]


def test_main_prints_a_table_then_json_and_writes_the_parameter_file(tmp_path, capsys):
    out = tmp_path / "risk.json"
    assert validate.main("icu2012", str(ICU / "set-a"), str(ICU / "Outcomes-a.txt"), limit=60,
                         progress=False, fit_out=str(out)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "twin_risk" in "\n".join(lines[:-1])
    res = json.loads(lines[-1])
    assert res["dataset"] == "icu2012" and res["folds"] == 5 and "twin_risk" in res["methods"]
    m = risk.load("icu2012", out)
    assert m.meta["cv_auroc"] == res["methods"]["twin_risk"]["auroc"]


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="outcomes"):
        validate.main("icu2012", str(ICU / "set-a"), None, progress=False)
    with pytest.raises(ConfigError, match="unknown dataset"):
        validate.main("nope", str(tmp_path), None, progress=False)
    with pytest.raises(ConfigError, match="limit"):
        validate.main("sepsis2019", str(SEPSIS), None, limit=0, progress=False)
    with pytest.raises(ConfigError, match="folds"):
        validate.main("sepsis2019", str(SEPSIS), None, limit=5, folds=1, progress=False)
    with pytest.raises(ConfigError, match="no such directory"):
        validate.main("sepsis2019", str(tmp_path / "absent"), None, progress=False)


@pytest.fixture
def packaged_risk_file_after():
    """RISK_PARAMS_FILE's choice is process-wide: leave the packaged file in place."""
    yield
    risk.use_params_file(None)


def _png_is_a_real_plot(path):
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path)  # decodes, so the file is a whole PNG, not only its signature
    assert img.shape[0] >= 400 and img.shape[1] >= 400
    # drawn on: far from a blank canvas (axes, curves, legend), with colours beside the grey
    ink = (img[..., :3] < 0.9).any(axis=-1)
    assert ink.mean() > 0.02
    colours = len(np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert colours > 50


def test_fit_writes_what_the_worker_loads_and_the_calibration_plot(
        sepsis_stays, tmp_path, monkeypatch, capsys, packaged_risk_file_after):
    """`patient-twin fit` on a site's folder of .psv files (here 60 development stays): its file
    is what the worker then runs (RISK_PARAMS_FILE), and the plot is a real PNG."""
    site = tmp_path / "site"
    site.mkdir()
    for sid in sepsis_stays.ids:
        (site / f"{sid}.psv").symlink_to(SEPSIS / f"{sid}.psv")
    out, png = tmp_path / "site-risk.json", tmp_path / "cal.png"
    assert cli.main(["fit", "sepsis2019", str(site), "--out", str(out), "--no-progress",
                     "--source", "site X 2026", "--calibration-plot", str(png)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["stays"] == 60 and res["fit_out"] == str(out)
    doc = json.loads(out.read_text())
    assert doc["version"] == risk.PARAMS_VERSION
    assert set(doc["models"]) == {"sepsis2019", risk.LIVE_MODEL}
    site_live = risk.load(risk.LIVE_MODEL, out)
    assert site_live.meta["training"].startswith("site X 2026, 60 stays (20 septic)")
    assert site_live.meta["cv_auroc"] == res["methods"]["twin_risk_live"]["auroc"]
    # the worker's loader, as a worker started with RISK_PARAMS_FILE runs it
    monkeypatch.setenv("RISK_PARAMS_FILE", str(out))
    cli.use_risk_params(config.load())
    proc = TwinProcessor()
    np.testing.assert_array_equal(proc.risk.coef, site_live.coef)
    assert proc.engine.policy.risk_raise == risk.threshold(site_live)
    assert not np.array_equal(proc.risk.coef, risk.load(risk.LIVE_MODEL, risk.PARAMS_FILE).coef)
    _png_is_a_real_plot(png)


def test_calibration_plot_of_mortality(icu_stays, tmp_path):
    res, _ = validate.validate("icu2012", icu_stays, folds=5, seed=0, progress=False)
    png = tmp_path / "icu.png"
    validate.plot_calibration(res, str(png))
    _png_is_a_real_plot(png)


def test_outputs_are_checked_before_the_run(tmp_path):
    """A typo in --out fails at once, not after the minutes of a full run."""
    with pytest.raises(ConfigError, match="parameter file .* no such directory"):
        validate.main("sepsis2019", str(tmp_path / "absent-data"), None,
                      fit_out=str(tmp_path / "nope" / "risk.json"), progress=False)
    with pytest.raises(ConfigError, match="calibration plot"):
        validate.main("sepsis2019", str(SEPSIS), None, limit=5, progress=False,
                      calibration_plot=str(tmp_path / "nope" / "cal.png"))


def test_rounded_readings_are_counted_inside_a_calibrated_interval_90_percent_of_the_time():
    """Readings recorded to whole units, from a forecast that is exactly right: the share inside
    the 90 % interval is 0.90, not more (an interval widened by half a step for the rounding
    would count 0.93 here)."""
    rng = np.random.default_rng(5)
    n = 200_000
    mean = rng.uniform(10.0, 30.0, (n, 1))  # the edges fall anywhere within a step
    sd = np.full((n, 1), 2.0)
    value = rng.normal(mean, sd)
    reading = np.round(value)
    lo, hi = validate.reading_interval(mean, mean - validate.Z90 * sd, mean + validate.Z90 * sd,
                                       np.zeros(1))
    inside = ((reading >= lo) & (reading <= hi)).mean()
    assert abs(inside - 0.90) < 0.005
    assert ((reading >= lo - 0.5) & (reading <= hi + 0.5)).mean() > 0.92
    # with measurement noise, the interval of the reading is the level's widened in quadrature
    lo2, hi2 = validate.reading_interval(mean, mean - validate.Z90 * sd,
                                         mean + validate.Z90 * sd, np.array([1.5]))
    noisy = np.round(value + rng.normal(0.0, 1.5, (n, 1)))
    assert abs(((noisy >= lo2) & (noisy <= hi2)).mean() - 0.90) < 0.005
