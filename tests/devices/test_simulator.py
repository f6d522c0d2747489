"""The simulated ward: determinism, sample rates, device faults, scenario signatures, truth."""

from __future__ import annotations

import dataclasses

import msgspec
import numpy as np
import pytest

from devices import malformed, scenarios, truth
from devices.faults import DeviceEffects
from devices.run import Ward
from devices.simulator import Cohort
from streams import messages
from streams.errors import InvalidMessage
from twin.channels import INDEX, NAMES

START = 1.8e9  # a fixed epoch so runs are comparable


class ListOutput:
    def __init__(self) -> None:
        self.items: list[tuple[bytes, bytes]] = []

    def send(self, key: bytes, value: bytes) -> None:
        self.items.append((key, value))

    def close(self) -> None:
        pass


def run_ward(patients: int, seconds: float, *, seed: int = 7, rate: float = 1.0,
             mix: str = scenarios.DEFAULT_MIX, effects: DeviceEffects | None = None,
             bad_fraction: float = 0.0, batch: int = 1) -> tuple[Ward, ListOutput]:
    ward = Ward(patients, seed=seed, rate=rate, mix=mix, horizon_s=max(seconds, 3600.0),
                start=START, effects=effects or DeviceEffects(), bad_fraction=bad_fraction,
                batch=batch)
    out = ListOutput()
    while ward.t < seconds:
        ward.step(out)
    ward.finish(out)
    return ward, out


def test_same_seed_same_messages_other_seed_different():
    _, a = run_ward(10, 300, seed=3, bad_fraction=0.05)
    _, b = run_ward(10, 300, seed=3, bad_fraction=0.05)
    _, c = run_ward(10, 300, seed=4, bad_fraction=0.05)
    assert a.items == b.items
    assert a.items != c.items
    ta = truth.compute(Cohort(10, seed=3, start=START), 600)
    tb = truth.compute(Cohort(10, seed=3, start=START), 600)
    assert ta == tb


