"""`patient-twin demo`: broker, simulator, worker and dashboard together, with a status line.

Every child is started with `supervise.spawn` (it dies with us, even on SIGKILL) and stopped in
reverse order on Ctrl-C, SIGTERM, `--duration`, or when any child fails. Two are restarted
instead, as a site's supervisor would: the embedded broker if it dies (on its port, with the
topics created again: it comes back empty), and the worker when it exits with code 3 (it asks for
a restart: stalled, out of its group, or the broker lost its records). At most
`MAX_RESTARTS` times each.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from streams import broker, config, mqtt, supervise, topics
from streams.config import Settings
from streams.follow import Follower

MAX_RESTARTS = 10

@dataclass
class Status:
    readings: int = 0
    states: int = 0
    alerts: int = 0
    patients: set[str] = field(default_factory=set)


class StatusFeed:
    """Counts messages on the demo's topics (messages, not offsets: see docs/tansu.md)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.status = Status()
        self._follower = Follower(settings, (settings.topic_vitals_raw,
                                             settings.topic_twin_state, settings.topic_alerts),
                                  self._apply, "patient-twin-demo")

    def start(self) -> StatusFeed:
        self._follower.start()
        return self

    def stop(self) -> None:
        self._follower.stop()

    def _apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if topic == self.settings.topic_vitals_raw:
            self.status.readings += 1
        elif topic == self.settings.topic_twin_state:
            self.status.states += 1
            if key is not None:
                self.status.patients.add(key.decode())
        else:
            self.status.alerts += 1


