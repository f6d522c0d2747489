"""`patient-twin`: the one console entry point, with sub-commands."""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from streams import config, supervise
from streams.errors import PatientTwinError

# The demo's deteriorations run 100 times faster than their clinical course (devices.simulator
# `pace`): the first NEWS2 alerts come within about 3 minutes of starting, where at pace 1
# they take an hour or more (docs/simulator.md).
DEMO_PACE = 100.0
# Training runs slower than the demo: a trainee has minutes, not seconds, to notice a patient.
TRAIN_PACE = 30.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction 0 <= F < 1, got {text}")
    return v


def _wards(text: str) -> list[str] | None:
    if text.strip().lower() == "none":
        return None
    wards = [w.strip() for w in text.split(",") if w.strip()]
    if not wards:
        raise config.ConfigError("--wards: give ward names separated by commas, or none")
    return wards


def _port(text: str) -> int:
    v = _positive_int(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1-65535, got {v}")
    return v


def _validation_args(p: argparse.ArgumentParser) -> None:
    """What `validate` and `fit` share: they are one run (devices.validate.main)."""
    p.add_argument("dataset", choices=["sepsis2019", "icu2012"])
    p.add_argument("directory", help="sepsis2019: a folder of .psv files (one per stay, the 2019 "
                   "Challenge's format); icu2012: a folder of RECORDID.txt files (the 2012 one's)")
    p.add_argument("--outcomes", default=None, metavar="FILE",
                   help="icu2012: the outcomes file (Outcomes-a.txt: in-hospital death, SAPS-I)")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                   help="only the first N stays")
    p.add_argument("--folds", type=_positive_int, default=5,
                   help="cross-validation folds, by stay (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", default=None, metavar="TEXT",
                   help="what the stays are, written into the fitted models' description "
                   "(default: the directory)")
    p.add_argument("--calibration-plot", default=None, metavar="FILE.png",
                   help="write the reliability diagram of the out-of-fold probabilities")
    p.add_argument("--nested-lambda", action="store_true",
                   help="also report the twin risk with its L2 strength chosen inside each "
                   "training set (nested cross-validation: about 20x the fitting time)")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="patient-twin", description="Remote patient monitoring with a live "
                "physiological digital twin per patient. Configuration comes from environment "
                "variables: see README.md.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("demo", help="broker + simulator + worker + dashboard, all in one")
    d.add_argument("--patients", type=_positive_int, default=20)
    d.add_argument("--duration", type=_positive_float, default=None,
                   help="stop after this many seconds (default: until Ctrl-C)")
    d.add_argument("--rate", type=_positive_float, default=1.0, help="device ticks per second")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--pace", type=_positive_float, default=DEMO_PACE, metavar="X",
                   help="deteriorations develop X times faster than their clinical course, so "
                   f"alerts come within minutes (default {DEMO_PACE:g}; 1: real clinical time)")

    tr = sub.add_parser("train", help="a training ward on its own topics: scripted "
                        "deteriorations, trainee accounts, their actions timed against the NEWS2 "
                        "escalation guidance, and a debrief at the end")
    tr.add_argument("--scenario", default="sepsis", metavar="NAME",
                    help="the deterioration half the patients go through: sepsis, respiratory, "
                    "bleeding, af or fever (the others stay stable; default sepsis)")
    tr.add_argument("--trainees", type=_positive_int, default=2,
                    help="trainee accounts trainee1..N (clinicians of the training ward T)")
    tr.add_argument("--patients", type=_positive_int, default=6)
    tr.add_argument("--speed", type=_positive_float, default=TRAIN_PACE, metavar="X",
                    help="deteriorations develop X times faster than their clinical course "
                    f"(default {TRAIN_PACE:g})")
    tr.add_argument("--duration", type=_positive_float, default=None,
                    help="stop after this many seconds and write the debrief (default: Ctrl-C)")
    tr.add_argument("--seed", type=int, default=1)
    tr.add_argument("--start", type=_utc_time, default=None, metavar="TIME",
                    help="the simulated clock's start (ISO-8601 with offset, within the last "
                    "day): the same seed and start give the same patients")

    b = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu)")
    b.add_argument("--port", type=_port, default=None, help="loopback port (default BROKER_PORT)")

    sub.add_parser("worker", help="run one stream-processing worker (Faust)")

    s = sub.add_parser("simulate", help="simulated wearables publishing vital signs")
    s.add_argument("--patients", type=_positive_int, default=20)
    s.add_argument("--rate", type=_positive_float, default=1.0, help="device ticks per second")
    s.add_argument("--duration", type=_positive_float, default=None,
                   help="simulated seconds to run (default: until Ctrl-C)")
    s.add_argument("--speed", type=_positive_float, default=1.0,
                   help="simulated time runs this many times faster than real time")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--pace", type=_positive_float, default=1.0, metavar="X",
                   help="deteriorations start X times sooner and develop X times faster than "
                   "their clinical course (demo, training; default 1: real clinical time)")
    s.add_argument("--start", type=_utc_time, default=None, metavar="TIME",
                   help="the simulated clock's start, ISO-8601 with its offset (default: now); "
                   "a seed and a start give the same messages whatever the wall clock")
    s.add_argument("--scenarios", default=None, metavar="MIX",
                   help="scenario mix, e.g. stable=0.6,sepsis=0.2,bleeding=0.2 (scenarios: "
                   "stable, sepsis, respiratory, bleeding, af, fever; default: "
                   "devices.scenarios.DEFAULT_MIX)")
    s.add_argument("--bad-fraction", type=_fraction, default=0.0, metavar="F",
                   help="fraction of messages that are malformed on purpose (default 0)")
    s.add_argument("--batch", type=_positive_int, default=1, metavar="K",
                   help="readings per message: a gateway uploading K readings at once")
    s.add_argument("--format", choices=["json", "fhir"], default="json",
                   help="json: the project's reading schema; fhir: FHIR R4 vital-signs "
                   "Observations (a Bundle per message)")
    s.add_argument("--clean-devices", action="store_true",
                   help="no artifacts, dropouts, duplicates, late delivery or battery drain")
    s.add_argument("--to", action="append", default=None, metavar="TARGET",
                   help="kafka (default: straight to vitals.raw, a trusted gateway), a "
                   "FILE.jsonl, or as the devices themselves: https://HOST:PORT/ingest (the "
                   "ingest endpoint) or mqtts://HOST:PORT (MQTT, through mqtt-bridge); http:// "
                   "and mqtt:// with INGEST_ALLOW_HTTP. Repeat to spread the patients over "
                   "several")
    s.add_argument("--credentials", default=None, metavar="FILE",
                   help="the devices' credentials for https/mqtts (JSON lines, mode 600); "
                   "devices not in it are enrolled (DEVICES_FILE, MQTT_PASSWORD_FILE) and added")
    s.add_argument("--ca", default=None, metavar="PEM",
                   help="CA of the ingest endpoint's or MQTT broker's certificate (default: "
                   "the system's)")
    s.add_argument("--wards", default="A", metavar="W1,W2",
                   help="admit the patients round-robin to these wards in the registry (not "
                   "for file output; default A); 'none' admits nobody")
    s.add_argument("--truth", default=None, metavar="FILE.jsonl",
                   help="ground-truth file (default: next to --to FILE; none for kafka)")
    s.add_argument("--no-progress", action="store_true")

    ev = sub.add_parser("evaluate", help="the twin's alerts vs a naive threshold baseline, "
                        "against the simulator's ground truth")
    ev.add_argument("--patients", type=_positive_int, default=100)
    ev.add_argument("--hours", type=_positive_float, default=24.0)
    ev.add_argument("--seed", type=int, default=1)
    ack = ev.add_mutually_exclusive_group()
    ack.add_argument("--ack-after-min", type=_positive_float, default=10.0, metavar="MIN",
                     help="the simulated ward acknowledges each alert MIN minutes after it is "
                     "raised (default 10)")
    ack.add_argument("--no-ack", action="store_true",
                     help="alerts are never acknowledged (a latched alert hides later events)")
    ev.add_argument("--no-progress", action="store_true")

    va = sub.add_parser("validate", help="the twin against raw NEWS2, a raw-feature model (and "
                        "SAPS-I) on labelled PhysioNet ICU stays; last line JSON")
    _validation_args(va)
    va.add_argument("--fit-out", default=None, metavar="FILE.json",
                    help="also write the risk models fitted on every stay (as `fit --out`)")
    fi = sub.add_parser("fit", help="fit the twin's risk models on a site's own labelled stays "
                        "(the PhysioNet Challenges' formats) and write their parameter file "
                        "(RISK_PARAMS_FILE); prints the cross-validated table like validate")
    _validation_args(fi)
    fi.add_argument("--out", required=True, metavar="FILE.json",
                    help="the parameter file to write (models already in it are kept unless "
                    "refitted)")

    r = sub.add_parser("replay", help="replay recorded vital signs (WFDB, CSV) into Kafka")
    r.add_argument("records", nargs="+", metavar="RECORD",
                   help="WFDB record (.hea or path without extension) or CSV file")
    r.add_argument("--speed", type=_positive_float, default=1.0,
                   help="replay this many times faster than recorded")
    r.add_argument("--to", default="kafka", help="kafka (default) or a FILE.jsonl")
    r.add_argument("--keep-time", action="store_true",
                   help="send the recorded timestamps (default: shifted to start now)")
    r.add_argument("--no-progress", action="store_true")

    db = sub.add_parser("dashboard", help="serve the clinician dashboard and the HTTP API")
    db.add_argument("--https", action="store_true",
                    help="serve TLS (WebXR needs a secure context away from localhost)")
    db.add_argument("--cert", default=None, help="PEM certificate (default: self-signed)")
    db.add_argument("--key", default=None, help="PEM private key of --cert")
    sub.add_parser("fetch-assets", help="fetch the VR scene's A-Frame from the npm registry "
                   "(once; the dashboard then serves it offline)")

    us = sub.add_parser("users", help="clinician accounts (USERS_FILE)")
    us_sub = us.add_subparsers(dest="users_command", metavar="ACTION", parser_class=_Parser,
                               required=True)
    usa = us_sub.add_parser("add", help="create an account, or reset its password and role")
    usa.add_argument("name")
    usa.add_argument("--role", choices=["viewer", "clinician", "admin"], required=True)
    usa.add_argument("--wards", default="", metavar="W1,W2",
                     help="wards the user sees ('*': all; admins always see all)")
    usa.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input (default: prompt twice)")
    us_sub.add_parser("list", help="the accounts, without password hashes")

    ing = sub.add_parser("ingest", help="the devices' HTTP(S) endpoint: POST /ingest with a "
                         "device credential; readings of paired devices to Kafka")
    ing.add_argument("--cert", default=None, help="PEM certificate to serve TLS with")
    ing.add_argument("--key", default=None, help="PEM private key of --cert")
    ing.add_argument("--client-ca", default=None,
                     help="PEM CA: devices must also show a client certificate it signed")
    sub.add_parser("mqtt-bridge", help="bridge devices' MQTT readings (MQTT_URL) into the "
                   "ingest path and Kafka")
    dv = sub.add_parser("devices", help="device credentials for the ingest endpoint and MQTT")
    dv_sub = dv.add_subparsers(dest="devices_command", metavar="ACTION", parser_class=_Parser,
                               required=True)
    dva = dv_sub.add_parser("add", help="issue a device's credential (printed once; stored "
                            "hashed in DEVICES_FILE)")
    dva.add_argument("device_id")

    au = sub.add_parser("audit", help="read the audit trail back: who viewed or did what, "
                        "when (one JSON line per record, oldest first)")
    au.add_argument("--patient", default=None, help="only records about this patient")
    au.add_argument("--user", default=None, help="only this user's records "
                    "(API tokens: token:NAME)")
    au.add_argument("--since", default=None, type=_since, metavar="TIME",
                    help="only records from TIME on: ISO-8601 (2026-11-29T08:00:00Z) or a "
                    "duration back from now (90m, 24h, 7d)")
    au.add_argument("--by", required=True, help="who reads the trail (recorded in it)")

    pt = sub.add_parser("patients", help="the patient registry: admit, transfer, discharge, "
                        "pair devices, set the NEWS2 SpO2 scale")
    pt_sub = pt.add_subparsers(dest="patients_command", metavar="ACTION", parser_class=_Parser,
                               required=True)
    pt_sub.add_parser("list", help="admitted patients")
    for action, what in (("admit", "admit a patient to a ward"),
                         ("transfer", "move a patient to another ward or bed"),
                         ("discharge", "discharge (devices are unpaired)"),
                         ("pair", "pair a device with an admitted patient"),
                         ("scale", "set the NEWS2 SpO2 scale (a clinician's decision)")):
        pa = pt_sub.add_parser(action, help=what)
        pa.add_argument("patient_id")
        if action in ("admit", "transfer"):
            pa.add_argument("--ward", required=True)
            pa.add_argument("--bed", default=None)
        if action in ("admit", "pair"):
            pa.add_argument("--device", action="append", default=[],
                            required=action == "pair", help="device id (repeatable)")
        if action == "scale":
            pa.add_argument("scale", type=int, choices=[1, 2])
        pa.add_argument("--by", required=True, help="who makes the change (recorded)")
    sub.add_parser("dispatcher", help="deliver alert events to webhook subscribers")
    tk = sub.add_parser("tokens", help="API tokens for machine clients")
    tk_sub = tk.add_subparsers(dest="tokens_command", metavar="ACTION", parser_class=_Parser,
                               required=True)
    tka = tk_sub.add_parser("add", help="create a token (printed once; stored hashed)")
    tka.add_argument("name")
    tka.add_argument("--wards", required=True, metavar="W1,W2",
                     help="the wards the token covers ('*': all)")
    tka.add_argument("--scopes", default="read", metavar="S1,S2",
                     help="read (alert stream, own webhooks), act (acknowledge, silence), "
                          "admin (every client's webhooks); default read")

    a = sub.add_parser("analyze", help="run the twin and alert logic over recorded data offline")
    a.add_argument("records", nargs="+", metavar="RECORD",
                   help="WFDB record (.hea or path without extension) or CSV file")
    a.add_argument("--out", required=True, metavar="FILE.jsonl")
    a.add_argument("--no-progress", action="store_true")

    bn = sub.add_parser("bench", help="benchmarks that print numbers side by side")
    bn.add_argument("which", choices=list(BENCHMARKS),
                    help="twin: the twin core's throughput; kalman: the generic filter API "
                    "beside filterpy; devices: the simulator into Kafka; "
                    "pipeline: the Faust worker beside a do-nothing agent, and live latency; "
                    "dashboard: callback latency under many viewers; failover: how long "
                    "monitoring stops when a worker is killed and replaced")
    bn.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    tp = sub.add_parser("topics", help="create the project's topics on the configured Kafka")
    tp.add_argument("--wait", type=_positive_float, default=30.0, metavar="SECONDS",
                    help="how long to wait for a Kafka broker to answer (default 30)")
    return p


