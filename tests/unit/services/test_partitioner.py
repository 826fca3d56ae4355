"""The relay's partitioner places a keyed record where Kafka's clients would."""

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from services.common.messaging.partitioner import murmur2, partition_for

# Kafka's own test vectors (clients' UtilsTest.testMurmur2), as signed 32-bit integers.
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def signed(h: int) -> int:
    return h - (1 << 32) if h >= 1 << 31 else h


def test_kafka_test_vectors():
    assert {key: signed(murmur2(key)) for key in KAFKA_VECTORS} == KAFKA_VECTORS


@given(st.binary(max_size=300))
def test_same_hash_as_aiokafka_on_any_bytes(key: bytes):
    assert murmur2(key) == aiokafka_murmur2(key)


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=64))
def test_a_key_goes_where_aiokafka_puts_it(key: bytes, count: int):
    partitions = list(range(count))
    assert partition_for(key, partitions) == DefaultPartitioner()(key, partitions, partitions)


def test_a_record_without_key_goes_to_one_of_the_partitions():
    assert {partition_for(None, [3, 5]) for _ in range(200)} <= {3, 5}
