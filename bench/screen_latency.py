"""From a reading to the clinician's screen: `patient-twin demo` with `--patients` simulated
patients, a logged-in headless Chromium (Debian's, Playwright) on one patient's page, and a probe
patient whose readings carry a new heart rate every ~1.3 s; latency = time from sending a reading
to the page's NEWS2 breakdown showing that value as the latest reading (noted by the page
itself at the first animation frame after the change). Everything (broker,
worker, dashboard, simulator, browser with software WebGL) shares this machine. A consumer of
twin.state beside it splits each sample in two: reading -> twin state on Kafka (the worker) and
twin state -> screen (the dashboard's consumer, the page's timer, the callback, the browser).

Run: `python -m bench.screen_latency [--patients 200] [--samples 20]`; prints p50 and max.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import msgspec
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams import config, messages, supervise

PROBE = "PLAT"
WATCH_JS = """() => {
  window.__seen = {};
  const note = () => {
    const row = document.querySelector('tr.news2-pulse');  // cells: name, score, est, raw
    const m = row && row.cells.length > 3 && row.cells[3].innerText.match(/^([0-9.]+) /);
    if (m && window.__seen[m[1]] === undefined) {
      const hr = m[1];
      requestAnimationFrame(() => { window.__seen[hr] = Date.now(); });
    }
  };
  new MutationObserver(note).observe(document.body,
    {subtree: true, childList: true, characterData: true});
}"""


def main(argv: list[str] | None = None) -> int:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(prog="python -m bench.screen_latency")
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--samples", type=int, default=20)
    args = ap.parse_args(argv)
    broker, web = supervise.free_port(), supervise.free_port()
    env = {**os.environ, "BROKER_PORT": str(broker), "DASHBOARD_PORT": str(web),
           "WORKER_METRICS_PORT": str(supervise.free_port())}
    demo = subprocess.Popen([sys.executable, "-m", "streams.cli", "demo", "--patients",
                             str(args.patients)], stdout=subprocess.PIPE, text=True, env=env)
    password = None
    assert demo.stdout is not None
    for line in demo.stdout:
        if m := re.search(r"password (\S+)", line):
            password = m.group(1)
            break
    # keep reading the demo's status lines so it never blocks on a full pipe
    threading.Thread(target=lambda: [None for _ in demo.stdout], daemon=True).start()
    time.sleep(20)  # the worker joins its group and the simulated ward is flowing
    producer = KafkaProducer(bootstrap_servers=f"127.0.0.1:{broker}")
    on_kafka: dict[float, float] = {}  # heart rate -> monotonic time its twin state arrived
    stop = threading.Event()

    def watch() -> None:
        consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{broker}", group_id=None,
                                 fetch_max_wait_ms=config.EMBEDDED_FETCH_MAX_WAIT_MS)
        parts = [TopicPartition("twin.state", p)
                 for p in sorted(consumer.partitions_for_topic("twin.state") or ())]
        consumer.assign(parts)
        consumer.seek_to_end(*parts)
        while not stop.is_set():
            for recs in consumer.poll(timeout_ms=100).values():
                now = time.time()
                for r in recs:
                    if r.key == PROBE.encode():
                        hr = msgspec.json.decode(r.value, type=messages.TwinState).raw["hr"]
                        on_kafka.setdefault(hr, now)
        consumer.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def send(seq: int, hr: float) -> None:
        r = messages.reading("WR-PROBE", PROBE, seq, messages.utc(time.time()),
                             {"hr": hr, "spo2": 97.0})
        producer.send("vitals.raw", key=PROBE.encode(), value=messages.encode(r))
        producer.flush()

    send(1, 70.0)
    lat, worker_s = [], []
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader", "--disable-background-networking"])
            page = b.new_page()
            page.goto(f"http://127.0.0.1:{web}/patient/{PROBE}")
            page.fill("#username", "demo")
            page.fill("#password", password or "")
            page.click("#login")
            page.wait_for_selector("tr.news2-pulse", timeout=60_000)
            # The page itself notes when each heart rate first shows, at the next animation
            # frame after the DOM changed (the paint): no polling from here, which on this
            # machine queued behind the renderer and added to what it measured.
            page.evaluate(WATCH_JS)
            for k in range(2, 2 + args.samples):
                hr = 100.0 + k
                t0 = time.time()
                send(k, hr)
                try:
                    page.wait_for_function(f"window.__seen['{hr:g}'] !== undefined",
                                           timeout=30_000)
                    lat.append(page.evaluate(f"window.__seen['{hr:g}']") / 1000 - t0)
                except PlaywrightTimeout:
                    lat.append(30.0)
                if hr in on_kafka:
                    worker_s.append(on_kafka[hr] - t0)
                time.sleep(1.3)
            b.close()
    finally:
        stop.set()
        watcher.join(5)
        producer.close()
        demo.terminate()
        demo.wait(60)
    print(f"reading -> twin state on Kafka, {len(worker_s)} samples: "
          f"p50 {statistics.median(worker_s):.2f} s, max {max(worker_s):.2f} s")
    print(f"reading -> screen, {args.patients} patients, {len(lat)} samples: "
          f"p50 {statistics.median(lat):.2f} s, max {max(lat):.2f} s")
    print("samples (s):", " ".join(f"{v:.2f}" for v in lat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
