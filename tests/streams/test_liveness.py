from streams.worker.liveness import Liveness


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_progress_keeps_it_healthy_and_a_stall_with_lag_does_not():
    c = Clock()
    lv = Liveness(stall_seconds=60, clock=c)
    assert lv.observe({"p0": 10}, {"p0": 20}, topic_growing=True) is None
    c.t += 30
    assert lv.observe({"p0": 15}, {"p0": 25}, topic_growing=True) is None  # moved
    c.t += 59
    assert lv.observe({"p0": 15}, {"p0": 30}, topic_growing=True) is None  # not yet 60 s
    c.t += 2
    reason = lv.observe({"p0": 15}, {"p0": 31}, topic_growing=True)
    assert reason and "no position moved for 61 s" in reason and not lv.healthy
    c.t += 5
    assert lv.observe({"p0": 16}, {"p0": 31}, topic_growing=True) is None and lv.healthy


def test_idle_but_caught_up_is_healthy():
    c = Clock()
    lv = Liveness(stall_seconds=10, clock=c)
    for _ in range(10):
        c.t += 30
        assert lv.observe({"p0": 50, "p1": 7}, {"p0": 50, "p1": 7}, topic_growing=False) is None


def test_unassigned_while_the_topic_grows_is_orphaned():
    c = Clock()
    lv = Liveness(unassigned_seconds=120, clock=c)
    assert lv.observe({}, {}, topic_growing=True) is None
    c.t += 100
    assert lv.observe({}, {}, topic_growing=False) is None
    c.t += 30
    assert lv.observe({}, {}, topic_growing=False) is None  # nothing new: a surplus worker
    reason = lv.observe({}, {}, topic_growing=True)
    assert reason and "out of the consumer group" in reason
    c.t += 1
    assert lv.observe({"p2": 3}, {"p2": 3}, topic_growing=True) is None  # reassigned
