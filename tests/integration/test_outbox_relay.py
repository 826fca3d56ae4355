"""The outbox relay against the real broker and database: order, headers byte-exact, and a
record Kafka will never accept set aside (visible, counted, retried by the operator command)
instead of holding back the ones behind it."""

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from contracts import ALERTES_ETAT
from contracts.internal import PROFILS
from deploy.rattrapage import read_topic, records_of
from helpers import (
    TEST_PARTITIONS,
    Said,
    TopicReader,
    eventually,
    kill_sender,
    lock_waiters,
    migrated_pool,
    record_count,
    running,
)
from services.common.messaging import outbox as outbox_module
from services.common.messaging import outbox_failed
from services.common.messaging.connection import KafkaAccess, kafka_options
from services.common.messaging.outbox import (
    MAX_REQUEST_BYTES,
    OutboxRecord,
    OutboxRelay,
    Twin,
    count_pending,
    enqueue,
    relay_lock,
    relay_producer,
)
from services.common.pipeline import writer_lock
from services.common.runtime.health import health_report
from services.common.storage.db import create_pool, migrate
from services.equipement.app import SPEC

ODD_HEADERS = (("x-bin", b"\xff\xfe\x00\x80"), ("x-null", None), ("x-n", b"dup-1"), ("x-n", b"dup-2"), ("x-empty", b""))


async def make_topic(kafka, topic: str, partitions: int, configs: dict[str, str] | None = None) -> None:
    admin = AIOKafkaAdminClient(**kafka_options(kafka.bootstrap_servers))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs or {})])
    finally:
        await admin.close()


def producer_as_admin(kafka) -> AIOKafkaProducer:
    """The relay's producer, as the environment's principal (the tests' admin)."""
    return relay_producer(KafkaAccess.from_environ(bootstrap_servers=kafka.bootstrap_servers), "relay-test")


@contextlib.asynccontextmanager
async def relay_with_topics(kafka, database_url: str, *topics: str) -> AsyncIterator[tuple[asyncpg.Pool, OutboxRelay]]:
    """equipement's schema migrated, its relay (not started), and `topics` made with one partition each."""
    async with migrated_pool(database_url, SPEC) as pool:
        relay = OutboxRelay(pool, producer_as_admin(kafka), "equipement")
        try:
            for topic in topics:
                await make_topic(kafka, topic, 1)
            yield pool, relay
        finally:
            await relay.stop()


async def test_an_unpublishable_record_is_set_aside_and_the_rest_goes_out_in_order(kafka, database_url, topic_prefix):
    topic = topic_prefix + PROFILS
    pool = await create_pool(database_url, "relaytest")
    await migrate(pool, "relaytest", SPEC.package_dir)
    relay = OutboxRelay(pool, producer_as_admin(kafka), "relaytest")
    try:
        records = [
            OutboxRecord(topic, b"k", json.dumps({"n": n}).encode(), (("x-n", str(n).encode()),)) for n in range(3)
        ]
        huge = OutboxRecord(topic, b"k", b"x" * (MAX_REQUEST_BYTES + 1))  # over the relay's request size
        odd = OutboxRecord(topic, b"k", b"odd", ODD_HEADERS)
        async with pool.acquire() as conn:
            await enqueue(conn, [records[0], huge, records[1], records[2], odd])
        async with TopicReader(kafka.bootstrap_servers, topic) as reader:
            assert await relay.drain_once() == 5
            out = await reader.wait_for(lambda rs: len(rs) >= 4, what="the four good records")
            assert [r.value for r in out[:3]] == [json.dumps({"n": n}).encode() for n in range(3)]
            assert [dict(r.headers)["x-n"] for r in out[:3]] == [b"0", b"1", b"2"]
            assert (out[3].value, tuple(out[3].headers)) == (b"odd", ODD_HEADERS), "headers byte-exact, in order"
        failed = await pool.fetch("SELECT topic, length(record_value) AS size, error FROM outbox_failed")
        assert [(f["topic"], f["size"]) for f in failed] == [(topic, MAX_REQUEST_BYTES + 1)]
        assert "MessageSizeTooLarge" in failed[0]["error"]
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
        assert await relay.drain_once() == 0
    finally:
        await relay.stop()
        await pool.close()


async def test_a_record_the_broker_refuses_is_set_aside_alone(kafka, database_url, topic_prefix):
    """Over the topic's max.message.bytes, a record goes out in a batch of its own (over a
    batch's size) which the broker refuses for good: that record is set aside, and the records
    behind it on its partition go out, once (set aside, they would be published again by an
    operator's retry, after records that came later). The refusal leaves the idempotent
    producer's sequence numbers out of step with the broker's: the relay starts a new one,
    else every later batch of the partition is refused as out of order, for good."""
    topic = topic_prefix + "refused"
    await make_topic(kafka, topic, 1, {"max.message.bytes": str(100 * 1024)})
    pool = await create_pool(database_url, "relayrefused")
    await migrate(pool, "relayrefused", SPEC.package_dir)
    relay = OutboxRelay(pool, producer_as_admin(kafka), "relayrefused", renew=lambda: producer_as_admin(kafka))
    try:
        small = [OutboxRecord(topic, b"k", b"%d" % n) for n in range(3)]
        big = OutboxRecord(topic, b"k", b"x" * (300 * 1024))  # over a batch (256 KiB) and the topic's limit
        async with pool.acquire() as conn:
            await enqueue(conn, [small[0], big, small[1], small[2]])
        async with TopicReader(kafka.bootstrap_servers, topic) as reader:
            # The broker refused the big one's batch, and then the next as out of order: the
            # producer's sequence numbers were out of step. A new producer sends it next round.
            assert [await relay.drain_once() for _ in range(3)] == [0, 2, 0]
            out = await reader.wait_for(lambda rs: len(rs) >= 3, what="the three small records")
        assert [r.value for r in out] == [b"0", b"1", b"2"]
        assert await record_count(kafka.bootstrap_servers, topic) == 3, "each once"
        failed = await pool.fetch("SELECT length(record_value) AS size, error FROM outbox_failed")
        assert [f["size"] for f in failed] == [300 * 1024], [dict(f) for f in failed]
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await relay.stop()
        await pool.close()


