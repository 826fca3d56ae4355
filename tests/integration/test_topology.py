"""The topology on a real broker: each topic's retention is what it is for (partner topics and
the alerts stream kept forever, internal topics compacted, their records a week at least before
compaction, DLQs for DLQ_RETENTION_DAYS), and a
deployment created before (the broker's 7-day default) is brought in line, records kept."""

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import contracts as c
from contracts.internal import COUVERTURES, PROFILS
from deploy.topic_admin import create_topics, topic_configs
from deploy.topology import DAY_MS, Retention, platform_topics
from helpers import TopicReader, alter_topics, send
from services.common.messaging.connection import kafka_options

pytestmark = pytest.mark.kafka


async def _configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str | None]]:
    admin = AIOKafkaAdminClient(**kafka_options(bootstrap))
    await admin.start()
    try:
        return await topic_configs(admin, names)
    finally:
        await admin.close()


async def test_each_topic_is_kept_as_long_as_it_is_for(kafka, topic_prefix) -> None:
    names = {t: topic_prefix + t for t in (c.REFERENTIEL, c.FORMATION, c.EQUIPEMENT, c.CATALOGUE, c.ALERTES)}
    internal = {t: topic_prefix + t for t in (PROFILS, COUVERTURES)}
    dlqs = {t: topic_prefix + c.dlq(t) for t in (c.FORMATION, c.REFERENTIEL, PROFILS)}
    table = topic_prefix + c.ALERTES_ETAT
    configs = await _configs(kafka.bootstrap_servers, [*names.values(), *internal.values(), *dlqs.values(), table])

    for name in names.values():
        assert (configs[name]["cleanup.policy"], configs[name]["retention.ms"]) == ("delete", "-1"), name
    for name in internal.values():
        assert configs[name]["cleanup.policy"] == "compact", name
        # A group's records outlive a reader's lag of days: it never reads a later group over
        # an earlier state that compaction cut short.
        assert int(configs[name]["min.compaction.lag.ms"]) >= 7 * DAY_MS, name
    # A dashboard cut from Kafka for days still reads every resolution's tombstone when it reconnects.
    assert (configs[table]["cleanup.policy"], configs[table]["delete.retention.ms"]) == ("compact", str(7 * DAY_MS))
    for name in dlqs.values():
        assert configs[name]["retention.ms"] == str(30 * DAY_MS), name
        # Segments roll daily: a refused record (a partner's data) goes within a day of its
        # retention, not with a week-long segment of the broker's default.
        assert configs[name]["segment.ms"] == str(DAY_MS), name


async def test_an_existing_deployment_is_aligned_and_keeps_its_records(kafka, own_prefix) -> None:
    bootstrap, prefix = kafka.bootstrap_servers, own_prefix
    specs = platform_topics(prefix, Retention(alerts_days=400, dlq_days=7))
    admin = AIOKafkaAdminClient(**kafka_options(bootstrap))
    await admin.start()
    try:  # as the platform created them before: the broker's default retention everywhere
        await admin.create_topics([NewTopic(s.name, s.partitions, 1) for s in specs])
    finally:
        await admin.close()
    declarations, alerts = prefix + c.EQUIPEMENT, prefix + c.ALERTES
    await send(bootstrap, declarations, [("0350042F", b"kept")])

    changed = await create_topics(bootstrap, specs)

    assert set(changed) == {s.name for s in specs if s.configs()}
    configs = await _configs(bootstrap, [declarations, alerts, prefix + c.dlq(c.EQUIPEMENT)])
    assert configs[declarations]["retention.ms"] == "-1"
    assert configs[alerts]["retention.ms"] == str(400 * DAY_MS)
    assert configs[prefix + c.dlq(c.EQUIPEMENT)]["retention.ms"] == str(7 * DAY_MS)
    assert await create_topics(bootstrap, specs) == []  # aligned: nothing more to change
    async with TopicReader(bootstrap, declarations) as reader:
        await reader.wait_for(lambda records: [r.value for r in records] == [b"kept"], what="the record kept")


async def test_an_existing_topic_s_partitions_and_replicas_are_kept_and_said_when_they_differ(
    kafka, own_prefix
) -> None:
    """A topic made with 2 partitions where 6 are declared (a data directory of another
    configuration, a topic made by hand), and fewer replicas than asked: they were kept without
    a word (audit s63 topology #6). Still kept (partitions added would move keys), now said."""
    bootstrap, prefix = kafka.bootstrap_servers, own_prefix
    specs = [s for s in platform_topics(prefix, partitions=6) if s.name == prefix + c.EQUIPEMENT]
    admin = AIOKafkaAdminClient(**kafka_options(bootstrap))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(specs[0].name, 2, 1)])
    finally:
        await admin.close()
    said: list[str] = []

    await create_topics(bootstrap, specs, replicas=1, say=said.append)
    assert said == [f"Kafka: {prefix}{c.EQUIPEMENT} has 2 partitions, 6 declared: kept"]
    said.clear()
    await create_topics(bootstrap, specs, replicas=3, say=said.append)
    assert said[1:] == [f"Kafka: {prefix}{c.EQUIPEMENT} has 1 replicas of a partition, 3 asked: kept"]
    admin = AIOKafkaAdminClient(**kafka_options(bootstrap))
    await admin.start()
    try:
        [described] = await admin.describe_topics([specs[0].name])
    finally:
        await admin.close()
    assert len(described["partitions"]) == 2


async def test_a_topic_that_is_the_record_compacted_by_hand_is_put_back(kafka, own_prefix) -> None:
    """`cleanup.policy` was declared for the compacted topics only: a partner's topic or the alert
    stream compacted by hand ("keyed by UAI, the latest is the state") kept only each UAI's last
    record once its segments rolled, and nothing saw it (audit s63 topology #3)."""
    bootstrap, prefix = kafka.bootstrap_servers, own_prefix
    specs = platform_topics(prefix)
    await create_topics(bootstrap, specs)
    declarations, alerts = prefix + c.EQUIPEMENT, prefix + c.ALERTES
    declared = {s.name: s.configs() for s in specs}  # kept, as `kafka-configs --add-config` does
    compacted = {t: {**declared[t], "cleanup.policy": "compact"} for t in (declarations, alerts)}
    await alter_topics(bootstrap, compacted, "the topics compacted by hand")

    changed = await create_topics(bootstrap, specs)

    assert set(changed) == {declarations, alerts}
    configs = await _configs(bootstrap, [declarations, alerts])
    assert [configs[t]["cleanup.policy"] for t in (declarations, alerts)] == ["delete", "delete"]


def test_retention_settings_are_read_and_checked() -> None:
    assert Retention.from_environ({}) == Retention(alerts_days=0, dlq_days=30)
    assert Retention.from_environ({"ALERTS_RETENTION_DAYS": "400", "DLQ_RETENTION_DAYS": "0"}) == Retention(400, 0)
    forever = {t.name: t for t in platform_topics("", Retention(0, 0))}
    assert forever[c.ALERTES].retention_ms == forever[c.dlq(c.FORMATION)].retention_ms == -1
    assert forever[c.dlq(c.FORMATION)].segment_ms is None, "kept for ever: the broker's segments"
    with pytest.raises(ValueError, match=r"^ALERTS_RETENTION_DAYS: must be a whole number of days ≥ 0"):
        Retention.from_environ({"ALERTS_RETENTION_DAYS": "-5"})
