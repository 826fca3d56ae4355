"""formation alone, against the real Kafka and PostgreSQL."""

import json

import contracts as c
from contracts.internal import COUVERTURES
from helpers import TopicReader, at, college, event, eventually, running, send, uai
from services.common.storage.db import create_pool, migrate
from services.formation.app import SPEC
from services.formation.store import FormationStore

RECTORAT = "/rectorats/14"


def affectation(teacher: str, where: str, minute: int, end=None, source=RECTORAT) -> dict:
    return event(
        c.AFFECTATION,
        source,
        {"teacher_id": teacher, "uai": where, "start": "2026-09-01", "end": end},
        subject=where,
        time_=at(minute),
    )


def formation(teacher: str, code: str, level: int, minute: int, tools=("TNI",)) -> dict:
    return event(
        c.FORMATION_SUIVIE,
        RECTORAT,
        {
            "teacher_id": teacher,
            "module_id": f"m-{code}-{level}",
            "title": "Programmer avec Scratch",
            "dispositif": "magistere",
            "completed_on": "2026-10-01",
            "competences": [{"code": code, "level": level}],
            "tools": list(tools),
        },
        subject=teacher,
        time_=at(minute),
    )


async def test_affectations_and_trainings_give_the_published_coverage(kafka, settings):
    where = uai("0350101")
    async with (
        running(SPEC, settings) as pipeline,
        TopicReader(kafka.bootstrap_servers, settings.topic(COUVERTURES)) as out,
    ):
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(where, college(where))])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) FROM etablissements"), what="référentiel")
        first = affectation("ens-0000000A", where, 1)
        left = affectation("ens-0000000C", where, 2)
        await send(
            kafka.bootstrap_servers,
            settings.topic(c.FORMATION),
            [
                (where, first),
                (where, first),  # duplicate
                (where, affectation("ens-0000000B", where, 1)),
                (where, left),
                (where, affectation("ens-0000000C", where, 1)),  # older than `left`: stale
                (where, affectation("ens-0000000C", where, 3, end="2026-10-15")),  # leaves the UAI
                ("ens-0000000A", formation("ens-0000000A", "3.4", 3, 4)),
                ("ens-0000000A", formation("ens-0000000A", "3.4", 2, 5, tools=())),  # lower level: max stays 3
            ],
        )

        def latest(records) -> dict[bytes, dict]:
            return {r.key: json.loads(r.value)["data"] for r in records}  # per key, in version order

        def final(records):
            last = latest(records)
            return (
                last.get(where.encode(), {}).get("competences", {}).get("3.4", [0])[0] == 1
                and last.get(f"{where}/tni".encode(), {}).get("enseignants") == 1
            )

        records = await out.wait_for(final, what="the coverage with competence 3.4 and the TNI count")
        teachers, tni = latest(records)[where.encode()], latest(records)[f"{where}/tni".encode()]
        assert teachers["enseignants"] == 2
        assert teachers["competences"]["3.4"][:4] == [1, 1, 1, 0]
        assert (tni["kind"], tni["enseignants"]) == ("tni", 1)
        for key in (where.encode(), f"{where}/tni".encode()):
            versions = [json.loads(r.value)["data"]["version"] for r in records if r.key == key]
            assert versions == sorted(set(versions)), "each publication of a key is a new version"
            groups = [json.loads(r.value)["data"]["group"] for r in records if r.key == key]
            assert groups == sorted(set(groups)), "and of a later group"
        groups: dict[int, list[int]] = {}
        for r in records:
            data = json.loads(r.value)["data"]
            groups.setdefault(data["group"], []).append(data["group_size"])
        assert all(sizes == [len(sizes)] * len(sizes) for sizes in groups.values()), groups
        assert any(len(sizes) == 2 for sizes in groups.values()), "a group of both records"
        outcomes = await pipeline.pool.fetch(
            "SELECT outcome, count(*) FROM inbox WHERE type = $1 GROUP BY outcome", c.AFFECTATION
        )
        assert dict((r["outcome"], r["count"]) for r in outcomes) == {"applied": 4, "stale": 1}


