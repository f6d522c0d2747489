"""The dashboard's own view of the twins: a Kafka consumer of twin.state and alerts.

Each dashboard replica reads the topics from the beginning without a consumer group, so it shows
the latest state at once on start and any number of replicas can run side by side.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Any

import msgspec

from streams.config import Settings
from streams.follow import Follower


class TwinFeed:
    """Latest twin state per patient and recent alert events, kept current by a thread."""

    def __init__(self, settings: Settings, max_alerts: int = 500) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._states: dict[str, dict[str, Any]] = {}
        self._alerts: deque[dict[str, Any]] = deque(maxlen=max_alerts)
        self._listeners: list[queue.Queue[dict[str, Any]]] = []
        self._follower: Follower | None = None

    def start(self) -> TwinFeed:
        self._follower = Follower(self.settings, (self.settings.topic_twin_state,
                                                  self.settings.topic_alerts),
                                  lambda topic, key, value: self.apply(topic, value or b""),
                                  "patient-twin-dashboard").start()
        return self

    def stop(self) -> None:
        if self._follower is not None:
            self._follower.stop()

    @property
    def connected(self) -> bool:
        return self._follower is not None and self._follower.connected

    def apply(self, topic: str, value: bytes) -> None:
        """Fold one message into the view (also used by tests without Kafka)."""
        try:
            doc = msgspec.json.decode(value)
        except msgspec.DecodeError:
            return
        if not isinstance(doc, dict) or "patient_id" not in doc:
            return
        with self._lock:
            if topic == self.settings.topic_twin_state:
                self._states[doc["patient_id"]] = doc
            elif topic == self.settings.topic_alerts:
                self._alerts.append(doc)
                for q in list(self._listeners):
                    q.put(doc)

    def listen(self) -> queue.Queue[dict[str, Any]]:
        """A queue that receives every alert event from now on (for a live stream)."""
        q: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=10_000)
        with self._lock:
            self._listeners.append(q)
        return q

    def unlisten(self, q: queue.Queue[dict[str, Any]]) -> None:
        with self._lock:
            if q in self._listeners:
                self._listeners.remove(q)

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        with self._lock:
            return dict(self._states), list(self._alerts)