async def test_after_its_producer_s_sender_died_the_relay_publishes_with_a_new_one(kafka, database_url, topic_prefix):
    """aiokafka's sender task, ended by an unexpected error, never restarts: every later send of
    that producer raises. The relay would fail every round for the life of the process (alerts
    never published, and nothing else wrong to see); it starts a new producer instead."""
    topic = topic_prefix + "senderdied"
    await make_topic(kafka, topic, 1)
    pool = await create_pool(database_url, "relaysenderdied")
    await migrate(pool, "relaysenderdied", SPEC.package_dir)
    first = producer_as_admin(kafka)
    relay = OutboxRelay(pool, first, "relaysenderdied", renew=lambda: producer_as_admin(kafka))
    try:
        async with pool.acquire() as conn:
            await enqueue(conn, [OutboxRecord(topic, b"k", b"before")])
        assert await relay.drain_once() == 1
        await kill_sender(first, topic)
        async with pool.acquire() as conn:
            await enqueue(conn, [OutboxRecord(topic, b"k", b"after")])
        async with TopicReader(kafka.bootstrap_servers, topic) as reader:
            assert await relay.drain_once() == 1
            out = await reader.wait_for(lambda rs: any(r.value == b"after" for r in rs), what="the later record")
        assert [r.value for r in out if r.value != b"the record the sender dies on"] == [b"before", b"after"]
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await relay.stop()
        await pool.close()


async def test_rounds_go_out_in_batches_per_partition_each_key_in_order_where_send_puts_it(
    kafka, database_url, topic_prefix
):
    """1,200 records of 2 KB on 3 partitions: three rounds, each partition's share of a round
    over one batch; every record once, each key's in `seq` order, on the partition aiokafka's
    own `send` picks for that key (Kafka's default partitioner, as before the relay batched)."""
    topic, keys = topic_prefix + "batches", [f"0350{n:03d}X/lot-{n}".encode() for n in range(7)]
    await make_topic(kafka, topic, 3)
    pool = await create_pool(database_url, "relaybatches")
    await migrate(pool, "relaybatches", SPEC.package_dir)
    relay = OutboxRelay(pool, producer_as_admin(kafka), "relaybatches", batch=500)
    try:
        records = [
            OutboxRecord(topic, keys[n % 7], json.dumps({"n": n, "pad": "x" * 2000}).encode(), (("x-n", b"%d" % n),))
            for n in range(1200)
        ]
        async with pool.acquire() as conn:
            await enqueue(conn, records)
        async with TopicReader(kafka.bootstrap_servers, topic) as reader:
            assert [await relay.drain_once() for _ in range(4)] == [500, 500, 200, 0]
            out = list(await reader.wait_for(lambda rs: len(rs) >= 1200, what="the 1,200 records"))
        assert await record_count(kafka.bootstrap_servers, topic) == 1200, "each once"
        probe = AIOKafkaProducer(**kafka_options(kafka.bootstrap_servers))
        await probe.start()
        try:
            chosen = {k: (await (await probe.send(topic, b"probe", key=k))).partition for k in keys}
        finally:
            await probe.stop()
        assert len(out) == 1200 and await pool.fetchval("SELECT count(*) FROM outbox") == 0
        for key in keys:
            mine = [r for r in out if r.key == key]
            assert [json.loads(r.value)["n"] for r in mine] == list(range(keys.index(key), 1200, 7)), key
            assert [dict(r.headers)["x-n"] for r in mine] == [b"%d" % json.loads(r.value)["n"] for r in mine]
            assert {r.partition for r in mine} == {chosen[key]}, key
        assert len({r.partition for r in out}) > 1, "the keys spread over the partitions"
    finally:
        await relay.stop()
        await pool.close()


async def test_partitions_added_to_a_topic_of_the_platform_take_none_of_its_keys(
    kafka, database_url, topic_prefix, monkeypatch
):
    """alertes.etat.v1 as the tests make it (TEST_PARTITIONS; production's are made with 12:
    ROUTED_PARTITIONS), then given 2 more: spread over the new count, most keys' next records went to another partition
    than their earlier ones, where compaction kept a resolved alert's raise for good (audit s63
    topology #1). Every key's records stay on the partition of its first, none on those added."""
    from aiokafka.admin import NewPartitions

    from services.common.messaging.partitioner import partition_for

    made, grown = TEST_PARTITIONS, TEST_PARTITIONS + 2
    monkeypatch.setattr(outbox_module, "ROUTED_PARTITIONS", made)
    topic = topic_prefix + ALERTES_ETAT  # made by the fixture, compacted
    keys = [f"alerte-{n}".encode() for n in range(12)]
    assert any(partition_for(k, range(grown)) != partition_for(k, range(made)) for k in keys), "some would move"

    async def relayed(pool: asyncpg.Pool, n: int) -> None:
        relay = OutboxRelay(pool, producer_as_admin(kafka), "relayspread")
        try:
            async with pool.acquire() as conn:
                await enqueue(conn, [OutboxRecord(topic, k, b"%d" % n) for k in keys])
            assert await relay.drain_once() == len(keys)
        finally:
            await relay.stop()

    async with migrated_pool(database_url, SPEC, "relayspread") as pool:
        await relayed(pool, 1)
        admin = AIOKafkaAdminClient(**kafka_options(kafka.bootstrap_servers))
        await admin.start()
        try:
            await admin.create_partitions({topic: NewPartitions(total_count=grown)})

            async def added() -> bool:
                [described] = await admin.describe_topics([topic])
                return len(described["partitions"]) == grown

            await eventually(added, what="the partitions added")
        finally:
            await admin.close()
        await relayed(pool, 2)  # a new producer: the topic's metadata read afresh

    out = [r async for r in records_of(kafka.bootstrap_servers, topic)]
    assert sorted((r.key, r.value) for r in out) == sorted((k, v) for k in keys for v in (b"1", b"2"))
    for key in keys:
        assert len({r.partition for r in out if r.key == key}) == 1, key
    assert {r.partition for r in out} <= set(range(made)), "none on the partitions added"


