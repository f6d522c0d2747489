"""The write-back after a broker loss: the held twins are the only copy, so a record batch the
restarted broker refuses (aiokafka UnknownError, seen in CI) is written again, not dropped."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka.errors import UnknownError

from streams.worker.app import Worker


def _fake_worker(failures: int) -> SimpleNamespace:
    """A stand-in exposing what `Worker.write_back` uses: `write_records`, whose first
    `failures` calls return one failed delivery future among good ones (a fault a test cannot
    cause on a real broker at will)."""
    calls: list[dict[str, bytes]] = []

    async def write_records(records: dict[str, bytes]) -> list[asyncio.Future]:
        calls.append(dict(records))
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(3)]
        for f in futures:
            f.set_result(None)
        if len(calls) <= failures:
            futures[1] = loop.create_future()
            futures[1].set_exception(UnknownError())
        return futures

    return SimpleNamespace(write_records=write_records, calls=calls)


def test_a_refused_batch_is_written_again_until_all_arrive(monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", _no_wait)
    fake = _fake_worker(failures=2)
    records = {"P1": b"a", "P2": b"b"}
    tries = asyncio.run(Worker.write_back(fake, records))
    assert tries == 3 and fake.calls == [records] * 3


def test_it_gives_up_after_its_tries_and_says_so(monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", _no_wait)
    fake = _fake_worker(failures=100)
    with pytest.raises(RuntimeError, match="failed 4 times"):
        asyncio.run(Worker.write_back(fake, {"P1": b"a"}, tries=4))
    assert len(fake.calls) == 4


_real_sleep = asyncio.sleep


async def _no_wait(_s: float) -> None:
    await _real_sleep(0)
