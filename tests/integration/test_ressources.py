"""ressources alone, against the real Kafka and PostgreSQL: equipment profiles arrive as
equipement would publish them, the catalogue as the ministère and the GAR send it."""

import json
import uuid
from datetime import UTC, datetime, timedelta

import contracts as c
from contracts.internal import COUVERTURES, PROFILS
from helpers import (
    TopicReader,
    at,
    college,
    couverture,
    event,
    eventually,
    profil_lot,
    record_count,
    running,
    send,
    uai,
)
from services.ressources.app import SPEC

RID = "ark:/67375/integration"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def profil(code: str, version: int, ipados: str) -> tuple[str, dict]:
    return profil_lot(code, version, os={"name": "iPadOS", "version": ipados})


def publiee(minute: int, min_ipados: str = "15", source: str = "/ministere") -> dict:
    return event(
        c.RESSOURCE_PUBLIEE,
        source,
        {
            "resource_id": RID,
            "title": "Atlas",
            "editor": "E",
            "requirements": [[{"type": "os", "name": "iPadOS", "min_version": min_ipados}]],
            "tools": [],
            "min_bandwidth_mbps": None,
            "needs_ent": False,
        },
        subject=RID,
        time_=at(minute),
    )


def abonnement(code: str, minute: int, end=None) -> dict:
    return event(
        c.ABONNEMENT,
        "/gar",
        {"resource_id": RID, "uai": code, "start": "2026-09-01", "end": end},
        subject=code,
        time_=at(minute),
    )


async def old_tablets_at(bootstrap: str, settings, pipeline, where: str) -> None:
    """A known collège whose profile (iPadOS 12.5) ressources already holds."""
    await send(bootstrap, settings.topic(c.REFERENTIEL), [(where, college(where))])
    await send(bootstrap, settings.topic(PROFILS), [profil(where, 1, "12.5")])
    await eventually(
        lambda: pipeline.pool.fetchval("SELECT count(*) FROM recus WHERE uai = $1", where), what="the profile"
    )


async def subscribed_with_old_tablets(bootstrap: str, settings, pipeline, alerts, where: str) -> None:
    """`old_tablets_at`, then RID published and `where` subscribed to it: its alert raised."""
    await old_tablets_at(bootstrap, settings, pipeline, where)
    await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, publiee(1)), (where, abonnement(where, 1))])
    await alerts.wait_for(lambda rs: alerts_of(rs, c.ALERTE_LEVEE), what="alerte-levee")


def retraite(minute: int) -> dict:
    return event(c.RESSOURCE_RETIREE, "/gar", {"resource_id": RID}, subject=RID, time_=at(minute))


def alerts_of(records, type_):
    return [json.loads(r.value) for r in records if json.loads(r.value)["type"] == type_]


async def test_alert_raised_on_incompatible_profile_resolved_by_a_newer_one_with_its_trace(kafka, settings):
    where = uai("0350201")
    bootstrap = kafka.bootstrap_servers
    async with running(SPEC, settings) as pipeline, TopicReader(bootstrap, settings.topic(c.ALERTES)) as alerts:
        await old_tablets_at(bootstrap, settings, pipeline, where)
        sub = abonnement(where, 1)
        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, publiee(1)), (where, sub), (where, sub)])
        records = await alerts.wait_for(lambda rs: alerts_of(rs, c.ALERTE_LEVEE), what="alerte-levee")
        [levee] = alerts_of(records, c.ALERTE_LEVEE)
        assert records[0].key == where.encode()
        assert levee["data"]["reasons"] == [{"code": "os-version", "detail": "iPadOS 12.5 < 15"}]

        # equipement republishes: version 3, then a late version 2 that must not win.
        traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode()
        await send(bootstrap, settings.topic(PROFILS), [profil(where, 3, "17")], headers=[("traceparent", traceparent)])
        late = profil(where, 2, "12.5")
        await send(bootstrap, settings.topic(PROFILS), [late])
        records = await alerts.wait_for(lambda rs: alerts_of(rs, c.ALERTE_RESOLUE), what="alerte-resolue")
        resolue = next(r for r in records if json.loads(r.value)["type"] == c.ALERTE_RESOLUE)
        assert json.loads(resolue.value)["data"]["alert_id"] == levee["data"]["alert_id"]
        # The trace of the record that fixed the cause goes on in the alert (outbox + FastStream middleware).
        assert TRACE_ID in dict(resolue.headers)["traceparent"].decode()
        # The late version handled (the resolution came from version 3), and what it caused published.
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM inbox WHERE id = $1", late[1]["id"]),
            what="the late version handled",
        )
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="published")
        assert await pipeline.pool.fetchval("SELECT version FROM recus") == 3
        published = await record_count(bootstrap, settings.topic(c.ALERTES))
        assert len(alerts_of(await alerts.wait_for(lambda rs: len(rs) >= published), c.ALERTE_LEVEE)) == 1


