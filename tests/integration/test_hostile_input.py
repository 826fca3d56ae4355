"""A hostile partner, generated: records of every class a national platform receives from
thousands of partners' scripts, interleaved with valid ones on the four ingress topics, sent
to the real broker and handled by the three services (in this process) on the real database.

For every record sent, exactly one outcome: accepted (in the owning service's inbox, its
state stored) or dead-lettered once, bytes and headers unchanged, with the reason the
contract names. Valid records in the same batches take effect; the services stay healthy;
a refused teacher_id is never copied into a log line, a DLQ message or `dead_letters`.
"""

import json
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import contracts as c
from contracts.parsing import MAX_RECORD_BYTES
from helpers import TopicReader, college, eventually, running, send, uai
from services.common.messaging.connection import kafka_options
from services.common.runtime.health import health_report
from services.equipement.app import SPEC as EQUIPEMENT
from services.formation.app import SPEC as FORMATION
from services.ressources.app import SPEC as RESSOURCES

pytestmark = pytest.mark.kafka

COLLEGES = [uai(f"035{n:04d}") for n in range(9000, 9010)]
UNKNOWN = uai("0359999")
DEPARTEMENT, RECTORAT = "/collectivites/departements/035", "/rectorats/14"
EMAIL = "prenom.nom@ac-rennes.fr"
TOPIC_OWNER = {
    c.REFERENTIEL: "ressources",
    c.EQUIPEMENT: "equipement",
    c.FORMATION: "formation",
    c.CATALOGUE: "ressources",
}
CE = [("content-type", b"application/cloudevents+json")]


@dataclass
class Case:
    """One record to send and what the contract says must become of it."""

    topic: str
    value: bytes | None
    expect: str  # "accepted" or a DLQ reason code
    key: bytes | None = b"k"
    headers: list = field(default_factory=lambda: list(CE))
    source: str | None = None  # accepted: (source, id) in the inbox
    id: str | None = None
    label: str = ""


def now() -> datetime:
    return datetime.now(UTC)


def envelope(type_: str, source: str, data: dict, **extra) -> dict:
    return {
        "specversion": "1.0",
        "id": f"h-{uuid.uuid4()}",
        "source": source,
        "type": type_,
        "time": now().isoformat(),
        "subject": data.get("uai"),
        "datacontenttype": "application/json",
        "data": data,
        **extra,
    }


def lot(**over) -> dict:
    data = {
        "uai": COLLEGES[0],
        "lot_id": f"lot-{uuid.uuid4().hex[:8]}",
        "kind": "tablette",
        "quantity": 12,
        "os": {"name": "iPadOS", "version": "17.1"},
        "browsers": [{"name": "Safari", "version": "17"}],
    }
    return envelope(c.LOT, DEPARTEMENT, data | over)


def affectation(teacher: str = "ens-hostile-01", **over) -> dict:
    return envelope(
        c.AFFECTATION, RECTORAT, {"teacher_id": teacher, "uai": COLLEGES[1], "start": "2026-09-01", "end": None} | over
    )


def abonnement(**over) -> dict:
    return envelope(
        c.ABONNEMENT,
        "/gar",
        {"resource_id": f"ark:/h/{uuid.uuid4().hex[:6]}", "uai": COLLEGES[2], "start": "2026-09-01", "end": None}
        | over,
    )


def etablissement(code: str) -> dict:
    e = college(code)
    e.update(id=f"h-{uuid.uuid4()}", time=now().isoformat())
    return e


VALID = {
    c.EQUIPEMENT: lot,
    c.FORMATION: affectation,
    c.CATALOGUE: abonnement,
    c.REFERENTIEL: lambda: etablissement(COLLEGES[3]),
}


def valid(topic: str, headers=None, key=b"k", label="valid") -> Case:
    e = VALID[topic]()
    return Case(
        topic,
        json.dumps(e).encode(),
        "accepted",
        key,
        headers if headers is not None else list(CE),
        e["source"],
        e["id"],
        label,
    )


