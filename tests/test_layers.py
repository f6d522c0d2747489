"""The layers of docs/architecture.md hold: import-linter's contracts in pyproject.toml."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout and "4 kept" in out.stdout


def test_every_streams_module_but_the_wiring_point_is_under_the_contract():
    """A new module in streams/ is held to the contract unless it is declared a wiring point:
    only `cli` and `demo` may start the dashboard, the devices or the benchmarks."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (services,) = [c for c in contracts["contracts"] if "never import the dashboard, the devices"
                   in c["name"]]
    held = set(services["source_modules"])
    modules = {f"streams.{p.stem}" for p in (ROOT / "streams").glob("*.py")
               if p.stem != "__init__"} | {
        f"streams.{p.name}" for p in (ROOT / "streams").iterdir()
        if p.is_dir() and (p / "__init__.py").exists()}
    assert modules - held == {"streams.cli", "streams.demo"}


def _heavy_imports(modules: str, heavy: tuple[str, ...]) -> list[str]:
    """The modules of `heavy` (packages or modules) that importing `modules` loads, in a fresh
    interpreter."""
    code = (f"import json, sys, {modules}\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m in {heavy!r} or "
            f"m.split('.')[0] in {heavy!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_the_light_processes_start_without_the_filtering_core():
    """The ingest endpoint, the MQTT bridge, the dispatcher and the demo's supervisor check and
    pass on messages: they load neither numpy nor the rest of the scientific stack, and the
    worker's decoding child only numpy. Importing the twin's filtering core for a default, a
    hash or a dataclass cost each 20-60 MB of a demo's memory budget (twin.policy,
    twin.devices, twin.readings, streams.worker.batch; docs/performance.md)."""
    heavy = ("scipy", "faust", "dash", "influxdb_client", "twin.bank", "twin.alerts",
             "twin.history")
    assert _heavy_imports("streams.cli, streams.ingest, streams.mqtt, streams.webhooks, "
                          "streams.watchdog, streams.demo, streams.enrol, streams.broker",
                          ("numpy", *heavy)) == []
    assert _heavy_imports("streams.worker.decoder", heavy) == []