async def test_an_alert_resolved_by_a_closure_continues_the_ministere_s_trace(kafka, settings):
    """The ministère closes an établissement: its alerts resolve, and their records continue
    the trace of the référentiel's event (they carried the batch's own, or none without an
    exporter: the référentiel's events were not among the use case's causes)."""
    where = uai("0350207")
    bootstrap = kafka.bootstrap_servers
    async with running(SPEC, settings) as pipeline, TopicReader(bootstrap, settings.topic(c.ALERTES)) as alerts:
        await subscribed_with_old_tablets(bootstrap, settings, pipeline, alerts, where)
        closed = college(where, minute=5)
        closed["data"]["ouvert"] = False
        traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode()
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(where, closed)], headers=[("traceparent", traceparent)])
        records = await alerts.wait_for(lambda rs: alerts_of(rs, c.ALERTE_RESOLUE), what="alerte-resolue")
        [resolue] = [r for r in records if json.loads(r.value)["type"] == c.ALERTE_RESOLUE]
        assert TRACE_ID in dict(resolue.headers)["traceparent"].decode()


async def test_a_partner_s_baggage_header_never_reaches_the_alerts(kafka, settings):
    """CONTRACTS.md, Limits: a header never affects any other record. The GAR's subscription
    carries a trace context and a `baggage` (here an agent's address): the alert it raises goes
    on with the trace (its traceparent), on both alert topics, without the baggage nor the
    tracestate every dashboard would read."""
    where = uai("0350211")
    bootstrap = kafka.bootstrap_servers
    traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode()
    async with (
        running(SPEC, settings) as pipeline,
        TopicReader(bootstrap, settings.topic(c.ALERTES)) as alerts,
        TopicReader(bootstrap, settings.topic(c.ALERTES_ETAT)) as table,
    ):
        await old_tablets_at(bootstrap, settings, pipeline, where)
        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, publiee(1))])
        partner = [("traceparent", traceparent), ("tracestate", b"gar=1"), ("baggage", b"agent=jean.dupont%40ac.fr")]
        await send(bootstrap, settings.topic(c.CATALOGUE), [(where, abonnement(where, 1))], headers=partner)
        await alerts.wait_for(lambda rs: alerts_of(rs, c.ALERTE_LEVEE), what="alerte-levee")
        await table.wait_for(lambda rs: len(rs) >= 1, what="its record on the table")
    for record in (alerts.records[0], table.records[0]):
        names = [name for name, _ in record.headers]
        assert "baggage" not in names, names
        assert TRACE_ID in dict(record.headers)["traceparent"].decode()
        assert "tracestate" not in names, "a partner's own entries, up to 32: not carried to what others read"


