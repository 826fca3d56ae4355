"""Records whose header names are not UTF-8, read like any other.

Kafka's protocol says a header name is a string (UTF-8), but the broker takes any bytes.
aiokafka's record reader decoded names strictly and raised: a poll that met such a record lost
the records it had taken of other partitions before it (their positions had moved past them),
and raised again at every poll after, its partition standing still; a rebuild's replay failed.
A record is judged by its value alone (CONTRACTS.md, Limits): such a name is read with each
byte that is not UTF-8 written `\\xNN` (Python's "backslashreplace"), and the record goes its way
as any other (applied, or dead-lettered with its DLQ copy carrying the name so written).

aiokafka has no hook for this. `install_reader()` gives its fetcher a MemoryRecords that
keeps the fetched bytes (aiokafka's own reader, C or Python, subclassed: nothing more per batch)
and a PartitionRecords whose records are aiokafka's own until its reader raises on such a name;
then the producer batch it stopped in is found in those bytes and read, from the record where it
stopped, by `_LenientBatch`, and aiokafka's reading goes on at the next batch. It leans on
aiokafka's internals (the fetcher's two classes, its Python batch reader):
tests/unit/services/test_record_reader.py and the integration tests of such records fail if an
upgrade moves them.

A compressed batch is decompressed within DECOMPRESSED_BATCH_MAX_BYTES: the broker bounds a batch
as it was sent (`max.message.bytes`, compressed), and a megabyte of gzip holds a gigabyte, which
aiokafka decompressed whole before any record of it was judged: past a service's memory, again
at every restart from the stored positions. `install_reader()` gives aiokafka's batch readers
(C and Python) decoders that stop at the bound: such a batch is unreadable (`BatchTooLarge`),
its partition held at it as at a damaged one (consumer.Unreadable), the others going on. A
fetch (up to a megabyte compressed, any number of batches) hands over FETCH_RECORDS_MAX_BYTES of
records at most, the rest read at the next poll: small batches within the bound each added up
to gigabytes."""

import importlib
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import cramjam
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import codec as aiokafka_codec
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import _DefaultRecordBatchPy, _DefaultRecordPy
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import decode_varint

log = structlog.get_logger(__name__)

DECOMPRESSED_BATCH_MAX_BYTES = 32 * 1024 * 1024
"""The most a compressed producer batch may hold once decompressed: well within a service's
memory. A record is at most 256 KiB (CONTRACTS.md, Limits), but a batch of them compressed within
the broker's 1 MiB may hold more than 32 MiB of very repetitive JSON, from a producer whose
`batch.size` was raised: such a batch waits (README, Known limits)."""

FETCH_RECORDS_MAX_BYTES = 8 * 1024 * 1024
"""The most a partition's fetch hands over to a poll, keys and values, once past it at the
record where it is (the rest fetched again from there): a poll holds at most that much per
partition, and one batch being decompressed."""

_BATCH_READERS = (
    "aiokafka.record.default_records",
    "aiokafka.record._crecords.default_records",
    "aiokafka.record.legacy_records",
    "aiokafka.record._crecords.legacy_records",
)


def install_reader() -> None:
    """Every consumer of this process reads records whose header names are not UTF-8, and
    decompresses a batch within DECOMPRESSED_BATCH_MAX_BYTES (once is enough; again changes nothing)."""
    fetcher.MemoryRecords = _Records
    fetcher.PartitionRecords = _PartitionRecords
    for name in _BATCH_READERS:  # each reader calls its module's decoders by name, at every batch
        try:
            module = importlib.import_module(name)
        except ImportError:  # aiokafka built without its C extensions
            continue
        for codec, decode in _DECODERS.items():
            if hasattr(module, codec):
                setattr(module, codec, decode)


def lenient_consumer(*topics: str, **options: Any) -> AIOKafkaConsumer:
    """aiokafka's consumer, reading records whose header names are not UTF-8, and decompressing
    within the bound."""
    install_reader()
    return AIOKafkaConsumer(*topics, **options)


class BatchTooLarge(CorruptRecordException):
    """A compressed batch that decompresses past DECOMPRESSED_BATCH_MAX_BYTES: not read."""

    def __init__(self, codec: str, compressed: int):
        super().__init__(
            f"a {codec} batch of {compressed} bytes decompresses past {DECOMPRESSED_BATCH_MAX_BYTES} bytes "
            "(DECOMPRESSED_BATCH_MAX_BYTES): not read; its sender to send its records again in smaller batches"
        )


