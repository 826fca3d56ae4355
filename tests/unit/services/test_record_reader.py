"""The consumer's reader of fetched records (messaging/records.py): a header name that is not
UTF-8 no longer stops it; every other record reads exactly as aiokafka's own reader reads it."""

import gzip

import pytest
from aiokafka import codec as aiokafka_codec
from aiokafka.errors import CorruptRecordException
from aiokafka.record._crecords import DefaultRecordBatch as AiokafkaReader
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy, _DefaultRecordBatchPy
from aiokafka.record.memory_records import _MemoryRecordsPy
from aiokafka.structs import TopicPartition

from helpers import NotUtf8
from services.common.messaging import records
from services.common.messaging.records import (
    BatchTooLarge,
    CorruptBatch,
    _LenientBatch,
    _PartitionRecords,
    _Records,
    install_reader,
)


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


def _read(fetched: bytes, fetch_offset: int, records: type = _Records) -> list[tuple]:
    """A partition's fetched bytes, read as aiokafka's fetcher reads them."""
    partition = _PartitionRecords(TopicPartition("t", 0), records(fetched), [], fetch_offset, None, None, True, 0)
    return [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in partition]


FIRST = _batch(10, [(b"k", b"a", [("ok", b"1")])])
BAD = _batch(
    11,
    [
        (b"k", b"b", []),
        (None, b"c", [("trace", b"\xff"), (NotUtf8("h"), b"v"), ("nul", None)]),
        (b"k", None, [(NotUtf8(""), b"")]),
    ],
)
LAST = _batch(14, [(b"k", b"e", [])])
READ = [
    (10, 1_700_000_000_000, b"k", b"a", [("ok", b"1")]),
    (11, 1_700_000_000_000, b"k", b"b", []),
    (12, 1_700_000_000_001, None, b"c", [("trace", b"\xff"), ("\\xff\\xfeh", b"v"), ("nul", None)]),
    (13, 1_700_000_000_002, b"k", None, [("\\xff\\xfe", b"")]),
    (14, 1_700_000_000_000, b"k", b"e", []),
]


def test_a_header_name_that_is_not_utf8_is_read_escaped_and_nothing_around_it_is_lost():
    with pytest.raises(UnicodeDecodeError):
        list(AiokafkaReader(BAD))  # what stopped the consumer
    assert _read(FIRST + BAD + LAST, 10) == READ


def test_a_fetch_from_inside_such_a_batch_reads_from_its_offset():
    assert _read(BAD + LAST, 12) == READ[2:]


def test_a_gzip_batch_and_a_gap_before_it_left_by_compaction():
    gzipped = _batch(20, [(b"k", b"f", [(NotUtf8("g"), None)]), (b"k", b"g", [])], compression=1)
    assert _read(FIRST + gzipped, 10) == [
        READ[0],
        (20, 1_700_000_000_000, b"k", b"f", [("\\xff\\xfeg", None)]),
        (21, 1_700_000_000_001, b"k", b"g", []),
    ]


