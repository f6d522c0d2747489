"""Decoding on the second core: a child process turns a batch's raw messages into arrays.

The worker's main thread runs Faust's per-event machinery and the twin step, and is CPU-bound
while it catches up on a backlog. Decoding and validating device messages and writing their
readings' InfluxDB line protocol were ~40 % of its own time per batch (bench pipeline, timers
around each stage). They need nothing but the bytes, so a child process does them: the worker
sends a batch's keys and values, the child answers with the dead letters (index and reason), the
valid readings as a `batch.Batch` of arrays, and the readings' line protocol. While the child
works, the worker's event loop keeps fetching the next batch.

Wire: one request and one answer at a time over the child's stdin and stdout, each a pickle
(protocol 5) behind an 8-byte length. The child exits when its stdin closes; if it dies, the
worker's next batch fails and the worker exits for its supervisor to restart it (nothing was
committed, so the batch is read again).

Not `concurrent.futures.ProcessPoolExecutor`: its child shares the worker's process group (a
terminal's Ctrl-C reaches it), outlives a SIGKILLed worker unless it sets PR_SET_PDEATHSIG
itself, comes with a resource-tracker process, re-imports the worker's `__main__` (spawn), and
neither shows the child's exit code nor where a failure in it was raised (the re-raised
exception points into concurrent.futures); `supervise.spawn` and this pipe do all of that.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from streams import messages, supervise
from streams.config import Settings
from streams.errors import InvalidMessage, where
from streams.worker.batch import Batch, to_batch
from streams.worker.sink import reading_points

_LEN = struct.Struct("<Q")


@dataclass
class Decoded:
    """What a batch of raw messages holds: rejects, `(index, reason, kind)` of each invalid
    message; batch, the valid readings; source `(K,)`, the index of the message each reading
    came from; lines, their InfluxDB line protocol (if asked for)."""

    rejects: list[tuple[int, str, str]] = field(default_factory=list)
    batch: Batch = field(default_factory=lambda: to_batch([]))
    lines: list[str] = field(default_factory=list)
    source: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass(frozen=True)
class Bounds:
    """What a batch accepts from devices: readings dated within `max_age_s` before `now` and
    `max_ahead_s` after it (epoch seconds; `messages.check_window`), messages of at most
    `max_bytes` holding at most `max_readings` readings."""

    now: float
    max_age_s: float = 86_400.0
    max_ahead_s: float = 300.0
    max_bytes: int = messages.MAX_MESSAGE_BYTES
    max_readings: int = messages.MAX_READINGS_PER_MESSAGE

    @classmethod
    def of(cls, settings: Settings, now: float) -> Bounds:
        return cls(now, settings.ingest_ts_max_age_s, settings.ingest_ts_max_ahead_s,
                   settings.ingest_max_message_bytes, settings.ingest_max_readings)


MAX_REASON_CHARS = 500  # a reason may quote the message; the dead letter holds all of it anyway


def decode_message(observation: bool, key: bytes | None, value: bytes | None,
                   bounds: Bounds | None) -> list[messages.ValidReading]:
    """One message's readings; InvalidMessage with the reason if anything in it is invalid (a
    message is accepted or rejected whole), its key is not the patient id of every reading in
    it, or a reading's time is outside the window."""
    if observation:
        readings = [messages.observation_reading(messages.decode_observation(value or b""))]
    else:
        readings = messages.decode_readings(
            value, *(() if bounds is None else (bounds.max_bytes, bounds.max_readings)))
    patient = key.decode("utf-8", "replace") if key else None
    for r in readings:
        if r.patient_id != patient:
            raise messages.reject(
                "message key must be the patient_id of every reading in it "
                "(partitioning keeps a patient's twin on one worker)", "wrong_key")
        if bounds is not None:  # observations too: one dated ahead would move the twin ahead
            messages.check_window(r.t, bounds.now, bounds.max_age_s, bounds.max_ahead_s)
    return readings


