"""Offset holes: which events a batch may process and where to seek to re-read dropped ones."""

from streams.worker.offsets import OffsetTracker, read_from


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run(tracker: OffsetTracker, events):
    keep, seeks = tracker.admit(events)
    tracker.done(e for e, k in zip(events, keep, strict=True) if k)
    return keep, seeks


def test_contiguous_offsets_pass_and_a_hole_stops_its_partition_until_refilled():
    tr = OffsetTracker(clock=Clock())
    assert run(tr, [("a", 10), ("a", 11), ("b", 3)]) == ([True, True, True], {})
    # 12 and 13 were dropped by the consumer: 14 is held back, "a" re-read from 12; "b" goes on
    keep, seeks = run(tr, [("a", 14), ("b", 4), ("a", 15)])
    assert keep == [False, True, False] and seeks == {"a": 12}
    assert tr.holes == 1
    # stale prefetched events still beyond the hole: held back, no second seek
    assert run(tr, [("a", 16)]) == ([False], {})
    # the re-read arrives in order; what was processed already is not processed twice
    keep, seeks = run(tr, [("a", 12), ("a", 13), ("a", 14), ("a", 15), ("a", 11)])
    assert keep == [True, True, True, True, False] and seeks == {}
    assert tr.processed == {"a": 15, "b": 4}


def test_out_of_order_events_within_a_batch_are_taken_in_offset_order():
    tr = OffsetTracker(clock=Clock())
    run(tr, [("a", 1)])
    assert run(tr, [("a", 3), ("a", 2)]) == ([True, True], {})


def test_a_hole_that_never_refills_is_accepted_after_the_give_up_time():
    clock = Clock()
    # retries off (retry_seconds beyond give_up_seconds): the give-up path alone
    tr = OffsetTracker(clock=clock, give_up_seconds=30, retry_seconds=60)
    run(tr, [("a", 1)])
    assert run(tr, [("a", 5)]) == ([False], {"a": 2})
    clock.t = 10
    assert run(tr, [("a", 5), ("a", 6)]) == ([False, False], {})
    clock.t = 31  # e.g. offsets 2-4 were transaction markers: go on rather than stall
    assert run(tr, [("a", 5), ("a", 6)]) == ([True, True], {})
    assert tr.holes == 1 and tr.abandoned == 1 and tr.pending == {}


def test_a_hole_at_the_end_is_found_once_the_partition_is_quiet():
    clock = Clock()
    tr = OffsetTracker(clock=clock, idle_seconds=5)
    run(tr, [("a", 7), ("b", 2)])
    # the consumer fetched up to 10 on "a" but only 7 was processed; "b" is caught up
    assert tr.idle_seeks({"a": 10, "b": 3}) == {}  # not quiet yet: may still be buffered
    clock.t = 6
    assert tr.idle_seeks({"a": 10, "b": 3}) == {"a": 8}
    assert tr.idle_seeks({"a": 10, "b": 3}) == {}  # pending
    keep, _ = run(tr, [("a", 8), ("a", 9)])
    assert keep == [True, True] and tr.pending == {}


def test_a_seek_whose_re_read_never_came_is_repeated_once_the_partition_is_quiet():
    clock = Clock()
    # busy-partition retries off (retry_seconds beyond give_up_seconds): the idle path alone
    tr = OffsetTracker(clock=clock, idle_seconds=5, give_up_seconds=30, retry_seconds=60)
    run(tr, [("a", 7)])
    assert run(tr, [("a", 10)]) == ([False], {"a": 8})
    # stale prefetched events drain; the consumer then drops the re-read (read offset past it)
    clock.t = 2
    assert run(tr, [("a", 11), ("a", 12)]) == ([False, False], {})
    clock.t = 6
    assert tr.idle_seeks({"a": 13}) == {}  # not quiet for 5 s yet
    clock.t = 8
    assert tr.idle_seeks({"a": 13}) == {"a": 8}
    assert tr.retries == 1 and tr.holes == 1 and tr.abandoned == 0
    keep, _ = run(tr, [("a", 8), ("a", 9), ("a", 10)])
    assert keep == [True, True, True] and tr.pending == {}


