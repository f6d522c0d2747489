"""What real wearables do to a signal and to its delivery, vectorised over devices.

Value effects (`corrupt`): motion artifacts (spikes, more likely while the patient moves) and
sensor-off episodes during which the device reports zeros, as bedside monitors do. Delivery
effects (`Delivery`): lost messages, duplicates, late and out-of-order delivery, a per-device clock
skew, battery drain with a low-battery event and a device that goes silent when empty. Every rate
is a field of `DeviceEffects`, documented in docs/simulator.md; tests check the realised rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from twin.channels import INDEX, C

_WEARABLE = np.zeros(C, dtype=bool)  # sensors worn continuously (not the cuff)
for _ch in ("hr", "spo2", "rr", "temp"):
    _WEARABLE[INDEX[_ch]] = True
_MOTION = np.zeros(C, dtype=bool)  # optical and impedance channels that motion corrupts
for _ch in ("hr", "spo2", "rr"):
    _MOTION[INDEX[_ch]] = True


@dataclass(frozen=True)
class DeviceEffects:
    """Rates of device faults. Probabilities are per sample (artifacts) or per message."""

    artifact_p: float = 0.004  # per HR/SpO2/RR sample at rest
    activity_artifact_factor: float = 5.0  # ... times this while in an activity bout
    sensor_off_per_h: float = 0.5  # sensor-off episodes per wearable channel per hour
    sensor_off_s: tuple[float, float] = (10.0, 120.0)
    dropout_p: float = 0.003  # message lost in transit (its sequence number is skipped)
    duplicate_p: float = 0.003  # message delivered twice (gateway retry)
    late_p: float = 0.003  # message held back by the gateway and delivered late
    late_delay_s: tuple[float, float] = (2.0, 30.0)
    clock_skew_sd_s: float = 1.5  # per-device constant offset of the timestamps
    battery_start: tuple[float, float] = (0.3, 1.0)
    battery_drain_per_h: tuple[float, float] = (0.01, 0.05)  # a charge lasts about 1-4 days
    low_battery: float = 0.2  # the device's own low-battery warning level (state of charge)
    spike: dict[str, tuple[float, float]] = field(default_factory=lambda: {
        "hr": (30.0, 80.0), "spo2": (-30.0, -10.0), "rr": (10.0, 30.0)})

    @classmethod
    def clean(cls) -> DeviceEffects:
        """Perfect devices: noise only, nothing lost, late, doubled or spiked; full batteries."""
        return cls(artifact_p=0.0, sensor_off_per_h=0.0, dropout_p=0.0, duplicate_p=0.0,
                   late_p=0.0, clock_skew_sd_s=0.0, battery_start=(1.0, 1.0),
                   battery_drain_per_h=(0.0, 0.0))


@dataclass
class SensorState:
    """Per device and channel: until when the sensor is off. off_until: `(N, C)` seconds."""

    off_until: np.ndarray

    @classmethod
    def new(cls, n: int) -> SensorState:
        return cls(np.full((n, C), -np.inf))


def corrupt(measured: np.ndarray, due: np.ndarray, active: np.ndarray, t: float, dt: float,
            sensors: SensorState, eff: DeviceEffects, rng: np.random.Generator,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply motion artifacts and sensor-off zeros.

    measured: `(N, C)`; due: `(N, C)` bool; active: `(N,)` bool; dt: seconds since the last
    tick. Returns `(values (N, C), artifact (N, C) bool, zero (N, C) bool)`.
    """
    N = measured.shape[0]
    start = (rng.random((N, C)) < eff.sensor_off_per_h * dt / 3600.0) & _WEARABLE
    start &= sensors.off_until < t
    sensors.off_until = np.where(start, t + rng.uniform(*eff.sensor_off_s, (N, C)),
                                 sensors.off_until)
    zero = (sensors.off_until >= t) & _WEARABLE
    p = eff.artifact_p * np.where(active, eff.activity_artifact_factor, 1.0)
    artifact = (rng.random((N, C)) < p[:, None]) & _MOTION & due & ~zero
    out = measured.copy()
    for ch, (lo, hi) in eff.spike.items():
        j = INDEX[ch]
        size = rng.uniform(lo, hi, N)
        if ch == "hr":  # pulse artifacts go both ways: doubled or missed beats
            size *= np.where(rng.random(N) < 0.5, -0.5, 1.0)
        out[:, j] = np.where(artifact[:, j], np.round(out[:, j] + size), out[:, j])
    out = np.where(zero, 0.0, out)
    return out, artifact, zero


@dataclass(frozen=True)
class Fate:
    """What happens to each device's message this tick. alive, lost, duplicate: `(N,)` bool;
    delay_s: `(N,)` seconds of late delivery (0 = on time)."""

    alive: np.ndarray
    lost: np.ndarray
    duplicate: np.ndarray
    delay_s: np.ndarray


class Delivery:
    """Delivery faults and batteries of N devices."""

    def __init__(self, n: int, eff: DeviceEffects, rng: np.random.Generator) -> None:
        self.eff = eff
        self.rng = rng
        self.skew_s = rng.normal(0.0, 1.0, n) * eff.clock_skew_sd_s
        self.battery = rng.uniform(*eff.battery_start, n)
        self.drain_per_s = rng.uniform(*eff.battery_drain_per_h, n) / 3600.0
        self.low_at = np.full(n, np.nan)  # when the low-battery event fired
        self.empty_at = np.full(n, np.nan)  # when the device went silent

    def step(self, t: float, dt: float) -> Fate:
        """Drain the batteries by dt seconds and decide each device's message fate at t."""
        n = self.battery.shape[0]
        before = self.battery
        self.battery = np.maximum(before - self.drain_per_s * dt, 0.0)
        crossed = (before > self.eff.low_battery) & (self.battery <= self.eff.low_battery)
        self.low_at = np.where(crossed & np.isnan(self.low_at), t, self.low_at)
        died = (before > 0.0) & (self.battery <= 0.0)
        self.empty_at = np.where(died, t, self.empty_at)
        u = self.rng.random((n, 3))
        lost = u[:, 0] < self.eff.dropout_p
        dup = (u[:, 1] < self.eff.duplicate_p) & ~lost
        late = (u[:, 2] < self.eff.late_p) & ~lost
        delay = np.where(late, self.rng.uniform(*self.eff.late_delay_s, n), 0.0)
        return Fate(self.battery > 0.0, lost, dup, delay)