def _gzip(data: Any) -> bytes:
    """Its members one after the other, as gzip.GzipFile reads them (zeros after the last one
    ignored), within the bound."""
    out, rest = bytearray(), bytes(data)
    while rest.strip(b"\0"):
        member = zlib.decompressobj(wbits=31)
        try:
            out += member.decompress(rest, DECOMPRESSED_BATCH_MAX_BYTES - len(out) + 1)
        except zlib.error as exc:
            raise CorruptRecordException(f"gzip batch unreadable: {exc}") from None
        if len(out) > DECOMPRESSED_BATCH_MAX_BYTES:
            raise BatchTooLarge("gzip", len(data))
        if not member.eof:
            raise CorruptRecordException("gzip batch cut short")
        rest = member.unused_data
    return bytes(out)


_BUFFER_FULL = "failed to write whole buffer"  # cramjam's error when the output does not fit


def _into(codec: str, decompress_into: Callable[[bytes, bytearray], int]) -> Callable[[Any], bytes]:
    """A decoder writing into a buffer that grows up to the bound (those codecs do not all say
    the size beforehand): 8 times the compressed size first, JSON's usual ratio."""

    def decode(data: Any) -> bytes:
        data = bytes(data)
        size = min(DECOMPRESSED_BATCH_MAX_BYTES, max(1 << 16, 8 * len(data)))
        while True:
            out = bytearray(size)
            try:
                return bytes(memoryview(out)[: decompress_into(data, out)])
            except cramjam.DecompressionError as exc:
                if _BUFFER_FULL not in str(exc):
                    raise CorruptRecordException(f"{codec} batch unreadable: {exc}") from None
                if size == DECOMPRESSED_BATCH_MAX_BYTES:
                    raise BatchTooLarge(codec, len(data)) from None
                size = min(DECOMPRESSED_BATCH_MAX_BYTES, size * 4)

    return decode


def _snappy(data: Any) -> bytes:
    """aiokafka's decoder, once each block's size (snappy writes it first) is known to fit."""
    view = memoryview(data)
    blocks = [view]
    if aiokafka_codec._detect_xerial_stream(view):  # Kafka's Java client: a header, then blocks
        blocks, pos = [], 16
        while pos < len(view):
            size = int.from_bytes(view[pos : pos + 4], "big", signed=True)
            if pos + 4 > len(view) or not 0 <= size <= len(view) - pos - 4:
                raise CorruptRecordException("snappy batch unreadable: a block's length past its end")
            blocks.append(view[pos + 4 : pos + 4 + size])
            pos += 4 + size
    try:
        if sum(cramjam.snappy.decompress_raw_len(bytes(block)) for block in blocks) > DECOMPRESSED_BATCH_MAX_BYTES:
            raise BatchTooLarge("snappy", len(view))
        return aiokafka_codec.snappy_decode(data)
    except (cramjam.DecompressionError, ValueError, struct.error) as exc:
        raise CorruptRecordException(f"snappy batch unreadable: {exc}") from None


_DECODERS = {
    "gzip_decode": _gzip,
    "snappy_decode": _snappy,
    "lz4_decode": _into("lz4", cramjam.lz4.decompress_into),
    "zstd_decode": _into("zstd", cramjam.zstd.decompress_into),
}


