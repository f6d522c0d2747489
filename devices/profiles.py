"""Who the simulated patients are: age band, comorbidities, medication, resting baselines.

Everything here is a simulation assumption chosen to look like an adult remote-monitoring cohort
(mostly older, some with COPD or on beta-blockers); none of it is a clinical threshold. NEWS2
itself is scored only in `twin.news2`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.channels import INDEX, NAMES, C

AGE_BANDS: tuple[str, ...] = ("18-39", "40-64", "65-79", "80+")
# Remote monitoring cohorts skew older (virtual wards admit frail and post-acute patients).
AGE_BAND_P = np.array([0.15, 0.35, 0.32, 0.18])

# Resting adult means and between-patient SDs (population figures of healthy adults at rest).
BASE_MEAN = {"hr": 74.0, "rr": 15.0, "spo2": 97.0, "sbp": 122.0, "dbp": 76.0, "temp": 36.8}
BASE_SD = {"hr": 8.0, "rr": 1.8, "spo2": 1.0, "sbp": 11.0, "dbp": 7.0, "temp": 0.2}
# Systolic pressure rises with age (arterial stiffening): offset per age band, mm[Hg].
AGE_SBP = np.array([-8.0, 0.0, 8.0, 12.0])

P_COPD = 0.12
P_BETA_BLOCKER = 0.22
P_HYPERTENSION = 0.30

# COPD with chronic hypercapnic respiratory failure: BTS oxygen guideline (O'Driscoll et al.,
# Thorax 2017) sets a target saturation of 88-92 %, for which NEWS2 uses SpO2 scale 2 (RCP 2017).
COPD_SPO2_RANGE = (88.0, 92.0)
COPD_RR_OFFSET = 3.0
HYPERTENSION_SBP = 18.0
HYPERTENSION_DBP = 8.0
# Beta-blockade lowers resting heart rate and blunts its rise under stress: the gain multiplies
# every heart-rate response in the scenarios and the couplings.
BETA_BLOCKER_HR = -10.0
BETA_BLOCKER_GAIN = 0.5

# Cuff blood pressure on a wearable's companion cuff: every 15, 30 or 60 minutes.
CUFF_INTERVALS_S = np.array([900.0, 1800.0, 3600.0])


def vec(d: dict[str, float]) -> np.ndarray:
    """A per-channel dict as a `(C,)` array in `twin.channels` order."""
    return np.array([d[n] for n in NAMES], dtype=float)


@dataclass(frozen=True)
class Profiles:
    """N patients' fixed characteristics, struct of arrays.

    age_band: `(N,)` int index into AGE_BANDS; copd, beta_blocker, hypertension: `(N,)` bool;
    spo2_scale: `(N,)` int 1 or 2; hr_gain: `(N,)` float; baseline: `(N, C)` resting values;
    cuff_interval_s: `(N,)` float.
    """

    age_band: np.ndarray
    copd: np.ndarray
    beta_blocker: np.ndarray
    hypertension: np.ndarray
    spo2_scale: np.ndarray
    hr_gain: np.ndarray
    baseline: np.ndarray
    cuff_interval_s: np.ndarray

    def describe(self, i: int) -> dict[str, object]:
        """Patient i's profile as JSON-ready values (for the ground-truth file)."""
        comorbid = [name for name, flag in (("copd", self.copd[i]),
                                            ("hypertension", self.hypertension[i])) if flag]
        return {"age_band": AGE_BANDS[int(self.age_band[i])], "comorbidities": comorbid,
                "beta_blocker": bool(self.beta_blocker[i]),
                "spo2_scale": int(self.spo2_scale[i]),
                "cuff_interval_min": int(self.cuff_interval_s[i] // 60),
                "baseline": {n: round(float(self.baseline[i, j]), 2)
                             for j, n in enumerate(NAMES)}}


def draw(n: int, rng: np.random.Generator) -> Profiles:
    """Draw n patient profiles."""
    age = rng.choice(len(AGE_BANDS), size=n, p=AGE_BAND_P)
    copd = rng.random(n) < P_COPD
    beta = rng.random(n) < P_BETA_BLOCKER
    htn = rng.random(n) < P_HYPERTENSION
    base = vec(BASE_MEAN) + rng.standard_normal((n, C)) * vec(BASE_SD)
    base[:, INDEX["sbp"]] += AGE_SBP[age] + np.where(htn, HYPERTENSION_SBP, 0.0)
    base[:, INDEX["dbp"]] += np.where(htn, HYPERTENSION_DBP, 0.0)
    base[:, INDEX["hr"]] += np.where(beta, BETA_BLOCKER_HR, 0.0)
    base[:, INDEX["rr"]] += np.where(copd, COPD_RR_OFFSET, 0.0)
    lo, hi = COPD_SPO2_RANGE
    base[:, INDEX["spo2"]] = np.where(copd, rng.uniform(lo, hi, n),
                                      np.minimum(base[:, INDEX["spo2"]], 99.5))
    # Keep a resting pulse pressure of at least 25 mm[Hg] so the cuff never reports dbp >= sbp.
    base[:, INDEX["dbp"]] = np.minimum(base[:, INDEX["dbp"]], base[:, INDEX["sbp"]] - 25.0)
    return Profiles(
        age_band=age, copd=copd, beta_blocker=beta, hypertension=htn,
        spo2_scale=np.where(copd, 2, 1), hr_gain=np.where(beta, BETA_BLOCKER_GAIN, 1.0),
        baseline=base, cuff_interval_s=rng.choice(CUFF_INTERVALS_S, size=n))
