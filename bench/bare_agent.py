"""A do-nothing Faust agent, the pipeline benchmark's baseline: counts events and exits.

Same broker settings and Faust tuning as the worker (`streams.worker.app.faust_app_config`), and
the same consumer fast path (`streams.compat.faust_direct_handover`), so the ratio compares our
per-event work with Faust's as the worker runs it.
Writes one JSON object `{"events": n, "first": t, "last": t}` (time.monotonic of the first and
last event, comparable across processes on Linux) to `--out` once it has seen `--events` events
(a file: Faust redirects stdout into its log).

Run: `python -m bench.bare_agent --events N --out FILE` with the worker's environment variables.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import faust

from streams import compat, config
from streams.worker.app import faust_app_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.bare_agent")
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    settings = config.load()
    compat.faust_direct_handover()
    app = faust.App(settings.app_id, **faust_app_config(settings))
    topic = app.topic(settings.topic_vitals_raw, key_type=bytes, value_type=bytes,
                      key_serializer="raw", value_serializer="raw",
                      partitions=settings.kafka_partitions)
    seen = {"n": 0, "first": 0.0}

    @app.agent(topic)
    async def count(stream: faust.StreamT) -> None:
        async for _ in stream.events():
            seen["n"] += 1
            if seen["n"] == 1:
                seen["first"] = time.monotonic()
            if seen["n"] >= args.events:
                result = {"events": seen["n"], "first": seen["first"], "last": time.monotonic()}
                with open(args.out, "w") as f:
                    json.dump(result, f)
                os._exit(0)  # the measurement is done; skip Faust's slow shutdown

    from faust.worker import Worker

    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
