"""The real Ille-et-Vilaine annuaire, published to a real broker, reads back as one valid
`etablissement` CloudEvent per UAI, keyed and subjected by UAI, from `/ministere`."""

import pytest
from aiokafka import AIOKafkaProducer

from contracts import CONTENT_TYPE, ETABLISSEMENT, REFERENTIEL, parse_event
from deploy.referentiel import TopicMissingError, load, publish_etablissements
from helpers import TopicReader
from services.common.messaging.connection import kafka_options

pytestmark = pytest.mark.kafka


async def test_the_ille_et_vilaine_annuaire_reads_back_one_event_per_uai(kafka, topic_prefix, shared_data):
    loaded = load(shared_data / "annuaire-education-ille-et-vilaine-2023.csv")
    topic = topic_prefix + REFERENTIEL
    reports: list[int] = []

    published = await publish_etablissements(
        kafka.bootstrap_servers, loaded.etablissements, topic, progress=reports.append
    )

    assert published == len(loaded.etablissements) == 996 - len(loaded.skipped)
    assert reports == sorted(reports) and reports[-1] == published
    async with TopicReader(kafka.bootstrap_servers, topic) as reader:
        records = await reader.wait_for(lambda r: len(r) >= published, what=f"{published} référentiel records")
    assert len(records) == published
    expected = {e.uai: e for e in loaded.etablissements}
    assert sorted(r.key.decode() for r in records) == sorted(expected)
    for record in records:
        assert dict(record.headers) == {"content-type": CONTENT_TYPE.encode()}
        event = parse_event(record.value, REFERENTIEL)
        assert (event.type, event.source, event.subject) == (ETABLISSEMENT, "/ministere", record.key.decode())
        assert event.data == expected[event.subject]


async def test_publishing_to_a_missing_topic_fails_without_creating_it(kafka, topic_prefix):
    topic = topic_prefix + "no-such-topic"
    with pytest.raises(TopicMissingError, match="does not exist"):
        await publish_etablissements(kafka.bootstrap_servers, [], topic)
    producer = AIOKafkaProducer(**kafka_options(kafka.bootstrap_servers))
    await producer.start()
    try:
        assert topic not in (await producer.client.fetch_all_metadata()).topics()
    finally:
        await producer.stop()


def test_an_etablissement_the_next_export_no_longer_lists_is_published_closed(
    kafka, topic_prefix, shared_data, tmp_path
):
    """The annuaire lists open établissements only: one gone from the next export stayed open on
    the platform for good (audit s72 F1). With the loads' state, it is published `ouvert: false`."""
    import asyncio

    from deploy.referentiel.__main__ import main

    source = (shared_data / "annuaire-education-ille-et-vilaine-2023.csv").read_text(encoding="utf-8-sig")
    header, first, *rest = source.splitlines()
    gone = first.split(";")[0]
    state, before, after = tmp_path / "referentiel.json", tmp_path / "2023.csv", tmp_path / "2024.csv"
    before.write_text("\n".join([header, first, *rest]) + "\n", encoding="utf-8")
    after.write_text("\n".join([header, *rest]) + "\n", encoding="utf-8")
    where = ["--bootstrap", kafka.bootstrap_servers, "--topic-prefix", topic_prefix, "--etat", str(state)]
    assert main(["load", str(before), *where, "--nouvel-etat"]) == 0
    assert main(["load", str(after), *where]) == 0
    published = 2 * 993 - 1 + 1  # the first file's, the second's, and the closure

    async def read_back():
        async with TopicReader(kafka.bootstrap_servers, topic_prefix + REFERENTIEL) as reader:
            return await reader.wait_for(lambda r: len(r) >= published, what=f"{published} référentiel records")

    records = asyncio.run(read_back())
    latest = {r.key.decode(): parse_event(r.value, REFERENTIEL).data for r in records}
    assert latest[gone].ouvert is False
    assert sum(not e.ouvert for e in latest.values()) == 1 + sum(
        not e.ouvert for e in load(shared_data / "annuaire-education-ille-et-vilaine-2023.csv").etablissements
    )