async def test_withdrawal_resolves_and_republication_raises_again_with_the_same_id(kafka, settings):
    where = uai("0350202")
    bootstrap = kafka.bootstrap_servers
    async with running(SPEC, settings) as pipeline, TopicReader(bootstrap, settings.topic(c.ALERTES)) as alerts:
        await subscribed_with_old_tablets(bootstrap, settings, pipeline, alerts, where)
        retrait = retraite(5)
        stale = publiee(4)  # older than the withdrawal
        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, retrait), (RID, stale)])
        await alerts.wait_for(lambda rs: alerts_of(rs, c.ALERTE_RESOLUE), what="alerte-resolue")
        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, publiee(6))])
        records = await alerts.wait_for(lambda rs: len(alerts_of(rs, c.ALERTE_LEVEE)) == 2, what="a second raise")
        kinds = [json.loads(r.value)["type"] for r in records]
        assert kinds == [c.ALERTE_LEVEE, c.ALERTE_RESOLUE, c.ALERTE_LEVEE]
        ids = {json.loads(r.value)["data"]["alert_id"] for r in records}
        assert len(ids) == 1
        assert len({json.loads(r.value)["id"] for r in records}) == 3, "each event has its own CloudEvents id"
        assert await pipeline.pool.fetchval("SELECT outcome FROM inbox WHERE id = $1", stale["id"]) == "stale"

        # Re-published with requirements the tablets meet: the pair is re-evaluated and resolves.
        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, publiee(7, min_ipados="12"))])
        records = await alerts.wait_for(lambda rs: len(alerts_of(rs, c.ALERTE_RESOLUE)) == 2, what="a second resolve")
        assert [json.loads(r.value)["type"] for r in records][-1] == c.ALERTE_RESOLUE


async def test_a_catalogue_record_does_not_take_first_the_id_of_the_ministere_s_etablissement(kafka, settings):
    """The GAR may write the catalogue as `/ministere` (a Kafka record does not say who wrote
    it): a catalogue record under the id of the ministère's next `etablissement` did keep
    ressources from taking it, as a duplicate, while the other services took it (contract
    audit s69 F1). The inbox is scoped by the types' domain; within one, the same (source, id)
    is still one event."""
    where, taken = uai("0350209"), str(uuid.uuid4())
    bootstrap = kafka.bootstrap_servers
    held = "SELECT ressource->'requirements'->0->0->>'min_version' FROM ressources WHERE resource_id = $1"
    async with running(SPEC, settings) as pipeline:
        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, publiee(1) | {"id": taken})])
        await eventually(lambda: pipeline.pool.fetchval(held, RID), what="the resource")

        await send(bootstrap, settings.topic(c.REFERENTIEL), [(where, college(where) | {"id": taken})])
        again = publiee(2, min_ipados="12") | {"id": taken}  # the catalogue's again: a duplicate
        marker = publiee(3)
        marker["data"]["resource_id"] = marker["subject"] = f"{RID}-marker"
        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, again), (marker["subject"], marker)])
        await eventually(lambda: pipeline.pool.fetchval(held, marker["subject"]), what="the marker")
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM etablissements WHERE uai = $1", where),
            what="the établissement taken",
        )
        assert await pipeline.pool.fetchval(held, RID) == "15"
        assert await pipeline.pool.fetchval("SELECT count(*) FROM inbox WHERE id = $1", taken) == 2


async def test_catalogue_refusals_are_dead_lettered(kafka, settings):
    known, unknown = uai("0350203"), uai("0350204")
    bootstrap = kafka.bootstrap_servers
    async with (
        running(SPEC, settings) as pipeline,
        TopicReader(bootstrap, settings.topic(c.dlq(c.CATALOGUE))) as dlq,
    ):
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(known, college(known))])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) FROM etablissements"), what="référentiel")
        await send(
            bootstrap,
            settings.topic(c.CATALOGUE),
            [
                (RID, publiee(1, source="/rectorats/14")),
                (unknown, abonnement(unknown, 1)),
                (RID, publiee(1, min_ipados="15.x")),
                (known, abonnement(known, 2)),
            ],
        )
        records = await dlq.wait_for(lambda rs: len(rs) >= 3, what="three dead letters")
        assert sorted(dict(r.headers)["dlq-reason"].decode() for r in records) == [
            "hors-competence",
            "uai-inconnu",
            "version-invalide",
        ]
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) FROM abonnements WHERE uai = $1", known),
            what="the good abonnement",
        )


def assert_alternating(records) -> None:
    """Never two alerte-levee for one alert_id without an alerte-resolue between them."""
    last: dict[str, str] = {}
    for r in records:
        e = json.loads(r.value)
        alert = e["data"]["alert_id"]
        assert last.get(alert) != e["type"], f"{e['type']} twice in a row for {alert}"
        assert alert in last or e["type"] == c.ALERTE_LEVEE, "an alert starts with its raise"
        last[alert] = e["type"]


