"""Shared fixtures: a real Tansu broker per test session, settings and process helpers."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from streams import broker as embedded
from streams import config, supervise

ROOT = Path(__file__).resolve().parent.parent
_ids = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the session broker is marked `broker` (`-m "not broker"` runs the
    rest without one); tests that start brokers of their own carry the mark themselves."""
    for item in items:
        if "broker_port" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def broker_port() -> Iterator[int]:
    """A real Tansu broker on a free loopback port for the whole session, always stopped."""
    port = supervise.free_port()
    proc = embedded.start(port)
    try:
        yield port
    finally:
        supervise.stop(proc)


def make_settings(broker_port: int, **overrides: object) -> config.Settings:
    """Settings pointing at the session broker, with topics and group unique to each call so
    tests sharing the memory-only broker never see each other's messages."""
    n = next(_ids)
    tag = f"t{os.getpid()}x{n}"
    base = config.load({"BROKER_PORT": str(broker_port)})
    fields = {f: f"{tag}.{getattr(base, f)}" for f in config.FIELDS if f.startswith("topic_")}
    fields["app_id"] = f"patient-twin-{tag}"
    fields["worker_metrics_port"] = 0
    # tests talk to the dashboard over plain http on loopback (a test of the default, Secure
    # cookies, sets it back)
    fields["dashboard_allow_http"] = True
    fields.update(overrides)
    return msgspec.structs.replace(base, **fields)


@pytest.fixture
def settings_factory(broker_port: int) -> Callable[..., config.Settings]:
    return lambda **overrides: make_settings(broker_port, **overrides)


def admit(settings: config.Settings, pairs: dict[str, str], ward: str = "A") -> None:
    """Admit patients with their devices paired ({patient id: device id}): the worker applies
    readings only of admitted patients from paired devices."""
    from devices.run import admit as write
    from devices.run import pairing_records

    write(settings, pairing_records(pairs.items(), ward, "test", time.time()))


def settings_env(settings: config.Settings) -> dict[str, str]:
    """The environment that makes a child process load exactly these settings."""
    return config.to_env(settings)


class Procs:
    """Child processes of a test, stopped at teardown whatever happens."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.items: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """`patient-twin ARGS...` as a child, its output in NAME.log."""
        return self.spawn(name, supervise.python_argv(*args), env=env)

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115
        p = supervise.spawn(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
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


class Victoria:
    """A real VictoriaMetrics server (Debian package) on a loopback port, restartable in place."""

    def __init__(self, data_dir: Path) -> None:
        self.binary = shutil.which("victoria-metrics")
        if self.binary is None:
            pytest.fail("victoria-metrics is not installed: run `bash .ci/deps` (as root)")
        self.data_dir = data_dir
        self.port = supervise.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = supervise.spawn(
            [self.binary, f"-storageDataPath={self.data_dir}",
             f"-httpListenAddr=127.0.0.1:{self.port}", "-loggerLevel=ERROR"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not supervise.wait_for_port(self.port, self.proc, timeout=15):
            pytest.fail("victoria-metrics did not start")

    def stop(self) -> None:
        if self.proc is not None:
            supervise.stop(self.proc)
            self.proc = None

    def export(self, match: str) -> list[dict]:
        """Every series matching a PromQL selector, from the export API."""
        import json
        import urllib.parse
        import urllib.request

        q = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{q}", timeout=10) as resp:
            return [json.loads(line) for line in resp.read().decode().splitlines() if line]


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[Victoria]:
    vm = Victoria(tmp_path / "vm-data")
    vm.start()
    try:
        yield vm
    finally:
        vm.stop()


def worker_metric(port: int, name: str) -> float:
    """One sample of a worker's own metrics endpoint (0 while it is not listening or lacks it)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m[1]) if m else 0.0


def worker_assigned(port: int) -> int:
    """Source partitions a worker reports as assigned on its own metrics endpoint."""
    return int(worker_metric(port, "patient_twin_assigned_partitions"))


def wait_for_stable_assignment(port: int, partitions: int, log: str) -> None:
    """Until the worker reports every partition assigned, twice, 5 s apart."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if worker_assigned(port) == partitions:
            time.sleep(5)
            if worker_assigned(port) == partitions:
                return
        time.sleep(0.5)
    pytest.fail(f"the worker did not get all {partitions} partitions within 90 s\n{log}")


def csrf_of(page: str) -> str:
    """The CSRF token of a dashboard form (the login or logout page)."""
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, "the page has no CSRF token"
    return m.group(1)


def login(client, name: str, password: str, next_: str | None = None):  # noqa: ANN001, ANN201
    """Log in through the form, as a browser does (GET the form for its token, then POST);
    `client` is a Flask test client. Returns the POST's response."""
    data = {"username": name, "password": password, "csrf": csrf_of(client.get("/login").text)}
    if next_ is not None:
        data["next"] = next_
    return client.post("/login", data=data)
