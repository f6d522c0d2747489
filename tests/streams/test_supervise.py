"""Children of a killed parent do not outlive it, even when they ignore the SIGTERM it leaves."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

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
