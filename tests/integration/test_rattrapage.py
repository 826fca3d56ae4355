"""Catching a schema up with the log (deploy/rattrapage.py) on the real broker and database:
records are replayed in the order of their timestamps across topics, so an établissement
published before its equipment is known when the equipment is judged, whatever order the
partitions are read in."""

import json

from aiokafka import AIOKafkaProducer

import contracts as c
from deploy.rattrapage import ouvrir, rattraper
from helpers import college, event
from helpers import uai as valid_uai
from services.common.messaging.outbox import relay_producer
from services.equipement.app import SPEC
from test_equipement import DEPARTEMENT


async def test_the_replay_follows_the_timestamps_across_topics(kafka, settings) -> None:
    bootstrap, uai = kafka.bootstrap_servers, valid_uai("0350401")
    lots = [event(c.LOT, DEPARTEMENT, {**lot, "uai": uai}, subject=uai) for lot in LOTS]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:  # the lots written first, but stamped after the établissement they are about
        for n, lot in enumerate(lots):
            await producer.send_and_wait(
                settings.topic(c.EQUIPEMENT), json.dumps(lot).encode(), key=uai.encode(), timestamp_ms=T0 + n + 1
            )
        await producer.send_and_wait(
            settings.topic(c.REFERENTIEL), json.dumps(college(uai)).encode(), key=uai.encode(), timestamp_ms=T0
        )
    finally:
        await producer.stop()

    held = relay_producer(bootstrap, "test-rattrapage")
    one_by_one = settings.model_copy(update={"batch_max_records": 1})  # no batch holds both topics
    cible = await ouvrir(SPEC, one_by_one, "equipement_rattrape", held)
    try:
        assert await rattraper(cible) == 1 + len(lots)
        pool = cible.pipeline.pool
        assert await pool.fetchval("SELECT count(*) FROM lots") == len(lots)
        assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
        assert await rattraper(cible) == 0, "caught up: its positions are the end of the log"
    finally:
        await cible.close()
        await held.stop()


T0 = 1_788_000_000_000
LOTS = [{"lot_id": f"L{n}", "kind": "tablette", "quantity": 10, "os": None, "browsers": []} for n in range(1, 4)]