async def test_while_another_relay_holds_the_outbox_a_round_publishes_nothing(kafka, database_url, topic_prefix):
    """One relay per schema at a time (replicas must not interleave a key's records): while the
    lock is held elsewhere, a round neither publishes nor deletes; once released, it does both."""
    topic = topic_prefix + PROFILS
    pool = await create_pool(database_url, "relaylocked")
    await migrate(pool, "relaylocked", SPEC.package_dir)
    relay = OutboxRelay(pool, producer_as_admin(kafka), "relaylocked")
    other = await asyncpg.connect(database_url)
    try:
        async with pool.acquire() as conn:
            await enqueue(conn, [OutboxRecord(topic, b"k", b"held back")])
        await other.execute("SELECT pg_advisory_lock($1)", relay_lock("relaylocked"))
        assert await relay.drain_once() == 0
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 1, "nothing deleted while held elsewhere"
        await other.execute("SELECT pg_advisory_unlock($1)", relay_lock("relaylocked"))
        async with TopicReader(kafka.bootstrap_servers, topic) as reader:
            assert await relay.drain_once() == 1
            out = await reader.wait_for(lambda rs: len(rs) >= 1, what="the record once the lock is free")
        assert [r.value for r in out] == [b"held back"]
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await other.close()
        await relay.stop()
        await pool.close()


async def test_a_round_after_another_replicas_round_does_not_publish_its_records_again(
    kafka, database_url, topic_prefix
):
    """Two replicas' relays, one after the other: what the first published and deleted, the
    second must not see. A read that began before the first round committed (and released the
    lock) would still see those records: the lock is taken before the outbox is read. Here the
    second relay's lock is held up (a `pg_try_advisory_xact_lock` of the test's own, earlier on
    its search_path, waits on a lock the test holds) while the first round commits."""
    schema, gate = "relayhandover", 424242
    topic = topic_prefix + PROFILS
    pool = await create_pool(database_url, schema)
    await migrate(pool, schema, SPEC.package_dir)
    await pool.execute(
        f"""
        CREATE SCHEMA relayhandover_gate;
        CREATE FUNCTION relayhandover_gate.pg_try_advisory_xact_lock(key bigint) RETURNS boolean
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_catalog.pg_advisory_lock_shared({gate});
            PERFORM pg_catalog.pg_advisory_unlock_shared({gate});
            RETURN pg_catalog.pg_try_advisory_xact_lock(key);
        END $$;
        """
    )
    gated = {"search_path": f"relayhandover_gate, {schema}, pg_catalog"}
    held_up = await asyncpg.create_pool(database_url, min_size=1, max_size=1, server_settings=gated)
    relay = OutboxRelay(held_up, producer_as_admin(kafka), schema)
    first, gatekeeper = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        async with pool.acquire() as conn:
            await enqueue(conn, [OutboxRecord(topic, b"k", b"published by the first relay")])
        await gatekeeper.execute("SELECT pg_advisory_lock($1)", gate)
        second = asyncio.create_task(relay.drain_once())
        await eventually(
            lambda: first.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND NOT granted", gate
            ),
            what="the second relay's round waiting at the gate",
        )
        async with first.transaction():  # the first relay's round: published, deleted, committed
            await first.execute("SELECT pg_advisory_xact_lock($1)", relay_lock(schema))
            await first.execute(f"DELETE FROM {schema}.outbox")
        await gatekeeper.execute("SELECT pg_advisory_unlock($1)", gate)
        assert await second == 0, "the second relay published the first one's records again"
    finally:
        await first.close()
        await gatekeeper.close()
        await relay.stop()
        await held_up.close()
        await pool.close()


async def test_the_operator_lists_retries_and_drops_set_aside_records(kafka, database_url, topic_prefix, capsys):
    topic = topic_prefix + PROFILS
    pool = await create_pool(database_url, "equipement")
    await migrate(pool, "equipement", SPEC.package_dir)
    relay = OutboxRelay(pool, producer_as_admin(kafka), "equipement")
    try:
        small = topic_prefix + "small"  # the broker refuses records over 1,000 bytes on it
        await make_topic(kafka, small, 1, {"max.message.bytes": "1000"})
        async with pool.acquire() as conn:
            await enqueue(conn, [OutboxRecord(small, b"k", b"a" * 2000), OutboxRecord(small, b"k", b"b" * 2000)])
        await relay.drain_once()
        assert await outbox_failed.run("list", ["equipement"], database_url, None) == 2
        listed = capsys.readouterr().out
        assert "equipement: 2 record(s) set aside" in listed and "TooLarge" in listed
        seqs = [r["seq"] for r in await pool.fetch("SELECT seq FROM outbox_failed ORDER BY seq")]

        # The cause fixed (here: the record's topic), retry puts it back and the relay publishes it.
        await pool.execute("UPDATE outbox_failed SET topic = $1 WHERE seq = $2", topic, seqs[0])
        assert await outbox_failed.run("retry", ["equipement"], database_url, [seqs[0]]) == 1
        async with TopicReader(kafka.bootstrap_servers, topic) as reader:
            assert await relay.drain_once() == 1
            [retried] = await reader.wait_for(
                lambda rs: [r.value for r in rs] == [b"a" * 2000], what="the retried record"
            )
        assert ("outbox-retry", str(seqs[0]).encode()) in retried.headers, "recognisable as retried"
        with pytest.raises(outbox_failed.SeqAbsent, match=f"no set-aside record of seq {seqs[0]} "):
            await outbox_failed.run("retry", ["equipement"], database_url, [seqs[0]])  # retried once
        with pytest.raises(outbox_failed.SeqAbsent, match=r"seq 4242 .*: nothing done"):  # not seqs[1] either
            await outbox_failed.run("drop", ["equipement"], database_url, [seqs[1], 4242])
        capsys.readouterr()
        assert await outbox_failed.run("drop", ["equipement"], database_url, [seqs[1]]) == 1
        assert f"equipement: dropped seq={seqs[1]} topic={small} created_at=" in capsys.readouterr().out
        assert await pool.fetchval("SELECT count(*) FROM outbox_failed") == 0
        with pytest.raises(outbox_failed.SeqAbsent, match="no set-aside record of seq 4242 "):  # exit 1, not 0
            await outbox_failed.run("drop", ["equipement"], database_url, [4242])
    finally:
        await relay.stop()
        await pool.close()