def refused(topic: str, value: bytes | None, reason: str, label: str, **kw) -> Case:
    return Case(topic, value, reason, label=label, **kw)


def mutate(topic: str, label: str, reason: str, change) -> Case:
    e = VALID[topic]()
    change(e)
    return refused(topic, json.dumps(e).encode(), reason, label)


ingress = st.sampled_from(sorted(TOPIC_OWNER))
header_values = st.one_of(st.none(), st.binary(max_size=40))


@st.composite
def hostile(draw) -> Case:
    topic = draw(ingress)
    kind = draw(
        st.sampled_from(
            [
                "odd-headers",
                "key-mismatch",
                "subject-mismatch",
                "empty",
                "tombstone",
                "not-utf8",
                "binary",
                "nan",
                "duplicate-key",
                "deep",
                "huge-number",
                "oversized",
                "long-field",
                "long-source",
                "future",
                "before-1970",
                "wrong-type",
                "binary-mode",
                "wrong-topic",
                "unknown-uai",
                "teacher-email",
                "not-an-object",
                "nul-character",
            ]
        )
    )
    if kind == "odd-headers":  # any bytes, null, repeated names: judged by the value alone
        extra = draw(
            st.lists(
                st.tuples(st.sampled_from(["x", "traceparent", "content-type", "dlq-reason"]), header_values),
                min_size=1,
                max_size=4,
            )
        )
        return valid(topic, headers=[*CE, *extra], label=kind)
    if kind == "key-mismatch":  # the outcome never depends on the key
        return valid(topic, key=draw(st.one_of(st.none(), st.binary(max_size=20))), label=kind)
    if kind == "subject-mismatch":  # absent, it is the entity's key; present, it must be (an e-mail is not kept)
        e = VALID[topic]()
        e["subject"] = draw(
            st.one_of(st.none(), st.just(EMAIL), st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20))
        )
        if e["subject"] is None:
            return Case(topic, json.dumps(e).encode(), "accepted", source=e["source"], id=e["id"], label=kind)
        return refused(topic, json.dumps(e).encode(), "cloudevent-invalide", kind)
    if kind == "empty":
        return refused(topic, b"", "json-invalide", kind)
    if kind == "tombstone":
        return refused(topic, None, "json-invalide", kind)
    if kind == "not-utf8":
        raw = json.dumps(VALID[topic]()).encode().replace(b'"1.0"', b'"1.0\xff\xfe"', 1)
        return refused(topic, raw, "json-invalide", kind)
    if kind == "binary":
        raw = draw(
            st.binary(min_size=1, max_size=200).filter(
                lambda b: not b.strip().startswith((b"{", b"[", b'"')) and not b.strip()[:1].isdigit()
            )
        )
        return refused(topic, raw, "json-invalide", kind)
    if kind == "nan":
        raw = (
            json.dumps(VALID[topic]())[:-1] + ', "x": ' + draw(st.sampled_from(["NaN", "Infinity", "-Infinity"])) + "}"
        )
        return refused(topic, raw.encode(), "json-invalide", kind)
    if kind == "duplicate-key":
        e = VALID[topic]()
        raw = json.dumps(e).replace('"source": ', '"source": "/ministere", "source": ', 1)
        return refused(topic, raw.encode(), "json-invalide", kind)
    if kind == "deep":
        depth = draw(st.integers(300, 50_000))
        raw = json.dumps(VALID[topic]())[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
        return refused(topic, raw.encode(), "json-invalide", kind)
    if kind == "huge-number" and topic == c.EQUIPEMENT:
        digits = draw(st.integers(7, 5000))
        raw = json.dumps(lot()).replace('"quantity": 12', '"quantity": ' + "9" * digits)
        return refused(topic, raw.encode(), "donnees-invalides", kind)
    if kind == "oversized":
        e = VALID[topic]()
        e["padding"] = "p" * (MAX_RECORD_BYTES + draw(st.integers(1, 780_000)))  # up to the broker's 1 MiB
        return refused(topic, json.dumps(e).encode(), "trop-volumineux", kind)
    if kind == "long-field" and topic == c.EQUIPEMENT:
        return mutate(
            topic, kind, "trop-volumineux", lambda e: e["data"].update(lot_id="L" * draw(st.integers(257, 5000)))
        )
    if kind == "long-source":  # a service's name, of any length: each distinct one was kept in memory
        name = draw(st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-"), min_size=65, max_size=8000))
        return mutate(topic, kind, "cloudevent-invalide", lambda e: e.update(source="/plateforme/a" + name))
    if kind == "future":
        ahead = timedelta(minutes=draw(st.integers(6, 10_000_000)))
        return mutate(topic, kind, "time-futur", lambda e: e.update(time=(now() + ahead).isoformat()))
    if kind == "before-1970":
        return mutate(topic, kind, "cloudevent-invalide", lambda e: e.update(time="1969-07-20T20:17:40Z"))
    if kind == "wrong-type" and topic == c.EQUIPEMENT:
        bad = draw(
            st.sampled_from(
                [("quantity", "12"), ("quantity", 1.5), ("quantity", True), ("browsers", {}), ("os", "iPadOS")]
            )
        )
        return mutate(topic, kind, "donnees-invalides", lambda e: e["data"].update([bad]))
    if kind == "binary-mode":  # the CloudEvents binary mode: attributes in ce_ headers, data as the value
        e = VALID[topic]()
        headers = [
            ("content-type", b"application/json"),
            ("ce_specversion", b"1.0"),
            ("ce_id", e["id"].encode()),
            ("ce_source", e["source"].encode()),
            ("ce_type", e["type"].encode()),
        ]
        return refused(topic, json.dumps(e["data"]).encode(), "cloudevent-invalide", kind, headers=headers)
    if kind == "wrong-topic":
        other = next(t for t in sorted(TOPIC_OWNER) if t != topic)
        e = VALID[other]()
        return refused(topic, json.dumps(e).encode(), "type-hors-topic", kind)
    if kind == "unknown-uai" and topic in (c.EQUIPEMENT, c.CATALOGUE, c.FORMATION):
        return mutate(topic, kind, "uai-inconnu", lambda e: (e["data"].update(uai=UNKNOWN), e.update(subject=UNKNOWN)))
    if kind == "teacher-email" and topic == c.FORMATION:
        return mutate(topic, kind, "teacher-id-invalide", lambda e: e["data"].update(teacher_id=EMAIL))
    if kind == "nul-character" and topic == c.EQUIPEMENT:
        return mutate(
            topic, kind, "donnees-invalides", lambda e: e["data"].update(lot_id="L\x00" + draw(st.text(max_size=5)))
        )
    if kind == "not-an-object":
        raw = draw(st.sampled_from([b"[]", b"42", b'"' + EMAIL.encode() + b'"', b"null", b"true"]))
        return refused(topic, raw, "json-invalide", kind)
    return valid(topic)  # a class that does not apply to this topic: a valid record instead


async def send_cases(bootstrap: str, prefix: str, cases: list[Case]) -> list[tuple[Case, tuple[str, int, int]]]:
    producer = AIOKafkaProducer(
        **kafka_options(bootstrap), acks="all", enable_idempotence=True, max_request_size=2 * 1024 * 1024
    )
    await producer.start()
    try:
        futures = [
            await producer.send(prefix + case.topic, case.value, key=case.key, headers=case.headers) for case in cases
        ]
        return [
            (case, (m.topic, m.partition, m.offset)) for case, m in zip(cases, [await f for f in futures], strict=True)
        ]
    finally:
        await producer.stop()


@pytest.fixture
async def platform(kafka, settings):
    """The three services, the seeded référentiel and a reader on each DLQ, shared by the examples."""
    async with AsyncExitStack() as stack:
        runners = {spec.name: running(spec, settings) for spec in (FORMATION, EQUIPEMENT, RESSOURCES)}
        for runner in runners.values():
            await stack.enter_async_context(runner)
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(u, college(u)) for u in COLLEGES])
        for runner in runners.values():
            await eventually(
                lambda p=runner.app.pipeline: p.pool.fetchval(
                    "SELECT count(*) = $1 FROM etablissements", len(COLLEGES)
                ),
                what="the seeded référentiel",
            )
        dlqs = {
            t: await stack.enter_async_context(TopicReader(kafka.bootstrap_servers, settings.topic(c.dlq(t))))
            for t in TOPIC_OWNER
        }
        yield runners, dlqs


