"""The service's Kafka consumer: one batch subscriber over its topics, handing the raw
records to the pipeline, and committing offsets only after the pipeline's transaction."""

import dataclasses
from typing import Any

from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from services.common.messaging.outbox import text_headers
from services.common.pipeline import Pipeline
from services.common.runtime.settings import ServiceSettings
from services.common.runtime.spec import ServiceSpec


def _raw_records(msg) -> tuple[ConsumerRecord, ...]:
    return msg.raw_message  # the pipeline parses and validates bytes itself


async def _parse_batch(records: tuple[ConsumerRecord, ...], default_parser) -> Any:
    """FastStream's batch parser decodes every header value as UTF-8, so one header of other
    bytes, or a null one, failed the whole batch before our handler saw it. A record is judged
    by its value alone (CONTRACTS.md): FastStream (its logs, the tracing middleware) sees only
    the headers that are text, and the handler gets the records untouched, for the DLQ copy."""
    message = await default_parser(
        tuple(dataclasses.replace(r, headers=[(k, v.encode()) for k, v in text_headers(r.headers)]) for r in records)
    )
    message.raw_message = records
    return message


def subscribe(broker: KafkaBroker, spec: ServiceSpec, settings: ServiceSettings, pipeline: Pipeline) -> None:
    @broker.subscriber(
        *[settings.topic(t) for t in spec.consumes],
        batch=True,
        group_id=settings.topic(spec.name),
        auto_offset_reset="earliest",
        max_records=settings.batch_max_records,
        ack_policy=AckPolicy.NACK_ON_ERROR,  # a failed batch is redelivered, never skipped
        parser=_parse_batch,
        decoder=_raw_records,
        title=f"{spec.name}:consume",
        description=f"{spec.name} consumes {', '.join(spec.consumes)}; bad records go to <topic>.dlq",
    )
    async def consume(records: list) -> None:
        await pipeline.handle(records)
