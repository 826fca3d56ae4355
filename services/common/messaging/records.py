"""Records whose header names are not UTF-8, read like any other.

Kafka's protocol says a header name is a string (UTF-8), but the broker takes any bytes.
aiokafka's record reader decoded names strictly and raised: a poll that met such a record lost
the records it had taken of other partitions before it (their positions had moved past them),
and raised again at every poll after, its partition standing still; a rebuild's replay failed.
A record is judged by its value alone (CONTRACTS.md, Limits): such a name is read with each
byte that is not UTF-8 written `\\xNN` (Python's "backslashreplace"), and the record goes its way
as any other (applied, or dead-lettered with its DLQ copy carrying the name so written).

aiokafka has no hook for this. `read_any_header_name()` gives its fetcher a MemoryRecords whose
producer batches are read by aiokafka's own (C) reader as before; only a batch that reader
cannot read is read again, by `_LenientBatch`, from the record where it stopped. A generator
step per record is what it costs: about 40 ns beside aiokafka's 500 (100,000 records read both
ways). It leans on aiokafka's internals (the fetcher's `MemoryRecords`, its Python batch
reader): tests/unit/services/test_record_reader.py and the integration tests of such records
fail if an upgrade moves them."""

from collections.abc import Iterator
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchPy, _DefaultRecordPy
from aiokafka.record.memory_records import _MemoryRecordsPy
from aiokafka.record.util import decode_varint

log = structlog.get_logger(__name__)


def read_any_header_name() -> None:
    """Every consumer of this process reads records whose header names are not UTF-8 (once is
    enough; again changes nothing)."""
    fetcher.MemoryRecords = _Records


def lenient_consumer(*topics: str, **options: Any) -> AIOKafkaConsumer:
    """aiokafka's consumer, reading records whose header names are not UTF-8."""
    read_any_header_name()
    return AIOKafkaConsumer(*topics, **options)


class _Records(_MemoryRecordsPy):
    """aiokafka's reader of a fetched partition's bytes, whose producer batches read on past a
    header name that is not UTF-8."""

    def next_batch(self, *args: Any) -> Any:
        data = self._next_slice
        batch = super().next_batch(*args)
        if isinstance(batch, DefaultRecordBatch) and not batch.is_control_batch:
            return _ReadOn(batch, data)
        return batch  # a control batch (read with `next`) or a legacy one (no headers)


class _ReadOn:
    """A producer batch read by aiokafka's reader, then by `_LenientBatch` if that one raises."""

    __slots__ = ("_batch", "_data")

    def __init__(self, batch: Any, data: memoryview):
        self._batch, self._data = batch, data

    def __getattr__(self, name: str) -> Any:  # the batch's header: offsets, producer, CRC check
        return getattr(self._batch, name)

    def __iter__(self) -> Iterator[Any]:
        read = -1
        try:
            for record in self._batch:
                read = record.offset
                yield record
        except (UnicodeDecodeError, CorruptRecordException) as exc:
            # aiokafka's Python reader (AIOKAFKA_NO_EXTENSIONS) wraps the decoding error.
            if not isinstance(exc, UnicodeDecodeError) and not isinstance(exc.__cause__, UnicodeDecodeError):
                raise
            log.warning("kafka.header_name_not_utf8", after_offset=read, batch_offset=self._batch.base_offset)
            for record in _LenientBatch(self._data):
                if record.offset > read:
                    yield record


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