def test_partitions_moved_away_are_forgotten_but_not_during_a_rebalance():
    clock = Clock()
    tr = OffsetTracker(clock=clock, forget_seconds=60)
    run(tr, [("a", 7), ("b", 2)])
    tr.retain([])  # mid-rebalance: nothing assigned for a moment
    clock.t = 10
    tr.retain(["a", "b"])
    assert tr.processed == {"a": 7, "b": 2}
    tr.retain(["b"])
    clock.t = 80
    tr.retain(["b"])
    assert tr.processed == {"b": 2}
    # "a" comes back later at another worker's position: a new baseline, not a hole
    assert run(tr, [("a", 100)]) == ([True], {})


def test_a_hole_whose_re_read_does_not_come_is_sought_again_while_the_partition_is_busy():
    """faust-streaming 0.15.3 can drop the re-read (it resumes partitions before seeking them
    at the end of a recovery and clears the queues): a busy partition never goes quiet, so the
    idle check never asks again, and without a retry the hole was given up after 30 s."""
    clock = Clock()
    tr = OffsetTracker(clock=clock)
    run(tr, [("a", 10)])
    assert run(tr, [("a", 50)])[1] == {"a": 11}
    clock.t = 0.5
    assert run(tr, [("a", 51)]) == ([False], {})  # within a second: the re-read may still come
    clock.t = 1.2
    assert run(tr, [("a", 52)]) == ([False], {"a": 11})  # it did not: ask again
    clock.t = 1.5
    assert run(tr, [("a", 53)]) == ([False], {})  # not at every batch
    assert tr.retries == 1 and tr.abandoned == 0
    keep, _ = run(tr, [("a", o) for o in range(11, 54)])
    assert all(keep) and tr.processed == {"a": 53} and "a" not in tr.sought


def test_a_hole_below_the_first_event_is_found_once_the_partition_is_seeded():
    tr = OffsetTracker(clock=Clock())
    assert tr.unseeded(["a", "b"]) == {"a", "b"}
    # the group committed 20: events from 25 on mean 20-24 were dropped before this worker saw
    # them (unseeded, 25 would have been taken as the start and 20-24 never read)
    tr.seed({"a": 20, "b": 0})
    assert tr.unseeded(["a", "b"]) == set()
    assert run(tr, [("a", 25), ("a", 26), ("b", 0)]) == ([False, False, True], {"a": 20})
    assert tr.limit("a") == 20 and tr.limit("b") == 1


def test_the_commit_limit_stops_at_a_hole_and_at_what_is_not_yet_written():
    tr = OffsetTracker(clock=Clock())
    assert tr.limit("a") is None  # never seeded: nothing may be committed
    tr.seed({"a": 0})
    run(tr, [("a", 0), ("a", 1), ("a", 2), ("a", 5), ("a", 6)])  # 3-4 dropped
    assert tr.limit("a") == 3  # 5 and 6 were acknowledged by Faust, not processed
    assert tr.limit("a", unreleased=1) == 1  # 1's twin records are not in Kafka yet
    run(tr, [("a", 3), ("a", 4), ("a", 5), ("a", 6)])
    assert tr.limit("a") == 7 and tr.limit("a", unreleased=9) == 7


def test_a_reassigned_partition_is_seeded_again_and_keeps_what_it_processed():
    tr = OffsetTracker(clock=Clock())
    tr.seed({"a": 0, "b": 0})
    run(tr, [("a", 0), ("a", 1), ("a", 2)])
    tr.reassigned(["a", "b"])
    assert tr.limit("a") is None
    tr.seed({"a": 1, "b": 40})  # kept "a" (committed 1, processed to 2); "b" moved on meanwhile
    assert tr.processed == {"a": 2, "b": 39} and tr.limit("a") == 3 and tr.limit("b") == 40
    # a pending hole the new start lies beyond is no longer a hole
    run(tr, [("a", 6)])
    assert tr.pending["a"][0] == 3
    tr.seed({"a": 10})
    assert "a" not in tr.pending and tr.processed["a"] == 9


def test_a_group_reads_from_its_committed_offset_or_the_log_start_when_that_is_outside_the_log():
    assert read_from(120, earliest=100, end=500) == 120
    assert read_from(None, earliest=100, end=500) == 100  # nothing committed yet
    assert read_from(40, earliest=100, end=500) == 100  # retention deleted 40-99
    assert read_from(900, earliest=0, end=500) == 0  # a log recreated shorter than the commit
    assert read_from(500, earliest=0, end=500) == 500  # everything read
