"""RISK_PARAMS_FILE: a site's own risk parameter file for the worker, `analyze` and `evaluate`,
checked when a command starts (a worker must not start and then fail on its first batch)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams import cli, config
from streams.worker.process import TwinProcessor
from twin import risk


@pytest.fixture(autouse=True)
def packaged_file_after() -> Iterator[None]:
    """The chosen file is process-wide: every test leaves the packaged one in place."""
    yield
    risk.use_params_file(None)


def _packaged() -> dict:
    return json.loads(risk.PARAMS_FILE.read_text(encoding="utf-8"))


def _drop_live(doc: dict) -> dict:
    del doc["models"][risk.LIVE_MODEL]
    return doc


def _drop_feature(doc: dict) -> dict:
    m = doc["models"][risk.LIVE_MODEL]
    for k in ("features", "mean", "scale", "coef"):
        m[k] = m[k][:-1]
    return doc


def _short_coef(doc: dict) -> dict:
    doc["models"][risk.LIVE_MODEL]["coef"].pop()
    return doc


def _no_threshold(doc: dict) -> dict:
    del doc["models"][risk.LIVE_MODEL]["threshold"]
    return doc


def _version(doc: dict) -> dict:
    doc["version"] = 2
    return doc


BAD: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda d: d / "absent.json", "cannot read"),
    "a directory": (lambda d: d, "cannot read"),
    "truncated JSON": (lambda d: _write(d, risk.PARAMS_FILE.read_text()[:500]), "not a JSON"),
    "not UTF-8": (lambda d: _write_bytes(d, b"\xff\xfe{}"), "not a JSON"),
    "no live model": (lambda d: _write(d, json.dumps(_drop_live(_packaged()))),
                      "no model 'sepsis_risk'"),
    "other features": (lambda d: _write(d, json.dumps(_drop_feature(_packaged()))),
                       "other features"),
    "arrays that do not fit": (lambda d: _write(d, json.dumps(_short_coef(_packaged()))),
                               "malformed"),
    "no operating point": (lambda d: _write(d, json.dumps(_no_threshold(_packaged()))),
                           "operating point"),
    "another version": (lambda d: _write(d, json.dumps(_version(_packaged()))), "version"),
}


def _write(d: Path, text: str) -> Path:
    p = d / "params.json"
    p.write_text(text, encoding="utf-8")
    return p


def _write_bytes(d: Path, data: bytes) -> Path:
    p = d / "params.json"
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_file_stops_the_command_with_one_line(case: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    make, expected = BAD[case]
    path = make(tmp_path)
    monkeypatch.setenv("RISK_PARAMS_FILE", str(path))
    # evaluate would run (and exit 0) within a second if the file were not checked first
    code = cli.main(["evaluate", "--patients", "1", "--hours", "0.01", "--no-progress"])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in captured.err
    assert err.startswith("patient-twin evaluate: RISK_PARAMS_FILE: ") and expected in err
    assert captured.out == ""  # nothing ran
    # and a refused file is not left half-chosen: the packaged one is still in use
    assert risk.params_file() == risk.PARAMS_FILE


def test_the_worker_uses_a_sites_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With RISK_PARAMS_FILE set, the worker's processor holds the site's model and raises the
    sepsis_risk alert at the site's operating point, not the packaged one's."""
    doc = _packaged()
    live = doc["models"][risk.LIVE_MODEL]
    live["threshold"] = 0.5
    live["coef"] = [2.0 * c for c in live["coef"]]
    path = _write(tmp_path, json.dumps(doc))
    monkeypatch.setenv("RISK_PARAMS_FILE", str(path))
    cli.use_risk_params(config.load())
    proc = TwinProcessor()
    assert proc.engine.policy.risk_raise == 0.5
    assert list(proc.risk.coef) == live["coef"]
    risk.use_params_file(None)
    packaged = TwinProcessor()
    assert packaged.engine.policy.risk_raise == risk.threshold(risk.load(risk.LIVE_MODEL))
    assert packaged.engine.policy.risk_raise != 0.5


def test_unset_means_the_packaged_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RISK_PARAMS_FILE", raising=False)
    settings = config.load()
    assert settings.risk_params_file is None
    cli.use_risk_params(settings)
    assert risk.params_file() == risk.PARAMS_FILE
