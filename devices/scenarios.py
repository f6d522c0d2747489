"""Deterioration scenarios: what changes, how fast, from an onset time.

Each scenario is a smooth time course over tens of minutes to hours (never a step), scaled per
patient by a severity drawn from `SEVERITY_RANGE`. The rates are simulation assumptions, written
down in docs/simulator.md; the couplings between channels (fever raises heart rate, hypoxaemia
raises breathing) are applied on top by `devices.simulator`.
"""

from __future__ import annotations

import numpy as np

from streams.errors import PatientTwinError
from twin.channels import INDEX, C

SCENARIOS: tuple[str, ...] = ("stable", "sepsis", "respiratory", "bleeding", "af", "fever")
STABLE, SEPSIS, RESPIRATORY, BLEEDING, AF, FEVER = range(len(SCENARIOS))
DEFAULT_MIX = "stable=0.6,sepsis=0.1,respiratory=0.1,bleeding=0.05,af=0.05,fever=0.1"
SEVERITY_RANGE = (0.7, 1.3)

# Time to full development, hours.
SEPSIS_H = 3.0
RESPIRATORY_H = 2.0
AF_H = 5.0 / 60.0  # paroxysmal AF: rate rises over minutes
FEVER_H = 1.5
# Blood loss as a fraction of blood volume per hour, capped: ATLS haemorrhage classes (American
# College of Surgeons, ATLS 10th ed. 2018): up to 15 % little change; 15-30 % tachycardia with
# systolic pressure maintained; beyond 30 % systolic pressure falls. Heart rate rises first.
BLEED_PER_H = 0.15
BLEED_MAX = 0.40


class ScenarioError(PatientTwinError):
    """A --scenarios mix that cannot be parsed."""


def parse_mix(text: str) -> np.ndarray:
    """`"stable=0.6,sepsis=0.4"` (or one name, meaning all patients) -> `(len(SCENARIOS),)`
    probabilities summing to 1. Raises ScenarioError with what to fix."""
    weights = np.zeros(len(SCENARIOS))
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ScenarioError("--scenarios is empty (expected e.g. stable=0.7,sepsis=0.3)")
    for part in parts:
        name, _, w = part.partition("=")
        name = name.strip()
        if name not in SCENARIOS:
            raise ScenarioError(f"--scenarios: unknown scenario {name!r} "
                                f"(known: {', '.join(SCENARIOS)})")
        try:
            value = float(w) if w else 1.0
        except ValueError:
            raise ScenarioError(f"--scenarios: weight {w!r} of {name} is not a number") from None
        if not value >= 0 or not np.isfinite(value):
            raise ScenarioError(f"--scenarios: weight of {name} must be >= 0, got {w}")
        weights[SCENARIOS.index(name)] += value
    if weights.sum() <= 0:
        raise ScenarioError("--scenarios: the weights sum to 0")
    return weights / weights.sum()


def _ramp(h: np.ndarray, hours: float) -> np.ndarray:
    """0 before onset, rising smoothly (half a cosine) to 1 after `hours`."""
    x = np.clip(h / hours, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * x)


def effects(scenario: np.ndarray, h: np.ndarray, severity: np.ndarray,
            hr_gain: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Intrinsic change of each channel caused by the scenario.

    scenario: `(N,)` int; h: `(N,)` hours since onset (negative before); severity, hr_gain: `(N,)`;
    baseline: `(N, C)`. Returns `(N, C)` deltas to add to the resting signal.
    """
    N = scenario.shape[0]
    d = np.zeros((N, C))
    hr, rr, spo2, sbp, dbp, temp = (INDEX[k] for k in ("hr", "rr", "spo2", "sbp", "dbp", "temp"))
    s = severity

    r = np.where(scenario == SEPSIS, _ramp(h, SEPSIS_H), 0.0) * s
    # Sepsis: fever, tachypnoea and tachycardia first; pressure falls late (r**2).
    d[:, temp] += 1.8 * r
    d[:, hr] += 22.0 * r * hr_gain
    d[:, rr] += 9.0 * r
    d[:, sbp] -= 38.0 * r**2
    d[:, dbp] -= 20.0 * r**2
    d[:, spo2] -= 3.0 * r

    r = np.where(scenario == RESPIRATORY, _ramp(h, RESPIRATORY_H), 0.0) * s
    d[:, spo2] -= 8.0 * r
    d[:, rr] += 8.0 * r

    loss = np.where(scenario == BLEEDING,
                    np.clip(h * BLEED_PER_H * s, 0.0, BLEED_MAX), 0.0)
    d[:, hr] += 140.0 * loss * hr_gain
    d[:, rr] += 18.0 * loss
    d[:, sbp] -= 450.0 * np.maximum(loss - 0.25, 0.0)
    # Vasoconstriction holds diastolic pressure (narrow pulse pressure) before it falls too.
    d[:, dbp] += 8.0 * np.minimum(loss, 0.25) / 0.25 - 300.0 * np.maximum(loss - 0.25, 0.0)

    r = np.where(scenario == AF, _ramp(h, AF_H), 0.0)
    # AF with rapid ventricular response: rate 110-150 /min whatever the resting rate.
    target = 110.0 + 40.0 * (s - SEVERITY_RANGE[0]) / (SEVERITY_RANGE[1] - SEVERITY_RANGE[0])
    d[:, hr] += r * np.maximum(target - baseline[:, hr], 0.0)
    d[:, sbp] -= 10.0 * r  # shorter filling time lowers stroke volume

    r = np.where(scenario == FEVER, _ramp(h, FEVER_H), 0.0) * s
    d[:, temp] += 1.6 * r
    return d