class _Children:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        # name -> (exit codes that restart it (None: any), how to start it again)
        self.restart: dict[str, tuple[set[int] | None,
                                      Callable[[], subprocess.Popen[bytes]]]] = {}
        self.restarts: dict[str, int] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str],
              restart_on: set[int] | None = None) -> None:
        def spawn() -> subprocess.Popen[bytes]:
            # appended to: a restarted child's log follows its predecessor's
            with open(self.log_dir / f"{name}.log", "ab") as log:
                return supervise.spawn(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

        self.procs.append((name, spawn()))
        if restart_on is not None:
            self.restart[name] = (restart_on, spawn)

    def add(self, name: str, proc: subprocess.Popen[bytes],
            again: Callable[[], subprocess.Popen[bytes]] | None = None) -> None:
        """A child started by the caller; `again` starts it anew whenever it dies."""
        self.procs.append((name, proc))
        if again is not None:
            self.restart[name] = (None, again)

    def failed(self) -> str | None:
        """Restart the children that may be; the first one that failed otherwise, or None."""
        for i, (name, p) in enumerate(self.procs):
            if p.poll() is None:
                continue
            codes, again = self.restart.get(name, (set(), None))
            if again is None or (codes is not None and p.returncode not in codes) or \
                    self.restarts.get(name, 0) >= MAX_RESTARTS:
                return f"{name} exited with code {p.returncode}"
            self.restarts[name] = self.restarts.get(name, 0) + 1
            print(f"\ndemo: the {name} exited with code {p.returncode}; starting it again",
                  flush=True)
            self.procs[i] = (name, again())
        return None

    def pid(self, name: str) -> int:
        return next(p.pid for n, p in self.procs if n == name)

    def stop(self, name: str | None = None) -> None:
        for n, p in reversed(self.procs):
            if name is None or n == name:
                supervise.stop(p, timeout=15)


def _mqtt_site(directory: Path, env: dict[str, str]) -> str:
    """A Mosquitto for the demo's devices in `directory` (plain MQTT on loopback: the
    development setting, like the demo's http), the bridge's account in it and in `env`.
    Returns its URL."""
    directory.mkdir(mode=0o700)
    port = supervise.free_port()
    password = secrets.token_urlsafe(16)
    settings = config.load(env)
    mqtt.set_passwords(str(directory / "passwd"), {settings.mqtt_username: password})
    mqtt.write_site(directory, port, settings.mqtt_username, tls=None)
    env.update(MQTT_URL=f"mqtt://127.0.0.1:{port}", MQTT_PASSWORD=password,
               MQTT_PASSWORD_FILE=str(directory / "passwd"))
    return env["MQTT_URL"]


def _enrol_simulated(env: dict[str, str], path: Path, patients: int, seed: int) -> None:
    """Credentials for the simulated wearables, issued before Mosquitto reads its password
    file."""
    from devices.simulator import device_ids
    from devices.transport import load_credentials

    load_credentials(str(path), config.load(env), device_ids(patients, seed))


@dataclass(frozen=True)
class Session:
    """What `run_demo` runs: the demo by default, or a training session (`patient-twin train`):
    its scenario mix, wards, accounts (name -> (role, wards); None: one throwaway admin), the
    training ward's own topics, the simulated clock's start, and what to do at the end while
    everything still runs (the training debrief)."""

    name: str = "demo"
    mix: str | None = None
    wards: str = "A,B"
    accounts: dict[str, tuple[str, list[str]]] | None = None
    training: bool = False
    start: str | None = None
    on_finish: Callable[[Settings, Path], None] | None = None


def run_demo(settings: Settings, *, patients: int, duration: float | None, rate: float,
             seed: int, pace: float = 1.0, session: Session = Session()) -> int:
    stop = threading.Event()
    supervise.on_stop_signals(stop.set)
    log_dir = Path(tempfile.mkdtemp(prefix=f"patient-twin-{session.name}-"))
    children = _Children(log_dir)
    env = dict(os.environ)
    if session.training:
        # every child on the training ward's own topics (config.training_namespace)
        env["TRAINING"] = "true"
        settings = config.training_namespace(msgspec.structs.replace(settings, training=True))
    try:
        if settings.embedded_broker:
            port = settings.broker_port
            if not supervise.port_free(port):
                port = supervise.free_port()
                print(f"{session.name}: port {settings.broker_port} is taken; broker uses {port}")
            env["BROKER_PORT"] = str(port)
            settings = msgspec.structs.replace(settings, broker_port=port)
            # The embedded broker keeps every byte and deletes none (docs/tansu.md), so the demo
            # sets it up to hold few (docs/performance.md, "Broker memory"), unless told otherwise.
            if "KAFKA_PARTITIONS" not in env:
                # One worker holds every partition in the demo. With one, each moment's records
                # of all patients share a record batch, and the embedded broker keeps about
                # 1 KB a batch besides the bytes and deletes nothing: 2.1 instead of 3.2 KB a
                # reading at 40 patients (docs/performance.md, "Broker memory").
                env["KAFKA_PARTITIONS"] = "1"
                settings = msgspec.structs.replace(settings, kafka_partitions=1)
            if "WORKER_COMMIT_INTERVAL_S" not in env:
                # The changelog gets each twin's record (a few KB with its history) once per
                # commit interval, and the embedded broker keeps them all: at 10 s instead of
                # 2.8, 1.24 -> 0.97 KB of broker memory a reading at 40 patients
                # (docs/performance.md, "Broker memory"). A worker that crashes re-reads up to
                # 10 s of readings, which its twins skip as duplicates.
                env["WORKER_COMMIT_INTERVAL_S"] = "10"
            children.add("broker", broker.start(port), again=lambda: broker.start_with_topics(
                settings))
        topics.ensure(settings)
        dash_port = settings.dashboard_port
        if not supervise.port_free(dash_port, settings.dashboard_host):
            dash_port = supervise.free_port(settings.dashboard_host)
        env["DASHBOARD_PORT"] = str(dash_port)
        metrics_port = settings.worker_metrics_port
        if metrics_port and not supervise.port_free(metrics_port, settings.worker_metrics_host):
            metrics_port = supervise.free_port(settings.worker_metrics_host)
        env["WORKER_METRICS_PORT"] = str(metrics_port)
        # the demo serves its dashboard and device ingest over plain http on loopback: the
        # development settings
        env.setdefault("DASHBOARD_ALLOW_HTTP", "true")
        env.setdefault("INGEST_ALLOW_HTTP", "true")
        ingest_port = settings.ingest_port
        if not supervise.port_free(ingest_port, settings.ingest_host):
            ingest_port = supervise.free_port(settings.ingest_host)
        env["INGEST_PORT"] = str(ingest_port)
        env.setdefault("DEVICES_FILE", str(log_dir / "devices.jsonl"))
        login_lines = []
        if settings.users_file is None or session.accounts is not None:
            # throwaway accounts for this session only, in its temporary directory
            from dashboard.auth import add_user

            env["USERS_FILE"] = str(log_dir / "users.jsonl")
            for name, (role, wards) in (session.accounts or {"demo": ("admin", [])}).items():
                password = secrets.token_urlsafe(12)
                add_user(env["USERS_FILE"], name, role, wards, password)
                login_lines.append(f"{session.name}: log in as {name} ({role}) with password "
                                   f"{password}")
        # The simulated wearables send as devices do, each with its own credential: through
        # the ingest endpoint, and through Mosquitto and the bridge when Mosquitto is installed.
        targets = [f"http://{settings.ingest_host}:{ingest_port}/ingest"]
        mqtt_line = None
        mosquitto = mqtt.mosquitto_binary()
        if mosquitto is not None:
            targets.append(_mqtt_site(log_dir / "mqtt", env))
            mqtt_line = (f"{session.name}: MQTT devices at {targets[-1]} (Mosquitto; every "
                         "other patient publishes there)")
        credentials = log_dir / "device-credentials.jsonl"
        _enrol_simulated(env, credentials, patients, seed)
        if mosquitto is not None:
            children.start("mosquitto", [mosquitto, "-c", str(log_dir / "mqtt" /
                                                              "mosquitto.conf")], env)
            port = int(targets[-1].rsplit(":", 1)[1])
            deadline = time.monotonic() + 15
            while supervise.port_free(port) and time.monotonic() < deadline:
                time.sleep(0.1)
            children.start("mqtt-bridge", supervise.python_argv("mqtt-bridge"), env)
        children.start("worker", supervise.python_argv("worker"), env,
                       restart_on={supervise.RESTART_EXIT_CODE})
        children.start("dashboard", supervise.python_argv("dashboard"), env)
        children.start("dispatcher", supervise.python_argv("dispatcher"), env)
        children.start("ingest", supervise.python_argv("ingest"), env)
        children.start("simulator", supervise.python_argv(
            "simulate", "--patients", str(patients), "--rate", str(rate), "--seed", str(seed),
            "--wards", session.wards, "--credentials", str(credentials), "--pace", str(pace),
            *(("--scenarios", session.mix) if session.mix else ()),
            *(("--start", session.start) if session.start else ()),
            *(a for t in targets for a in ("--to", t))),
            env)
        print(f"{session.name}: Kafka at {settings.bootstrap}"
              f"{' (embedded broker)' if settings.embedded_broker else ''}")
        print(f"{session.name}: dashboard at http://{settings.dashboard_host}:{dash_port}/ "
              f"(VR ward at /vr)")
        if session.training:
            print(f"{session.name}: TRAINING ward {session.wards}: simulated patients only, on "
                  f"the training topics ({settings.topic_vitals_raw}, ...); the debrief is "
                  "written when it stops")
        for line in login_lines:
            print(line)
        print(f"{session.name}: device ingest at "
              f"http://{settings.ingest_host}:{ingest_port}/ingest (credentials: patient-twin "
              f"devices add DEVICE_ID, with DEVICES_FILE={env['DEVICES_FILE']})")
        if mqtt_line:
            print(mqtt_line)
        if metrics_port:
            print(f"{session.name}: worker metrics at http://{settings.worker_metrics_host}:{metrics_port}"
                  "/metrics")
        print(f"{session.name}: logs in {log_dir}; Ctrl-C stops everything", flush=True)
        feed = StatusFeed(settings).start()
        memory = broker.MemoryWatch(settings.broker_memory_warn_fraction) \
            if settings.embedded_broker else None
        t0 = time.monotonic()
        failure = None
        tty = sys.stdout.isatty()
        last_print = 0.0
        while not stop.is_set():
            elapsed = time.monotonic() - t0
            if duration is not None and elapsed >= duration:
                break
            failure = children.failed()
            if failure:
                break
            warning = memory.check(children.pid("broker")) if memory is not None else None
            if warning:
                print(f"{chr(10) if tty else ''}{session.name}: {warning}", flush=True)
            st = feed.status
            line = (f"{session.name}: {elapsed:5.0f} s  readings sent {st.readings}  twins updated "
                    f"{len(st.patients)}/{patients} patients ({st.states} states)  "
                    f"alerts {st.alerts}")
            if tty:
                print("\r" + line, end="", flush=True)
            elif elapsed - last_print >= 5.0:
                print(line, flush=True)
                last_print = elapsed
            stop.wait(1.0)
        # Stop the source first, let the worker finish what is in flight, then the rest.
        children.stop("simulator")
        if failure is None:
            time.sleep(min(3.0, max(1.0, settings.worker_batch_seconds * 4)))
        feed.stop()
        st = feed.status
        if tty:
            print()
        print(f"{session.name}: readings sent {st.readings}; twins updated for "
              f"{len(st.patients)} of {patients} patients ({st.states} twin states); "
              f"alerts {st.alerts}", flush=True)
        if failure:
            print(f"{session.name}: stopped because the {failure}; see {log_dir}", file=sys.stderr)
            return 1
        if session.on_finish is not None:
            session.on_finish(settings, log_dir)
        return 0
    finally:
        children.stop()