def decode_batch(observation: list[bool], keys: list[bytes | None],
                 values: list[bytes | None], lines: bool, bounds: Bounds | None = None
                 ) -> Decoded:
    """Decode and validate a batch of messages; observation[i]: message i is a clinician's
    manual observation (topic observations), else a device message (vitals.raw); bounds: the
    times and sizes accepted (None: any time, the default sizes). Nothing one message holds
    can fail the batch: an error that is not a validation error is that message's dead letter
    too (kind `undecodable`, with the error's type and place, never its text)."""
    by_message: list[tuple[int, list[messages.ValidReading]]] = []
    rejects: list[tuple[int, str, str]] = []
    for i, (obs, key, value) in enumerate(zip(observation, keys, values, strict=True)):
        try:
            by_message.append((i, decode_message(obs, key, value, bounds)))
        except InvalidMessage as exc:
            rejects.append((i, str(exc)[:MAX_REASON_CHARS], exc.kind))
        except Exception as exc:  # noqa: BLE001 - a decoding bug must not stop the worker
            rejects.append((i, _undecodable(exc), "undecodable"))
    valid = [r for _, readings in by_message for r in readings]
    try:
        batch = to_batch(valid)
        lines_ = reading_points(valid) if lines else []
    except Exception:  # noqa: BLE001 - find the message the arrays or the lines cannot hold
        valid = []
        for i, readings in by_message:
            try:
                to_batch(readings)
                if lines:
                    reading_points(readings)
            except Exception as exc:  # noqa: BLE001
                rejects.append((i, _undecodable(exc), "undecodable"))
                continue
            valid.extend(readings)
        rejects.sort()
        batch, lines_ = to_batch(valid), reading_points(valid) if lines else []
    bad = {i for i, _, _ in rejects}
    source = np.fromiter((i for i, readings in by_message if i not in bad for _ in readings),
                         np.int64)
    return Decoded(rejects, batch, lines_, source)


def _undecodable(exc: Exception) -> str:
    return f"the message could not be decoded ({where(exc)})"


class DecoderGone(RuntimeError):
    """The decoding child process ended."""


def _write(out: BinaryIO, obj: object) -> None:
    data = pickle.dumps(obj, protocol=5)
    out.write(_LEN.pack(len(data)))
    out.write(data)
    out.flush()


def _read(inp: BinaryIO) -> object | None:
    """The next frame, or None at the end of the stream."""
    head = inp.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    n = _LEN.unpack(head)[0]
    data = inp.read(n)
    if len(data) < n:
        return None
    return pickle.loads(data)  # noqa: S301 - our own parent's frames over a private pipe


class Decoder:
    """The decoding child process (module docstring). Start it from the main thread: the kernel
    ends it when the thread that started it ends (`supervise.spawn`)."""

    def __init__(self, lines: bool) -> None:
        self.lines = lines
        # one request and its answer at a time on the pipe: the next batch's decode may be
        # asked for (from another thread) while this one's is under way
        self._lock = threading.Lock()
        self._proc = supervise.spawn([sys.executable, "-m", "streams.worker.decoder"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def decode(self, observation: list[bool], keys: list[bytes | None],
               values: list[bytes | None], bounds: Bounds | None = None) -> Decoded:
        """`decode_batch` in the child. Raises DecoderGone if the child has ended."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            with self._lock:
                _write(self._proc.stdin, (observation, keys, values, self.lines, bounds))
                answer = _read(self._proc.stdout)
        except (OSError, ValueError) as exc:  # a broken pipe, or a closed one
            raise self._gone() from exc
        if not isinstance(answer, Decoded):
            raise self._gone()
        return answer

    def _gone(self) -> DecoderGone:
        try:
            code = self._proc.wait(5.0)
        except subprocess.TimeoutExpired:
            code = None
        return DecoderGone(f"the decoding process ended (exit code {code})")

    async def decode_async(self, observation: list[bool], keys: list[bytes | None],
                           values: list[bytes | None], bounds: Bounds | None = None
                           ) -> Decoded:
        """`decode` in a thread, so the event loop runs (and Faust fetches) meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(
            None, self.decode, observation, keys, values, bounds)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def close(self, timeout: float = 5.0) -> None:
        """End the child: close its input, then wait (`supervise.stop` after the timeout)."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            supervise.stop(self._proc)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def main() -> int:
    """The child: answer requests on stdin until it closes."""
    supervise.exit_with_parent()
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the answer stream
    try:
        while (request := _read(inp)) is not None:
            observation, keys, values, lines, bounds = request  # type: ignore[misc]
            _write(out, decode_batch(observation, keys, values, lines, bounds))
    except BrokenPipeError:
        return 0  # the worker has gone
    except Exception as exc:
        # The worker's batch fails with DecoderGone and it restarts. Where, not the text.
        print(f"decoding a batch failed ({where(exc)})", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    # Run the imported module's main, so answers pickle as streams.worker.decoder.Decoded (this
    # copy of the module is __main__, which the parent cannot import)
    from streams.worker.decoder import main as _main

    sys.exit(_main())
