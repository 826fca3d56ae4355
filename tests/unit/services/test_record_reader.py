"""The consumer's reader of fetched records (messaging/records.py): a header name that is not
UTF-8 no longer stops it; every other record reads exactly as aiokafka's own reader reads it."""

import pytest
from aiokafka.errors import CorruptRecordException
from aiokafka.record._crecords import DefaultRecordBatch as AiokafkaReader
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy, _DefaultRecordBatchPy

from helpers import NotUtf8
from services.common.messaging.records import _LenientBatch, _ReadOn, _Records


def _batch(base_offset: int, records: list[tuple], compression: int = 0) -> bytes:
    builder = _DefaultRecordBatchBuilderPy(
        magic=2, compression_type=compression, is_transactional=False,
        producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 20,
    )  # fmt: skip
    for delta, (key, value, headers) in enumerate(records):
        builder.append(delta, timestamp=1_700_000_000_000 + delta, key=key, value=value, headers=headers)
    data = bytearray(builder.build())
    data[0:8] = base_offset.to_bytes(8, "big")  # the broker sets it: outside the CRC
    return bytes(data)


def _read(fetched: bytes) -> list[tuple]:
    """As aiokafka's fetcher reads a partition's bytes (PartitionRecords._unpack_records)."""
    records, read = _Records(fetched), []
    while records.has_next():
        batch = records.next_batch()
        assert batch.validate_crc()
        read += [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in batch]
    return read


@pytest.mark.parametrize("compression", [0, 1], ids=["plain", "gzip"])
def test_a_header_name_that_is_not_utf8_is_read_escaped_and_nothing_around_it_is_lost(compression):
    first = _batch(10, [(b"k", b"a", [("ok", b"1")])])
    bad = _batch(
        11,
        [
            (b"k", b"b", []),
            (None, b"c", [("trace", b"\xff"), (NotUtf8("h"), b"v"), ("nul", None)]),
            (b"k", None, [(NotUtf8(""), b"")]),
        ],
        compression,
    )
    last = _batch(14, [(b"k", b"e", [])])
    with pytest.raises(UnicodeDecodeError):
        list(AiokafkaReader(bad))  # what stopped the consumer
    assert _read(first + bad + last) == [
        (10, 1_700_000_000_000, b"k", b"a", [("ok", b"1")]),
        (11, 1_700_000_000_000, b"k", b"b", []),
        (12, 1_700_000_000_001, None, b"c", [("trace", b"\xff"), ("\\xff\\xfeh", b"v"), ("nul", None)]),
        (13, 1_700_000_000_002, b"k", None, [("\\xff\\xfe", b"")]),
        (14, 1_700_000_000_000, b"k", b"e", []),
    ]


@pytest.mark.parametrize("compression", [0, 1], ids=["plain", "gzip"])
def test_the_lenient_reader_reads_any_other_batch_as_aiokafka_does(compression):
    records = [
        (b"cle", b'{"a": 1}', [("content-type", b"application/cloudevents+json"), ("é", None)]),
        (None, None, []),
        (b"", b"", [("", b"")]),
        (b"k" * 300, b"v" * 70_000, [("h" * 200, b"\x00" * 200)] * 3),
    ]
    data = _batch(5, records, compression)

    def fields(batch) -> list[tuple]:
        return [(r.offset, r.timestamp, r.timestamp_type, r.key, r.value, list(r.headers)) for r in batch]

    assert fields(_LenientBatch(data)) == fields(AiokafkaReader(data))


def test_a_name_that_is_not_utf8_is_read_past_by_aiokafka_s_python_reader_too():
    """Without its C extensions (AIOKAFKA_NO_EXTENSIONS), aiokafka's reader wraps the decoding
    error in a CorruptRecordException."""
    bad = _batch(7, [(b"k", b"a", []), (b"k", b"b", [(NotUtf8("h"), b"v")])])
    with pytest.raises(CorruptRecordException):
        list(_DefaultRecordBatchPy(bad))
    read = [(r.offset, r.value, r.headers) for r in _ReadOn(_DefaultRecordBatchPy(bad), memoryview(bad))]
    assert read == [(7, b"a", []), (8, b"b", [("\\xff\\xfeh", b"v")])]


def test_a_batch_that_is_corrupt_otherwise_is_left_to_aiokafka():
    data = bytearray(_batch(7, [(b"k", b"a", [])]))
    data[-1] = 0x02  # the record's header count (a varint, the last byte): one, which it does not hold
    with pytest.raises(CorruptRecordException):
        list(_ReadOn(_DefaultRecordBatchPy(bytes(data)), memoryview(bytes(data))))
