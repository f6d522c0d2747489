"""Late readings within the tolerance: the twin comes out as if they had arrived in time order."""

import numpy as np
import pytest

from twin import bank, history
from twin.channels import INDEX, C
from twin.model import ModelParams

P = ModelParams()
T0 = 1_800_000_000.0
COMPARED = ("x", "P", "t", "applied", "artifacts", "missing", "gaps", "raw", "last_obs",
            "rejects", "quality", "battery", "seq", "obs_alert", "obs_oxygen")


def stream(rng, n, seconds):
    """n patients' readings, one a second each: `(K,)` arrays row, t, seq and z `(K, C)`."""
    row = np.repeat(np.arange(n), seconds)
    k = np.tile(np.arange(seconds), n)
    t = T0 + k + rng.uniform(0, 0.5, n * seconds)
    z = np.full((n * seconds, C), np.nan)
    z[:, INDEX["hr"]] = 80 + 10 * np.sin(k / 20 + row) + rng.normal(0, 2, len(k))
    z[:, INDEX["spo2"]] = np.clip(95 + rng.normal(0, 1.5, len(k)), 50, 100)
    z[k % 4 == 0, INDEX["rr"]] = 16 + rng.normal(0, 1, (k % 4 == 0).sum())
    z[rng.random(len(k)) < 0.03, INDEX["hr"]] = 0.0  # sensor off
    z[rng.random(len(k)) < 0.01, INDEX["hr"]] = 220.0  # artifact spike
    # float32 values, as the history keeps them (it rounds readings to float32 before applying)
    return row, t, k + 1, z.astype(np.float32).astype(np.float64)


def readings(row, t, seq, z, pick):
    n = len(pick)
    return bank.Readings(row=row[pick], t=t[pick], z=z[pick], quality=np.full(n, 0.75),
                         battery=np.full(n, 0.7), device=(row[pick] + 1).astype(np.uint64),
                         seq=seq[pick].astype(np.int64))


def run(n, parts, data, tolerance):
    """Apply the readings in `parts` (index arrays, one per batch) through stored bytes, as the
    worker does: decode, step, encode. Returns the states and the summed reports."""
    states = bank.new_states(n, P)
    blocks = [None] * n
    totals = {"applied": 0, "late": 0, "duplicate": 0, "reordered": 0}
    for pick in parts:
        blobs = bank.to_bytes(states)
        states = bank.from_bytes(blobs)
        done = history.step(states, history.decode(blocks, states), readings(*data, pick), P,
                            tolerance)
        blocks = history.encode(done.history, n)
        for f in ("applied", "late", "duplicate"):
            totals[f] += int(getattr(done.report, f).sum())
        totals["reordered"] += done.reordered
    return states, blocks, totals


def in_order(n, data, keep):
    states = bank.new_states(n, P)
    order = np.flatnonzero(keep)
    order = order[np.lexsort((data[1][order], data[0][order]))]
    bank.step(states, readings(*data, order), P)
    return states