async def test_subscription_end_and_closing_resolve_reopening_raises_again(kafka, settings):
    ended, closed = uai("0350205"), uai("0350206")
    bootstrap = kafka.bootstrap_servers
    async with running(SPEC, settings) as pipeline, TopicReader(bootstrap, settings.topic(c.ALERTES)) as alerts:
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(u, college(u)) for u in (ended, closed)])
        await send(bootstrap, settings.topic(PROFILS), [profil(u, 1, "12.5") for u in (ended, closed)])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 2 FROM recus"), what="the profiles")
        sub = abonnement(ended, 1)
        await send(
            bootstrap, settings.topic(c.CATALOGUE), [(RID, publiee(1)), (ended, sub), (closed, abonnement(closed, 1))]
        )
        await alerts.wait_for(lambda rs: len(alerts_of(rs, c.ALERTE_LEVEE)) == 2, what="two raises")

        # The GAR ends one subscription (plus a replay of the old one, and an older end: no effect).
        end = abonnement(ended, 5, end="2026-12-31")
        await send(bootstrap, settings.topic(c.CATALOGUE), [(ended, end), (ended, sub), (ended, abonnement(ended, 0))])
        # The ministère closes the other établissement.
        closing = college(closed)
        closing.update(id="fermeture", time=at(5).isoformat())
        closing["data"]["ouvert"] = False
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(closed, closing)])
        records = await alerts.wait_for(lambda rs: len(alerts_of(rs, c.ALERTE_RESOLUE)) == 2, what="two resolves")
        assert {a["data"]["uai"] for a in alerts_of(records, c.ALERTE_RESOLUE)} == {ended, closed}

        # It reopens: the pair is evaluated again and the same alert is raised again.
        reopening = college(closed)
        reopening.update(time=at(6).isoformat())
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(closed, reopening), (closed, closing)])  # + a replay
        records = await alerts.wait_for(lambda rs: len(alerts_of(rs, c.ALERTE_LEVEE)) == 3, what="a raise on reopening")
        assert_alternating(records)
        assert await pipeline.pool.fetchval("SELECT ouvert FROM etablissements WHERE uai = $1", closed) is True
        assert (
            await pipeline.pool.fetchval(
                "SELECT count(*) FROM inbox WHERE outcome = 'stale' AND type = $1", c.ABONNEMENT
            )
            == 1
        )
        assert len(alerts_of(records, c.ALERTE_LEVEE)) == 3 and len(alerts_of(records, c.ALERTE_RESOLUE)) == 2


async def test_a_new_threshold_reevaluates_every_pair_at_start(kafka, settings):
    where = uai("0350207")
    bootstrap = kafka.bootstrap_servers
    formation = event(
        c.RESSOURCE_PUBLIEE,
        "/ministere",
        {
            "resource_id": RID,
            "title": "Robots",
            "editor": "E",
            "requirements": [],
            "tools": [],
            "training": {"competences": [{"code": "3.4", "level": 2}], "tools": []},
        },
        subject=RID,
        time_=at(1),
    )
    async with TopicReader(bootstrap, settings.topic(c.ALERTES)) as alerts:
        async with running(SPEC, settings) as pipeline:
            await send(bootstrap, settings.topic(c.REFERENTIEL), [(where, college(where))])
            await send(bootstrap, settings.topic(PROFILS), [profil(where, 1, "17")])
            await send(
                bootstrap, settings.topic(COUVERTURES), couverture(where, 1, 10, {"3.4": [6, 4, 4, 0, 0, 0, 0, 0]})
            )
            await eventually(
                lambda: pipeline.pool.fetchval("SELECT count(*) FROM recus WHERE type LIKE '%couverture%'"),
                what="the coverage",
            )
            await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, formation), (where, abonnement(where, 1))])
            records = await alerts.wait_for(
                lambda rs: alerts_of(rs, c.ALERTE_LEVEE), what="the training alert (0.4 < 0.5)"
            )
            assert [a["data"]["kind"] for a in alerts_of(records, c.ALERTE_LEVEE)] == ["formation-insuffisante"]
        # The deployment lowers the threshold and restarts: nothing else happens, the alert resolves.
        async with running(SPEC, settings.model_copy(update={"min_training_coverage": 0.3})) as pipeline:
            records = await alerts.wait_for(lambda rs: alerts_of(rs, c.ALERTE_RESOLUE), what="the resolve at start")
            assert await eventually(lambda: pipeline.pool.fetchval("SELECT min_training_coverage FROM seuils")) == 0.3