async def test_a_set_aside_record_of_a_compacted_topic_is_never_retried_after_a_later_one_of_its_key(
    kafka, database_url, topic_prefix, capsys
):
    """On a topic that keeps only each key's last record, a retried record published after a
    later one of its key would stand for the key in its place for good: marked superseded when
    that later one goes out (in a later round or the same), listed so, and left by retry; a later
    one still waiting in the outbox goes out after the retried one. On another topic, a later
    record of the key changes nothing."""
    compacted, plain = topic_prefix + "etat." + PROFILS, topic_prefix + "flux"
    async with relay_with_topics(kafka, database_url, compacted, plain) as (pool, relay):
        big = b"x" * (MAX_REQUEST_BYTES + 1)  # over the relay's request size: set aside before it is sent
        async with pool.acquire() as conn:
            await enqueue(
                conn, [OutboxRecord(t, k, big) for t, k in ((compacted, b"k1"), (compacted, b"k2"), (plain, b"k1"))]
            )
        assert await relay.drain_once() == 3
        async with pool.acquire() as conn:  # later records of k1 on both topics; k3's in the same round as it
            await enqueue(
                conn,
                [
                    OutboxRecord(compacted, b"k1", b"new"),
                    OutboxRecord(plain, b"k1", b"new"),
                    OutboxRecord(compacted, b"k3", big),
                    OutboxRecord(compacted, b"k3", b"new"),
                ],
            )
        assert await relay.drain_once() == 4
        rows = await pool.fetch(
            "SELECT seq, topic, key, superseded_at IS NOT NULL AS superseded FROM outbox_failed ORDER BY seq"
        )
        assert [(r["topic"], r["key"], r["superseded"]) for r in rows] == [
            (compacted, b"k1", True),
            (compacted, b"k2", False),
            (plain, b"k1", False),
            (compacted, b"k3", True),
        ]
        capsys.readouterr()
        assert await outbox_failed.run("list", ["equipement"], database_url, None) == 4
        assert capsys.readouterr().out.count("a later record of its key went out on") == 2

        k1, k2 = (r["seq"] for r in rows[:2])
        with pytest.raises(outbox_failed.SeqSuperseded, match=f"seq {k1} superseded, never retried .*nothing done"):
            await outbox_failed.run("retry", ["equipement"], database_url, [k2, k1])  # exit 1, not 0
        assert await pool.fetchval("SELECT count(*) FROM outbox_failed") == 4, "k2's not retried either"

        # k4 set aside, and a later record of it waiting in the outbox (Kafka away, a backlog).
        async with pool.acquire() as conn:
            await enqueue(conn, [OutboxRecord(compacted, b"k4", big)])
        assert await relay.drain_once() == 1
        async with pool.acquire() as conn:
            await enqueue(conn, [OutboxRecord(compacted, b"k4", b"new")])
        assert await outbox_failed.run("retry", ["equipement"], database_url, None) == 3, "k2's, plain's k1, k4's"
        said = capsys.readouterr().out
        assert said.count("not retried (drop it)") == 2 and "equipement: 3 record(s) back in the outbox" in said
        left = await pool.fetch("SELECT key FROM outbox_failed ORDER BY seq")
        assert [r["key"] for r in left] == [b"k1", b"k3"]
        waiting = await pool.fetch("SELECT topic, key, record_value FROM outbox ORDER BY seq")
        assert [(r["topic"], r["key"], r["record_value"] == big) for r in waiting] == [
            (compacted, b"k2", True),
            (plain, b"k1", True),
            (compacted, b"k4", True),
            (compacted, b"k4", False),
        ], "in the order they were made"


async def test_a_retried_record_goes_out_in_its_place_among_its_key_s_records(kafka, database_url, topic_prefix):
    """Two set-aside records of one key on a compacted topic, the older retried first: it goes out
    without superseding the newer one, which is retried in turn; and a later record of the key
    whose transaction took its seq before the retry but committed after it goes out after the
    retried one. The key ends with its latest record."""
    topic = topic_prefix + "etat." + PROFILS
    async with relay_with_topics(kafka, database_url, topic) as (pool, relay):
        big = b"x" * (MAX_REQUEST_BYTES + 1)
        async with pool.acquire() as conn:
            await enqueue(conn, [OutboxRecord(topic, b"k", big + b"1"), OutboxRecord(topic, b"k", big + b"2")])
        assert await relay.drain_once() == 2
        older, newer = [r["seq"] for r in await pool.fetch("SELECT seq FROM outbox_failed ORDER BY seq")]
        await pool.execute(
            "UPDATE outbox_failed SET record_value = substring(record_value FROM length(record_value))"
        )  # fixed
        async with TopicReader(kafka.bootstrap_servers, topic) as reader:
            assert await outbox_failed.run("retry", ["equipement"], database_url, [older]) == 1
            assert await relay.drain_once() == 1
            await reader.wait_for(lambda rs: [r.value for r in rs] == [b"1"], what="the older record")
            assert await pool.fetchval("SELECT superseded_at FROM outbox_failed WHERE seq = $1", newer) is None

            async with pool.acquire() as conn:
                later = conn.transaction()
                await later.start()
                try:
                    await enqueue(conn, [OutboxRecord(topic, b"k", b"3")])  # its seq taken now
                    assert await outbox_failed.run("retry", ["equipement"], database_url, [newer]) == 1
                finally:
                    await later.commit()
            assert await relay.drain_once() == 2
            await reader.wait_for(
                lambda rs: [r.value for r in rs] == [b"1", b"2", b"3"], what="the key's records in the order made"
            )


async def test_the_operator_s_retry_waits_for_a_rebuild_s_switch_and_hides_a_partner_s_key(database_url, capsys):
    """retry writes as the service does, under its writer lock (a rebuild's switch holds it
    alone: its copy of the set-aside records would miss the move); --show-key shows no key of a
    DLQ copy but a UAI (a partner's formation-suivie is keyed by its teacher_id)."""
    pool = await create_pool(database_url, "equipement")
    await migrate(pool, "equipement", SPEC.package_dir)
    switch = await asyncpg.connect(database_url)
    try:
        await pool.execute(
            "INSERT INTO outbox_failed (seq, topic, key, record_value, headers, error, created_at) VALUES "
            "(1, 'formation.declarations.v1.dlq', 'ens-jean-dupont-42', 'v', '[]', 'RecordTooLargeError', now()), "
            "(2, 'equipement.declarations.v1.dlq', '0350004P', 'v', '[]', 'RecordTooLargeError', now())"
        )
        assert await outbox_failed.run("list", ["equipement"], database_url, None, show_key=True) == 2
        listed = capsys.readouterr().out
        assert "ens-jean-dupont-42" not in listed and "key='0350004P'" in listed
        await switch.execute("SELECT pg_advisory_lock($1)", writer_lock("equipement"))
        retry = asyncio.create_task(outbox_failed.run("retry", ["equipement"], database_url, [2]))
        await eventually(lambda: lock_waiters(switch), what="the retry waiting for the switch")
        assert not retry.done() and await pool.fetchval("SELECT count(*) FROM outbox") == 0
        await switch.execute("SELECT pg_advisory_unlock($1)", writer_lock("equipement"))
        assert await asyncio.wait_for(retry, 10) == 1
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    finally:
        await switch.close()
        await pool.close()