# `patient-twin bench WHICH` -> the module whose main(argv) runs it
BENCHMARKS = {"twin": "bench.twin_bench", "kalman": "bench.kalman_bench",
              "devices": "bench.devices_bench",
              "pipeline": "bench.pipeline_bench", "dashboard": "bench.dashboard_bench",
              "failover": "bench.failover_gap", "broker-memory": "bench.broker_memory",
              "dashboard-feed": "bench.dashboard_feed"}


Args = argparse.Namespace


def _analyze(args: Args, settings: config.Settings) -> int:
    from devices.analyze import analyze

    summary = analyze(args.records, args.out, progress=not args.no_progress)
    print(summary.line(), file=sys.stderr)
    return 0


def _bench(args: Args, settings: config.Settings) -> int:
    import importlib

    return importlib.import_module(BENCHMARKS[args.which]).main(args.args)


def _topics(args: Args, settings: config.Settings) -> int:
    from streams import topics

    created = topics.ensure(settings, timeout=args.wait)
    print(f"topics created: {', '.join(created) or 'none (all existed)'}")
    return 0


def _worker(args: Args, settings: config.Settings) -> int:
    from streams.worker.app import run_worker

    return run_worker(settings)


def _simulate(args: Args, settings: config.Settings) -> int:
    import json

    from devices.faults import DeviceEffects
    from devices.run import simulate

    stats = simulate(settings, patients=args.patients, rate=args.rate,
                     duration=args.duration, speed=args.speed, seed=args.seed,
                     to=args.to or ["kafka"], credentials=args.credentials, ca_file=args.ca,
                     mix=args.scenarios, bad_fraction=args.bad_fraction, batch=args.batch,
                     fmt=args.format,
                     truth_file=args.truth, wards=_wards(args.wards),
                     effects=DeviceEffects.clean() if args.clean_devices else None,
                     pace=args.pace, start=args.start.timestamp() if args.start else None,
                     progress=not args.no_progress)
    print(f"simulate: done: patients={stats.patients} messages={stats.messages} "
          f"readings={stats.readings} malformed={sum(stats.malformed.values())} "
          f"errors={stats.errors}", file=sys.stderr)
    print(json.dumps(stats.summary()), flush=True)
    return 1 if stats.errors else 0