CASES_RUN: list[int] = []


@hsettings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cases=st.lists(hostile(), min_size=15, max_size=40))
async def test_every_hostile_record_is_applied_or_dead_lettered_once_and_valid_ones_take_effect(
    cases, platform, kafka, settings, capfd
):
    runners, dlqs = platform
    services = {name: runner.app.pipeline for name, runner in runners.items()}
    # Valid records of every topic interleaved: they must take effect beside the hostile ones.
    mixed = [x for pair in zip(cases, [valid(t) for t in sorted(TOPIC_OWNER)] * len(cases), strict=False) for x in pair]
    sent = await send_cases(kafka.bootstrap_servers, settings.topic_prefix, mixed)
    CASES_RUN.append(len(sent))

    accepted = [(case, where) for case, where in sent if case.expect == "accepted"]
    refused_ = {where: case for case, where in sent if case.expect != "accepted"}

    async def all_accepted():
        for case, _ in accepted:
            owners = (
                ("formation", "equipement", "ressources") if case.topic == c.REFERENTIEL else (TOPIC_OWNER[case.topic],)
            )
            for owner in owners:
                if not await services[owner].pool.fetchval(
                    "SELECT count(*) FROM inbox WHERE source = $1 AND id = $2", case.source, case.id
                ):
                    return False
        return True

    def dead_letters_of(where):
        topic, partition, offset = where
        return [
            r
            for r in dlqs[settings.unprefixed(topic)].records
            if (
                dict(r.headers).get("dlq-topic"),
                dict(r.headers).get("dlq-partition"),
                dict(r.headers).get("dlq-offset"),
            )
            == (topic.encode(), str(partition).encode(), str(offset).encode())
        ]

    await eventually(all_accepted, timeout=90, what="every accepted record in its service's inbox")

    async def all_dead_lettered():
        return all(dead_letters_of(where) for where in refused_)

    await eventually(all_dead_lettered, timeout=90, what="every refused record in its DLQ")

    for where, case in refused_.items():
        [letter] = dead_letters_of(where)  # once
        headers = dict(letter.headers)
        assert headers["dlq-reason"].decode() == case.expect, (case.label, headers["dlq-message"])
        assert letter.value == case.value and letter.key == case.key, "bytes unchanged, a null value null"
        partner = [h for h in letter.headers if not h[0].startswith("dlq-")]
        assert partner == [tuple(h) for h in case.headers if not h[0].startswith("dlq-")], "headers byte-exact"
        assert EMAIL.encode() not in headers["dlq-message"]
    for case, where in accepted:
        assert not dead_letters_of(where), f"{case.label}: accepted, yet dead-lettered"
        if case.topic == c.EQUIPEMENT:  # the state took effect, not only the inbox
            data = json.loads(case.value)["data"]
            assert (
                await services["equipement"].pool.fetchval(
                    "SELECT quantity FROM lots WHERE uai = $1 AND lot_id = $2", data["uai"], data["lot_id"]
                )
                == data["quantity"]
            )
    for name, pipeline in services.items():
        status, body = await health_report(pipeline, runners[name].app.broker)
        assert status == 200, (name, body)
        assert await pipeline.pool.fetchval("SELECT count(*) FROM outbox_failed") == 0
        messages = [r["message"] for r in await pipeline.pool.fetch("SELECT message FROM dead_letters")]
        assert not any(EMAIL in m for m in messages)
    logged = capfd.readouterr()
    assert EMAIL not in logged.out + logged.err
    labels = sorted({case.label for case in mixed})
    print(
        f"\nhostile example {len(CASES_RUN)}: {len(sent)} records ({len(refused_)} refused), total "
        f"{sum(CASES_RUN)}; classes: {', '.join(labels)}"
    )