def batches(rng, order, mean):
    cuts = np.sort(rng.choice(np.arange(1, len(order)), len(order) // mean, replace=False))
    return np.split(order, cuts)


def assert_same(a, b):
    for f in COMPARED:
        np.testing.assert_allclose(a[f].astype(float), b[f].astype(float), rtol=1e-12,
                                   atol=1e-12, err_msg=f)


@pytest.mark.parametrize("seed", range(6))
def test_late_within_tolerance_gives_the_in_order_twin(seed):
    rng = np.random.default_rng(seed)
    n, seconds, tol = 7, 200, 30.0
    data = stream(rng, n, seconds)
    # each reading is delayed by up to 25 s (under the tolerance): arrival order is shuffled
    delay = np.where(rng.random(len(data[1])) < 0.15, rng.uniform(0, 25, len(data[1])), 0.0)
    arrival = np.argsort(data[1] + delay, kind="stable")
    states, blocks, totals = run(n, batches(rng, arrival, 12), data, tol)
    expected = in_order(n, data, np.ones(len(data[1]), bool))
    assert_same(states, expected)
    assert totals["applied"] == len(arrival) and totals["late"] == 0
    assert totals["reordered"] > 20  # the test did exercise rewinds
    # bounded: at most 1.5 x tolerance of readings per twin (plus a batch), and the base stays
    # more than a tolerance behind, so any reading within the tolerance can be put in place
    h = history.decode(blocks, states)
    span = states["t"][h.buf_row] - h.buf["t"]
    assert span.max() <= 1.5 * tol + 5
    assert (states["t"] - h.base["t"] > tol).all()
    assert (h.buf["t"] > h.base["t"][h.buf_row]).all()


def test_beyond_tolerance_is_counted_late_and_skipped():
    rng = np.random.default_rng(1)
    n, seconds, tol = 3, 120, 10.0
    data = stream(rng, n, seconds)
    late = np.zeros(len(data[1]), bool)
    late[[20, 150, 300]] = True  # one per patient, delivered 40 s late
    delay = np.where(late, 40.0, 0.0)
    delay[[50, 200]] = 8.0  # and two within the tolerance
    arrival = np.argsort(data[1] + delay, kind="stable")
    states, _, totals = run(n, batches(rng, arrival, 5), data, tol)
    assert totals["late"] == 3 and totals["reordered"] == 2
    assert states["late"].sum() == 3
    assert_same(states, in_order(n, data, ~late))


def test_redelivered_readings_within_tolerance_are_duplicates_not_applied_twice():
    rng = np.random.default_rng(2)
    n, seconds = 4, 90
    data = stream(rng, n, seconds)
    order = np.argsort(data[1], kind="stable")
    # the last 20 s of every patient delivered again after the stream (a consumer's re-read)
    again = order[data[1][order] > T0 + seconds - 20]
    states, _, totals = run(n, [*batches(rng, order, 8), again], data, 30.0)
    assert totals["duplicate"] == len(again) and totals["applied"] == len(order)
    assert states["duplicates"].sum() == len(again)
    assert_same(states, in_order(n, data, np.ones(len(data[1]), bool)))


def test_sequence_gap_closed_by_a_late_reading_is_not_counted():
    rng = np.random.default_rng(3)
    data = stream(rng, 1, 30)
    order = np.r_[np.arange(0, 10), np.arange(11, 30), 10]  # reading 11 arrives last
    states, _, totals = run(1, [order[:20], order[20:29], order[29:]], data, 30.0)
    assert totals["reordered"] == 1 and states["gaps"][0] == 0 and states["applied"][0] == 30


def test_manual_observation_survives_a_later_rewind():
    """An observation entered after the fact is applied at the twin's time, and kept in place
    when a late reading rewinds the twin past the time it was taken."""
    rng = np.random.default_rng(4)
    row, t, seq, z = stream(rng, 1, 60)
    states = bank.new_states(1, P)
    h = history.start(states)
    first = readings(row, t, seq, z, np.r_[np.arange(0, 40), np.arange(41, 50)])
    h = history.step(states, h, first, P, 30.0).history
    obs = bank.Readings(row=np.array([0]), t=np.array([T0 + 5.0]), z=np.full((1, C), np.nan),
                        quality=np.array([np.nan]), battery=np.array([np.nan]),
                        device=np.array([999], np.uint64), seq=np.array([1]),
                        alert=np.array([0.0]), oxygen=np.array([1.0]), manual=np.array([True]))
    done = history.step(states, h, obs, P, 30.0)
    assert done.report.applied[0] and done.report.t[0] == states["t"][0]
    late = history.step(states, done.history, readings(row, t, seq, z, np.array([40])), P, 30.0)
    assert late.reordered == 1
    assert states["obs_alert"][0] == 0.0 and states["obs_oxygen"][0] == 1.0
    assert states["applied"][0] == 51


def test_blocks_round_trip_and_records_without_history_start_where_they_are():
    rng = np.random.default_rng(5)
    data = stream(rng, 3, 50)
    states, blocks, _ = run(3, [np.arange(0, 150)], data, 20.0)
    h = history.decode(blocks, states)
    assert history.encode(h, 3) == blocks
    assert all(history.block_size(b) == len(b) for b in blocks)
    # a twin kept without history: a late reading cannot be placed, so it is late
    bare = history.decode([None] * 3, states)
    assert len(bare.buf) == 0 and (bare.base["t"] == states["t"]).all()
    with pytest.raises(ValueError, match="version"):
        history.decode([b"\x07" + blocks[0][1:]], bank.take(states, np.array([0])))


@pytest.mark.parametrize("seed", range(3))
def test_backlog_batches_move_bases_up_in_the_same_pass(seed):
    """Batches spanning more than the tolerance (a worker catching up on a backlog) copy each
    moved base from the twin as the step passes it: every base must be exactly the twin its
    readings up to then make, in time order, and late readings must still land in place."""
    rng = np.random.default_rng(seed)
    n, seconds, tol = 5, 300, 20.0
    data = stream(rng, n, seconds)
    delay = np.where(rng.random(len(data[1])) < 0.1, rng.uniform(0, 15, len(data[1])), 0.0)
    arrival = np.argsort(data[1] + delay, kind="stable")
    window = ((data[1] + delay)[arrival] - T0) // 50  # batches of 50 s of arrivals
    parts = np.split(arrival, np.flatnonzero(np.diff(window)) + 1)
    states = bank.new_states(n, P)
    h = history.start(states)
    moved_into_batch = reordered = 0
    for pick in parts:
        before = states["t"].copy()
        done = history.step(states, h, readings(*data, pick), P, tol)
        h, reordered = done.history, reordered + done.reordered
        moved_into_batch += int((h.base["t"] > before).sum())
        # each base against the in-order twin of the readings at or before its time
        base_t = np.where(np.isnan(h.base["t"]), -np.inf, h.base["t"])  # NaN: no reading yet
        assert_same(h.base, in_order(n, data, data[1] <= base_t[data[0]]))
        assert (h.buf["t"] > base_t[h.buf_row]).all()
        assert (states["t"] - base_t >= tol).all()
    assert moved_into_batch > 0  # bases were copied in the step's pass, not replayed
    assert reordered > 10
    assert_same(states, in_order(n, data, np.ones(len(data[1]), bool)))
