"""CONTRACTS.md, Limits, Volumes: at one UAI, 2,000 lots of the largest valid size, 5,000 counted
teachers, 1,000 trainings for one teacher, and a resource with the largest valid requirements.
Everything the platform derives stays publishable (nothing set aside in outbox_failed), and
the alerts come out. The three services run in this process against the real broker and database."""

import json

import contracts as c
from contracts.internal import COUVERTURES, PROFILS
from helpers import TopicReader, at, college, event, eventually, running, send, uai
from services.equipement.app import SPEC as EQUIPEMENT
from services.formation.app import SPEC as FORMATION
from services.ressources.app import SPEC as RESSOURCES

WHERE = uai("0350999")
LOTS, TEACHERS, TRAININGS_OF_ONE = 2_000, 5_000, 1_000
RID = "ark:/67375/" + "v" * 245  # 256 characters
VERSION = "123456789.123456789.123456789.123456789"


def name(prefix: str, n: int, width: int = 64) -> str:
    return f"{prefix}-{n}-".ljust(width, "x")


def lot(n: int) -> dict:
    """A lot at every bound: 256-char id, 64-char kind and names, 32 browsers, 4×9-digit versions."""
    return event(
        c.LOT,
        "/collectivites/departements/035",
        {
            "uai": WHERE,
            "lot_id": name(f"lot-{n}", n, 256),
            "kind": name("kind", n % 50),
            "quantity": 1_000_000,
            "os": {"name": name("os", n % 7), "version": VERSION},
            "browsers": [{"name": name("browser", n * 32 + j), "version": VERSION} for j in range(32)],
        },
        subject=WHERE,
        time_=at(1),
    )


def training(teacher: str, module: int, tools: list[str]) -> dict:
    return event(
        c.FORMATION_SUIVIE,
        "/rectorats/14",
        {
            "teacher_id": teacher,
            "module_id": name(f"m-{module}", module, 256),
            "title": "t" * 256,
            "dispositif": "eafc",
            "completed_on": "2026-10-01",
            "competences": [{"code": code, "level": 1 + module % 8} for code in c.CRCN_CODES] * 2,
            "tools": tools,
        },
        subject=teacher,
        time_=at(2),
    )


def resource() -> dict:
    groups = [
        [
            {"type": "browser", "name": name("required", g * 32 + j), "min_version": VERSION, "max_version": VERSION}
            for j in range(32)
        ]
        for g in range(32)
    ]
    return event(
        c.RESSOURCE_PUBLIEE,
        "/ministere",
        {
            "resource_id": RID,
            "title": "T" * 256,
            "editor": "E" * 256,
            "requirements": groups,
            "tools": [{"kind": name("tool", j), "min_quantity": 1_000_000} for j in range(32)],
            "min_bandwidth_mbps": 100_000,
            "needs_ent": True,
            "training": {
                "competences": [{"code": code, "level": 8} for code in c.CRCN_CODES],
                "tools": [name("tool", j) for j in range(32)],
            },
        },
        subject=RID,
        time_=at(3),
    )


async def known(bootstrap, settings, pipelines) -> None:
    await send(bootstrap, settings.topic(c.REFERENTIEL), [(WHERE, college(WHERE))])
    for p in pipelines:
        await eventually(lambda p=p: p.pool.fetchval("SELECT count(*) FROM etablissements"), what="référentiel")


async def subscribe(bootstrap, settings) -> None:
    """Once the UAI's state is in: the first evaluation is then the final one."""
    await send(
        bootstrap,
        settings.topic(c.CATALOGUE),
        [
            (RID, resource()),
            (
                WHERE,
                event(
                    c.ABONNEMENT,
                    "/gar",
                    {"resource_id": RID, "uai": WHERE, "start": "2026-09-01"},
                    subject=WHERE,
                    time_=at(3),
                ),
            ),
        ],
    )


async def drained(pipelines) -> None:
    for p in pipelines:
        await eventually(lambda p=p: p.pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="outboxes drained")
        assert await p.pool.fetchval("SELECT count(*) FROM outbox_failed") == 0, "nothing set aside"


def kinds(records) -> set[str]:
    return {json.loads(r.value)["data"]["kind"] for r in records}