async def test_a_twin_retried_alone_that_ends_its_key_goes_out_whole_in_one_row(kafka, database_url, topic_prefix):
    """A set-aside row whose record is superseded and whose twin ends its key: `retry` puts back
    one row, under its seq, which publishes the twin's value then the tombstone (twice the value:
    the twin of itself), before every record made after it."""
    record_topic, table = topic_prefix + "etat." + PROFILS, topic_prefix + "t." + ALERTES_ETAT
    async with relay_with_topics(kafka, database_url, record_topic, table) as (pool, relay):
        async with pool.acquire() as conn:
            await enqueue(conn, [OutboxRecord(table, b"later", b"made after")])  # seq 1, waiting
        await pool.execute(
            "INSERT INTO outbox_failed (seq, topic, key, record_value, headers, twin_topic, twin_key, twin_ends, "
            "error, created_at, superseded_at) "
            "VALUES (0, $1, 'k', 'resolved', '[]', $2, 'a1', true, 'e', now(), now())",
            record_topic,
            table,
        )
        assert await outbox_failed.run("retry", ["equipement"], database_url, None) == 1
        assert await relay.drain_once() == 2
        assert [(r.key, r.value) async for r in records_of(kafka.bootstrap_servers, table)] == [
            (b"a1", b"resolved"),
            (b"a1", b"resolved"),
            (b"a1", None),
            (b"later", b"made after"),
        ]
        assert [r async for r in records_of(kafka.bootstrap_servers, record_topic)] == [], "the record superseded"


async def test_health_reports_the_records_set_aside(kafka, settings):
    runner = running(SPEC, settings)
    async with runner as pipeline:
        status, body = await health_report(pipeline, runner.app.broker)
        assert (status, body["outbox_failed"]) == (200, 0)
        await pipeline.pool.execute(
            "INSERT INTO outbox_failed (seq, topic, key, record_value, headers, error, created_at) "
            "VALUES (1, 't', NULL, 'v', '[]', 'MessageSizeTooLargeError: ...', now())"
        )
        status, body = await health_report(pipeline, runner.app.broker)
        assert (status, body["outbox_failed"]) == (200, 1), "still serving, and says an operator must look"


