"""Decoding on the second core: a child process turns a batch's raw messages into arrays.

The worker's main thread runs Faust's per-event machinery and the twin step, and is CPU-bound
while it catches up on a backlog. Decoding and validating device messages and writing their
readings' InfluxDB line protocol were ~40 % of its own time per batch (bench pipeline, timers
around each stage). They need nothing but the bytes, so a child process does them: the worker
sends a batch's keys and values, the child answers with the dead letters (index and reason), the
valid readings as a `process.Batch` of arrays, and the readings' line protocol. While the child
works, the worker's event loop keeps fetching the next batch.

Wire: one request and one answer at a time over the child's stdin and stdout, each a pickle
(protocol 5) behind an 8-byte length. The child exits when its stdin closes; if it dies, the
worker's next batch fails and the worker exits for its supervisor to restart it (nothing was
committed, so the batch is read again).
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from typing import BinaryIO

from streams import messages, supervise
from streams.errors import InvalidMessage, where
from streams.process import Batch, to_batch
from streams.sink import reading_points

_LEN = struct.Struct("<Q")


@dataclass
class Decoded:
    """What a batch of raw messages holds: rejects, `(index, reason, kind)` of each invalid
    message; batch, the valid readings; lines, their InfluxDB line protocol (if asked for)."""

    rejects: list[tuple[int, str, str]] = field(default_factory=list)
    batch: Batch = field(default_factory=lambda: to_batch([]))
    lines: list[str] = field(default_factory=list)


def decode_batch(observation: list[bool], keys: list[bytes | None],
                 values: list[bytes | None], lines: bool) -> Decoded:
    """Decode and validate a batch of messages; observation[i]: message i is a clinician's
    manual observation (topic observations), else a device message (vitals.raw). A message is
    accepted or rejected whole, and its key must be the patient id of every reading in it."""
    valid: list[messages.ValidReading] = []
    rejects = []
    for i, (obs, key, value) in enumerate(zip(observation, keys, values, strict=True)):
        try:
            if obs:
                readings = [messages.observation_reading(
                    messages.decode_observation(value or b""))]
            else:
                readings = messages.decode_readings(value)
            patient = key.decode("utf-8", "replace") if key else None
            if any(r.patient_id != patient for r in readings):
                raise messages.reject(
                    "message key must be the patient_id of every reading in it "
                    "(partitioning keeps a patient's twin on one worker)", "wrong_key")
        except InvalidMessage as exc:
            rejects.append((i, str(exc), getattr(exc, "kind", "invalid")))
            continue
        valid.extend(readings)
    return Decoded(rejects, to_batch(valid), reading_points(valid) if lines else [])


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
        self._proc = supervise.spawn([sys.executable, "-m", "streams.decoder"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def decode(self, observation: list[bool], keys: list[bytes | None],
               values: list[bytes | None]) -> Decoded:
        """`decode_batch` in the child. Raises DecoderGone if the child has ended."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            _write(self._proc.stdin, (observation, keys, values, self.lines))
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
                           values: list[bytes | None]) -> Decoded:
        """`decode` in a thread, so the event loop runs (and Faust fetches) meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(
            None, self.decode, observation, keys, values)

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
            observation, keys, values, lines = request  # type: ignore[misc]
            _write(out, decode_batch(observation, keys, values, lines))
    except BrokenPipeError:
        return 0  # the worker has gone
    except Exception as exc:
        # The worker's batch fails with DecoderGone and it restarts. Where, not the text.
        print(f"decoding a batch failed ({where(exc)})", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    # Run the imported module's main, so answers pickle as streams.decoder.Decoded (this copy of
    # the module is __main__, which the parent cannot import)
    from streams.decoder import main as _main

    sys.exit(_main())