def _evaluate(args: Args, settings: config.Settings) -> int:
    from devices.evaluate import main as evaluate_main

    return evaluate_main(args.patients, args.hours, args.seed, not args.no_progress,
                         None if args.no_ack else args.ack_after_min)


def _validate(args: Args, settings: config.Settings) -> int:
    from devices.validate import main as validate_main

    # `fit` is `validate` that writes the parameter file: the same run, so a site sees the
    # cross-validated figures of the models it is about to use.
    out = args.out if args.command == "fit" else args.fit_out
    return validate_main(args.dataset, args.directory, args.outcomes, limit=args.limit,
                         folds=args.folds, seed=args.seed, progress=not args.no_progress,
                         fit_out=out, calibration_plot=args.calibration_plot,
                         source=args.source, nested_lambda=args.nested_lambda)


def use_risk_params(settings: config.Settings) -> None:
    """Point the twin's risk at RISK_PARAMS_FILE (if set) for this process, checked now: a
    worker must not start, and then fail on its first batch, with a file it cannot use."""
    if settings.risk_params_file is None:
        return
    from twin import risk

    try:
        risk.use_params_file(settings.risk_params_file)
    except ValueError as exc:
        raise config.ConfigError(f"RISK_PARAMS_FILE: {exc}") from None


def _replay(args: Args, settings: config.Settings) -> int:
    from devices.replay import replay

    rs = replay(settings, args.records, speed=args.speed, to=args.to,
                keep_time=args.keep_time, progress=not args.no_progress)
    print(f"replay: done: records={rs.records} messages={rs.messages} "
          f"empty_rows={rs.empty_rows} errors={rs.errors}", file=sys.stderr)
    return 1 if rs.errors else 0