async def test_bad_training_records_are_dead_lettered_and_a_refused_teacher_id_is_never_repeated(
    kafka, settings, capfd
):
    where = uai("0350102")
    bad_crcn = formation("ens-0000000A", "3.4", 3, 1)
    bad_crcn["data"]["competences"][0]["code"] = "6.1"
    other_academie = affectation("ens-0000000A", where, 2, source="/rectorats/17")
    bad_teacher = affectation("jean.dupont@ac-rennes.fr", where, 3)
    encoded_twice = formation("jean.dupont@ac-rennes.fr", "3.4", 3, 5)  # its data a string: refused whole
    encoded_twice["data"] = json.dumps(encoded_twice["data"])
    shifted = affectation("ens-0000000B", where, 6)  # a column shifted: the e-mail in another field
    shifted["data"]["start"] = "jean.dupont@ac-rennes.fr"
    async with (
        running(SPEC, settings) as pipeline,
        TopicReader(kafka.bootstrap_servers, settings.topic(c.dlq(c.FORMATION))) as dlq,
        TopicReader(kafka.bootstrap_servers, settings.topic(COUVERTURES)) as out,
    ):
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(where, college(where))])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) FROM etablissements"), what="référentiel")
        await send(
            kafka.bootstrap_servers,
            settings.topic(c.FORMATION),
            [
                ("x", bad_crcn),
                (where, other_academie),
                (where, bad_teacher),
                ("y", encoded_twice),
                ("z", shifted),
                (where, affectation("ens-0000000A", where, 4)),
            ],
        )
        records = await dlq.wait_for(lambda rs: len(rs) >= 5, what="five dead letters")
        # Keyed differently, so on different partitions: no order between them.
        assert sorted(dict(r.headers)["dlq-reason"].decode() for r in records) == [
            "crcn-invalide",
            "donnees-invalides",
            "donnees-invalides",
            "hors-competence",
            "teacher-id-invalide",
        ]
        await out.wait_for(
            lambda rs: any(json.loads(r.value)["data"]["enseignants"] == 1 for r in rs),
            what="the good affectation's coverage",
        )
        # The e-mail (as a teacher_id, or in another field of a teacher's record: audit s64
        # privacy F1) is in the DLQ copies' bytes (unchanged) and nowhere else.
        refused = [
            r for r in records if dict(r.headers)["dlq-reason"] in (b"teacher-id-invalide", b"donnees-invalides")
        ]
        assert len(refused) == 3 and all(b"dupont" in r.value for r in refused)
        assert all(b"dupont" not in v for r in refused for k, v in r.headers if v), "no header repeats it"
        messages = [r["message"] for r in await pipeline.pool.fetch("SELECT message FROM dead_letters")]
        assert len(messages) == 5 and not any("dupont" in m for m in messages)
    logged = capfd.readouterr()
    assert "teacher-id-invalide" in logged.err + logged.out, "the refusal is logged"
    assert "dupont" not in logged.err + logged.out, "the log names the field and the rule, not the value"


async def test_the_store_tells_who_counts_where_and_who_gained_a_level_or_a_tool(database_url):
    """What formation's use case reads to count a UAI again only when it may have changed."""
    pool = await create_pool(database_url, "formation")
    try:
        await migrate(pool, "formation", SPEC.package_dir)
        where, elsewhere = uai("0350103"), uai("0350104")
        await pool.execute(
            'INSERT INTO affectations (teacher_id, uai, start, "end", event_time) VALUES '
            "('ens-00001', $1, '2026-09-01', NULL, $2), ('ens-00002', $1, '2026-09-01', '2026-10-01', $2)",
            where,
            at(0),
        )
        async with pool.acquire() as conn, conn.transaction():
            store = FormationStore(conn)
            # Newer declarations, every teacher counted: what was held before is given back.
            pairs = [("ens-00001", where), ("ens-00002", where), ("ens-00001", elsewhere)]
            declared = [c.parse_event(json.dumps(affectation(t, u, 1)).encode()) for t, u in pairs]
            held = (await store.store_affectations(declared)).held  # as it was before these
            assert held == {("ens-00001", where): (True,), ("ens-00002", where): (False,)}
            first = await store.add_trainings(
                {("ens-00001", "3.4"): 3, ("ens-00002", "1.1"): 2}, {("ens-00002", "tni")}
            )
            again = await store.add_trainings(
                {("ens-00001", "3.4"): 2, ("ens-00002", "1.1"): 2}, {("ens-00002", "tni")}
            )
            higher = await store.add_trainings({("ens-00001", "3.4"): 5}, {("ens-00001", "tni")})
            assert (first, again, higher) == ({"ens-00001", "ens-00002"}, set(), {"ens-00001"})
        levels = await pool.fetch("SELECT teacher_id, code, level FROM competences ORDER BY teacher_id")
        assert [tuple(r) for r in levels] == [("ens-00001", "3.4", 5), ("ens-00002", "1.1", 2)], (
            "the highest level stays"
        )
    finally:
        await pool.close()