class _Records(MemoryRecords):
    """aiokafka's reader of a fetched partition's bytes, which keeps them."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.data = data

    def batch_after(self, offset: int) -> "_LenientBatch | None":
        """The first producer batch that holds records from `offset` on, read leniently; None
        past the fetched bytes, or in a message set of the formats before (magic 0 and 1: no
        headers, no such batch)."""
        view, pos = memoryview(self.data), 0
        while pos + 12 <= len(view):  # each batch: its base offset (8 bytes), then its length (4)
            if pos + 16 < len(view) and view[pos + 16] != 2:  # magic, at the same place in every format
                return None
            end = pos + 12 + int.from_bytes(view[pos + 8 : pos + 12], "big", signed=True)
            if end > len(view):
                return None  # cut by the fetch's size: aiokafka fetches it again
            batch = _LenientBatch(view[pos:end])
            if batch.next_offset > offset:
                return batch
            pos = end
        return None


class CorruptBatch(CorruptRecordException):
    """A fetched batch that cannot be read (its CRC wrong, a record cut: the broker's storage
    damaged; or decompressing past the bound), at `offset` of `tp`: aiokafka's error, saying
    where. Nothing of that partition from `offset` on was handed over. `skip_to`, for a batch
    past the bound (its header read whole): the offset after its last record."""

    def __init__(self, tp: TopicPartition, offset: int, skip_to: int | None = None):
        super().__init__(f"unreadable batch at offset {offset} of {tp.topic}[{tp.partition}]")
        self.tp, self.offset, self.skip_to = tp, offset, skip_to


class _PartitionRecords(fetcher.PartitionRecords):
    """A fetched partition's records, read by aiokafka until it stops on a header name that is
    not UTF-8: that batch is read again by `_LenientBatch`, and aiokafka goes on after it. At a
    batch it cannot read, the records before it are handed over, and the next fetch, starting at
    it, raises CorruptBatch (raised at once, aiokafka lost them)."""

    def _unpack_records(self) -> Iterator[Any]:
        handed = 0
        for record in self._unpack_leniently():
            yield record  # aiokafka's position is past it already: the next fetch starts after it
            handed += max(record.serialized_key_size, 0) + max(record.serialized_value_size, 0)
            if handed >= FETCH_RECORDS_MAX_BYTES:
                return

    def _unpack_leniently(self) -> Iterator[Any]:
        start: int = self.next_fetch_offset  # type: ignore[has-type]
        while True:
            try:
                yield from super()._unpack_records()
                return
            except (UnicodeDecodeError, CorruptRecordException) as exc:
                # aiokafka's Python reader (AIOKAFKA_NO_EXTENSIONS) wraps the decoding error.
                at: int = self.next_fetch_offset  # type: ignore[has-type]  # past the records handed over
                if not isinstance(exc, UnicodeDecodeError) and not isinstance(exc.__cause__, UnicodeDecodeError):
                    if at > start:  # those before it are handed over (raised, they were lost): it comes first next
                        return
                    too_large = isinstance(exc, BatchTooLarge) and (batch := self._records.batch_after(at))
                    raise CorruptBatch(self._tp, at, batch.next_offset if too_large else None) from exc
                batch = self._records.batch_after(at)
                if batch is None:
                    raise
                log.warning(
                    "kafka.header_name_not_utf8",
                    topic=self._tp.topic,
                    partition=self._tp.partition,
                    batch_offset=batch.base_offset,
                )
                for record in batch:
                    if record.offset >= at:
                        at = self.next_fetch_offset = record.offset + 1
                        yield self._consumer_record(self._tp, record)
                self.next_fetch_offset = batch.next_offset


class _LenientBatch(_DefaultRecordBatchPy):
    """aiokafka's Python reader of a producer batch (its header, CRC and decompression), each
    record read here with its header names decoded leniently."""

    def _read_msg(self, decode_varint: Any = decode_varint) -> _DefaultRecordPy:
        # Record: length, attributes, timestamp delta, offset delta (varints), key, value
        # (varint length, -1 for null, then bytes), header count, then each header's name
        # (varint length, bytes) and value (as the key). Kafka's "Record" message format v2.
        data, pos = self._buffer, self._pos  # type: ignore[has-type]
        length, pos = decode_varint(data, pos)
        end = pos + length
        _, pos = decode_varint(data, pos)  # attributes: none defined for records
        timestamp_delta, pos = decode_varint(data, pos)
        offset_delta, pos = decode_varint(data, pos)
        key, pos = _nullable_bytes(data, pos)
        value, pos = _nullable_bytes(data, pos)
        count, pos = decode_varint(data, pos)
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(count):
            size, pos = decode_varint(data, pos)
            if size < 0:
                raise CorruptRecordException(f"header name of negative length {size}")
            name = bytes(data[pos : pos + size]).decode("utf-8", "backslashreplace")
            header_value, pos = _nullable_bytes(data, pos + size)
            headers.append((name, header_value))
        if pos != end:
            raise CorruptRecordException(f"record of {length} bytes, {length + pos - end} read")
        self._pos = pos
        timestamp = (
            self.max_timestamp
            if self.timestamp_type == self.LOG_APPEND_TIME
            else self.first_timestamp + timestamp_delta
        )
        return _DefaultRecordPy(self.base_offset + offset_delta, timestamp, self.timestamp_type, key, value, headers)


def _nullable_bytes(data: bytearray, pos: int) -> tuple[bytes | None, int]:
    size, pos = decode_varint(data, pos)
    if size < 0:
        return None, pos
    return bytes(data[pos : pos + size]), pos + size