def _utc_time(text: str) -> datetime:
    """An ISO-8601 time with its UTC offset."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give an ISO-8601 time like 2026-11-29T08:00:00Z") from None
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give the time's UTC offset (e.g. Z)")
    return t


def _since(text: str) -> datetime:
    """--since: an ISO-8601 time with its offset, or 90m / 24h / 7d back from now."""
    units = {"m": 60, "h": 3600, "d": 86_400}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        return _utc_time(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, or 90m, 24h, 7d") from None


def _audit(args: Args, settings: config.Settings) -> int:
    import msgspec

    from streams.audit import AuditLog, read

    trail = AuditLog(settings)
    try:  # reading the trail is itself a read of patient data: recorded before it happens
        trail.record(args.by, "view_audit", role="cli", patient_id=args.patient,
                     detail=f"user={args.user} since={args.since}", wait=True)
    finally:
        trail.close()
    for rec in read(settings, args.patient, args.user, args.since):
        print(msgspec.json.encode(rec).decode())
    return 0


def _ingest(args: Args, settings: config.Settings) -> int:
    import threading

    from streams.ingest import serve

    stop = threading.Event()
    supervise.on_stop_signals(stop.set)
    serve(settings, args.cert, args.key, args.client_ca,
          on_ready=lambda url: print(f"ingest: POST {url}", flush=True), stop=stop)
    return 0


def _devices(args: Args, settings: config.Settings) -> int:
    from streams.enrol import enrol

    print(enrol(settings, [args.device_id])[args.device_id])
    return 0


def _mqtt_bridge(args: Args, settings: config.Settings) -> int:
    import threading

    from streams.mqtt import run_bridge

    stop = threading.Event()
    supervise.on_stop_signals(stop.set)
    run_bridge(settings, stop, on_ready=lambda: print(
        f"mqtt-bridge: {settings.mqtt_url} devices/+/readings -> {settings.topic_vitals_raw}",
        flush=True))
    return 0


def _tokens(args: Args, settings: config.Settings) -> int:
    from dashboard.auth import add_token

    if settings.api_tokens_file is None:
        raise config.ConfigError("API_TOKENS_FILE is not set: say where token hashes live")
    print(add_token(settings.api_tokens_file, args.name, _wards(args.wards) or [],
                    [x.strip() for x in args.scopes.split(",") if x.strip()]))
    return 0


def _dispatcher(args: Args, settings: config.Settings) -> int:
    from streams.webhooks import Dispatcher

    d = Dispatcher(settings)
    supervise.on_stop_signals(d.stop)
    print("dispatcher: delivering alert events to webhook subscribers", flush=True)
    d.run()
    print(f"dispatcher: stopped (delivered {d.delivered}, dead-lettered {d.dead})",
          flush=True)
    return 0


def _fetch_assets(args: Args, settings: config.Settings) -> int:
    from dashboard.vr import fetch_aframe

    print(f"fetch-assets: {fetch_aframe()}")
    return 0


def _demo(args: Args, settings: config.Settings) -> int:
    from streams.demo import run_demo

    return run_demo(settings, patients=args.patients, duration=args.duration,
                    rate=args.rate, seed=args.seed, pace=args.pace)


def _train(args: Args, settings: config.Settings) -> int:
    import json
    from pathlib import Path

    from streams.demo import Session, run_demo

    scenarios = ("sepsis", "respiratory", "bleeding", "af", "fever")
    if args.scenario not in scenarios:
        raise config.ConfigError(f"--scenario {args.scenario}: expected one of "
                                 f"{', '.join(scenarios)}")
    trainees = {f"trainee{i}" for i in range(1, args.trainees + 1)}

    def finish(s: config.Settings, log_dir: Path) -> None:
        from streams.debrief import read

        result = read(s, trainees)
        result["scenario"] = args.scenario
        path = log_dir / "debrief.json"
        path.write_text(json.dumps(result, indent=1))
        sm = result["summary"]
        print(f"train: debrief in {path}: {sm['clinical_alerts']} clinical alerts, "
              f"{sm['recognised']} recognised, {sm['missed']} missed, "
              f"{sm['escalated_as_expected']} of {sm['escalation_expected']} escalated as the "
              "NEWS2 guidance expects", flush=True)
        print(json.dumps(result["summary"]), flush=True)

    accounts = {t: ("clinician", ["T"]) for t in sorted(trainees)}
    accounts["instructor"] = ("admin", [])
    session = Session(name="train", mix=f"{args.scenario}=0.5,stable=0.5", wards="T",
                      accounts=accounts, training=True,
                      start=args.start.isoformat() if args.start else None, on_finish=finish)
    return run_demo(settings, patients=args.patients, duration=args.duration, rate=1.0,
                    seed=args.seed, pace=args.speed, session=session)


def _run(args: Args, settings: config.Settings) -> int:
    """Run the sub-command `args.command` (its parser is in `build_parser`)."""
    return COMMANDS[args.command](args, settings)


def _dashboard(args: Args, settings: config.Settings) -> int:
    from dashboard import tls, vr
    from dashboard.app import serve

    try:
        vr.fetch_aframe()
    except vr.AssetError as exc:
        print(f"dashboard: the VR scene is unavailable: {exc}", file=sys.stderr)
    scheme = "https" if args.https else "http"
    if args.https:
        cert, key = tls.certificate(settings, args.cert, args.key)
        print(f"dashboard: TLS certificate SHA-256 {tls.fingerprint(cert)}", flush=True)
    else:
        cert = key = None
    print(f"dashboard: {scheme}://{settings.dashboard_host}:{settings.dashboard_port}/",
          flush=True)
    serve(settings, https=args.https, cert=cert, key=key)
    return 0


def _users(args: Args, settings: config.Settings) -> int:
    from dashboard.auth import UserStore, add_user

    if settings.users_file is None:
        raise config.ConfigError("USERS_FILE is not set: say where the accounts live")
    if args.users_command == "list":
        for u in UserStore(settings.users_file).users():
            print(f"{u.name}\t{u.role}\t{','.join(u.wards)}")
        return 0
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        import getpass

        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise config.ConfigError("the two passwords differ")
    wards = [w.strip() for w in args.wards.split(",") if w.strip()]
    u = add_user(settings.users_file, args.name, args.role, wards, password)
    print(f"users: {u.name} ({u.role}, wards {','.join(u.wards)}) saved")
    return 0


def _patients(args: Args, settings: config.Settings) -> int:
    import msgspec

    from streams.audit import AuditLog
    from streams.registry import RegistryError, RegistryWriter, caught_up, listing

    cmd = args.patients_command
    event = {"pair": "update", "scale": "update", "list": "view_ward"}.get(cmd, cmd)
    trail = AuditLog(settings)
    reg = caught_up(settings)

    def record(action: str, detail: str) -> None:
        trail.record(getattr(args, "by", None) or getpass.getuser(), action, role="cli",
                     patient_id=getattr(args, "patient_id", None), detail=detail, wait=True)

    try:
        if cmd == "list":
            record(event, "patient-twin patients list")  # safe before the read
            print("\n".join(listing(reg.admitted())))
            return 0
        fields: dict[str, object] = {}
        if cmd in ("admit", "transfer"):
            fields.update(ward=args.ward, bed=args.bed)
        if cmd in ("admit", "pair"):
            fields["devices"] = args.device
        if cmd == "scale":
            fields["spo2_scale"] = args.scale
        writer = RegistryWriter(settings, reg)
        try:
            rec = writer.apply(args.patient_id, event, args.by, **fields)
        except RegistryError as exc:
            record("denied", f"patient-twin patients {cmd}: {exc}")  # a refusal is audited too
            raise
        finally:
            writer.close()
        record(event, f"patient-twin patients {cmd}")
        print(msgspec.json.encode(rec).decode())
        return 0
    finally:
        reg.stop()
        trail.close()


def _broker(args: Args, settings: config.Settings) -> int:
    import contextlib
    import subprocess

    import msgspec

    from streams import broker

    port = args.port or settings.broker_port
    # with the project's topics: a broker started again after a crash is empty
    proc = broker.start_with_topics(msgspec.structs.replace(
        settings, broker_port=port, kafka_bootstrap_servers=None))
    print(f"broker: Kafka bootstrap 127.0.0.1:{port} (embedded Tansu, memory only), topics "
          "created. Ctrl-C stops it.", flush=True)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        proc.terminate()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    memory = broker.MemoryWatch(settings.broker_memory_warn_fraction)
    while (code := proc.poll()) is None:
        warning = memory.check(proc.pid)
        if warning:
            print(f"broker: {warning}", file=sys.stderr, flush=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1.0)
    if stopping:
        print("broker: stopped", flush=True)
        return 0
    print(f"broker: exited unexpectedly with code {code}", file=sys.stderr)
    return 1


# sub-command -> what runs it: the one place a command's name meets its code
COMMANDS: dict[str, Callable[[Args, config.Settings], int]] = {
    "analyze": _analyze, "bench": _bench,
    "broker": _broker,
    "topics": _topics, "worker": _worker, "simulate": _simulate, "evaluate": _evaluate,
    "replay": _replay, "tokens": _tokens, "dispatcher": _dispatcher,
    "dashboard": _dashboard,
    "fetch-assets": _fetch_assets,
    "users": _users, "patients": _patients,
    "demo": _demo, "audit": _audit, "ingest": _ingest, "devices": _devices,
    "mqtt-bridge": _mqtt_bridge, "validate": _validate, "train": _train, "fit": _validate,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    supervise.exit_with_parent()
    try:
        settings = config.load()
        logging.basicConfig(level=settings.log_level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # Client libraries log every connection at INFO; keep our own lines readable.
        for noisy in ("kafka", "aiokafka"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # kafka-python 3 warns whenever its I/O thread waited on the GIL for 0.1 s (busy
        # producers do that constantly); nothing a user can act on.
        logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
        # ...and logs a metadata refresh it cancelled itself while a client closes normally.
        logging.getLogger("kafka.cluster").addFilter(
            lambda rec: "failed Cancelled" not in rec.getMessage())
        if args.command not in ("fit", "validate"):  # they fit models, never read the live one
            use_risk_params(settings)
        return _run(args, settings)
    except PatientTwinError as exc:
        print(f"patient-twin {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # What kafka-python's clients raise from their constructors when no broker answers (the
        # ingest endpoint, the MQTT bridge, the dispatcher, the registry's follower); its other
        # timeouts (a missing topic's metadata, a slow broker) stay what they are. The servers
        # named are the client's own (the demo may have moved its broker to another port).
        if type(exc).__module__ != "kafka.errors" or type(exc).__name__ != "KafkaTimeoutError" \
                or "Unable to bootstrap" not in str(exc):
            raise
        print(f"patient-twin {args.command}: no Kafka broker reachable ({exc}); is the broker "
              "running and KAFKA_BOOTSTRAP_SERVERS right?", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