class _PythonRecords(_MemoryRecordsPy):
    """_Records over aiokafka's Python reader (AIOKAFKA_NO_EXTENSIONS)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.data = data

    def next_batch(self, *args):
        data = self._next_slice
        return None if super().next_batch(*args) is None else _DefaultRecordBatchPy(data)

    batch_after = _Records.batch_after


def test_aiokafka_s_python_reader_is_read_past_too():
    """Without its C extensions, aiokafka's reader wraps the decoding error in a
    CorruptRecordException."""
    assert _read(FIRST + BAD + LAST, 10, _PythonRecords) == READ


def test_a_batch_that_is_corrupt_otherwise_is_left_to_aiokafka():
    data = bytearray(FIRST)
    data[-1] = 0x02  # the record's header count (a varint, the last byte): one, which it does not hold
    with pytest.raises(CorruptRecordException):
        _read(bytes(data), 10, _PythonRecords)


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


CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}  # Kafka's codec ids, in a batch's attributes


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("memory", [_Records, _PythonRecords], ids=["C reader", "Python reader"])
def test_a_batch_compressed_with_any_of_kafkas_codecs_reads_as_sent(codec, memory):
    """snappy, lz4 and zstd raised UnsupportedCodecError (cramjam was not installed): a partner's
    producer compressing with one of them stopped every consumer of its topic."""
    install_reader()
    values = [b'{"specversion": "1.0", "n": %d}' % n * 50 for n in range(40)]
    data = _batch(5, [(b"k", value, [("h", b"v")]) for value in values], CODECS[codec])
    assert len(data) < sum(map(len, values)) / 4
    assert [(offset, value) for offset, _, _, value, _ in _read(data, 5, memory)] == list(enumerate(values, 5))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("memory", [_Records, _PythonRecords], ids=["C reader", "Python reader"])
def test_a_batch_decompressing_past_the_bound_is_not_read_and_those_before_it_are(codec, memory, monkeypatch):
    """A few kilobytes a broker takes (it bounds a batch compressed) that aiokafka decompressed
    whole, whatever its size: a megabyte of gzip holds a gigabyte."""
    install_reader()
    monkeypatch.setattr(records, "DECOMPRESSED_BATCH_MAX_BYTES", 1 << 20)
    within = _batch(5, [(b"k", b"x" * ((1 << 20) - 200), [])], CODECS[codec])
    bomb = _batch(6, [(b"k", b"x" * (4 << 20), [])], CODECS[codec])
    assert len(bomb) < 1 << 18  # a quarter of the bound, well within the broker's megabyte
    assert [offset for offset, *_ in _read(within + bomb, 5, memory)] == [5]  # the next fetch starts at 6
    with pytest.raises(CorruptBatch) as unread:
        _read(bomb, 6, memory)
    assert isinstance(unread.value.__cause__, BatchTooLarge) and (unread.value.offset, unread.value.skip_to) == (6, 7)
    assert f"past {1 << 20} bytes (DECOMPRESSED_BATCH_MAX_BYTES)" in str(unread.value.__cause__)


@pytest.mark.parametrize("codec", CODECS)
def test_compressed_bytes_that_cannot_be_read_are_unreadable_not_taken_for_a_large_batch(codec):
    install_reader()
    decode = records._DECODERS[f"{codec}_decode"]
    with pytest.raises(CorruptRecordException) as unread:
        decode(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    assert not isinstance(unread.value, BatchTooLarge)


@pytest.mark.parametrize("memory", [_Records, _PythonRecords], ids=["C reader", "Python reader"])
def test_a_fetch_hands_over_its_records_up_to_a_bound_the_rest_at_the_next_poll(memory, monkeypatch):
    """Each batch within the bound, a fetch of many of them (a few kilobytes of zstd each) added
    up to gigabytes held by one poll (review helper-169 #1)."""
    install_reader()
    monkeypatch.setattr(records, "FETCH_RECORDS_MAX_BYTES", 1 << 20)
    batches = [_batch(5 + n, [(b"k", b"x" * (400 << 10), [])], CODECS["zstd"]) for n in range(6)]
    assert len(b"".join(batches)) < 1 << 14
    assert [offset for offset, *_ in _read(b"".join(batches), 5, memory)] == [5, 6, 7]  # 1.2 MiB: past the bound
    assert [offset for offset, *_ in _read(b"".join(batches[3:]), 8, memory)] == [8, 9, 10]  # fetched from there


@pytest.mark.parametrize(
    "stream",
    [
        aiokafka_codec.snappy_encode(b"x" * 100)[:16] + (-8).to_bytes(4, "big", signed=True),
        aiokafka_codec.snappy_encode(b"x" * 100) + b"\x00\x01",
        aiokafka_codec.snappy_encode(b"x" * 100)[:-3],
    ],
    ids=["a negative block length", "bytes after the last block", "the last block cut"],
)
def test_a_snappy_stream_of_wrong_block_lengths_is_unreadable_and_read_no_further(stream):
    """A negative length looped for ever, building a list of blocks until memory ran out."""
    install_reader()
    with pytest.raises(CorruptRecordException) as unread:
        records._DECODERS["snappy_decode"](stream)
    assert not isinstance(unread.value, BatchTooLarge)


def test_zeros_after_the_last_gzip_member_are_ignored_as_aiokafka_ignored_them():
    install_reader()
    assert records._DECODERS["gzip_decode"](gzip.compress(b"ab") + gzip.compress(b"cd") + b"\0" * 4) == b"abcd"


def test_a_message_set_of_the_former_formats_has_no_batch_to_skip_to():
    """Its first bytes read as a v2 batch's header gave an offset to skip to out of its timestamp."""
    legacy = _batch(7, [(b"k", b"v", [])])
    legacy = legacy[:16] + b"\x01" + legacy[17:]  # magic 1: what a message set of format v1 says there
    assert _Records(legacy).batch_after(7) is None
