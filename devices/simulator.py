"""A ward of simulated patients and their wearables, vectorised over the cohort.

The true (noise-free) signal of every patient is a pure function of time: resting baseline,
circadian rhythm, slow individual variation, activity bouts, the patient's scenario, and the
couplings between channels. That is what makes the ground truth exact: `devices.truth` evaluates
the same function on a grid. Measurement adds noise, device resolution, motion artifacts and
sensor-off zeros (`devices.faults`). Deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from devices import profiles, scenarios
from devices.faults import DeviceEffects, SensorState, corrupt
from twin.channels import INDEX, C

# Seconds between samples of each channel, like real devices: HR and SpO2 every tick (1 s at the
# default rate), RR every 4 ticks, temperature every 5 minutes, cuff pressure every 15-60 minutes
# (per patient, see devices.profiles.CUFF_INTERVALS_S).
FAST_TICKS = {"hr": 1.0, "spo2": 1.0, "rr": 4.0}
TEMP_INTERVAL_S = 300.0
# Measurement noise SD per channel (device accuracy at rest), product units.
NOISE_SD = profiles.vec({"hr": 2.0, "rr": 1.5, "spo2": 1.0, "sbp": 6.0, "dbp": 5.0,
                         "temp": 0.1})
AF_HR_NOISE_SD = 10.0  # an irregularly irregular rhythm scatters the beat-to-beat rate
# Resolution the devices report at: whole numbers except temperature (0.1 degC).
RESOLUTION = profiles.vec({"hr": 1.0, "rr": 1.0, "spo2": 1.0, "sbp": 1.0, "dbp": 1.0,
                           "temp": 0.1})

# Circadian rhythm: amplitude per channel, peak in the late afternoon (17:00 UTC here), trough
# at night; healthy adults vary about +-0.3 degC and a few beats per minute around the day.
CIRCADIAN_AMP = profiles.vec({"hr": 4.0, "rr": 0.8, "spo2": 0.0, "sbp": 5.0, "dbp": 3.0,
                              "temp": 0.3})
CIRCADIAN_PEAK_H = 17.0
# Slow individual variation: three sinusoids per patient and channel, periods 20 min to 6 h.
DRIFT_AMP = profiles.vec({"hr": 2.0, "rr": 0.6, "spo2": 0.3, "sbp": 3.0, "dbp": 2.0,
                          "temp": 0.05})
# Activity bouts (walking, washing): about one every 90 minutes, 2-15 minutes long, ramping over
# one minute; heart rate, breathing and pressure rise with intensity.
BOUT_MEAN_GAP_S = 90 * 60.0
BOUT_DURATION_S = (120.0, 900.0)
BOUT_RAMP_S = 60.0
ACTIVITY = profiles.vec({"hr": 25.0, "rr": 5.0, "spo2": 0.0, "sbp": 12.0, "dbp": 4.0,
                         "temp": 0.0})
# Couplings (simulation assumptions): heart rate rises about 8.5 /min per degC of fever
# (Karjalainen & Viitasalo, Arch Intern Med 1986); falling saturation drives breathing and heart
# rate up (chemoreflex), linear in the fall below the patient's own baseline.
FEVER_HR_PER_C = 8.5
HYPOXIA_RR_PER_PCT = 0.7
HYPOXIA_HR_PER_PCT = 0.8


@dataclass(frozen=True)
class Tick:
    """One tick of the cohort. values: `(N, C)` as the devices report them, NaN where no sample
    is due; truth: `(N, C)` the noise-free signal; due, artifact, zero: `(N, C)` bool (zero: the
    sensor is off and the device reports 0); active: `(N,)` bool, in an activity bout."""

    t: float
    values: np.ndarray
    truth: np.ndarray
    due: np.ndarray
    artifact: np.ndarray
    zero: np.ndarray
    active: np.ndarray


def device_ids(n: int, seed: int) -> list[str]:
    """The wearables of a simulated cohort of `n` (the same for a seed, so credentials issued
    for them serve every run with that seed)."""
    return [f"WR-{seed:04d}-{i + 1:05d}" for i in range(n)]


class Cohort:
    """N simulated patients. Arrays are `(N, C)` in the order of `twin.channels.NAMES`.

    t is simulated seconds since the start (`start` epoch seconds). `horizon_s` bounds onset times
    (scenario onsets fall in 10-50 % of it) and the activity schedule.

    `pace` > 1 compresses the scenarios' clinical time: onsets come `pace` times sooner and each
    deterioration develops `pace` times faster (a sepsis of 3 h in 3 h / pace), while everything
    else (noise, activity, circadian rhythm, device faults) keeps real time. It is for the demo
    and training (something happens within minutes); evaluation and validation use pace 1.
    """

    def __init__(self, n: int, *, seed: int = 0, mix: str = scenarios.DEFAULT_MIX,
                 horizon_s: float = 7200.0, start: float = 0.0, rate: float = 1.0,
                 effects: DeviceEffects | None = None, pace: float = 1.0) -> None:
        self.n = n
        self.pace = pace
        self.seed = seed
        self.start = start
        self.horizon_s = horizon_s
        self.effects = effects or DeviceEffects()
        rng = np.random.default_rng(seed)
        self.patient_ids = [f"P{i + 1:05d}" for i in range(n)]
        self.device_ids = device_ids(n, seed)
        self.profiles = profiles.draw(n, rng)
        p = scenarios.parse_mix(mix)
        self.scenario = rng.choice(len(scenarios.SCENARIOS), size=n, p=p)
        self.onset_s = np.where(self.scenario == scenarios.STABLE, np.inf,
                                rng.uniform(0.1, 0.5, n) * horizon_s / pace)
        self.severity = rng.uniform(*scenarios.SEVERITY_RANGE, n)
        self._drift_period = rng.uniform(1200.0, 6 * 3600.0, (n, C, 3))
        self._drift_phase = rng.uniform(0, 2 * np.pi, (n, C, 3))
        k = int(np.ceil(max(horizon_s, 3600.0) / BOUT_MEAN_GAP_S * 2)) + 4
        gaps = rng.exponential(BOUT_MEAN_GAP_S, (n, k))
        self._bout_dur = rng.uniform(*BOUT_DURATION_S, (n, k))
        self._bout_start = np.cumsum(gaps, axis=1) + np.concatenate(
            [np.zeros((n, 1)), np.cumsum(self._bout_dur, axis=1)[:, :-1]], axis=1)
        self._bout_intensity = rng.uniform(0.3, 1.0, (n, k))
        # Schedule: fast channels every few ticks; temperature and the cuff on their own clocks,
        # the first temperature and cuff reading within the first minute (taken at admission).
        tick = 1.0 / rate
        self.tick_s = tick
        self.interval = np.empty((n, C))
        for ch, ticks in FAST_TICKS.items():
            self.interval[:, INDEX[ch]] = ticks * tick
        self.interval[:, INDEX["temp"]] = TEMP_INTERVAL_S
        self.interval[:, INDEX["sbp"]] = self.profiles.cuff_interval_s
        self.interval[:, INDEX["dbp"]] = self.profiles.cuff_interval_s
        self.next_due = rng.uniform(0, 1, (n, C)) * np.minimum(self.interval, 60.0)
        for ch, ticks in FAST_TICKS.items():  # fast channels sample on the device's own ticks
            self.next_due[:, INDEX[ch]] = np.floor(rng.uniform(0, ticks, n)) * tick
        self.next_due[:, INDEX["dbp"]] = self.next_due[:, INDEX["sbp"]]  # one cuff inflation
        self.sensors = SensorState.new(n)
        self.rng = rng

    def activity(self, t: float) -> np.ndarray:
        """Activity intensity `(N,)` in [0, 1] at simulated time t."""
        rise = np.clip((t - self._bout_start) / BOUT_RAMP_S, 0.0, 1.0)
        fall = np.clip((self._bout_start + self._bout_dur - t) / BOUT_RAMP_S, 0.0, 1.0)
        return (self._bout_intensity * np.minimum(rise, fall)).max(axis=1)

    def true_values(self, t: float) -> np.ndarray:
        """Noise-free signal `(N, C)` at simulated time t (seconds since the start)."""
        prof = self.profiles
        base = prof.baseline
        hour = ((self.start + t) / 3600.0) % 24.0
        circ = np.cos(2 * np.pi * (hour - CIRCADIAN_PEAK_H) / 24.0) * CIRCADIAN_AMP
        drift = (np.sin(2 * np.pi * t / self._drift_period + self._drift_phase).sum(axis=2)
                 / np.sqrt(3.0)) * DRIFT_AMP
        act = self.activity(t)[:, None] * ACTIVITY
        act[:, INDEX["hr"]] *= prof.hr_gain
        h = (t - self.onset_s) * self.pace / 3600.0
        scen = scenarios.effects(self.scenario, h, self.severity, prof.hr_gain, base)
        v = base + circ + drift + act + scen
        hr, rr, spo2, temp = INDEX["hr"], INDEX["rr"], INDEX["spo2"], INDEX["temp"]
        fever = np.maximum(v[:, temp] - base[:, temp] - circ[temp], 0.0)
        hypoxia = np.maximum(base[:, spo2] - v[:, spo2], 0.0)
        v[:, hr] += (FEVER_HR_PER_C * fever + HYPOXIA_HR_PER_PCT * hypoxia) * prof.hr_gain
        v[:, rr] += HYPOXIA_RR_PER_PCT * hypoxia
        v[:, spo2] = np.minimum(v[:, spo2], 100.0)
        return v

    def tick(self, t: float) -> Tick:
        """Sample every channel that is due at simulated time t."""
        due = self.next_due <= t
        self.next_due = np.where(due, self.next_due + self.interval, self.next_due)
        truth = self.true_values(t)
        noise = self.rng.standard_normal((self.n, C)) * NOISE_SD
        in_af = (self.scenario == scenarios.AF) & (t >= self.onset_s)
        noise[:, INDEX["hr"]] *= np.where(in_af, AF_HR_NOISE_SD / NOISE_SD[INDEX["hr"]], 1.0)
        measured = np.round((truth + noise) / RESOLUTION) * RESOLUTION
        measured[:, INDEX["spo2"]] = np.minimum(measured[:, INDEX["spo2"]], 100.0)
        active = self.activity(t) > 0.0
        measured, artifact, zero = corrupt(measured, due, active, t, self.tick_s, self.sensors,
                                           self.effects, self.rng)
        np.maximum(measured, 0.0, out=measured)
        values = np.where(due, measured, np.nan)
        return Tick(t, values, truth, due, artifact & due, zero & due, active)
