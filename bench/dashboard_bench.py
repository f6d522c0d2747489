"""The dashboard under many viewers: `--viewers` logged-in clients each refreshing a ward of
`--patients` every `dashboard.pages.ward.WARD_REFRESH_MS` (what the ward page's timer does), for
`--seconds`.

The ward's twins are real: a simulated cohort (devices.simulator, deterioration scenarios on)
is run through the worker's own `TwinProcessor` for `--minutes` of simulated time, and the twin
states and alert events it produced are folded into the dashboard's feed, as its Kafka consumer
would. The dashboard is the real app (logins, ward restrictions, audit on the embedded broker)
on the real threaded server (cheroot, `DASHBOARD_THREADS` threads).

Measured one after the other in the same run, same viewers, same server, same load pattern:
- baseline: every viewer polls the cheapest callback the page has (the header's user name):
  the server's own cost per callback;
- ward: every viewer polls the ward overview callback (every patient's row, sorted by risk).
The last line is JSON: viewers, patients, requests, p50_ms, p95_ms, baseline_p50_ms,
baseline_p95_ms.

Run: `patient-twin bench dashboard [--viewers 50] [--patients 500] [--seconds 20]`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import msgspec
import numpy as np

from dashboard.pages.ward import WARD_REFRESH_MS
from devices.simulator import Cohort
from streams import broker, config, messages, supervise, topics
from streams.registry import change
from streams.worker.process import TwinProcessor
from twin.channels import NAMES

PASSWORD = "bench password 1"


def build_ward(s: config.Settings, feed, patients: int, minutes: float) -> int:  # noqa: ANN001
    """Fold a simulated ward's twin states and alert events into `feed`; returns the events."""
    cohort = Cohort(patients, seed=11, mix="stable=0.6,sepsis=0.2,respiratory=0.1,bleeding=0.1")
    t_end = time.time()
    t0 = t_end - minutes * 60
    proc = TwinProcessor(clock=lambda: t0)
    stored: dict[str, bytes] = {}
    for pid in cohort.patient_ids:
        rec = change(None, pid, "admit", "bench", ward="A", bed=pid[-3:])
        feed.apply(s.topic_patients, pid.encode(), msgspec.json.encode(rec))
    events = 0
    seq = 0
    for t in np.arange(0.0, minutes * 60, 5.0):
        seq += 1
        vals = cohort.true_values(t)
        readings = [messages.ValidReading(
            f"WR-{i}", pid, seq, t0 + t, {ch: float(vals[i, j]) for j, ch in enumerate(NAMES)},
            0.9, 0.8) for i, pid in enumerate(cohort.patient_ids)]
        result = proc.process(readings, stored, now=t0 + t)
        stored.update(result.states)
        for st in result.twin_states:
            feed.apply(s.topic_twin_state, None, messages.encode(st))
        for a in result.alerts:
            feed.apply(s.topic_alerts, None, messages.encode(a))
        events += len(result.twin_states) + len(result.alerts)
    return events


# The requests the pages' timers make (Dash's callback protocol; multi-output ids are joined
# as "..a.prop...b.prop..").
WARD = json.dumps({
    "output": "..ward-table.data...ward-summary.children..",
    "outputs": [{"id": "ward-table", "property": "data"},
                {"id": "ward-summary", "property": "children"}],
    "inputs": [{"id": "ward-refresh", "property": "n_intervals", "value": 1}],
    "changedPropIds": ["ward-refresh.n_intervals"], "state": []}).encode()
BASELINE = json.dumps({
    "output": "whoami.children", "outputs": {"id": "whoami", "property": "children"},
    "inputs": [{"id": "whoami", "property": "id", "value": "whoami"}],
    "changedPropIds": ["whoami.id"], "state": []}).encode()


def login(port: int, user: str) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/login")  # the form's CSRF token, tied to its session cookie
    r = c.getresponse()
    form = r.read().decode()
    anonymous = r.getheader("Set-Cookie", "").split(";")[0]
    token = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    body = urllib.parse.urlencode({"username": user, "password": PASSWORD, "csrf": token})
    c.request("POST", "/login", body=body,
              headers={"Content-Type": "application/x-www-form-urlencoded",
                       "Cookie": anonymous})
    r = c.getresponse()
    r.read()
    c.close()
    return r.getheader("Set-Cookie", "").split(";")[0]


