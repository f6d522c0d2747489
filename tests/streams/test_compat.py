"""The library internals `streams.compat` uses are there in the pinned versions."""

from importlib.metadata import version

import pytest

from streams import compat


@pytest.mark.parametrize("package", sorted(compat.PINNED))
def test_installed_versions_are_the_ones_the_internals_were_written_against(package):
    assert version(package).startswith(compat.PINNED[package] + "."), \
        f"{package} {version(package)}: check streams/compat.py against it, then update PINNED"


def test_the_internals_exist():
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Producer
    from kafka.cluster import ClusterMetadata
    from kafka.consumer.group import KafkaConsumer

    assert callable(Producer._ensure_producer)
    assert callable(AIOKafkaConsumerThread._create_worker_consumer)
    assert callable(ClusterMetadata.topic_id)
    assert "_client" in KafkaConsumer.__init__.__code__.co_names
    # murmur2 is Kafka's: the Java client's test vectors (kafka-python's own tests use them)
    assert compat.murmur2(b"21") == -973932308 & 0xFFFFFFFF
    assert compat.murmur2(b"foobar") == -790332482 & 0xFFFFFFFF


def test_aiokafka_reads_the_fetch_wait_it_is_given():
    import inspect

    from aiokafka import AIOKafkaConsumer

    assert "_fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer)


def test_topic_ids_of_a_consumer_without_them_are_unknown():
    assert compat.kafka_topic_ids(object(), ["a"]) == {"a": None}
