"""`patient-twin demo` as a user runs it: it reports every twin and leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams import supervise
from tests.conftest import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def cmdlines(pids: set[int]) -> dict[int, str]:
    """What each process runs (for a failure message)."""
    out = {}
    for p in pids:
        try:
            out[p] = Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:120]
        except OSError:
            out[p] = "?"
    return out


def alive(pids: set[int]) -> set[int]:
    out = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(p)
    return out


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    env["BROKER_PORT"] = str(supervise.free_port())
    env["DASHBOARD_PORT"] = str(supervise.free_port())
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_demo(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "streams.cli", "demo", *args],
                            env=env or demo_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def partitions(port: str, topic: str) -> set[int] | None:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{port}", group_id=None)
    try:
        return consumer.partitions_for_topic(topic)
    finally:
        consumer.close()


def test_demo_reports_every_twin_and_leaves_nothing_behind():
    env = demo_env()
    with start_demo("--patients", "5", "--duration", "30", env=env) as p:
        assert wait_until(lambda: len(descendants(p.pid)) >= 4, timeout=20)
        kids = descendants(p.pid)
        # one worker, so one partition: the embedded broker keeps ~1 KB for every record batch
        # and every partition has its own batches
        found: list[set[int] | None] = []
        assert wait_until(lambda: found.append(partitions(env["BROKER_PORT"], "vitals.raw"))
                          or found[-1] is not None, timeout=20)
        assert found[-1] == {0}
        # and the changelog written every 10 s, not every 2.8 (what the broker keeps, again)
        worker: list[int] = []
        assert wait_until(lambda: worker.extend(
            k for k, cmd in cmdlines(descendants(p.pid)).items()
            if cmd.rstrip().endswith("streams.cli worker")) or worker, timeout=20), \
            cmdlines(descendants(p.pid))
        environ = Path(f"/proc/{worker[0]}/environ").read_bytes().split(b"\0")
        assert b"WORKER_COMMIT_INTERVAL_S=10" in environ
        out, _ = p.communicate(timeout=90)
    assert p.returncode == 0, out
    assert "dashboard at http://127.0.0.1:" in out
    assert "twins updated for 5 of 5 patients" in out, out
    assert wait_until(lambda: not alive(kids), timeout=5), f"orphans: {alive(kids)}"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_or_killed_demo_leaves_no_process(sig):
    with start_demo("--patients", "3") as p:
        assert wait_until(lambda: len(descendants(p.pid)) >= 4, timeout=20)
        time.sleep(3)
        kids = descendants(p.pid)
        what = cmdlines(kids)
        p.send_signal(sig)
        p.communicate(timeout=60)
        if sig == signal.SIGINT:
            assert p.returncode == 0
        # even SIGKILL of the demo takes every child with it (PR_SET_PDEATHSIG)
        assert wait_until(lambda: not alive(kids), timeout=20), \
            f"orphans: {[what[k] for k in alive(kids)]}"
