"""twin.state messages written from a batch's arrays (streams.worker.states)."""

import functools
from dataclasses import replace

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.messages import TwinState, ValidReading, decode_twin_state, encode
from streams.worker.process import TwinProcessor, split
from streams.worker.states import encode_states
from twin import bank, news2
from twin.channels import INDEX, NAMES
from twin.model import ModelParams

T0 = 1_800_000_000.0


def _batch(n: int = 6) -> tuple[TwinProcessor, dict[str, bytes | None], list]:
    """A processor after two steps of n patients (some with blood pressure, a temperature, a
    manual observation, an artifact), and the arguments its last step built states with."""
    proc = TwinProcessor()
    captured: list = []
    stored: dict[str, bytes | None] = {f"p{i}": None for i in range(n)}
    for step in (1, 2):
        readings = [ValidReading(f"d{i}", f"p{i}", step, T0 + step + i / 10,
                                 {"hr": 60.0 + i, "spo2": 97.0, "rr": 14.0 + step,
                                  **({"sbp": 120.0, "dbp": 75.5} if i % 2 else {}),
                                  **({"temp": 37.25} if i % 3 == 0 else {})},
                                 0.95 if i % 2 else None, 0.8)
                    for i in range(n)]
        if step == 2:
            readings.append(ValidReading("obs", "p1", 0, T0 + step + 0.5, {}, None, None,
                                         alert=0.0, on_oxygen=1.0, manual=True))
            readings.append(ValidReading("d2", "p2", 3, T0 + step + 0.6, {"hr": 250.0},
                                         None, None))  # an artifact
        result = proc.process(readings, stored)
        stored.update(result.states)
        captured = [result]
    return proc, stored, captured


def test_messages_are_the_bytes_msgspec_makes_of_the_same_state() -> None:
    """Decoding a message and encoding the `TwinState` again gives its bytes back: same fields
    in the struct's order, same number, time and null forms (no consumer can tell the
    difference from a message built as a struct)."""
    _, _, (result,) = _batch()
    outs = result.pending.all()
    assert [o.patient_id for o in outs] == [f"p{i}" for i in range(6)]
    for o in outs:
        st = decode_twin_state(o.data)
        assert encode(st) == o.data
        assert set(msgspec.json.decode(o.data)) == set(TwinState.__struct_fields__)
        assert o.ts == st.ts.timestamp() and o.band == st.news2_band and o.lost is None
        # forecasts and their bands to a tenth of the unit (states.FORECAST_DECIMALS)
        values = [v for f in st.forecasts for d in (f.estimate, f.low90, f.high90)
                  for v in d.values() if v is not None]
        assert values and all(round(v, 1) == v for v in values)
        assert any(round(v, 1) != v for v in st.estimate.values() if v is not None)
    p1 = outs[1].decoded()
    assert p1.consciousness_alert is False and p1.on_oxygen is True
    assert p1.observed_at is not None and p1.raw["sbp"] == 120.0 and p1.raw["dbp"] == 75.5
    p0 = outs[0].decoded()
    assert p0.estimate["sbp"] is None and p0.quality is None and p0.battery == 0.8
    assert p0.raw["temp"] == 37.25 and p0.consciousness_alert is None


def test_influx_point_carries_the_messages_numbers() -> None:
    _, _, (result,) = _batch()
    for o in result.pending.all():
        st = o.decoded()
        measurement, fields, ts = o.line.split(" ")
        assert measurement == f"twin,patient_id={st.patient_id}"
        values = dict(f.split("=") for f in fields.split(","))
        assert int(ts) == round(st.ts.timestamp() * 1e6) * 1000
        for ch in NAMES:
            if st.estimate[ch] is None or st.sd[ch] is None:
                assert f"{ch}_est" not in values
            else:
                assert float(values[f"{ch}_est"]) == st.estimate[ch]
                assert float(values[f"{ch}_sd"]) == st.sd[ch]
        assert values["news2"] == f"{st.news2}i" and values["news2_raw"] == f"{st.news2_raw}i"
        assert values["news2_complete"] == str(st.news2_complete).lower()
        assert ("map" in values) == (st.derived["map"] is not None)
        assert float(values["sepsis_risk"]) == st.sepsis_risk


def test_a_worker_without_a_sink_makes_the_same_messages_without_points() -> None:
    """`TwinProcessor(lines=False)` (a worker with no INFLUX_URL) leaves the points out and
    changes no byte of the messages."""
    _, _, (with_points,) = _batch()
    proc, stored, _ = _batch()
    bare = TwinProcessor(lines=False)
    readings = [ValidReading("d0", "p0", 9, T0 + 9, {"hr": 70.0}, None, None),
                ValidReading("d1", "p1", 9, T0 + 9.5, {"hr": 71.0, "sbp": 118.0}, None, None)]
    a, b = proc.process(readings, stored, now=T0 + 10), bare.process(readings, stored,
                                                                     now=T0 + 10)
    assert [o.data for o in a.pending.all()] == [o.data for o in b.pending.all()]
    assert all(o.line for o in a.pending.all()) and all(o.line for o in with_points.pending.all())
    assert [o.line for o in b.pending.all()] == [None, None]


@functools.cache
def _records() -> tuple[bytes, ...]:
    _, stored, _ = _batch(2)
    return tuple(split(stored[p])[0] for p in ("p0", "p1"))  # type: ignore[arg-type]


_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                     st.sampled_from([np.nan, -0.0, 1e-9, 0.0005, 1e300, -1e300, 123.4565]))


@settings(max_examples=60, deadline=None)
@given(est=st.lists(_numbers, min_size=2 * len(NAMES), max_size=2 * len(NAMES)),
       band=st.integers(0, len(news2.BAND_NAMES) - 1),
       rejects=st.lists(st.integers(0, 3), min_size=len(NAMES), max_size=len(NAMES)),
       pid=st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True))
def test_any_values_and_any_id_make_a_valid_message(est: list[float], band: int,
                                                    rejects: list[int], pid: str) -> None:
    """Whatever the arrays hold (NaN, infinities, huge, tiny, negative zero) and whatever valid
    patient id (`messages.check_id`), the message decodes as a `TwinState` with each number
    rounded to 3 decimals and each non-finite one null, and re-encodes to the same bytes."""
    states = bank.from_bytes(list(_records()))
    out = bank.outputs(states, states["t"], ModelParams())
    a = np.array(est, dtype=np.float64).reshape(2, len(NAMES))
    out = replace(out, estimate=a, sd=a[::-1].copy(), band=np.array([band, band]))
    states["rejects"][0] = rejects
    (o,) = encode_states([pid], states, out, np.array([0]))
    st_ = decode_twin_state(o.data)
    assert encode(st_) == o.data and st_.patient_id == pid
    assert st_.news2_band == news2.BAND_NAMES[band]
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = np.round(a[0], 3)
    for ch in NAMES:
        want = rounded[INDEX[ch]]
        assert st_.estimate[ch] == (float(want) if np.isfinite(want) else None)
    assert st_.rejected == [ch for ch in NAMES if rejects[INDEX[ch]]]