class _HeldProducer:
    """Acknowledges nothing until `release`: a round stays in flight between its sends and its commit."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.in_flight = asyncio.Event()
        self._acks: list[asyncio.Future] = []
        self._released = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self):
        producer = self

        class Builder:
            def append(self, timestamp, key, value, headers):
                producer.sent.append(value)
                return object()

            def close(self) -> None:
                pass

        return Builder()

    async def send_batch(self, builder, topic: str, partition: int) -> asyncio.Future:
        ack = asyncio.get_running_loop().create_future()
        self._acks.append(ack)
        self.in_flight.set()
        if self._released:
            ack.set_result(None)
        return ack

    def release(self) -> None:
        """Acknowledges what was sent, and from now on each batch at once."""
        self._released = True
        for ack in self._acks:
            if not ack.done():
                ack.set_result(None)


class _AwayProducer(_HeldProducer):
    """Kafka away: while `away` is "connect", each round's first request fails to connect; while
    "sends", the topic's partitions known already, each batch sent fails (the usual way, for a
    producer that ran before); then up."""

    def __init__(self) -> None:
        super().__init__()
        self.away, self.tried = "connect", 0
        self.release()

    async def partitions_for(self, topic: str) -> set[int]:
        if self.away == "connect":
            self.tried += 1
            raise KafkaConnectionError("Unable to connect to broker 127.0.0.1:9092")
        return {0}

    async def send_batch(self, builder, topic: str, partition: int) -> asyncio.Future:
        if self.away != "sends":
            return await super().send_batch(builder, topic, partition)
        self.tried += 1
        self.sent.clear()
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(KafkaTimeoutError())
        return failed


async def test_kafka_away_is_said_once_without_a_traceback_and_its_return_once(database_url, topic_prefix, monkeypatch):
    """Each round a second logged ERROR `outbox.relay_failed` with its traceback for as long as
    Kafka was away: ~150 a pod before it ended, burying the ERRORs an operator acts on (audit
    helper-181 #5). Now a warning once, then the round that goes through says so."""
    said = Said()
    monkeypatch.setattr(outbox_module, "log", said)
    producer = _AwayProducer()
    async with migrated_pool(database_url, SPEC) as pool:
        relay = OutboxRelay(pool, producer, "equipement", poll_ms=50)  # type: ignore[arg-type]
        try:
            async with pool.acquire() as conn:
                await enqueue(conn, [OutboxRecord(topic_prefix + "away", b"k", b"%d" % n) for n in range(2)])
            relay.start()
            await eventually(lambda: asyncio.sleep(0, producer.tried >= 3), timeout=30, what="three rounds failing")
            producer.away, producer.tried = "sends", 0
            await eventually(
                lambda: asyncio.sleep(0, producer.tried >= 3), timeout=30, what="three rounds' sends failing"
            )
            [waiting] = [line for line in said.named("outbox.relay_waiting") if line["level"] == "warning"]
            assert waiting["error"] == "KafkaConnectionError" and "exc_info" not in waiting
            assert not said.named("outbox.relay_failed") and not said.named("outbox.relay_resumed")
            assert not [line for line in said.lines if line["level"] in ("warning", "error")][1:], said.lines
            producer.away = None
            await eventually(lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="the records published")
            await eventually(lambda: asyncio.sleep(0, said.named("outbox.relay_resumed")), what="its return said")
            assert producer.sent == [b"0", b"1"]
            assert len([line for line in said.named("outbox.relay_waiting") if line["level"] == "warning"]) == 1
        finally:
            await relay.stop()


async def test_a_halt_lets_the_round_in_flight_commit_so_the_flush_sends_nothing_twice(database_url, topic_prefix):
    """At a graceful stop the relay's loop halts, then `flush` publishes what is left. A round
    cancelled between its sends and its commit left its records in the outbox, which the flush
    sent again: alerts published twice at every stop that fell inside a round. The halt waits
    for the round."""
    pool = await create_pool(database_url, "relayhalt")
    await migrate(pool, "relayhalt", SPEC.package_dir)
    producer = _HeldProducer()
    relay = OutboxRelay(pool, producer, "relayhalt", poll_ms=50)  # type: ignore[arg-type]
    try:
        async with pool.acquire() as conn:
            await enqueue(conn, [OutboxRecord(topic_prefix + "halt", b"k", b"%d" % n) for n in range(3)])
        relay.start()
        await asyncio.wait_for(producer.in_flight.wait(), 10)
        halting = asyncio.create_task(relay.halt())
        await eventually(lambda: asyncio.sleep(0, relay._halting), what="the halt asked for mid-round")
        producer.release()
        await asyncio.wait_for(halting, 10)
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0, "the round committed"
        assert await relay.flush() == 0
        assert producer.sent == [b"0", b"1", b"2"], "each sent once"
    finally:
        await relay.stop()
        await pool.close()


async def test_a_round_cancelled_at_a_halt_keeps_the_relay_until_kafka_answered_for_its_batches(
    database_url, topic_prefix, monkeypatch
):
    """A halt cancels a round that outlasts ROUND_WAIT_SECONDS (Kafka slow). Its batches are in
    aiokafka's hands by then, and go out whatever becomes of the task: the round ended at once
    released the relay's lock, and another replica's relay could publish a key's newer records
    (a tombstone) ahead of these (its raise), retried behind them. The round's transaction, and
    the lock with it, ends once Kafka has answered; the records go out again, in their order."""
    monkeypatch.setattr(outbox_module, "ROUND_WAIT_SECONDS", 0.05)
    async with _halted_mid_round(database_url, topic_prefix, "relayslow") as mid:
        assert not await mid.lock_free(), "the relay's lock held while the batches sent wait for Kafka"
        assert not mid.halting.done()
        mid.producer.release()
        await asyncio.wait_for(mid.halting, 10)
        assert await mid.lock_free(), "released once Kafka answered"
        assert await mid.relay.flush() == 3, "the cancelled round's records go out again"
        assert mid.producer.sent == [b"0", b"1", b"2"] * 2, "in their order, never a newer one first"


async def test_a_cancelled_round_that_kafka_never_answers_is_given_up_so_the_stop_ends(
    database_url, topic_prefix, monkeypatch
):
    """An idempotent producer retries until the broker answers: the wait for it is bounded."""
    monkeypatch.setattr(outbox_module, "ROUND_WAIT_SECONDS", 0.05)
    monkeypatch.setattr(outbox_module, "ANSWER_WAIT_SECONDS", 0.2)
    async with _halted_mid_round(database_url, topic_prefix, "relaynever") as mid:
        await asyncio.wait_for(mid.halting, 10)
        assert await mid.lock_free() and await count_pending(mid.pool) == 3, "given up: its records wait in the outbox"


@dataclasses.dataclass
class _MidRound:
    relay: OutboxRelay
    producer: _HeldProducer
    halting: asyncio.Task
    pool: asyncpg.Pool
    schema: str

    async def lock_free(self) -> bool:
        return await _relay_lock_free(self.pool, self.schema)


async def _relay_lock_free(pool: asyncpg.Pool, schema: str) -> bool:
    """Whether no relay of `schema` holds its lock (taken and released at once here)."""
    async with pool.acquire() as conn, conn.transaction():
        return await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", relay_lock(schema))


@contextlib.asynccontextmanager
async def _halted_mid_round(database_url: str, topic_prefix: str, schema: str) -> AsyncIterator[_MidRound]:
    """A relay whose round waits for Kafka's answers (none until `release`), and a halt asked
    for meanwhile, once it has cancelled the round."""
    pool = await create_pool(database_url, schema)
    await migrate(pool, schema, SPEC.package_dir)
    producer = _HeldProducer()
    relay = OutboxRelay(pool, producer, schema, poll_ms=50)  # type: ignore[arg-type]
    try:
        async with pool.acquire() as conn:
            await enqueue(conn, [OutboxRecord(topic_prefix + schema, b"k", b"%d" % n) for n in range(3)])
        relay.start()
        await asyncio.wait_for(producer.in_flight.wait(), 10)
        round_task = relay._task
        assert round_task is not None
        halting = asyncio.create_task(relay.halt())
        await eventually(lambda: asyncio.sleep(0, round_task.cancelling()), what="the round cancelled by the halt")
        yield _MidRound(relay, producer, halting, pool, schema)
    finally:
        producer.release()
        await relay.stop()
        await pool.close()


async def test_a_record_and_its_twin_share_a_row_and_a_set_aside_twin_is_superseded_on_its_own(
    kafka, database_url, topic_prefix, capsys
):
    """An alert's row: its event on the stream, the same on the table, then a tombstone there
    when it ends. Set aside, the row's twin on the compacted table is superseded by a later
    record of its key once published, and not the record on the stream, which is not compacted;
    but that later record's event went out on the stream too, so `retry` leaves the whole row (its
    event put back after the later one, a raise after its resolution, would show the alert open:
    audit helper-191 #3); a row whose twin's later record still waits in the outbox goes back
    whole, before it."""
    stream, table = topic_prefix + "flux", topic_prefix + "t." + ALERTES_ETAT
    async with relay_with_topics(kafka, database_url, stream, table) as (pool, relay):
        raised, resolved = (
            OutboxRecord(stream, b"uai", v, twin=Twin(table, b"a1", v == b"resolved")) for v in (b"raised", b"resolved")
        )
        async with pool.acquire() as conn:
            await enqueue(conn, [raised, resolved])
        assert await relay.drain_once() == 2, "two rows"
        assert await count_pending(pool) == 0
        assert [(r.key, r.value) async for r in records_of(kafka.bootstrap_servers, stream)] == [
            (b"uai", b"raised"),
            (b"uai", b"resolved"),
        ]
        assert [(r.key, r.value) async for r in records_of(kafka.bootstrap_servers, table)] == [
            (b"a1", b"raised"),
            (b"a1", b"resolved"),
            (b"a1", None),
        ], "the twins, then the tombstone that ends the key"

        big = b"x" * (MAX_REQUEST_BYTES + 1)  # over the relay's request size: set aside before it is sent
        async with pool.acquire() as conn:  # a2's later record in a later round, a3's waits in the outbox
            await enqueue(conn, [OutboxRecord(stream, b"uai", big, twin=Twin(table, key)) for key in (b"a2", b"a3")])
        assert await relay.drain_once() == 2
        async with pool.acquire() as conn:
            await enqueue(conn, [OutboxRecord(stream, b"uai", b"later", twin=Twin(table, b"a2"))])
        assert await relay.drain_once() == 1
        async with pool.acquire() as conn:
            await enqueue(conn, [OutboxRecord(stream, b"uai", b"later", twin=Twin(table, b"a3"))])
        rows = await pool.fetch(
            "SELECT twin_key, superseded_at IS NOT NULL AS record, twin_superseded_at IS NOT NULL AS twin "
            "FROM outbox_failed ORDER BY seq"
        )
        assert [tuple(r) for r in rows] == [(b"a2", False, True), (b"a3", False, False)]
        capsys.readouterr()
        assert await outbox_failed.run("retry", ["equipement"], database_url, None) == 1
        said = capsys.readouterr().out
        assert said.count("its twin superseded") == 1 and said.count("not retried, nor the record on") == 1, said
        waiting = await pool.fetch(
            "SELECT topic, key, length(record_value) AS size, twin_topic, twin_key FROM outbox ORDER BY seq"
        )
        assert [tuple(r) for r in waiting] == [
            (stream, b"uai", len(big), table, b"a3"),
            (stream, b"uai", len(b"later"), table, b"a3"),
        ], "a3's in the order they were made; none of a2's"
        [left] = await pool.fetch("SELECT seq, twin_key FROM outbox_failed")
        assert left["twin_key"] == b"a2", "kept for `drop`"
        with pytest.raises(outbox_failed.SeqSuperseded, match=f"seq {left['seq']} superseded, never retried"):
            await outbox_failed.run("retry", ["equipement"], database_url, [left["seq"]])


async def test_a_relay_and_a_writer_from_before_twins_fail_on_a_migrated_outbox(database_url):
    """A replica from before twins reads neither twin column: its relay would publish an alert's
    row without its table record. Its statements, as that version wrote them, fail instead on a
    schema migrated to 0015, so it publishes and writes nothing until it is replaced."""
    async with migrated_pool(database_url, SPEC) as pool, pool.acquire() as conn:
        await enqueue(conn, [OutboxRecord("flux", b"uai", b"raised", twin=Twin("etat", b"a1"))])
        with pytest.raises(asyncpg.UndefinedColumnError):  # its relay's round (3059f2a, outbox.py)
            await conn.fetch(
                "SELECT seq, topic, key, value, headers, EXISTS (SELECT FROM outbox_failed) AS set_aside "
                "FROM outbox ORDER BY seq LIMIT $1",
                2000,
            )
        with pytest.raises(asyncpg.UndefinedColumnError):  # its writers' enqueue
            await conn.copy_records_to_table(
                "outbox", columns=("topic", "key", "value", "headers"), records=[("flux", b"k", b"v", "[]")]
            )
        assert await count_pending(conn) == 1


async def test_a_round_given_up_lands_nothing_once_another_relay_holds_the_lock(
    kafka, database_url, topic_prefix, monkeypatch
):
    """Kafka answers a round's batch with a retriable error for longer than a halt waits (here
    its topic deleted, then made again): the round was given up, the relay's lock freed, and its
    idempotent producer retried the batch until the broker took it, after what another replica's
    relay published meanwhile (a raise after its resolution, for good on a compacted table).
    Now the producer is silenced before the lock goes."""
    monkeypatch.setattr(outbox_module, "ROUND_WAIT_SECONDS", 0.1)
    monkeypatch.setattr(outbox_module, "ANSWER_WAIT_SECONDS", 0.5)
    topic = topic_prefix + "rendu"
    await make_topic(kafka, topic, 1)
    handed = asyncio.Event()
    send = OutboxRelay._send

    async def watched(relay, batches):
        handed.set()
        return await send(relay, batches)

    monkeypatch.setattr(OutboxRelay, "_send", watched)
    renew = lambda: producer_as_admin(kafka)  # noqa: E731
    async with migrated_pool(database_url, SPEC, "relaygiveup") as pool:
        first, second = (
            OutboxRelay(pool, renew(), "relaygiveup", poll_ms=50, renew=renew),
            OutboxRelay(pool, renew(), "relaygiveup"),
        )
        admin = AIOKafkaAdminClient(**kafka_options(kafka.bootstrap_servers))
        await admin.start()
        try:
            given_up = first._producer
            await given_up.start()
            first._producer_started = True
            await given_up.partitions_for(topic)  # known to it: its batch goes out, and is refused
            await admin.delete_topics([topic])
            await eventually(lambda: _gone(admin, topic), what="the topic deleted")
            async with pool.acquire() as conn:
                await enqueue(conn, [OutboxRecord(topic, b"k", b"raise")])
            first.start()
            await asyncio.wait_for(handed.wait(), 30)
            async with pool.acquire() as conn:  # the alert resolves while the round waits for Kafka
                await enqueue(conn, [OutboxRecord(topic, b"k", b"resolve")])
            await first.halt()
            await make_topic(kafka, topic, 1)  # Kafka takes the topic's records again
            await eventually(lambda: _drained(second, pool), what="the other relay publishing both records")
            await asyncio.wait_for(given_up.stop(), 30)  # whatever it still held has landed, or never will
        finally:
            await admin.close()
            await first.stop()
            await second.stop()
    assert [r.value async for r in records_of(kafka.bootstrap_servers, topic)] == [b"raise", b"resolve"]


async def _gone(admin: AIOKafkaAdminClient, topic: str) -> bool:
    return topic not in await admin.list_topics()


async def _drained(relay: OutboxRelay, pool: asyncpg.Pool) -> bool:
    await relay.drain_once()
    return await _none_pending(pool)


async def test_a_round_waiting_for_kafka_keeps_its_lock_under_an_idle_in_transaction_timeout(
    database_url, topic_prefix
):
    """A deployment whose PostgreSQL ends sessions idle in a transaction (its
    idle_in_transaction_session_timeout) ended the relay's while its round waited for Kafka:
    the lock freed as a given-up round's was, the producer still holding its batch."""
    schema = "relayidle"
    pool = await create_pool(database_url, schema, settings={"idle_in_transaction_session_timeout": "200"})
    await migrate(pool, schema, SPEC.package_dir)
    producer = _HeldProducer()
    relay = OutboxRelay(pool, producer, schema, poll_ms=50)  # type: ignore[arg-type]
    try:
        async with pool.acquire() as conn:
            await enqueue(conn, [OutboxRecord(topic_prefix + schema, b"k", b"raise")])
        relay.start()
        await asyncio.wait_for(producer.in_flight.wait(), 10)
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = 'idle in transaction' "
            "AND clock_timestamp() - state_change > interval '0.6 s'"  # three times the server's timeout
        )
        await eventually(lambda: pool.fetchval(waiting, f"feo-{schema}"), timeout=5, what="the round's session kept")
        assert not await _relay_lock_free(pool, schema)
        producer.release()
        await eventually(lambda: _none_pending(pool), what="the round committed")
    finally:
        producer.release()
        with contextlib.suppress(TimeoutError):  # a relay whose session the server ended may not stop
            await asyncio.wait_for(relay.stop(), 10)
        pool.terminate()


