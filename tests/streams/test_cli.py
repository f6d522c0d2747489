"""The command line as a user meets it: help, one-line errors, no tracebacks."""

import os
import signal
import subprocess
import sys
import time

import pytest

from streams import supervise


def run(*args, env=None, timeout=60, stdin=None):
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, env=e, timeout=timeout, input=stdin)


def test_help_lists_the_subcommands():
    out = run("--help").stdout
    for name in ("demo", "broker", "worker", "simulate", "dashboard", "users", "patients",
                 "fetch-assets"):
        assert name in out


@pytest.mark.parametrize("args,fragment", [
    (("demo", "--patients", "zero"), "--patients"),
    (("demo", "--duration", "-5"), "--duration"),
    (("broker", "--port", "99999"), "--port"),
    (("simulate", "--rate", "0"), "--rate"),
])
def test_bad_argument_is_one_line(args, fragment):
    r = run(*args)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and fragment in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args,env,fragment", [
    (("--to", "http://127.0.0.1:9/ingest"), {}, "INGEST_ALLOW_HTTP"),
    (("--to", "https://127.0.0.1:9/ingest"), {}, "--credentials"),
    (("--to", "mqtts://"), {}, "no host"),
    (("--to", "mqtts://127.0.0.1:9", "--credentials", "{tmp}/c.jsonl"), {}, "DEVICES_FILE"),
    (("--to", "https://127.0.0.1:9/ingest", "--credentials", "{tmp}/bad.jsonl"),
     {"DEVICES_FILE": "{tmp}/d.jsonl"}, "expected JSON lines"),
])
def test_simulating_devices_without_what_they_need_is_one_line(args, env, fragment, tmp_path):
    """`simulate --to https://|mqtts://` names what is missing, before sending anything."""
    (tmp_path / "bad.jsonl").write_text("not json\n")
    fill = {k: v.replace("{tmp}", str(tmp_path)) for k, v in env.items()}
    r = run("simulate", "--duration", "1", *(a.replace("{tmp}", str(tmp_path)) for a in args),
            env=fill)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and fragment in r.stderr, r.stderr
    assert not (tmp_path / "d.jsonl").exists()  # nobody enrolled


def test_bad_environment_is_one_line_naming_the_variable():
    r = run("topics", env={"KAFKA_PARTITIONS": "lots"})
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "KAFKA_PARTITIONS" in r.stderr


def test_unreachable_kafka_is_one_line():
    port = supervise.free_port()
    r = run("topics", "--wait", "2", env={"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"},
            timeout=90)
    assert r.returncode == 2
    assert "no Kafka broker reachable" in r.stderr and "Traceback" not in r.stderr
    assert "within 2 s" in r.stderr


def test_an_edge_service_without_kafka_is_one_line(tmp_path):
    """The ingest endpoint with no broker behind it: kafka-python's bootstrap error was a
    traceback; now one line naming the address and the variable."""
    port = supervise.free_port()
    r = run("ingest", env={"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
                           "DEVICES_FILE": str(tmp_path / "devices.jsonl"),
                           "INGEST_ALLOW_HTTP": "true", "INGEST_PORT": str(supervise.free_port())},
            timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    # one line of ours (kafka-python's threads may still log around it)
    (ours,) = [line for line in r.stderr.splitlines() if line.startswith("patient-twin ")]
    assert ours.startswith("patient-twin ingest: no Kafka broker reachable (")
    assert f"127.0.0.1:{port}" in ours and ours.endswith("KAFKA_BOOTSTRAP_SERVERS right?")


def test_the_dispatcher_without_kafka_is_one_line_within_the_bootstrap_timeout():
    """It waited up to a minute for its subscriptions first, said "starting anyway", and only
    then found no broker (90 s in all): now its producer's bootstrap comes first."""
    port = supervise.free_port()
    t0 = time.monotonic()
    r = run("dispatcher", env={"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}, timeout=120)
    elapsed = time.monotonic() - t0
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    (ours,) = [line for line in r.stderr.splitlines() if line.startswith("patient-twin ")]
    assert ours.startswith("patient-twin dispatcher: no Kafka broker reachable (")
    assert "starting anyway" not in r.stderr and "subscriptions" not in r.stderr
    assert elapsed < 55, elapsed  # kafka-python's bootstrap gives up after ~30 s


def test_a_dashboard_port_in_use_is_one_line(tmp_path):
    """Another server on DASHBOARD_PORT: the dashboard says which port and what to set, as its
    last line, and no traceback (cheroot's own error was one)."""
    import socket

    from dashboard.auth import add_user

    users = tmp_path / "users.jsonl"
    add_user(str(users), "admin1", "admin", [], "a long enough password 1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run("dashboard", env={"DASHBOARD_PORT": str(port), "DASHBOARD_ALLOW_HTTP": "true",
                                  "USERS_FILE": str(users),
                                  "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{supervise.free_port()}"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    # one line of ours (the feed's kafka-python threads may still log around it)
    assert [line for line in r.stderr.splitlines() if line.startswith("patient-twin ")] == [(
        f"patient-twin dashboard: the dashboard cannot listen on 127.0.0.1:{port}: the port is "
        "in use (set DASHBOARD_PORT to a free one)")]


@pytest.mark.broker
def test_broker_prints_address_and_stops_cleanly_on_sigterm():
    port = supervise.free_port()
    with subprocess.Popen([sys.executable, "-m", "streams.cli", "broker", "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        _check_broker(p, port)


def _check_broker(p, port):
    try:
        line = p.stdout.readline()
        assert f"127.0.0.1:{port}" in line
        assert supervise.wait_for_port(port, timeout=10)
        # the port is taken now: a second broker says so in one line
        r = run("broker", "--port", str(port))
        assert r.returncode == 2 and "already in use" in r.stderr
        assert r.stderr.count("\n") == 1
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=15) == 0
        time.sleep(0.2)
        assert supervise.port_free(port)  # the Tansu child went with it
    finally:
        supervise.stop(p)


def test_every_sub_command_has_its_code_and_every_code_its_command():
    import argparse

    from streams import cli

    (subs,) = [a for a in cli.build_parser()._actions
               if isinstance(a, argparse._SubParsersAction)]
    assert set(subs.choices) == set(cli.COMMANDS)
