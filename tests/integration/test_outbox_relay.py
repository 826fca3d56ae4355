"""The outbox relay against the real broker and database: order, and a record Kafka will
never accept set aside instead of holding back the ones behind it."""

import json

from helpers import TopicReader
from services.common.db import create_pool, migrate
from services.common.outbox import OutboxRecord, OutboxRelay, enqueue
from services.equipement.app import SPEC


async def test_an_unpublishable_record_is_set_aside_and_the_rest_goes_out_in_order(kafka, database_url, topic_prefix):
    from faststream.kafka import KafkaBroker

    topic = topic_prefix + "equipement.profils.v1"
    pool = await create_pool(database_url, "relaytest")
    await migrate(pool, "relaytest", SPEC.package_dir)
    broker = KafkaBroker(kafka.bootstrap_servers)
    await broker.start()
    try:
        records = [OutboxRecord(topic, b"k", json.dumps({"n": n}).encode(), {"x-n": str(n)}) for n in range(3)]
        huge = OutboxRecord(topic, b"k", b"x" * 2_000_000)  # over the producer's 1 MiB request size
        async with pool.acquire() as conn:
            await enqueue(conn, [records[0], huge, records[1], records[2]])
        relay = OutboxRelay(pool, broker, "relaytest")
        async with TopicReader(kafka.bootstrap_servers, topic) as reader:
            assert await relay.drain_once() == 4
            out = await reader.wait_for(lambda rs: len(rs) >= 3, what="the three good records")
            assert [json.loads(r.value)["n"] for r in out] == [0, 1, 2]
            assert [dict(r.headers)["x-n"] for r in out] == [b"0", b"1", b"2"]
        failed = await pool.fetch("SELECT topic, length(value) AS size, error FROM outbox_failed")
        assert [(f["topic"], f["size"]) for f in failed] == [(topic, 2_000_000)]
        assert "MessageSizeTooLarge" in failed[0]["error"]
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
        assert await relay.drain_once() == 0
    finally:
        await broker.stop()
        await pool.close()