async def test_a_tool_count_read_ahead_of_the_teacher_count_does_not_stop_the_batch(kafka, settings):
    """formation publishes a UAI's teacher count and each tool's count as records of their own
    (`{uai}`, `{uai}/{kind}`), which a batch boundary may fall between. Two of three teachers
    trained on the TNI leave: the new count (1) read without the tool's record (still 3) made a
    share of 3, which no alert may carry (coverage <= 1): the batch failed, again at each retry,
    and the UAI's partition stopped there. The share is at most 1 until the tool's record follows."""
    bootstrap, where = kafka.bootstrap_servers, uai("0350460")
    robots = publiee(1)
    robots["data"]["training"] = {"competences": [], "tools": ["TNI"]}
    teachers = "SELECT version = 2 FROM recus WHERE uai = $1 AND entity = ''"
    async with running(SPEC, settings) as pipeline:
        await old_tablets_at(bootstrap, settings, pipeline, where)  # an open equipement-incompatible alert
        await send(bootstrap, settings.topic(COUVERTURES), couverture(where, 1, 3, {}, {"tni": 3}))
        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, robots), (where, abonnement(where, 1))])
        coverage = "SELECT (alerte->>'coverage')::float FROM alertes WHERE uai = $1 AND ouverte"
        assert await eventually(lambda: pipeline.pool.fetchval(coverage, where), what="the alert") == 1
        teacher_count, tool_count = couverture(where, 2, 1, {}, {"tni": 1})
        await send(bootstrap, settings.topic(COUVERTURES), [teacher_count])  # the boundary: alone in its batch
        await eventually(lambda: pipeline.pool.fetchval(teachers, where), what="the new count")
        assert await pipeline.pool.fetchval(coverage, where) == 1
        await send(bootstrap, settings.topic(COUVERTURES), [tool_count])
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT version = 2 FROM recus WHERE uai = $1 AND entity = 'tni'", where),
            what="the tool's count",
        )


async def test_a_coverage_whose_group_is_cut_by_a_batch_boundary_is_read_once_whole(kafka, settings):
    """Three teachers trained on the TNI join one who was: formation publishes the new teacher
    count (4) and the TNI's (4) in one group. A batch boundary between them: the count read
    with the former TNI count (1) would be a share of 0.25, a formation-insuffisante alert for a
    state that never was, resolved a batch later. The coverage stays as it was until its group
    is whole, then is the new one, and no alert is raised on the way."""
    bootstrap, where = kafka.bootstrap_servers, uai("0350461")
    robots = publiee(1)
    robots["data"]["training"] = {"competences": [], "tools": ["TNI"]}
    at_version = "SELECT version = $3 FROM recus WHERE uai = $1 AND entity = $2 AND type LIKE '%couverture%'"
    coverage = (
        "SELECT (couverture::jsonb->>'enseignants')::int, (couverture::jsonb->'outils'->>'tni')::int "
        "FROM entrees WHERE uai = $1"
    )
    alerts = "SELECT count(*) FROM alertes"

    async def read_coverage() -> tuple:
        return tuple(await pipeline.pool.fetchrow(coverage, where) or ())

    async with running(SPEC, settings) as pipeline:
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(where, college(where))])
        await send(bootstrap, settings.topic(PROFILS), [profil(where, 1, "17.1")])
        await send(bootstrap, settings.topic(COUVERTURES), couverture(where, 1, 1, {}, {"tni": 1}, group=1))
        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, robots), (where, abonnement(where, 1))])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) FROM abonnements"), what="the subscription")
        await eventually(lambda: _is(read_coverage(), (1, 1)), what="the first coverage")
        teacher_count, tool_count = couverture(where, 2, 4, {}, {"tni": 4}, group=2)
        await send(bootstrap, settings.topic(COUVERTURES), [teacher_count])  # the boundary: alone in its batch
        await eventually(lambda: pipeline.pool.fetchval(at_version, where, "", 2), what="the new count")
        assert await read_coverage() == (1, 1), "half a group: as it was"
        assert await pipeline.pool.fetchval(alerts) == 0
        await send(bootstrap, settings.topic(COUVERTURES), [tool_count])
        await eventually(lambda: pipeline.pool.fetchval(at_version, where, "tni", 2), what="the TNI's count")
        assert await read_coverage() == (4, 4)
        assert await pipeline.pool.fetchval(alerts) == 0


