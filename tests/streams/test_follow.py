"""`streams.follow.replaced`: how a reader finds that the broker replaced a topic's log."""

from kafka import TopicPartition as TP

from streams.follow import replaced


def test_a_changed_topic_id_is_a_replaced_log_whatever_the_offsets():
    pos = {TP("a", 0): 5, TP("b", 0): 5}
    ends = {TP("a", 0): 9, TP("b", 0): 9}
    assert replaced(pos, ends, {"a": "id-1", "b": "id-2"}, {"a": "id-1", "b": "id-3"}) == {"b"}


def test_with_ids_known_an_end_before_our_position_is_not_a_loss():
    # the embedded broker reports ends short of a multi-record batch's tail (docs/tansu.md)
    assert replaced({TP("a", 0): 12}, {TP("a", 0): 10}, {"a": "id-1"}, {"a": "id-1"}) == set()


def test_without_ids_an_end_before_our_position_is_a_replaced_log():
    pos = {TP("a", 0): 12, TP("a", 1): 3, TP("b", 0): 4}
    ends = {TP("a", 0): 10, TP("a", 1): 3, TP("b", 0): 4}
    assert replaced(pos, ends, {}, {"a": None, "b": None}) == {"a"}


def test_an_id_not_known_before_or_now_is_not_a_change():
    assert replaced({}, {}, {"a": None, "b": "id-1"}, {"a": "id-2", "b": None}) == set()
