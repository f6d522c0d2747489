"""Shared fixtures: a real Tansu broker per test session, settings and process helpers."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from streams import broker as embedded
from streams import config, supervise

ROOT = Path(__file__).resolve().parent.parent
_ids = itertools.count()


@pytest.fixture(scope="session")
def broker_port() -> Iterator[int]:
    """A real Tansu broker on a free loopback port for the whole session, always stopped."""
    port = supervise.free_port()
    proc = embedded.start(port)
    try:
        yield port
    finally:
        supervise.stop(proc)


@pytest.fixture
def settings_factory(broker_port: int) -> Callable[..., config.Settings]:
    """Settings pointing at the session broker, with topics and group unique to each call so
    tests sharing the memory-only broker never see each other's messages."""

    def make(**overrides: object) -> config.Settings:
        n = next(_ids)
        tag = f"t{os.getpid()}x{n}"
        base = config.load({"BROKER_PORT": str(broker_port)})
        fields = {f: f"{tag}.{getattr(base, f)}" for f in config.FIELDS
                  if f.startswith("topic_")}
        fields["app_id"] = f"patient-twin-{tag}"
        fields.update(overrides)
        return msgspec.structs.replace(base, **fields)

    return make


def settings_env(settings: config.Settings) -> dict[str, str]:
    """The environment that makes a child process load exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "TOPIC_",
                                                                    "INFLUX_"))}
    for f in config.FIELDS:
        v = getattr(settings, f)
        if v is None:
            continue
        env[config.env_name(f)] = v.get() if isinstance(v, config.Secret) else str(v)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Procs:
    """Child processes of a test, stopped at teardown whatever happens."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.items: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115
        p = supervise.spawn([sys.executable, "-m", "streams.cli", *args], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.items.append(p)
        return p

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for p in reversed(self.items):
            supervise.stop(p)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    ps = Procs(tmp_path)
    try:
        yield ps
    finally:
        ps.stop_all()


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()
