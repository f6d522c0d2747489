"""Is this worker still doing its job? Pure decision logic, fed by the worker every few seconds.

A worker can fall out of its consumer group and stay up, silent (seen with the test broker, and
reported against real Kafka too). Two symptoms are checked, from offsets the consumer already knows:
- stalled: an assigned partition has messages beyond our position, and no assigned partition's
  position has moved for `stall_seconds`;
- orphaned: nothing assigned for `unassigned_seconds` while the source topic keeps growing.
Either makes the worker unhealthy; the worker then exits non-zero so its supervisor restarts it
(a restarted worker rejoins the group and resumes from the committed offsets and the changelog).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass
class Liveness:
    stall_seconds: float = 60.0
    unassigned_seconds: float = 120.0
    clock: Callable[[], float] = time.monotonic
    reason: str | None = None
    _positions: dict[object, int] = field(default_factory=dict)
    _highwaters: dict[object, int] = field(default_factory=dict)
    _last_progress: float | None = None
    _unassigned_since: float | None = None

    @property
    def healthy(self) -> bool:
        return self.reason is None

    def seconds_since_progress(self) -> float:
        now = self.clock()
        return 0.0 if self._last_progress is None else now - self._last_progress

    def observe(self, positions: Mapping[object, int | None],
                highwaters: Mapping[object, int], topic_growing: bool) -> str | None:
        """positions: assigned partition -> next offset to read (None: unknown yet);
        highwaters: assigned partition -> end offset; topic_growing: the source topic's end
        offsets moved since the last call. Returns the reason it is unhealthy, or None."""
        now = self.clock()
        if self._last_progress is None:
            self._last_progress = now
        if not positions:
            self._positions.clear()
            if self._unassigned_since is None:
                self._unassigned_since = now
            if topic_growing and now - self._unassigned_since >= self.unassigned_seconds:
                self.reason = (f"no partition assigned for {now - self._unassigned_since:.0f} s "
                               "while the source topic grows: out of the consumer group")
            return self.reason
        self._unassigned_since = None
        moved = any(pos is not None and pos != self._positions.get(tp)
                    for tp, pos in positions.items())
        behind = [tp for tp, pos in positions.items()
                  if pos is not None and highwaters.get(tp, pos) > pos]
        if moved or not behind:
            self._last_progress = now
            self.reason = None
        elif now - self._last_progress >= self.stall_seconds:
            self.reason = (f"{len(behind)} assigned partition(s) have unread messages and no "
                           f"position moved for {now - self._last_progress:.0f} s")
        self._positions = {tp: p for tp, p in positions.items() if p is not None}
        return self.reason
