"""Children of a killed parent do not outlive it, even when they ignore the SIGTERM it leaves."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import wait_until
from tests.test_demo import alive

# A child that ignores SIGTERM (as a client stuck in a graceful stop would, waiting on a broker
# that is gone) under a parent that is then SIGKILLed.
CHILD = textwrap.dedent("""
    import signal, time
    from streams import supervise
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    supervise.ORPHAN_GRACE_S = 1.0
    supervise.exit_with_parent()
    time.sleep(60)
""")
PARENT = textwrap.dedent(f"""
    import sys, time
    from streams import supervise
    p = supervise.spawn([sys.executable, "-c", {CHILD!r}])
    print(p.pid, flush=True)
    time.sleep(60)
""")


def test_a_child_left_by_a_killed_parent_exits_after_the_grace_period():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(1.0)
        assert alive({child})
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        t0 = time.monotonic()
        assert wait_until(lambda: not alive({child}), timeout=10)
        assert time.monotonic() - t0 >= 0.9  # it had its grace period: SIGTERM was ignored
    finally:
        parent.kill()
        parent.wait(10)
        parent.stdout.close()


def test_a_port_left_in_time_wait_by_a_killed_server_is_free_again():
    """A broker killed with clients connected leaves their connections in TIME_WAIT on its
    port; starting it again on the same port must not be refused as 'in use'."""
    import socket

    from streams.supervise import free_port, port_free

    port = free_port()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    assert not port_free(port)  # listening: in use
    conn.close()  # the server side closes first: its end of the connection goes to TIME_WAIT
    server.close()
    client.close()
    assert port_free(port)


def test_free_ports_are_below_the_ephemeral_range_and_not_listened_on(monkeypatch):
    """A port from the kernel's ephemeral range can become any outgoing connection's local port
    before the child that was given it binds it: free_port keeps out of that range and skips
    a port something listens on."""
    import socket

    from streams import supervise

    lo, _ = supervise._ephemeral_range()
    if lo <= 12_000:
        pytest.skip(f"the ephemeral range starts at {lo}: free_port takes the kernel's pick")
    ports = [supervise.free_port() for _ in range(50)]
    assert all(10_000 <= p < lo for p in ports) and len(set(ports)) > 40
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", ports[0]))
        busy.listen()
        picks = iter([ports[0], ports[1]])  # the first pick is taken: the next one is used
        monkeypatch.setattr(supervise._ports, "randrange", lambda a, b: next(picks))
        assert supervise.free_port() == ports[1]


def test_stop_signals_set_an_event_the_main_thread_is_waiting_on():
    """The action runs in a thread of its own, so a signal arriving while the main thread holds
    the event's lock (inside `wait`) cannot deadlock it, however many come."""
    import os
    import signal
    import threading

    from streams import supervise

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop = threading.Event()
    try:
        supervise.on_stop_signals(stop.set)
        killer = threading.Timer(0.2, lambda: [os.kill(os.getpid(), signal.SIGTERM)
                                               for _ in range(20)])
        killer.start()
        assert stop.wait(5.0)
        killer.join()
    finally:
        for s, h in before.items():
            signal.signal(s, h)
