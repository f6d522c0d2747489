"""The InfluxDB sink against a real line-protocol server (VictoriaMetrics), including outages."""

from __future__ import annotations

import time

import pytest

from streams import config
from streams.messages import ValidReading
from streams.worker.sink import InfluxSink, reading_points
from tests.conftest import wait_until

# VictoriaMetrics drops samples outside its retention (1 month by default): use recent times.
T0 = float(int(time.time()) - 3600)


def _settings(url: str) -> config.Settings:
    return config.load({"INFLUX_URL": url, "INFLUX_TOKEN": "test-token", "INFLUX_ORG": "ward",
                        "INFLUX_BUCKET": "twins"})


def _readings(pid: str, start: int, n: int) -> list[ValidReading]:
    return [ValidReading(f"dev-{pid}", pid, i, T0 + i, {"hr": 60.0 + i % 40, "spo2": 97.0},
                         0.9, 0.8) for i in range(start, start + n)]


def _hr_samples(vm, pid: str) -> int:
    series = vm.export(f'vitals_raw_hr{{patient_id="{pid}"}}')
    return sum(len(s["values"]) for s in series)


def test_points_are_written_and_read_back(victoria):
    sink = InfluxSink(_settings(victoria.url), flush_interval=0.2)
    try:
        sink.add(reading_points(_readings("P1", 0, 250)))
        assert sink.flush(10)
        assert wait_until(lambda: _hr_samples(victoria, "P1") == 250, timeout=10)
        series = victoria.export('vitals_raw_hr{patient_id="P1"}')
        assert series[0]["metric"]["device_id"] == "dev-P1"
        assert series[0]["values"][:3] == [60, 61, 62]
        assert series[0]["timestamps"][0] == int(T0 * 1000)
        assert sink.stats.written == 250 and sink.stats.dropped == 0
    finally:
        sink.close()


def test_twin_points_are_read_back_with_their_types(victoria):
    """The `twin` measurement as the worker writes it: estimates, SDs, NEWS2 (integer and
    boolean fields), derived values, at the time of the twin's latest reading."""
    from streams.worker.process import TwinProcessor

    readings = [ValidReading("dev-T", "T1", i, T0 + i, {"hr": 130.0, "spo2": 93.0, "sbp": 95.0},
                             0.9, 0.8) for i in range(1, 4)]
    (out,) = TwinProcessor().process(readings, {}, now=T0 + 3).pending.all()
    st = out.decoded()
    sink = InfluxSink(_settings(victoria.url), flush_interval=0.2)
    try:
        sink.add([out.line])
        assert sink.flush(10)
        assert wait_until(lambda: victoria.export('twin_hr_est{patient_id="T1"}'), timeout=10)
        for name, want in (("hr_est", st.estimate["hr"]), ("hr_sd", st.sd["hr"]),
                           ("news2", st.news2), ("news2_raw", st.news2_raw),
                           ("news2_complete", 0), ("shock_index", st.derived["shock_index"])):
            (series,) = victoria.export(f'twin_{name}{{patient_id="T1"}}')
            assert series["values"] == [pytest.approx(want)], name
            assert series["timestamps"] == [int((T0 + 3) * 1000)]
        assert st.news2 >= 5 and st.estimate["rr"] is None
        assert not victoria.export('twin_rr_est{patient_id="T1"}')  # unknown: left out
    finally:
        sink.close()


def test_server_down_then_back_loses_nothing_within_the_bound(victoria):
    sink = InfluxSink(_settings(victoria.url), flush_interval=0.2, max_backoff=1.0)
    try:
        sink.add(reading_points(_readings("P2", 0, 100)))
        assert sink.flush(10)
        victoria.stop()
        sink.add(reading_points(_readings("P2", 100, 300)))  # the pipeline keeps going
        assert wait_until(lambda: sink.stats.errors >= 1, timeout=15)
        assert sink.stats.buffered == 300
        victoria.start()  # same port, same storage
        assert sink.flush(30), "the sink did not recover by itself"
        assert wait_until(lambda: _hr_samples(victoria, "P2") == 400, timeout=15)
        assert sink.stats.dropped == 0
    finally:
        sink.close()


def test_full_buffer_drops_oldest_and_counts_them(victoria):
    victoria.stop()
    sink = InfluxSink(_settings(victoria.url), max_buffer=150, flush_interval=0.2,
                      max_backoff=1.0)
    try:
        sink.add(reading_points(_readings("P3", 0, 100)))
        sink.add(reading_points(_readings("P3", 100, 100)))
        assert sink.stats.dropped == 50 and sink.stats.buffered == 150
        victoria.start()
        assert sink.flush(30)
        assert wait_until(lambda: _hr_samples(victoria, "P3") == 150, timeout=15)
        series = victoria.export('vitals_raw_hr{patient_id="P3"}')
        # the newest 150 survived: sequence 50..199
        assert min(series[0]["timestamps"]) == int((T0 + 50) * 1000)
    finally:
        sink.close()


def test_sink_needs_influx_url():
    with pytest.raises(ValueError):
        InfluxSink(config.load({}))
    time.sleep(0)
