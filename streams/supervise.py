"""Child processes that cannot outlive their parent: spawn, wait for readiness, stop."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

_PR_SET_PDEATHSIG = 1
# A worker's exit code asking its supervisor for a restart (README, "Running N workers"): the
# demo restarts such a worker, a site's supervisor should too.
RESTART_EXIT_CODE = 3


def on_stop_signals(action: Callable[[], object]) -> None:
    """Run `action` on SIGINT and SIGTERM, in a thread of its own. A signal handler runs between
    two bytecodes of the main thread, which may hold the very lock `action` takes:
    `threading.Event.set` from the handler while the main thread was inside `Event.wait` on the
    same event deadlocked (seen: a demo that never stopped on Ctrl-C)."""
    def handler(*_: object) -> None:
        threading.Thread(target=action, name="stop-signal", daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # Linux: the kernel sends SIGTERM to the child when the parent dies, even by SIGKILL, so no
    # child of ours is ever orphaned. Harmless no-op elsewhere.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


ORPHAN_GRACE_S = 10.0
_PARENT_ENV = "PATIENT_TWIN_PARENT_PID"


def exit_with_parent() -> None:
    """In a child `spawn` started: once its parent is gone (the kernel has sent SIGTERM, and
    nobody is left to escalate to SIGKILL), allow a graceful stop ORPHAN_GRACE_S, then exit.
    A client stopping while the broker stops too can otherwise wait on its request timeouts."""
    # Only for our own parent: not inherited by anything this process starts without `spawn`.
    parent = os.environ.pop(_PARENT_ENV, "")
    if not parent.isdigit() or os.getppid() != int(parent):
        return
    ppid = int(parent)

    def watch() -> None:
        while os.getppid() == ppid:
            time.sleep(1.0)
        time.sleep(ORPHAN_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def spawn(argv: Sequence[str], *, env: dict[str, str] | None = None,
          stdout: int | None = None, stderr: int | None = None,
          stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start a child that is terminated when this process dies.

    The child gets its own session, so a Ctrl-C in the terminal reaches only us and we stop the
    children in order (the broker last), instead of the broker vanishing under its clients.
    """
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    env = {**(os.environ if env is None else env), _PARENT_ENV: str(os.getpid())}
    return subprocess.Popen(list(argv), env=env, stdout=stdout, stderr=stderr,
                            stdin=stdin, preexec_fn=preexec,  # noqa: PLW1509
                            start_new_session=True)


def python_argv(*args: str) -> list[str]:
    """argv that runs the `patient-twin` CLI with this interpreter."""
    return [sys.executable, "-m", "streams.cli", *args]


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM, wait, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    return proc.returncode


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on the port now. SO_REUSEADDR as servers set it: the
    connections a killed server leaves in TIME_WAIT must not keep it from starting again."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


_ports = random.Random()  # its own: a seeded global random would give every process one order


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux; IANA's elsewhere)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = map(int, f.read().split())
    except (OSError, ValueError):
        return 49152, 65535
    return lo, hi


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a child to serve on. Chosen below the ephemeral range:
    a port the kernel hands out for bind(0) is in that range, and until the child binds it any
    outgoing connection of any process may take it as its local port (seen: the demo's
    dashboard stopped with "Address already in use" beside a busy broker)."""
    lo, _ = _ephemeral_range()
    if lo > 12_000:
        for _ in range(200):
            port = _ports.randrange(10_000, lo)
            if port_free(port, host):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None,
                  timeout: float = 15.0, host: str = "127.0.0.1") -> bool:
    """True once something accepts connections on the port; False on timeout or child exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.05)
    return False

