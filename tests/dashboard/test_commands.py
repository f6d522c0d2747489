"""`patient-twin users` and `patient-twin patients` as a user types them (real broker)."""

from __future__ import annotations

import json

import pytest

from streams import topics
from tests.conftest import settings_env
from tests.streams.test_cli import run


def test_users_add_and_list(tmp_path):
    env = {"USERS_FILE": str(tmp_path / "u.jsonl")}
    r = run("users", "add", "ann", "--role", "clinician", "--wards", "A,B", "--password-stdin",
            env=env, stdin="a long password\n")
    assert r.returncode == 0, r.stderr
    r = run("users", "add", "bob", "--role", "viewer", "--wards", "A", "--password-stdin",
            env=env, stdin="short\n")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "at least 10" in r.stderr
    r = run("users", "list", env=env)
    assert r.stdout.splitlines() == ["ann\tclinician\tA,B"]
    r = run("users", "list", env={"USERS_FILE": ""})
    assert r.returncode == 2 and "USERS_FILE" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.broker
def test_patients_admit_pair_scale_transfer_discharge(settings_factory):
    s = settings_factory()
    topics.ensure(s)
    env = settings_env(s)
    r = run("patients", "admit", "P7", "--ward", "A", "--bed", "4", "--device", "D1",
            "--by", "nurse-1", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ward"] == "A"
    r = run("patients", "admit", "P7", "--ward", "B", "--by", "nurse-1", env=env)
    assert r.returncode == 2 and "already admitted" in r.stderr and r.stderr.count("\n") == 1
    assert run("patients", "pair", "P7", "--device", "D2", "--by", "nurse-1",
               env=env).returncode == 0
    r = run("patients", "scale", "P7", "2", "--by", "dr-lee", env=env)
    rec = json.loads(r.stdout)
    assert (rec["spo2_scale"], rec["spo2_scale_set_by"], rec["devices"]) == (2, "dr-lee",
                                                                            ["D1", "D2"])
    assert run("patients", "transfer", "P7", "--ward", "C", "--bed", "1", "--by", "nurse-2",
               env=env).returncode == 0
    r = run("patients", "list", env=env)
    assert r.stdout.splitlines()[1].split() == ["P7", "C", "1", "2", "D1,D2"]
    assert run("patients", "discharge", "P7", "--by", "nurse-2", env=env).returncode == 0
    assert run("patients", "list", env=env).stdout.splitlines()[1:] == []
    r = run("patients", "transfer", "P7", "--ward", "A", "--by", "x", env=env)
    assert r.returncode == 2 and "not admitted" in r.stderr
    # every CLI read and action, refusals included, is in the trail, and reads back
    r = run("audit", "--patient", "P7", "--since", "1h", "--by", "auditor", env=env)
    assert r.returncode == 0, r.stderr
    trail = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(a["user"], a["action"]) for a in trail] == [
        ("nurse-1", "admit"), ("nurse-1", "denied"), ("nurse-1", "update"),
        ("dr-lee", "update"), ("nurse-2", "transfer"), ("nurse-2", "discharge"),
        ("x", "denied"), ("auditor", "view_audit")]
    assert all(a["role"] == "cli" for a in trail)
    r = run("audit", "--user", "nurse-2", "--since", "2026-01-01T00:00:00Z", "--by", "auditor",
            env=env)
    assert {json.loads(line)["action"] for line in r.stdout.splitlines()} == {
        "transfer", "discharge"}
    r = run("audit", "--since", "yesterday", "--by", "auditor", env=env)
    assert r.returncode == 2 and "--since" in r.stderr and r.stderr.count("\n") == 1
