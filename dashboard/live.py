"""The patient page's live push: `GET /live/patient/<id>` is a Server-Sent Events stream with an
event whenever the patient's twin state or one of their alerts arrives in this replica's feed,
and `CONNECT_JS` (a clientside callback) turns each event into a Dash input, so the page asks
for the new values at once instead of on its next poll.

Each open stream holds one web server thread, so at most `dashboard_threads // 2` run at a time;
a page that gets no stream (503, a proxy that buffers, a network error) polls every
`POLL_MS` instead, and every `FALLBACK_MS` while its stream is open (the "x s ago" freshness
labels, and a missed event, still come round). A page left for another one inside the app closes
its stream at the next event (a `ping` comes every `KEEPALIVE_S` when nothing else does); a
stream ends after `STREAM_S` anyway and the browser opens a new one, so a page that vanished
without a word frees its thread.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

from flask import Blueprint, Response

from dashboard.context import Context
from dashboard.feed import ENDED, TwinFeed

POLL_MS = 500  # without a stream (was the only way before the push)
FALLBACK_MS = 5000  # with a stream
STREAM_S = 300.0
KEEPALIVE_S = 15.0  # also the API's alert stream: proxies close idle connections
RETRY_MS = 2000  # the browser's wait before it opens a new stream

# Inputs: the patient id (a new page), and the page's mode. Opens the page's stream, closing
# the previous page's; each event sets `patient-push.data`, the input of the page's value
# callbacks. None in low-bandwidth mode (dashboard/lite.py): that page polls every 5 s.
CONNECT_JS = f"""
function(pid, mode) {{
  const dc = window.dash_clientside;
  if (window.__patientLive) {{ window.__patientLive.close(); window.__patientLive = null; }}
  if (!pid || mode === 'lite' || typeof EventSource === 'undefined') {{ return dc.no_update; }}
  const es = new EventSource('/live/patient/' + encodeURIComponent(pid));
  window.__patientLive = es;
  let n = 0;
  const here = () => {{
    // the page is gone (navigated away inside the app): stop
    if (!document.getElementById('patient-header')) {{
      es.close();
      if (window.__patientLive === es) {{ window.__patientLive = null; }}
      return false;
    }}
    return true;
  }};
  es.addEventListener('open', () => {{
    if (here()) {{ dc.set_props('patient-refresh', {{interval: {FALLBACK_MS}}}); }}
  }});
  es.addEventListener('update', () => {{
    if (here()) {{ n += 1; dc.set_props('patient-push', {{data: n}}); }}
  }});
  es.addEventListener('ping', here);
  es.addEventListener('error', () => {{
    // the browser retries by itself (after `retry`), unless the server refused the stream
    if (here()) {{ dc.set_props('patient-refresh', {{interval: {POLL_MS}}}); }}
  }});
  return dc.no_update;
}}
"""


def event_stream(chunks: Iterator[str]) -> Response:
    """A Server-Sent Events response (also the API's alert stream): never cached, and not
    buffered by a proxy in front (nginx's `X-Accel-Buffering`)."""
    return Response(chunks, mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def events(feed: TwinFeed, patient_id: str, stream_s: float = STREAM_S,
           keepalive_s: float = KEEPALIVE_S) -> Iterator[str]:
    """The stream's text: an `update` event per arrival (a burst is one event: the page reads
    the latest state anyway), a `ping` after `keepalive_s` without one, for `stream_s` in all.
    It carries no values: the page reads them through its callbacks, which check the user."""
    q = feed.listen(patient_id, maxsize=64)
    try:
        yield f"retry: {RETRY_MS}\n\n"
        end = time.monotonic() + stream_s
        while (left := end - time.monotonic()) > 0:
            try:
                if q.get(timeout=min(keepalive_s, left)) is ENDED:
                    return
            except queue.Empty:
                # an event, not a comment: the page checks on it that it is still shown
                yield "event: ping\ndata: {}\n\n"
                continue
            while True:
                try:
                    if q.get_nowait() is ENDED:
                        return
                except queue.Empty:
                    break
            yield "event: update\ndata: {}\n\n"
    finally:
        feed.unlisten(q)


def blueprint(c: Context) -> Blueprint:
    """`/live/patient/<id>`, within the streams' budget of threads (`Context.stream_slots`,
    shared with the presence streams)."""
    bp = Blueprint("live", __name__)
    slots = c.stream_slots

    @bp.get("/live/patient/<patient_id>")
    def patient_stream(patient_id: str) -> Response:
        if not c.may_see(c.user(), patient_id):
            return Response("no such patient on your wards\n", status=404,
                            mimetype="text/plain")
        if not slots.acquire(blocking=False):
            return Response("too many live pages open: this page polls instead\n", status=503,
                            mimetype="text/plain")
        resp = event_stream(events(c.feed, patient_id))
        # the server closes every response, also one whose client left before it began
        resp.call_on_close(slots.release)
        return resp

    return bp