async def test_a_platform_source_of_any_length_is_refused_as_no_source_and_its_batch_goes_on(kafka, settings):
    """`/plateforme/{service}` was the one source form of unbounded length: one of 8,000
    characters went into the inbox's key, PostgreSQL refused the index row, and the batch was
    taken again one record at a time, the record dead-lettered `donnees-invalides` for its
    inbox; each distinct one was kept in memory too. A service's name is a name (64 characters)."""
    import random
    import string

    from helpers import Said, ressource
    from services.common import pipeline as pipeline_module

    catalogue, rng = settings.topic(c.CATALOGUE), random.Random(1)
    name = "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(8000))
    published = [envelope(c.RESSOURCE_PUBLIEE, "/ministere", ressource(f"ark:/h/ok{n}")) for n in range(2)]
    long_source = envelope(c.RESSOURCE_PUBLIEE, "/plateforme/a" + name, ressource("ark:/h/long"))
    said = Said()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline_module, "log", said)
        async with (
            running(RESSOURCES, settings) as pipeline,
            TopicReader(kafka.bootstrap_servers, c.dlq(catalogue)) as dlq,
        ):
            await send(
                kafka.bootstrap_servers, catalogue, [("k", published[0]), ("k", long_source), ("k", published[1])]
            )
            [copy] = await dlq.wait_for(lambda rs: rs, what="the refusal's DLQ copy")
            await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 2 FROM ressources"), what="both applied")
    headers = dict(copy.headers)
    assert headers["dlq-reason"] == b"cloudevent-invalide", headers["dlq-message"]
    assert len(headers["dlq-message"]) < 1000, "the source is not quoted whole"
    assert not said.named("batch.isolating")