def test_per_channel_sample_rates_match_the_configuration():
    seconds = 3600
    ward, out = run_ward(20, seconds, effects=DeviceEffects.clean(), rate=1.0)
    counts = {ch: np.zeros(20) for ch in NAMES}
    for key, value in out.items:
        (r,) = messages.decode_readings(value)
        assert key.decode() == r.patient_id
        i = int(r.patient_id[1:]) - 1
        for ch in r.values:
            counts[ch][i] += 1
    np.testing.assert_array_equal(counts["hr"], seconds)  # every second
    np.testing.assert_array_equal(counts["spo2"], seconds)
    np.testing.assert_array_equal(counts["rr"], seconds // 4)  # every 4 s
    np.testing.assert_array_equal(counts["temp"], seconds // 300)  # every 5 min
    cuff = ward.cohort.profiles.cuff_interval_s
    np.testing.assert_array_equal(counts["sbp"], np.ceil(seconds / cuff))  # one at admission
    np.testing.assert_array_equal(counts["dbp"], counts["sbp"])


def test_a_faster_rate_samples_the_fast_channels_faster():
    ward, out = run_ward(3, 120, effects=DeviceEffects.clean(), rate=2.0)
    assert ward.stats.samples["hr"] == 3 * 240
    assert ward.stats.samples["rr"] == 3 * 60


def test_device_fault_fractions_are_within_tolerance_of_the_configuration():
    eff = dataclasses.replace(DeviceEffects(), artifact_p=0.01, dropout_p=0.02,
                              duplicate_p=0.015, late_p=0.01, sensor_off_per_h=2.0)
    ward, out = run_ward(30, 1800, effects=eff)
    st = ward.stats

    def within(observed: int, n: int, p: float) -> None:
        sd = np.sqrt(n * p * (1 - p))
        assert abs(observed - n * p) < 5 * sd + 1, (observed, n, p)

    msgs = st.readings
    within(st.lost, msgs, eff.dropout_p)
    within(st.duplicates, msgs - st.lost, eff.duplicate_p * (1 - eff.dropout_p) / (
        1 - eff.dropout_p))
    within(st.late, msgs - st.lost, eff.late_p)
    # What was handed out: each delivered message once, duplicates twice, nothing else.
    assert st.messages == msgs - st.lost + st.duplicates
    assert len(out.items) == st.messages
    # Sensor-off episodes: 2 per hour per wearable channel, 10-120 s each -> zero fraction.
    fast = st.samples["hr"] + st.samples["spo2"] + st.samples["rr"]
    expected_zero = 2.0 * np.mean(eff.sensor_off_s) / 3600.0
    zero_frac = st.zeros / (fast + st.samples["temp"])
    assert 0.5 * expected_zero < zero_frac < 1.5 * expected_zero
    # Artifacts: p at rest, 5p in activity bouts.
    assert 0.8 * eff.artifact_p < st.artifacts / fast < eff.artifact_p * 5


def test_artifacts_and_zeros_are_in_the_values_and_labelled():
    eff = dataclasses.replace(DeviceEffects.clean(), artifact_p=0.05, sensor_off_per_h=20.0)
    c = Cohort(50, seed=2, mix="stable", start=START, effects=eff)
    hr = INDEX["hr"]
    spiked = zeros = 0
    for t in range(600):
        tick = c.tick(float(t))
        a = tick.artifact[:, hr]
        dev = np.abs(tick.values[:, hr] - tick.truth[:, hr])
        # spikes are 15-80 /min; noise is 2 /min, so 3.5 SD below the smallest spike
        assert (dev[a] >= 8).all()
        z = tick.zero[:, hr]
        assert (tick.values[z, hr] == 0).all()
        assert (tick.values[~z & ~a & tick.due[:, hr], hr] > 15).all()
        spiked += a.sum()
        zeros += z.sum()
    assert spiked > 100 and zeros > 100


def _signature(scenario: str, hours: float = 3.0, n: int = 60) -> tuple[np.ndarray, Cohort]:
    c = Cohort(n, seed=11, mix=scenario, horizon_s=4 * 3600.0, start=START)
    before = np.stack([c.true_values(float(o) - 60)[i] for i, o in enumerate(c.onset_s)])
    after = np.stack([c.true_values(float(o) + hours * 3600)[i] for i, o in enumerate(c.onset_s)])
    return after - before, c


def test_each_scenario_leaves_its_signature_in_the_true_signal():
    hr, rr, spo2, sbp, temp = (INDEX[k] for k in ("hr", "rr", "spo2", "sbp", "temp"))
    d, _ = _signature("sepsis")
    med = np.median(d, axis=0)
    assert med[hr] > 20 and med[rr] > 6 and med[temp] > 1.2 and med[sbp] < -20
    d, _ = _signature("respiratory")
    med = np.median(d, axis=0)
    assert med[spo2] < -5 and med[rr] > 8 and abs(med[temp]) < 0.5
    d, _ = _signature("fever")
    med = np.median(d, axis=0)
    assert med[temp] > 1.0 and med[hr] > 6 and abs(med[sbp]) < 10
    d, c = _signature("af", hours=0.25)
    after = np.stack([c.true_values(float(o) + 900)[i] for i, o in enumerate(c.onset_s)])
    assert (after[:, hr] >= 105).mean() > 0.9
    c = Cohort(60, seed=11, mix="stable", start=START)
    a, b = c.true_values(0.0), c.true_values(3 * 3600.0)
    # no scenario: only circadian, drift and activity (<= 25 /min for a full bout)
    assert np.median(np.abs(b - a)[:, hr]) < 10


def test_bleeding_raises_heart_rate_before_pressure_falls():
    c = Cohort(40, seed=5, mix="bleeding", horizon_s=4 * 3600.0, start=START)
    hr, sbp = INDEX["hr"], INDEX["sbp"]
    base = np.stack([c.true_values(float(o) - 60)[i] for i, o in enumerate(c.onset_s)])
    t_hr = np.full(40, np.inf)
    t_sbp = np.full(40, np.inf)
    for m in range(0, 4 * 60, 2):
        v = np.stack([c.true_values(float(o) + m * 60)[i] for i, o in enumerate(c.onset_s)])
        t_hr = np.where((v[:, hr] - base[:, hr] > 15) & np.isinf(t_hr), m, t_hr)
        t_sbp = np.where((base[:, sbp] - v[:, sbp] > 15) & np.isinf(t_sbp), m, t_sbp)
    assert np.isfinite(t_sbp).all()
    assert (t_hr < t_sbp).all()


def test_profiles_copd_uses_scale_2_and_beta_blockers_blunt_heart_rate():
    c = Cohort(2000, seed=1, mix="sepsis", horizon_s=4 * 3600.0, start=START)
    p = c.profiles
    assert 0.08 < p.copd.mean() < 0.16
    assert (p.spo2_scale[p.copd] == 2).all() and (p.spo2_scale[~p.copd] == 1).all()
    sp = p.baseline[:, INDEX["spo2"]]
    assert ((sp[p.copd] >= 88) & (sp[p.copd] <= 92)).all()
    d, c = _signature("sepsis", n=2000)
    rise = d[:, INDEX["hr"]]
    blocked = c.profiles.beta_blocker
    assert np.median(rise[blocked]) < 0.7 * np.median(rise[~blocked])


def test_truth_crossings_are_where_the_true_score_first_rises():
    c = Cohort(40, seed=9, mix="sepsis=0.5,respiratory=0.5", horizon_s=3 * 3600.0, start=START)
    tr = truth.compute(c, 5 * 3600.0)
    assert sum(t.first_news2_5 is not None for t in tr) > 30
    col = {"rr": 0, "spo2": 1, "sbp": 3, "hr": 4, "temp": 6}
    checked = 0
    for i, t in enumerate(tr):
        assert t.onset is not None and t.scenario in ("sepsis", "respiratory")
        for ch, levels in t.crossings.items():
            for level, when in levels.items():
                s = when.timestamp() - START
                _, now = truth.score_truth(c, c.true_values(s))
                _, prev = truth.score_truth(c, c.true_values(s - truth.GRID_S))
                assert now[i, col[ch]] >= int(level) > prev[i, col[ch]]
                checked += 1
        if t.first_news2_5 is not None:
            s = t.first_news2_5.timestamp() - START
            total, _ = truth.score_truth(c, c.true_values(s))
            assert total[i] >= 5
            assert s >= t.onset.timestamp() - START  # deterioration follows its onset
    assert checked > 50


def test_scenario_mix_is_parsed_or_refused_with_the_reason():
    p = scenarios.parse_mix("stable=3,sepsis=1")
    assert p[scenarios.STABLE] == 0.75 and p[scenarios.SEPSIS] == 0.25
    assert scenarios.parse_mix("af")[scenarios.AF] == 1.0
    for bad, word in [("flu=1", "unknown scenario 'flu'"), ("sepsis=x", "not a number"),
                      ("sepsis=-1", ">= 0"), ("stable=0", "sum to 0"), ("", "empty")]:
        with pytest.raises(scenarios.ScenarioError, match=word):
            scenarios.parse_mix(bad)


@pytest.mark.parametrize("kind", list(malformed.KINDS))
def test_every_malformed_kind_is_rejected_as_that_kind(kind):
    rng = np.random.default_rng(0)
    for _ in range(20):
        body = malformed.make(kind, rng, patient_id="P00001", device_id="D1", seq=4,
                              ts="2026-11-27T00:00:00Z")
        assert b"\n" not in body
        with pytest.raises(InvalidMessage) as exc:
            messages.decode_readings(body)
        assert exc.value.kind == kind, str(exc.value)


def test_bad_fraction_mixes_in_every_kind_and_counts_each():
    ward, out = run_ward(20, 300, bad_fraction=0.1)
    seen: dict[str, int] = {}
    good = 0
    for _, value in out.items:
        try:
            good += len(messages.decode_readings(value))
        except InvalidMessage as exc:
            seen[exc.kind] = seen.get(exc.kind, 0) + 1
    assert seen == dict(ward.stats.malformed)
    assert set(seen) == set(malformed.KINDS)
    total = len(out.items)
    assert 0.08 < sum(seen.values()) / total < 0.12
    assert good == ward.stats.delivered_readings + ward.stats.duplicates


def test_gateway_batches_carry_k_readings_of_one_device_in_order():
    ward, out = run_ward(5, 60, effects=DeviceEffects.clean(), batch=5)
    assert len(out.items) == 5 * 12
    for key, value in out.items:
        rs = messages.decode_readings(value)
        assert len(rs) == 5 and {r.patient_id for r in rs} == {key.decode()}
        assert [r.seq for r in rs] == list(range(rs[0].seq, rs[0].seq + 5))
        assert msgspec.json.decode(value)[0]["ts"] < msgspec.json.decode(value)[-1]["ts"]


def test_late_messages_arrive_out_of_order_and_duplicates_twice():
    eff = dataclasses.replace(DeviceEffects.clean(), late_p=0.05, duplicate_p=0.05)
    ward, out = run_ward(10, 300, effects=eff)
    by_device: dict[str, list[int]] = {}
    for _, value in out.items:
        (r,) = messages.decode_readings(value)
        by_device.setdefault(r.device_id, []).append(r.seq)
    out_of_order = sum(sum(1 for a, b in zip(s, s[1:], strict=False) if b < a)
                       for s in by_device.values())
    doubled = sum(len(s) - len(set(s)) for s in by_device.values())
    assert out_of_order >= ward.stats.late * 0.8 and ward.stats.late > 50
    assert doubled == ward.stats.duplicates
    # nothing lost: every sequence number of every device arrives
    for s in by_device.values():
        assert sorted(set(s)) == list(range(1, max(s) + 1))


def test_batteries_drain_warn_low_and_go_silent():
    eff = dataclasses.replace(DeviceEffects.clean(), battery_start=(0.25, 0.3),
                              battery_drain_per_h=(0.2, 0.4))
    ward, out = run_ward(20, 3 * 3600, effects=eff)
    d = ward.delivery
    assert (~np.isnan(d.low_at)).all() and (~np.isnan(d.empty_at)).all()
    assert (d.low_at < d.empty_at).all()
    last = {}
    for _, value in out.items:
        (r,) = messages.decode_readings(value)
        last[r.device_id] = max(last.get(r.device_id, 0), r.t)
    for i, dev in enumerate(ward.cohort.device_ids):
        assert last[dev] <= START + d.empty_at[i] + 5  # nothing after the battery died
    tr = truth.compute(ward.cohort, ward.t, ward.delivery, grid_s=600)
    assert all(t.low_battery is not None and t.battery_empty is not None for t in tr)
    assert ward.stats.low_battery == 20 and ward.stats.dead_batteries == 20


def test_pace_compresses_the_scenarios_and_nothing_else():
    """--pace 40 (the demo's): onsets 40 times sooner, a deterioration's course 40 times
    faster; a stable patient's signal is exactly the same."""
    slow = Cohort(40, seed=9, start=START)
    fast = Cohort(40, seed=9, start=START, pace=40.0)
    stable = slow.scenario == scenarios.STABLE
    assert stable.any() and (slow.scenario == scenarios.SEPSIS).any()
    np.testing.assert_allclose(fast.onset_s[~stable] * 40.0, slow.onset_s[~stable], rtol=1e-12)
    for t in (0.0, 600.0, 5000.0):
        np.testing.assert_array_equal(fast.true_values(t)[stable], slow.true_values(t)[stable])
    hr = INDEX["hr"]
    sick = np.nonzero(slow.scenario == scenarios.SEPSIS)[0]

    def rise(c: Cohort, after: float) -> np.ndarray:
        return np.array([c.true_values(c.onset_s[i] + after)[i, hr]
                         - c.true_values(c.onset_s[i] - 1.0)[i, hr] for i in sick])

    # a full sepsis course (3 h) at pace 1, and in 3 h / 40 at pace 40: the same rise, give or
    # take the real-time drift and activity that pace leaves alone
    full, quick = rise(slow, scenarios.SEPSIS_H * 3600), rise(fast, scenarios.SEPSIS_H * 90)
    assert np.median(full) > 15 and abs(np.median(quick) - np.median(full)) < 6


def test_a_start_time_gives_the_same_messages_whatever_the_wall_clock(tmp_path):
    """`simulate --start TIME`: a seed and a start give byte-identical messages and truth."""
    import subprocess
    import sys
    import time

    def run(name: str) -> tuple[bytes, bytes]:
        out = tmp_path / f"{name}.jsonl"
        subprocess.run([sys.executable, "-m", "streams.cli", "simulate", "--patients", "6",
                        "--duration", "120", "--speed", "1000", "--seed", "4", "--pace", "40",
                        "--start", "2026-11-29T08:00:00+00:00", "--to", str(out),
                        "--no-progress"], check=True, capture_output=True, timeout=120)
        return out.read_bytes(), (tmp_path / f"{name}.truth.jsonl").read_bytes()

    first = run("a")
    time.sleep(1.1)
    second = run("b")
    assert first == second and len(first[0].splitlines()) > 6 * 100
    assert b'"ts":"2026-11-29T08:0' in first[0]