async def _none_pending(pool: asyncpg.Pool) -> bool:
    return not await count_pending(pool)


async def test_a_relay_on_a_server_that_refuses_writes_publishes_nothing_and_health_says_why(
    kafka, database_url, topic_prefix, monkeypatch
):
    """PostgreSQL answering reads and refusing writes (a standby behind a stale endpoint after a
    failover, a managed server set read-only when full): the round read and sent its records,
    failed to delete them, and the next sent them again, every second, while /health said 200
    (audit helper-176 #1: 3 rows, 15 records in 8 s). Now nothing goes out until it takes
    writes, and /health says `database_read_only`; the relay's loop says it once, not at every
    round (helper-185's list)."""
    from types import SimpleNamespace

    from services.common.runtime.health import _read_health

    topic = topic_prefix + PROFILS
    await make_topic(kafka, topic, 1)
    async with migrated_pool(database_url, SPEC) as pool:
        async with pool.acquire() as conn:
            await enqueue(conn, [OutboxRecord(topic, b"k", json.dumps({"n": n}).encode()) for n in range(3)])
        read_only = await create_pool(database_url, "equipement", settings={"default_transaction_read_only": "on"})
        relay = OutboxRelay(read_only, producer_as_admin(kafka), "equipement")
        try:
            for _ in range(2):
                with pytest.raises(outbox_module.DatabaseReadOnly):
                    await relay.drain_once()
            body: dict = {}
            await _read_health(SimpleNamespace(pool=read_only, revivals_pending=0), None, body)
            assert (body["database_read_only"], body["outbox_pending"]) == (True, 3)
            said = Said()
            monkeypatch.setattr(outbox_module, "log", said)
            relay.start()

            def said_at(level: str) -> list[dict]:
                return [line for line in said.named("outbox.database_read_only") if line["level"] == level]

            await eventually(lambda: asyncio.sleep(0, len(said_at("debug")) >= 2), timeout=30, what="rounds refused")
            assert len(said_at("warning")) == 1 and said_at("warning")[0]["error"] == "DatabaseReadOnly"
        finally:
            await relay.stop()
            await read_only.close()
        assert await record_count(kafka.bootstrap_servers, topic) == 0, "nothing sent"
        relay = OutboxRelay(pool, producer_as_admin(kafka), "equipement")
        try:
            assert await relay.drain_once() == 3, "once the server takes writes"
        finally:
            await relay.stop()
        assert await record_count(kafka.bootstrap_servers, topic) == 3
        body = {}
        await _read_health(SimpleNamespace(pool=pool, revivals_pending=0), None, body)
        assert (body["database_read_only"], body["outbox_pending"]) == (False, 0)


