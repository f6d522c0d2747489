"""`patient-twin train` as an instructor runs it: a training ward on its own topics, trainee
accounts, and a debrief at the end; nothing reaches the real patients' topics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streams import config
from streams.follow import read_all
from tests.conftest import wait_until
from tests.test_demo import demo_env

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_training_ward_keeps_to_its_own_topics_and_writes_a_debrief():
    lines: list[str] = []
    with subprocess.Popen([sys.executable, "-m", "streams.cli", "train", "--patients", "4",
                           "--trainees", "2", "--speed", "100", "--duration", "45"],
                          env=demo_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as p:
        assert p.stdout is not None
        port = None
        while port is None:
            line = p.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            if m := re.search(r"Kafka at 127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
        base = config.load({"BROKER_PORT": str(port)})
        train = config.training_namespace(base)

        def raw(s: config.Settings) -> int:
            return len(read_all(s, s.topic_vitals_raw, idle_s=0.5))

        assert wait_until(lambda: raw(train) > 20, timeout=40)
        assert raw(base) == 0  # the real topic: no training reading ever
        for line in p.stdout:
            lines.append(line)
        assert p.wait(60) == 0, "".join(lines)
    out = "".join(lines)
    assert "TRAINING ward T" in out and "Traceback" not in out
    assert re.search(r"log in as trainee1 \(clinician\)", out)
    assert re.search(r"log in as trainee2 \(clinician\)", out)
    assert "log in as instructor (admin)" in out
    summary = json.loads(lines[-1])
    assert set(summary) >= {"clinical_alerts", "recognised", "missed", "escalation_expected"}
    path = Path(re.search(r"debrief in (\S+debrief\.json)", out).group(1))  # type: ignore[union-attr]
    doc = json.loads(path.read_text())
    assert doc["training"] is True and doc["scenario"] == "sepsis"
    assert doc["trainees"] == ["trainee1", "trainee2"] and doc["summary"] == summary
