"""The vital-sign channels the twin models: names, codes, units and device limits.

One table, used by the schemas, the simulator, the filter and the dashboard. Channel order here is
the column order of every `(N, C)` array in the project.
"""

from __future__ import annotations

from typing import NamedTuple


class Channel(NamedTuple):
    name: str
    display: str
    loinc: str  # the LOINC code FHIR's vital-signs profile uses for this observation
    unit: str  # UCUM, as FHIR writes it
    device_max: float  # above this no monitor can have measured it: the message is rejected
    plausible_low: float  # outside [low, high] a monitor reading is sensor-off/artifact: missing
    plausible_high: float


# Plausibility limits are engineering limits of bedside monitors and wearables (the measurement
# ranges manufacturers state, e.g. HR 15-300 /min, SpO2 50-100 % for pulse oximeters per
# ISO 80601-2-61 accuracy claims from 70 %); they are not clinical thresholds. Zero is what most
# monitors emit when a sensor is off (MIMIC-II numerics), so it falls below every low limit.
CHANNELS: tuple[Channel, ...] = (
    Channel("hr", "Heart rate", "8867-4", "/min", 400.0, 15.0, 300.0),
    Channel("rr", "Respiratory rate", "9279-1", "/min", 150.0, 2.0, 80.0),
    # 59408-5 (SpO2 by pulse oximetry) is sent alongside 2708-6 as FHIR's profile asks.
    Channel("spo2", "Oxygen saturation", "2708-6", "%", 100.0, 50.0, 100.0),
    Channel("sbp", "Systolic blood pressure", "8480-6", "mm[Hg]", 400.0, 40.0, 300.0),
    Channel("dbp", "Diastolic blood pressure", "8462-4", "mm[Hg]", 300.0, 15.0, 200.0),
    Channel("temp", "Body temperature", "8310-5", "Cel", 50.0, 25.0, 45.0),
)
SPO2_PULSE_OX_LOINC = "59408-5"

NAMES: tuple[str, ...] = tuple(c.name for c in CHANNELS)
INDEX: dict[str, int] = {c.name: i for i, c in enumerate(CHANNELS)}
UNITS: dict[str, str] = {c.name: c.unit for c in CHANNELS}
C = len(CHANNELS)

# Plain tuples (numpy compares an array with them as with arrays): this module is the one part
# of the twin the message schemas need, and the processes that only check messages (ingest,
# MQTT bridge) then load no numpy (~15 MB each).
PLAUSIBLE_LOW: tuple[float, ...] = tuple(c.plausible_low for c in CHANNELS)
PLAUSIBLE_HIGH: tuple[float, ...] = tuple(c.plausible_high for c in CHANNELS)

# Unit spellings accepted on input, with the conversion to the canonical unit (scale, offset).
UNIT_ALIASES: dict[str, dict[str, tuple[float, float]]] = {
    "hr": {"/min": (1.0, 0.0), "{beats}/min": (1.0, 0.0)},
    "rr": {"/min": (1.0, 0.0), "{breaths}/min": (1.0, 0.0)},
    "spo2": {"%": (1.0, 0.0)},
    "sbp": {"mm[Hg]": (1.0, 0.0), "kPa": (7.500615, 0.0)},
    "dbp": {"mm[Hg]": (1.0, 0.0), "kPa": (7.500615, 0.0)},
    "temp": {"Cel": (1.0, 0.0), "[degF]": (5.0 / 9.0, -32.0 * 5.0 / 9.0)},
}