async def test_records_of_a_topic_kafka_does_not_know_wait_while_the_other_topics_go_out(
    kafka, database_url, own_prefix, monkeypatch
):
    """A topic deleted to be made again (a DLQ purged, alertes.etat.v1 as Known limits says) or
    not made yet: every round raised on its first record, before sending any, and every record
    of the schema waited behind it (audit s66 #1). Its records wait, with those of the topics
    twinned with it (an alert's stream waits for its table) and those behind them on their
    partitions; the others go out; once it is made, they follow, in order."""
    monkeypatch.setattr(outbox_module, "TOPIC_LOOKUP_SECONDS", 1.0)
    monkeypatch.setattr(outbox_module, "ABSENT_RECHECK_SECONDS", 3.0)
    said = Said()
    monkeypatch.setattr(outbox_module, "log", said)
    missing, twinned, other = own_prefix + "missing", own_prefix + "twinned", own_prefix + "other"
    async with relay_with_topics(kafka, database_url, twinned, other) as (pool, relay):
        async with pool.acquire() as conn:
            await enqueue(
                conn,
                [
                    OutboxRecord(missing, b"dlq", b"0"),
                    OutboxRecord(twinned, b"K", b"1", twin=Twin(missing, b"K", ends=False)),
                    OutboxRecord(twinned, b"K", b"2"),  # behind the row waiting on its partition
                    OutboxRecord(other, b"x", b"3"),
                ],
            )
        assert await relay.drain_once() == 1, "the other topic's record went out, the others wait"
        assert await relay.drain_once() == 0, "the waiting rows are left out of the next rounds (3 s)"
        assert await relay.flush() == 0, "a stop does not wait for them"
        assert [line["topics"] for line in said.named("outbox.flush_left")] == [[missing]]
        assert [r.value for r in await read_topic(kafka.bootstrap_servers, other)] == [b"3"]
        assert await record_count(kafka.bootstrap_servers, twinned) == 0
        assert await pool.fetchval("SELECT array_agg(record_value ORDER BY seq) FROM outbox") == [b"0", b"1", b"2"]
        [absent] = said.named("outbox.topic_absent")
        assert (absent["topic"], absent["level"]) == (missing, "warning")

        await make_topic(kafka, missing, 1)

        async def all_published() -> bool:
            await relay.drain_once()
            return await count_pending(pool) == 0

        await eventually(all_published, what="the waiting records published once the topic is made")
        assert [r.value for r in await read_topic(kafka.bootstrap_servers, twinned)] == [b"1", b"2"]
        assert [r.value for r in await read_topic(kafka.bootstrap_servers, missing)] == [b"0", b"1"]
        assert [line["topic"] for line in said.named("outbox.topic_back")] == [missing]
        assert len(said.named("outbox.topic_absent")) == 1, "said once"