async def test_a_batch_taken_record_by_record_is_said_once_its_records_at_debug(kafka, settings):
    """A record PostgreSQL refuses made its batch handled record by record, each an INFO
    `batch.applied` line: up to BATCH_MAX_RECORDS (2,000) of them for one partner's bad record
    (audit helper-181 #6). Now one `batch.isolated` line says what they came to."""
    import asyncio

    from helpers import TEST_PARTITIONS, Said
    from services.common import pipeline as pipeline_module
    from services.common.messaging.partitioner import partition_for
    from test_equipement import lot, referentiel_loaded

    # Twelve collèges whose lots go to one partition: one batch.
    candidates = (uai(f"0358{n:03d}") for n in range(1000))
    uais = [u for u in candidates if partition_for(u.encode(), range(TEST_PARTITIONS)) == 0][:12]
    refused = uais[5]
    said = Said()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline_module, "log", said)
        async with running(EQUIPEMENT, settings) as pipeline:
            await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(u, college(u)) for u in uais])
            await referentiel_loaded(pipeline, len(uais))
            await pipeline.pool.execute(  # PostgreSQL refuses that one's lot, as it would a value past a column
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.uai = '{refused}' THEN RAISE EXCEPTION 'refused' USING ERRCODE = 'data_exception'; END IF; "
                "RETURN NEW; END $$; CREATE TRIGGER refuse BEFORE INSERT ON lots FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
            said.lines.clear()
            await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), [(u, lot(u, "L1", 30, 10)) for u in uais])
            await eventually(lambda: asyncio.sleep(0, said.named("batch.isolated")), what="the batch isolated")
            assert await pipeline.pool.fetchval("SELECT count(*) FROM lots") == 11
    # One batch as a rule; should the poll have split them, the others' are said as ever.
    [isolating], [isolated] = said.named("batch.isolating"), said.named("batch.isolated")
    n = isolated["records"]
    assert isolating["records"] == n and n >= 2
    assert (isolated["applied"], isolated["refused"]) == (n - 1, {"donnees-invalides": 1})
    applied = said.named("batch.applied")
    assert len([line for line in applied if line["level"] == "debug"]) == n - 1, applied
    assert sum(line["records"] for line in applied if line["level"] == "info") == 12 - n, applied
