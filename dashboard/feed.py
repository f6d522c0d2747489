"""The dashboard's own view of the twins: a Kafka consumer of twin.state and alerts.

Each dashboard replica reads the topics from the beginning without a consumer group, so it shows
the latest state at once on start and any number of replicas can run side by side.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import msgspec

from streams.config import Settings, kafka_python_config

log = logging.getLogger("patient_twin.dashboard")


class TwinFeed:
    """Latest twin state per patient and recent alert events, kept current by a thread."""

    def __init__(self, settings: Settings, max_alerts: int = 500) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._states: dict[str, dict[str, Any]] = {}
        self._alerts: deque[dict[str, Any]] = deque(maxlen=max_alerts)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False

    def start(self) -> TwinFeed:
        self._thread = threading.Thread(target=self._run, name="twin-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

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

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        with self._lock:
            return dict(self._states), list(self._alerts)

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        topics = (self.settings.topic_twin_state, self.settings.topic_alerts)
        while not self._stop.is_set():
            try:
                consumer = KafkaConsumer(client_id="patient-twin-dashboard", group_id=None,
                                         enable_auto_commit=False,
                                         **kafka_python_config(self.settings))
                parts = []
                for t in topics:
                    for p in sorted(consumer.partitions_for_topic(t) or ()):
                        parts.append(TopicPartition(t, p))
                if len(parts) < len(topics):
                    consumer.close()
                    time.sleep(1.0)  # topics not created yet
                    continue
                consumer.assign(parts)
                consumer.seek_to_beginning(*parts)
                self.connected = True
                while not self._stop.is_set():
                    batch = consumer.poll(timeout_ms=200, max_records=5000)
                    for tp, records in batch.items():
                        for rec in records:
                            self.apply(tp.topic, rec.value)
                consumer.close()
            except KafkaError as exc:
                self.connected = False
                log.warning("dashboard feed lost Kafka (%s); retrying", type(exc).__name__)
                time.sleep(1.0)
