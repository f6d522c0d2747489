"""A ward of simulated wearables: one device per patient, vectorised over the cohort.

Deterministic for a seed. Each patient has a baseline, slow physiological drift and per-channel
measurement noise; a share of the cohort deteriorates slowly so that alerts have something to see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.channels import INDEX, NAMES, C

# Seconds between samples per channel, like real devices: HR and SpO2 about every second, RR every
# few seconds, temperature every few minutes, cuff blood pressure every 15 minutes.
SAMPLE_INTERVAL_S = {"hr": 1.0, "spo2": 1.0, "rr": 4.0, "temp": 300.0, "sbp": 900.0,
                     "dbp": 900.0}
_BASE_MEAN = {"hr": 76, "rr": 15, "spo2": 97, "sbp": 124, "dbp": 77, "temp": 36.9}
_BASE_SD = {"hr": 9, "rr": 2, "spo2": 1.2, "sbp": 12, "dbp": 8, "temp": 0.25}
_NOISE_SD = {"hr": 2.0, "rr": 1.0, "spo2": 0.8, "sbp": 5.0, "dbp": 4.0, "temp": 0.1}
# Drift per hour of a deteriorating patient (sepsis-like: HR and RR up, SBP and SpO2 down, fever).
_DETERIORATION_PER_H = {"hr": 12.0, "rr": 4.0, "spo2": -2.0, "sbp": -10.0, "dbp": -5.0,
                        "temp": 0.6}


def _vec(d: dict[str, float]) -> np.ndarray:
    return np.array([d[n] for n in NAMES], dtype=float)


@dataclass
class Cohort:
    """N simulated patients. Arrays are `(N, C)` in the order of `twin.channels.NAMES`."""

    n: int
    seed: int = 0
    deteriorating_fraction: float = 0.2

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.patient_ids = [f"P{i + 1:05d}" for i in range(self.n)]
        self.device_ids = [f"WR-{self.seed:04d}-{i + 1:05d}" for i in range(self.n)]
        self.baseline = _vec(_BASE_MEAN) + self.rng.standard_normal((self.n, C)) * _vec(_BASE_SD)
        self.baseline[:, INDEX["spo2"]] = np.minimum(self.baseline[:, INDEX["spo2"]], 99.5)
        self.deteriorating = self.rng.random(self.n) < self.deteriorating_fraction
        self.onset_s = self.rng.uniform(0, 600, self.n)
        self.drift = np.zeros((self.n, C))
        self.seq = np.zeros(self.n, dtype=np.int64)
        self.battery = self.rng.uniform(0.6, 1.0, self.n)
        interval = _vec(SAMPLE_INTERVAL_S)
        # Devices are not synchronised: each channel of each patient starts at a random phase.
        self.next_due = self.rng.uniform(0, 1, (self.n, C)) * np.minimum(interval, 5.0)
        self.interval = interval

    def true_values(self, elapsed_s: float) -> np.ndarray:
        """Noise-free signal `(N, C)` at `elapsed_s` seconds into the simulation."""
        hours = np.maximum(elapsed_s - self.onset_s, 0.0) / 3600.0
        trend = np.where(self.deteriorating[:, None], hours[:, None] * _vec(_DETERIORATION_PER_H),
                         0.0)
        v = self.baseline + self.drift + trend
        v[:, INDEX["spo2"]] = np.clip(v[:, INDEX["spo2"]], 50, 100)
        return v

    def tick(self, elapsed_s: float, dt_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Advance by `dt_s`; return `(values (N, C) with NaN where no sample is due, due (N,)
        bool)` for the patients whose device sends a reading now."""
        self.drift += self.rng.standard_normal((self.n, C)) * _vec(_NOISE_SD) * 0.02 * np.sqrt(
            dt_s)
        due_ch = self.next_due <= elapsed_s
        self.next_due = np.where(due_ch, self.next_due + self.interval, self.next_due)
        measured = self.true_values(elapsed_s) + self.rng.standard_normal((self.n, C)) * _vec(
            _NOISE_SD)
        measured[:, INDEX["spo2"]] = np.clip(np.round(measured[:, INDEX["spo2"]]), 0, 100)
        measured = np.round(measured, 1)
        values = np.where(due_ch, measured, np.nan)
        due = due_ch.any(axis=1)
        self.seq += due
        self.battery = np.maximum(self.battery - 1e-6 * dt_s, 0.0)
        return values, due