async def test_a_record_of_our_own_services_is_not_judged_by_its_time(kafka, settings):
    """formation's clock an hour ahead of ressources': its records carry that time. Partners'
    events so far ahead are refused (time-futur); ours are ordered by their version, and one
    dead-lettered would leave its group short for good: stored."""
    bootstrap, where = kafka.bootstrap_servers, uai("0350463")
    ahead = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    records = couverture(where, 1, 2, {}, {"tni": 2}, group=1)
    for _, record in records:
        record["time"] = ahead
    async with running(SPEC, settings) as pipeline:
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(where, college(where))])
        await send(bootstrap, settings.topic(COUVERTURES), records)
        stored = "SELECT count(*) = 2 FROM recus WHERE uai = $1"
        await eventually(lambda: pipeline.pool.fetchval(stored, where), what="both records stored")
        assert await pipeline.pool.fetchval("SELECT count(*) FROM dead_letters") == 0


async def _is(value, expected) -> bool:
    return await value == expected


async def test_a_resolved_alert_past_its_retention_is_forgotten_and_its_pair_raised_again_under_new_ids(
    kafka, settings
):
    """ALERTS_RESOLVED_RETENTION_DAYS: the table kept every alert ever raised, resolved or not
    (audit helper-179 #1: one national resource, 115–230 MB kept after its withdrawal). A
    resolved alert past it is deleted, the open ones and the recent ones kept; its pair raised
    again starts over at cycle 1, and no event of it has a former one's id."""
    from services.ressources import stream

    where = uai("0350203")
    bootstrap = kafka.bootstrap_servers
    async with running(SPEC, settings) as pipeline, TopicReader(bootstrap, settings.topic(c.ALERTES)) as alerts:
        await subscribed_with_old_tablets(bootstrap, settings, pipeline, alerts, where)
        retrait = retraite(5)
        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, retrait)])
        await alerts.wait_for(lambda rs: alerts_of(rs, c.ALERTE_RESOLUE), what="alerte-resolue")
        pool = pipeline.pool
        assert await stream.purge_resolved(pool, 30) == 0, "resolved just now: kept"
        await pool.execute("UPDATE alertes SET resolved_at = resolved_at - interval '31 days'")
        await pool.execute(  # an open alert of another pair, raised long ago: kept
            "INSERT INTO alertes (alert_id, uai, resource_id, kind, ouverte, cycle, raised_at, alerte) "
            "SELECT 'ouverte', uai, 'ark:/1/autre', kind, true, 1, raised_at - interval '90 days', alerte FROM alertes"
        )
        assert await stream.purge_resolved(pool, 30) == 1
        assert [r["alert_id"] for r in await pool.fetch("SELECT alert_id FROM alertes")] == ["ouverte"]

        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, publiee(6))])
        records = await alerts.wait_for(lambda rs: len(alerts_of(rs, c.ALERTE_LEVEE)) == 2, what="raised again")
        assert len({json.loads(r.value)["data"]["alert_id"] for r in records}) == 1, "the pair's alert, as before"
        assert len({json.loads(r.value)["id"] for r in records}) == 3, "no event under a former one's id"
        assert await pool.fetchval("SELECT cycle FROM alertes WHERE alert_id <> 'ouverte'") == 1