class Viewer(threading.Thread):
    """One browser tab: a keep-alive connection posting `payload` at the page's refresh rate."""

    def __init__(self, port: int, cookie: str, payload: bytes, start_at: float,
                 until: float) -> None:
        super().__init__(daemon=True)
        self.port, self.cookie, self.payload = port, cookie, payload
        self.start_at, self.until = start_at, until
        self.ms: list[float] = []
        self.errors = 0

    def run(self) -> None:
        headers = {"Content-Type": "application/json", "Cookie": self.cookie}
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        time.sleep(max(0.0, self.start_at - time.monotonic()))
        tick = time.monotonic()
        while time.monotonic() < self.until:
            t = time.perf_counter()
            try:
                c.request("POST", "/_dash-update-component", body=self.payload,
                          headers=headers)
                resp = c.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.errors += not ok
            self.ms.append((time.perf_counter() - t) * 1000)
            tick += WARD_REFRESH_MS / 1000  # the page's timer
            time.sleep(max(0.0, tick - time.monotonic()))
        c.close()


def phase(port: int, cookies: list[str], payload: bytes, seconds: float
          ) -> tuple[np.ndarray, int]:
    """Every viewer posts `payload` every WARD_REFRESH_MS for `seconds`, starts spread over a second
    (tabs are not synchronised); latencies in ms and the number of errors."""
    t0 = time.monotonic() + 0.5
    viewers = [Viewer(port, ck, payload, t0 + i / len(cookies), t0 + seconds)
               for i, ck in enumerate(cookies)]
    for v in viewers:
        v.start()
    for v in viewers:
        v.join()
    return np.array([x for v in viewers for x in v.ms]), sum(v.errors for v in viewers)


def main(argv: list[str] | None = None) -> int:
    from cheroot import wsgi

    from dashboard.app import close, create_app
    from dashboard.auth import add_user
    from dashboard.feed import TwinFeed
    from streams.audit import AuditLog
    from streams.webhooks import SubscriptionView

    ap = argparse.ArgumentParser(prog="patient-twin bench dashboard")
    ap.add_argument("--viewers", type=int, default=50)
    ap.add_argument("--patients", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--minutes", type=float, default=10.0,
                    help="simulated history of the ward before the viewers arrive")
    args = ap.parse_args(argv)

    port = supervise.free_port()
    proc = broker.start(port)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    try:
        users = str(tmp / "users.jsonl")
        for v in range(args.viewers):
            add_user(users, f"viewer{v}", "clinician", ["A"], PASSWORD)
        base = config.load({"BROKER_PORT": str(port)})
        s = msgspec.structs.replace(base, users_file=users, dashboard_allow_http=True)  # loopback
        topics.ensure(s)
        feed = TwinFeed(s)  # filled from the simulated ward below, not from Kafka
        t = time.perf_counter()
        events = build_ward(s, feed, args.patients, args.minutes)
        print(f"ward: {args.patients} patients, {events} twin-state and alert events "
              f"({time.perf_counter() - t:.1f} s)", flush=True)
        subs = SubscriptionView(s).start()
        audit = AuditLog(s)
        app = create_app(s, feed=feed, subscriptions=subs, audit=audit)
        http_port = supervise.free_port()
        server = wsgi.Server(("127.0.0.1", http_port), app.server,
                             numthreads=s.dashboard_threads)
        server.prepare()
        th = threading.Thread(target=server.serve, daemon=True)
        th.start()
        cookies = [login(http_port, f"viewer{v}") for v in range(args.viewers)]
        base_ms, base_err = phase(http_port, cookies, BASELINE, args.seconds)
        ward_ms, ward_err = phase(http_port, cookies, WARD, args.seconds)
        errors = base_err + ward_err
        server.stop()
        close(app)
        subs.stop()
        audit.close()
        res = {
            "viewers": args.viewers, "patients": args.patients,
            "requests": int(len(ward_ms) + len(base_ms)), "errors": errors,
            "p50_ms": round(float(np.percentile(ward_ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ward_ms, 95)), 1),
            "baseline_p50_ms": round(float(np.percentile(base_ms, 50)), 1),
            "baseline_p95_ms": round(float(np.percentile(base_ms, 95)), 1),
        }
        print(f"{'callback':<22}{'p50 ms':>10}{'p95 ms':>10}{'requests':>10}")
        print(f"{'baseline (user name)':<22}{res['baseline_p50_ms']:>10}"
              f"{res['baseline_p95_ms']:>10}{len(base_ms):>10}")
        print(f"{'ward overview':<22}{res['p50_ms']:>10}{res['p95_ms']:>10}{len(ward_ms):>10}")
        print(f"target: ward p95 < 300 ms with {args.viewers} viewers of {args.patients} "
              f"patients; errors {errors}")
        print(json.dumps(res), flush=True)
        return 0 if errors == 0 else 1
    finally:
        supervise.stop(proc)


if __name__ == "__main__":
    raise SystemExit(main())
