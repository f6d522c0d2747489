"""The decoding child process: the same answer as decoding in-process, and a clear end."""

import json
import os
import re
import signal

import numpy as np
import pytest

from streams import messages
from streams.worker.batch import to_batch
from streams.worker.decoder import Decoder, DecoderGone, decode_batch
from streams.worker.sink import reading_points

T = "2026-01-01T00:00:0{}Z"


def reading(pid: str, seq: int, hr: float, dev: str = "d1") -> dict:
    return {"schema": messages.READING_SCHEMA, "device_id": dev, "patient_id": pid, "seq": seq,
            "ts": T.format(seq), "values": {"hr": {"value": hr, "unit": "/min"},
                                           "temp": {"value": 98.6, "unit": "[degF]"}},
            "quality": 0.9}


def enc(doc: object) -> bytes:
    return json.dumps(doc).encode()


OBSERVATION = enc({"schema": messages.OBSERVATION_SCHEMA, "patient_id": "p2", "observer": "rn",
                   "ts": T.format(5), "acvpu": "C", "supplemental_o2": True,
                   "values": {"rr": {"value": 24, "unit": "/min"}}})
BATCH = [  # (observation topic?, key, value)
    (False, b"p1", enc(reading("p1", 1, 70.0))),
    (False, b"p1", b"{not json"),
    (False, b"p2", enc([reading("p2", 1, 80.0, "d2"), reading("p2", 2, 81.0, "d2")])),
    (False, b"p9", enc(reading("p1", 2, 71.0))),  # key is not the reading's patient
    (True, b"p2", OBSERVATION),
    (False, None, enc(reading("p1", 3, 72.0))),  # no key
    (False, b"p1", enc({**reading("p1", 4, 73.0), "values": {"hr": {"value": 9, "unit": "Hz"}}})),
    (False, b"p1", enc(reading("p1", 5, 75.0))),
]


def split(batch):
    return [b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch]


def test_batch_gives_dead_letters_by_index_and_the_valid_readings_as_arrays():
    got = decode_batch(*split(BATCH), lines=True)
    assert [(i, kind) for i, _, kind in got.rejects] == [
        (1, "not_json"), (3, "wrong_key"), (5, "wrong_key"), (6, "wrong_unit")]
    assert "patient_id" in got.rejects[1][1] and "'/min'" in got.rejects[3][1]
    valid = [*messages.decode_readings(BATCH[0][2]), *messages.decode_readings(BATCH[2][2]),
             messages.observation_reading(messages.decode_observation(OBSERVATION)),
             *messages.decode_readings(BATCH[7][2])]
    want = to_batch(valid)
    assert got.batch.pids == ["p1", "p2"] == want.pids
    for f in ("row", "t", "z", "quality", "battery", "device", "seq", "alert", "oxygen",
              "manual"):
        np.testing.assert_array_equal(getattr(got.batch.readings, f),
                                      getattr(want.readings, f), err_msg=f)
    assert got.batch.readings.z[0, 5] == pytest.approx(37.0)  # degF -> Cel (canonical)
    assert got.batch.readings.manual.tolist() == [False, False, False, True, False]
    assert got.lines == reading_points(valid)
    assert decode_batch(*split(BATCH), lines=False).lines == []


def test_child_answers_like_decode_batch_and_ends_when_closed():
    dec = Decoder(lines=True)
    try:
        for _ in range(2):  # one request at a time, over the same pipes
            got = dec.decode(*split(BATCH))
            want = decode_batch(*split(BATCH), lines=True)
            assert got.rejects == want.rejects and got.lines == want.lines
            assert got.batch.pids == want.batch.pids
            np.testing.assert_array_equal(got.batch.readings.z, want.batch.readings.z)
        empty = dec.decode([], [], [])
        assert empty.rejects == [] and empty.batch.pids == [] and empty.lines == []
    finally:
        dec.close()
    assert dec._proc.returncode == 0


def test_a_dead_child_fails_the_batch_with_a_clear_error():
    dec = Decoder(lines=False)
    try:
        dec.decode(*split(BATCH[:1]))
        os.kill(dec.pid, signal.SIGKILL)
        dec._proc.wait(10)
        with pytest.raises(DecoderGone, match=r"decoding process ended \(exit code -9\)"):
            dec.decode(*split(BATCH))
    finally:
        dec.close()


def test_a_bug_decoding_one_message_dead_letters_it_and_the_child_goes_on(capfd):
    dec = Decoder(lines=False)
    try:
        # a bug's stand-in: a TypeError inside decoding this one message
        got = dec.decode([False, False], [b"p1", BATCH[0][1]], ["not bytes", BATCH[0][2]])
        (i, reason, kind), = got.rejects
        assert (i, kind) == (0, "undecodable")
        assert re.fullmatch(r"the message could not be decoded \(TypeError at messages\.py:\d+\)",
                            reason)
        assert "not bytes" not in reason
        assert len(got.batch.readings.row) == len(messages.decode_readings(BATCH[0][2]))
        # and the next batch is answered as usual
        assert dec.decode(*split(BATCH)).rejects == decode_batch(*split(BATCH), False).rejects
    finally:
        dec.close()
    assert dec._proc.returncode == 0


def test_a_failing_child_exits_saying_where_not_what(capfd):
    dec = Decoder(lines=False)
    try:
        with pytest.raises(DecoderGone, match=r"exit code 3\)"):
            # a bug outside any one message: a request the child cannot unpack
            dec.decode([False], [b"p1"], None)  # type: ignore[arg-type]
    finally:
        dec.close()
    err = capfd.readouterr().err
    assert re.search(r"decoding a batch failed \(TypeError at decoder\.py:\d+\)", err)
    assert "Traceback" not in err