async def test_2000_lots_of_the_largest_valid_size_at_one_uai_stay_publishable(kafka, settings):
    bootstrap = kafka.bootstrap_servers
    async with (
        running(EQUIPEMENT, settings) as equipement,
        running(RESSOURCES, settings) as ressources,
        TopicReader(bootstrap, settings.topic(PROFILS)) as profils,
        TopicReader(bootstrap, settings.topic(c.ALERTES)) as alertes,
    ):
        await known(bootstrap, settings, (equipement, ressources))
        lots = [(WHERE, lot(n)) for n in range(LOTS)]
        assert max(len(json.dumps(v)) for _, v in lots) < 256 * 1024
        await send(bootstrap, settings.topic(c.EQUIPEMENT), lots)
        await eventually(
            lambda: ressources.pool.fetchval("SELECT count(*) = $1 FROM recus WHERE type LIKE '%profil-lot%'", LOTS),
            timeout=120,
            what="every lot at ressources",
        )
        await subscribe(bootstrap, settings)
        raised = await alertes.wait_for(
            lambda rs: "equipement-incompatible" in kinds(rs), timeout=120, what="the incompatible-equipment alert"
        )
        await drained((equipement, ressources))
        alert = next(
            json.loads(r.value)["data"]
            for r in raised
            if json.loads(r.value)["data"]["kind"] == "equipement-incompatible"
        )
        assert alert["devices"] == LOTS * 1_000_000 and alert["compatible"] == 0
        assert all(len(reason["detail"]) <= 256 for reason in alert["reasons"])
        largest = max(len(r.value) for r in profils.records + alertes.records)
        print(
            f"\nlargest record at 2,000 lots: profils {max(len(r.value) for r in profils.records)} bytes "
            f"({len(profils.records)} records), alertes {max(len(r.value) for r in alertes.records)} bytes"
        )
        assert largest < 64 * 1024


async def test_5000_teachers_and_1000_trainings_of_one_teacher_stay_publishable(kafka, settings):
    bootstrap = kafka.bootstrap_servers
    teachers = [f"enseignant-{n:06d}" for n in range(TEACHERS)]
    tool_pool = [name("tool", j) for j in range(200)]
    async with (
        running(FORMATION, settings) as formation,
        running(RESSOURCES, settings) as ressources,
        TopicReader(bootstrap, settings.topic(COUVERTURES)) as couvertures,
        TopicReader(bootstrap, settings.topic(c.ALERTES)) as alertes,
    ):
        await known(bootstrap, settings, (formation, ressources))
        await send(
            bootstrap,
            settings.topic(c.FORMATION),
            [
                (
                    WHERE,
                    event(
                        c.AFFECTATION,
                        "/rectorats/14",
                        {"teacher_id": t, "uai": WHERE, "start": "2026-09-01"},
                        subject=WHERE,
                        time_=at(1),
                    ),
                )
                for t in teachers
            ],
        )
        await send(
            bootstrap,
            settings.topic(c.FORMATION),
            [(t, training(t, n, tool_pool[n % 200 :][:32])) for n, t in enumerate(teachers)]
            + [
                (teachers[0], training(teachers[0], 10_000 + m, tool_pool[m % 168 :][:32]))
                for m in range(TRAININGS_OF_ONE)
            ],
        )
        await eventually(
            lambda: formation.pool.fetchval(
                "SELECT count(*) = $1 FROM inbox WHERE type = $2", TEACHERS + TRAININGS_OF_ONE, c.FORMATION_SUIVIE
            ),
            timeout=120,
            what="every training applied",
        )
        await eventually(
            lambda: ressources.pool.fetchval(
                "SELECT (content->>'enseignants')::int = $1 FROM recus WHERE type LIKE '%couverture-enseignants%'",
                TEACHERS,
            ),
            timeout=120,
            what="the 5,000 teachers counted at ressources",
        )
        await subscribe(bootstrap, settings)
        await alertes.wait_for(lambda rs: "formation-insuffisante" in kinds(rs), timeout=120, what="the training alert")
        await drained((formation, ressources))
        print(
            f"\nlargest record at 5,000 teachers: couvertures {max(len(r.value) for r in couvertures.records)} "
            f"bytes ({len(couvertures.records)} records), alertes {max(len(r.value) for r in alertes.records)} bytes"
        )
        assert max(len(r.value) for r in couvertures.records + alertes.records) < 64 * 1024
