"""/metrics against the real Kafka and PostgreSQL: the figures move as events flow."""

import asyncio
import contextlib
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

import contracts as c
from helpers import (
    TEST_PARTITIONS,
    Said,
    at,
    college,
    event,
    eventually,
    kafka_options,
    ressource,
    running,
    send,
    serving,
)
from helpers import uai as valid_uai
from services.common.messaging.outbox import relay_lock
from services.equipement.app import SPEC as EQUIPEMENT
from services.ressources.app import SPEC as RESSOURCES
from test_equipement import lot, referentiel_loaded


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Each sample of a scrape, by (name, labels sorted)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: dict, name: str, **labels: str) -> float | None:
    return scraped.get((name, tuple(sorted(labels.items()))))


def lags(scraped: dict) -> dict[tuple[str, str], float]:
    """feo_consumer_lag by (topic, partition)."""
    return {
        (dict(labels)["topic"], dict(labels)["partition"]): v
        for (name, labels), v in scraped.items()
        if name == "feo_consumer_lag"
    }


async def scrape(app) -> dict:
    """GET /metrics on the service's ASGI app, as Prometheus would."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return samples(response.text)


async def test_events_by_outcome_batches_lag_and_outbox(kafka, settings):
    uai = valid_uai("0350001")
    service = running(EQUIPEMENT, settings)
    async with service as pipeline:
        before = await scrape(service.app)
        assert value(before, "feo_events_total", service="equipement", outcome="applied", reason="") is None
        assert value(before, "feo_database_reachable", service="equipement") == 1

        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        first, older = lot(uai, "L1", 30, 10), lot(uai, "L1", 5, 5)
        unknown = lot(valid_uai("0359999"), "L1", 3, 11)  # an établissement the référentiel does not know
        await send(
            kafka.bootstrap_servers,
            settings.topic(c.EQUIPEMENT),
            [(uai, first), (uai, first), (uai, older), (uai, b"{not json"), (uai, unknown)],
        )

        async def settled():
            now = await scrape(service.app)
            done = value(now, "feo_events_total", service="equipement", outcome="refused", reason="uai-inconnu")
            idle = value(now, "feo_outbox_pending", service="equipement") == 0 and set(lags(now).values()) == {0}
            # The relay counts a round once its transaction committed: a scrape in between saw the
            # outbox empty and nothing relayed yet (CI run 3 of session 62).
            relayed = value(now, "feo_outbox_relayed_total", service="equipement", outcome="published") or 0
            return now if done and idle and relayed >= 3 else None

        after = await eventually(settled, what="the five lots handled and the outbox drained")
        count = lambda outcome, reason="": value(  # noqa: E731
            after, "feo_events_total", service="equipement", outcome=outcome, reason=reason
        )
        # The référentiel's college, then the lot: applied; the same lot again: duplicate; its
        # earlier version: stale; the broken record and the unknown établissement: refused.
        assert count("applied") == 2
        assert count("duplicate") == 1
        assert count("stale") == 1
        assert count("refused", "json-invalide") == 1
        assert count("refused", "uai-inconnu") == 1
        assert value(after, "feo_batch_duration_seconds_count", service="equipement") >= 2
        assert {settings.topic(c.EQUIPEMENT), settings.topic(c.REFERENTIEL)} == {t for t, _ in lags(after)}
        assert value(after, "feo_outbox_oldest_age_seconds", service="equipement") == 0
        assert value(after, "feo_outbox_failed", service="equipement") == 0
        # Published by the relay (the outbox is empty now): the lot's profile record and the two
        # refused records' copies on the DLQ.
        assert value(after, "feo_outbox_relayed_total", service="equipement", outcome="published") == 3
        # FastStream's own consumer metrics, in the same registry.
        assert any(name.startswith("faststream_received_messages") for name, _ in after), sorted(after)[:20]
        # No `_created` series beside each counter and histogram: they doubled what is scraped.
        assert not [name for name, _ in after if name.endswith("_created")]
        assert value(after, "feo_counts_age_seconds", service="equipement") is None, "no counts of its own"


async def test_a_backlog_shows_as_lag_and_outbox_age(kafka, settings):
    """Records waiting while the service cannot commit (its database locked) show as lag; those
    it committed while its relay cannot publish (another holds the relay's lock), as outbox
    records pending, the oldest ageing, until the relay publishes them."""
    uai = valid_uai("0350002")
    service = running(EQUIPEMENT, settings)
    async with service as pipeline, pipeline.pool.acquire() as relay_holder:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        outbox = lambda now, name: value(now, name, service="equipement")  # noqa: E731
        async with pipeline.pool.acquire() as holder, holder.transaction():
            await holder.execute("LOCK TABLE lots IN ACCESS EXCLUSIVE MODE")  # the next batch waits
            await send(
                kafka.bootstrap_servers,
                settings.topic(c.EQUIPEMENT),
                [(uai, lot(uai, f"L{i}", 1, i)) for i in range(1, 6)],
            )

            async def lagging():
                now = await scrape(service.app)
                return sum(v for (topic, _), v in lags(now).items() if topic == settings.topic(c.EQUIPEMENT)) == 5

            await eventually(lagging, what="a lag of the five lots waiting")
            await relay_holder.execute("SELECT pg_advisory_lock($1)", relay_lock(settings.db_schema or "equipement"))

        async def ageing():
            now = await scrape(service.app)
            return outbox(now, "feo_outbox_pending") >= 1 and outbox(now, "feo_outbox_oldest_age_seconds") >= 0.5

        await eventually(ageing, what="the lots' profile waiting in the outbox, half a second old")
        status, health = await service.app.health()
        assert status == 200 and health["outbox_pending"] >= 1 and health["outbox_oldest_s"] >= 0.5, health
        await relay_holder.execute("SELECT pg_advisory_unlock($1)", relay_lock(settings.db_schema or "equipement"))

        async def published():
            now = await scrape(service.app)
            return outbox(now, "feo_outbox_pending") == 0 and outbox(now, "feo_outbox_oldest_age_seconds") == 0

        await eventually(published, what="the outbox published, its age back to 0")
        status, health = await service.app.health()
        assert status == 200 and health["outbox_oldest_s"] == 0, health


async def test_records_piling_up_behind_a_waiting_batch_all_show_as_lag(kafka, settings, monkeypatch):
    """While a batch waits (its database locked), the records fetched after it wait with it and
    the consumer fetches no more of that partition, so its high watermark stays where it was:
    each scrape asks Kafka the partitions' ends, and every record sent counts in the lag."""
    from services.common.runtime import metrics

    # One reading of the ends that failed (a slow answer on a loaded machine) is not 30 s of
    # high watermarks, longer than a round's wait below (audit helper-189 #8).
    monkeypatch.setattr(metrics, "ENDS_RETRY_SECONDS", 1.0)
    uai = valid_uai("0350004")
    service = running(EQUIPEMENT, settings)
    async with service as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        topic = settings.topic(c.EQUIPEMENT)
        async with pipeline.pool.acquire() as holder, holder.transaction():
            await holder.execute("LOCK TABLE lots IN ACCESS EXCLUSIVE MODE")  # the next batch waits
            sent = 0
            for round_ in range(4):
                await send(
                    kafka.bootstrap_servers, topic, [(uai, lot(uai, f"L{round_}-{i}", 1, i)) for i in range(1, 6)]
                )
                sent += 5

                async def lagging() -> bool:
                    now = await scrape(service.app)
                    return sum(v for (t, _), v in lags(now).items() if t == topic) == sent  # noqa: B023

                await eventually(lagging, timeout=15, what=f"a lag of the {sent} lots sent")

        async def caught_up() -> bool:
            now = await scrape(service.app)
            return value(now, "feo_events_total", service="equipement", outcome="applied", reason="") == 1 + sent and (
                set(lags(now).values()) == {0}
            )

        await eventually(caught_up, what="the lots applied once the lock is gone, the lag back to 0")


async def subscribe_unequipped(kafka, settings, uai: str, resource_id: str) -> None:
    """A resource and one subscription at a collège with no equipment: alerts open."""
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
    subscription = {"resource_id": resource_id, "uai": uai, "start": "2026-09-01", "end": None}
    await send(
        kafka.bootstrap_servers,
        settings.topic(c.CATALOGUE),
        [
            (resource_id, event(c.RESSOURCE_PUBLIEE, "/ministere", ressource(resource_id, "Mesures"), time_=at(1))),
            (uai, event(c.ABONNEMENT, "/gar", subscription, time_=at(2))),
        ],
    )


async def test_ressources_counts_open_alerts_by_kind(kafka, settings):
    """ressources serves /metrics beside its API; its open alerts by kind come from its store
    (read at every scrape here: METRICS_COUNTS_MAX_AGE_SECONDS 0)."""
    async with serving(RESSOURCES, settings.model_copy(update={"metrics_counts_max_age_seconds": 0})) as (
        client,
        _api,
    ):

        async def settled() -> dict | None:
            """The figures once the re-evaluation a first start requests (its thresholds) is done."""
            response = await client.get("/metrics")
            assert response.status_code == 200
            scraped = samples(response.text)
            return scraped if value(scraped, "feo_reevaluations_pending", service="ressources") == 0 else None

        scraped = await eventually(settled, what="no re-evaluation pending")
        for kind in c.ALERT_KINDS:
            assert value(scraped, "feo_alerts_open", service="ressources", kind=kind) == 0

        await subscribe_unequipped(kafka, settings, valid_uai("0350003"), "ark:/67375/metrics")

        async def opened():
            now = samples((await client.get("/metrics")).text)
            total = sum(value(now, "feo_alerts_open", service="ressources", kind=k) or 0 for k in c.ALERT_KINDS)
            return now if total else None

        now = await eventually(opened, what="an open alert counted")
        rows = await _api.state.pipeline.pool.fetch("SELECT kind, count(*) FROM alertes WHERE ouverte GROUP BY kind")
        assert {r["kind"]: r["count"] for r in rows} == {
            k: v for k in c.ALERT_KINDS if (v := value(now, "feo_alerts_open", service="ressources", kind=k))
        }


async def test_the_read_api_s_answers_are_counted_by_route_and_status_and_its_streams_by_number(kafka, settings):
    """The read API's saturation (its reads, its streams) showed only in lines said at most once
    per 10 s; its latency nowhere (observability audit s70 #5). Routes by template: no UAI."""
    async with serving(RESSOURCES, settings) as (client, _api):
        before = samples((await client.get("/metrics")).text)
        unknown = [valid_uai(f"035090{n}") for n in range(3)]
        for uai in unknown:
            assert (await client.get(f"/etablissements/{uai}")).status_code == 404
        assert (await client.get("/alertes", params={"limit": 0})).status_code == 422
        assert (await client.get("/nulle-part")).status_code == 404
        async with client.stream("GET", "/alertes/flux") as stream:
            assert stream.status_code == 200
            during = samples((await client.get("/metrics")).text)
        after = samples((await client.get("/metrics")).text)

    def answered(scraped: dict, route: str, status: str) -> float:
        return value(scraped, "feo_http_requests_total", service="ressources", route=route, status=status) or 0

    assert answered(after, "/etablissements/{uai}", "404") - answered(before, "/etablissements/{uai}", "404") == 3
    assert answered(after, "/alertes", "422") - answered(before, "/alertes", "422") == 1
    assert answered(after, "inconnue", "404") - answered(before, "inconnue", "404") == 1
    assert not [labels for name, labels in after if name.startswith("feo_http") and unknown[0] in str(labels)]
    timed = value(after, "feo_http_request_duration_seconds_count", service="ressources", route="/etablissements/{uai}")
    assert timed == answered(after, "/etablissements/{uai}", "404")
    assert value(during, "feo_sse_clients", service="ressources") == 1
    assert value(after, "feo_sse_clients", service="ressources") == 0


async def test_ressources_counts_are_kept_between_scrapes_until_old_enough(kafka, settings):
    """With METRICS_COUNTS_MAX_AGE_SECONDS at an hour, the open alerts counted at the first scrape
    after start are what the next scrapes get, alerts opened since or not; their age says how
    old they are (audit S2: nothing told counts that could not be read again)."""
    kept = settings.model_copy(update={"metrics_counts_max_age_seconds": 3600})
    async with serving(RESSOURCES, kept) as (client, api):
        pool = api.state.pipeline.pool

        async def read_once() -> dict | None:
            scraped = samples((await client.get("/metrics")).text)
            return scraped if value(scraped, "feo_database_reachable", service="ressources") == 1 else None

        first = await eventually(read_once, what="a scrape that read the database")
        counted = time.monotonic()
        assert value(first, "feo_counts_age_seconds", service="ressources") < 5
        await subscribe_unequipped(kafka, settings, valid_uai("0350004"), "ark:/67375/gardees")
        await eventually(lambda: pool.fetchval("SELECT count(*) > 0 FROM alertes WHERE ouverte"), what="alerts open")

        before = time.monotonic()
        now = samples((await client.get("/metrics")).text)
        assert all(value(now, "feo_alerts_open", service="ressources", kind=k) == 0 for k in c.ALERT_KINDS)
        assert value(now, "feo_counts_age_seconds", service="ressources") >= before - counted > 0


async def test_many_probes_and_scrapes_at_once_share_one_read_of_the_database_each(kafka, settings, monkeypatch):
    """/health and /metrics answer anyone who reaches the port: however many come at once, each
    kind reads the database once at a time and every caller meanwhile gets that read (a flood
    took one connection of the service's pool each, ahead of its transactions)."""
    from services.common.runtime import health

    reading, most, reads = 0, 0, 0
    count_pending = health.count_pending
    all_asked = asyncio.Event()  # a count over a large outbox, still running once all 20 asked

    async def counted(*args):
        nonlocal reading, most, reads
        reading, reads = reading + 1, reads + 1
        most = max(most, reading)
        try:
            await all_asked.wait()
            return await count_pending(*args)
        finally:
            reading -= 1

    monkeypatch.setattr(health, "count_pending", counted)
    service = running(EQUIPEMENT, settings)
    async with service as pipeline:
        asked: list[str] = []  # the database reads each request asked for
        shared = pipeline.metrics.shared

        def asking(what, read, within):
            asked.append(what)
            return shared(what, read, within)

        monkeypatch.setattr(pipeline.metrics, "shared", asking)
        transport = httpx.ASGITransport(app=service.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            answering = asyncio.gather(*(client.get(path) for path in ["/health", "/metrics"] * 10))
            try:
                await eventually(
                    lambda: asyncio.sleep(0, asked.count("health") == asked.count("metrics") == 10),
                    what="the 20 requests asking",
                )
            finally:
                all_asked.set()
            answers = await answering
    assert [a.status_code for a in answers] == [200] * 20
    assert all(a.json()["outbox_pending"] == 0 for a in answers[::2])
    assert (most, reads) == (2, 2), "one read of each kind, shared by its ten requests"


async def test_a_database_that_does_not_answer_in_time_is_reported_so(kafka, settings, monkeypatch):
    """Even when the read outlives its own timeout, as asyncpg does waiting for PostgreSQL to
    confirm a query's cancellation: the answer comes within READ_SECONDS."""
    from services.common.runtime import health

    confirmed = asyncio.Event()

    async def stuck(*args):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await confirmed.wait()  # the cancellation confirmed late: not before the answers
            raise

    service = running(EQUIPEMENT, settings)
    async with service:
        monkeypatch.setattr(health, "READ_SECONDS", 0.2)
        monkeypatch.setattr(health, "count_pending", stuck)
        transport = httpx.ASGITransport(app=service.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            try:  # each answered after 0.2 s: waiting for the read to end, they never would
                probe = await asyncio.wait_for(client.get("/health"), 10)
                scraped = samples((await asyncio.wait_for(client.get("/metrics"), 10)).text)
            finally:
                confirmed.set()
    assert probe.status_code == 503
    assert (probe.json()["database"], probe.json()["error"]) == (False, "PostgreSQL n'a pas répondu en 0.2 s")
    assert value(scraped, "feo_database_reachable", service="equipement") == 0


async def test_batches_failing_one_after_another_are_on_health_and_in_metrics_until_one_commits(
    kafka, settings, monkeypatch
):
    """PostgreSQL refusing the service's writes (here its disk full, as a trigger says): every
    batch failed and was taken again, for good, while /health answered 200 with nothing amiss
    and no figure moved but FastStream's. Now /health says since when and why, and
    /metrics how long; once a batch commits, neither does. The log says it once, without a
    traceback (an ERROR with one a second buried the others: audit helper-181 #5), and its end."""
    from services.common import pipeline as pipeline_module

    said = Said()
    monkeypatch.setattr(pipeline_module, "log", said)
    uai = valid_uai("0350012")
    service = running(EQUIPEMENT, settings)
    async with service as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        await pipeline.pool.execute(
            "CREATE FUNCTION plein() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full'; END $$; "
            "CREATE TRIGGER plein BEFORE INSERT OR UPDATE ON positions FOR EACH ROW EXECUTE FUNCTION plein()"
        )
        await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), [(uai, lot(uai, "L1", 30, 10))])

        async def failing_twice() -> dict | None:
            status, health = await service.app.health()
            assert status == 200, "Kafka and PostgreSQL answer"
            failing = health["batches_failing"]
            return (
                health
                if failing and value(await scrape(service.app), "feo_batches_failed_total", service="equipement") >= 2
                else None
            )

        health = await eventually(failing_twice, timeout=30, what="the batch failing again and again")
        assert health["batches_failing"]["error"] == "DiskFullError"
        assert value(await scrape(service.app), "feo_batches_failing_seconds", service="equipement") > 0
        assert await pipeline.pool.fetchval("SELECT count(*) FROM lots") == 0

        await pipeline.pool.execute("DROP TRIGGER plein ON positions; DROP FUNCTION plein()")
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM lots"), what="the lot, once it commits"
        )
        status, health = await service.app.health()
        assert (status, health["batches_failing"]) == (200, None)
        assert value(await scrape(service.app), "feo_batches_failing_seconds", service="equipement") == 0
    failed = said.named("batch.failed")
    assert [line["level"] for line in failed][:2] == ["warning", "debug"], failed
    assert failed[0]["error"] == "DiskFullError" and "could not extend file" in failed[0]["detail"]
    [recovered] = said.named("batch.recovered")
    assert recovered["error"] == "DiskFullError" and recovered["after_s"] > 0


class AnotherMember:
    """A member joining a service's consumer group (a replica starting): the service's partitions
    assigned anew; leaving, it gives them back."""

    def __init__(self, kafka, settings, spec):
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            *[settings.topic(t) for t in spec.consumes],
            **kafka_options(kafka.bootstrap_servers),
            group_id=settings.topic(spec.name),
            enable_auto_commit=False,
        )

    async def __aenter__(self):
        await self._consumer.start()
        self._polling = asyncio.create_task(self._consumer.getmany(timeout_ms=60_000))  # joins the group
        return self

    async def __aexit__(self, *exc):
        self._polling.cancel()
        await self._consumer.stop()


async def positions_unreadable(service) -> dict:
    async def unreadable() -> dict | None:
        status, health = await service.app.health()
        assert status == 200, "Kafka and PostgreSQL answer"
        return health["positions_unreadable"]

    return await eventually(unreadable, timeout=30, what="the positions said unreadable")


async def test_positions_unreadable_at_an_assignment_are_on_health_and_in_metrics_until_read(kafka, settings):
    """The table of stored positions unreadable at a rebalance while PostgreSQL answers the rest
    (here gone from its name; its rights revoked, its pages damaged alike): the partitions
    assigned stayed paused, read again and again, while /health answered 200 with nothing amiss.
    Now /health says since when and why, and /metrics how long; once read, they go on."""
    uai = valid_uai("0350014")
    service = running(EQUIPEMENT, settings)
    async with service as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        await pipeline.pool.execute("ALTER TABLE positions RENAME TO positions_ailleurs")
        async with AnotherMember(kafka, settings, EQUIPEMENT):
            held = await positions_unreadable(service)
            assert held["error"] == "UndefinedTableError"

            async def how_long() -> float:
                return value(await scrape(service.app), "feo_positions_unreadable_seconds", service="equipement")

            await eventually(how_long, what="how long, in /metrics")
        await pipeline.pool.execute("ALTER TABLE positions_ailleurs RENAME TO positions")
        await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), [(uai, lot(uai, "L1", 30, 10))])
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM lots"), what="the lot, once the positions read"
        )
        status, health = await service.app.health()
        assert (status, health["positions_unreadable"]) == (200, None)
        assert value(await scrape(service.app), "feo_positions_unreadable_seconds", service="equipement") == 0


async def test_a_service_whose_positions_are_unreadable_still_stops(kafka, settings):
    """Its stop waited for the assignment's callback, which read the positions again for good:
    stopped (SIGTERM, a rolling update) meanwhile, it hung until killed."""
    uai = valid_uai("0350015")
    service = running(EQUIPEMENT, settings)
    pipeline = await service.__aenter__()
    stopped = False
    try:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        await pipeline.pool.execute("ALTER TABLE positions RENAME TO positions_ailleurs")
        async with AnotherMember(kafka, settings, EQUIPEMENT):
            await positions_unreadable(service)
            async with asyncio.timeout(30):
                await service.__aexit__(None, None, None)
            stopped = True
    finally:  # not left running for the session's other tests when this one fails
        if not stopped:
            with contextlib.suppress(Exception):  # the test failed already: not why it did
                await pipeline.pool.execute("ALTER TABLE IF EXISTS positions_ailleurs RENAME TO positions")
                await asyncio.wait_for(service.__aexit__(None, None, None), 30)


async def test_a_count_slow_or_failing_leaves_the_counts_kept_and_the_rest_of_the_scrape(kafka, settings, monkeypatch):
    """ressources' counts were read within the outbox's wait: one longer than it, or one that
    failed (a query PostgreSQL refused), made the scrape say the database unreachable, every other
    figure gone, and nothing said why. Now the scrape answers with the counts kept, the rest as
    read; a failure is logged. The database away, every figure is served as last read."""
    import asyncpg

    from services.common.runtime import health

    said = Said()
    monkeypatch.setattr(health, "log", said, raising=False)
    service = running(RESSOURCES, settings.model_copy(update={"metrics_counts_max_age_seconds": 0}))
    async with service as pipeline:
        await subscribe_unequipped(kafka, settings, valid_uai("0350013"), "ark:/67375/comptes")

        async def counted() -> dict | None:
            scraped = samples((await service.app.metrics()).decode())
            opened = {k: value(scraped, "feo_alerts_open", service="ressources", kind=k) for k in c.ALERT_KINDS}
            return opened if any(opened.values()) else None

        kept = await eventually(counted, what="an open alert counted")
        counts = service.app.gauges
        monkeypatch.setattr(health, "READ_SECONDS", 0.5)
        release = asyncio.Event()

        async def slow(store):
            await release.wait()
            return await counts(store)

        async def refused(store):
            raise asyncpg.UndefinedTableError('relation "alertes" does not exist')

        try:
            for gauges in (slow, refused):
                service.app.gauges = gauges
                # Within the wait (0.5 s), not the count's, which never ends (slow): a bound that
                # fails the test rather than hang the run.
                scraped = samples((await asyncio.wait_for(service.app.metrics(), 10)).decode())
                assert value(scraped, "feo_database_reachable", service="ressources") == 1, gauges.__name__
                assert value(scraped, "feo_outbox_pending", service="ressources") is not None
                opened = {k: value(scraped, "feo_alerts_open", service="ressources", kind=k) for k in c.ALERT_KINDS}
                assert opened == kept, "the counts kept"
                release.set()
                # The count let go ends before the next scrape asks: asked while it runs, that
                # scrape shares it (Metrics.shared) and the refused count never runs (CI, s61).
                await asyncio.wait([pipeline.metrics._reading["counts"]], timeout=30)
        finally:
            release.set()  # the slow count's connection back, for the service to stop
        [line] = said.named("metrics.counts_unread")
        assert line["error"] == "UndefinedTableError" and line["level"] == "warning"

        # The database away: every figure read from it served as last read, not dropped (an
        # alert on one resolved for as long: ops audit s68 #6), feo_database_reachable 0.
        async def away(*args):
            raise ConnectionRefusedError("PostgreSQL away")

        monkeypatch.setattr(health, "count_pending", away)
        scraped = samples((await asyncio.wait_for(service.app.metrics(), 10)).decode())
        assert value(scraped, "feo_database_reachable", service="ressources") == 0
        assert value(scraped, "feo_outbox_pending", service="ressources") is not None
        assert value(scraped, "feo_reevaluation_parts_failing", service="ressources") is not None
        opened = {k: value(scraped, "feo_alerts_open", service="ressources", kind=k) for k in c.ALERT_KINDS}
        assert opened == kept, "the counts kept"


async def test_a_record_the_code_fails_on_is_named_where_it_is_on_health_and_in_the_error_line(
    kafka, settings, monkeypatch
):
    """A record the service's own code raises on (a bug, not a database's refusal) fails its
    batch again every second, its partitions held: skipping it (README, Rebuild and backups) needs
    its topic, partition and offset, which neither the ERROR line nor /health gave (ops audit s68 #5)."""
    from services.common import pipeline as pipeline_module
    from services.common.messaging.partitioner import partition_for
    from services.equipement import app as equipement_app

    said = Said()
    monkeypatch.setattr(pipeline_module, "log", said)
    apply = equipement_app.apply

    async def poisoned(store, events, changed):
        if any(getattr(e.data, "lot_id", None) == "POISON" for e in events):
            raise RuntimeError("a bug")
        return await apply(store, events, changed)

    monkeypatch.setattr(equipement_app, "apply", poisoned)
    uai = valid_uai("0350013")
    elsewhere = next(  # a UAI of another partition, whose batches commit meanwhile
        u
        for n in range(350014, 350100)
        if partition_for((u := valid_uai(f"0{n}")).encode(), range(TEST_PARTITIONS))
        != partition_for(uai.encode(), range(TEST_PARTITIONS))
    )
    lots = settings.topic(c.EQUIPEMENT)
    service = running(EQUIPEMENT, settings)
    async with service as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(u, college(u)) for u in (uai, elsewhere)])
        await referentiel_loaded(pipeline, 2)
        await send(kafka.bootstrap_servers, lots, [(uai, lot(uai, "POISON", 30, 10))])

        async def failing() -> dict | None:
            return (await service.app.health())[1]["batches_failing"]

        first = await eventually(failing, timeout=30, what="the batch failing")
        where = first["partitions"]
        # The replica's other partitions commit meanwhile: the failures go on, since their first.
        await send(kafka.bootstrap_servers, lots, [(elsewhere, lot(elsewhere, "L1", 30, 10))])
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM lots WHERE uai = $1", elsewhere),
            timeout=30,
            what="the other partition's lot committed",
        )
        assert (await failing())["since"] == first["since"]
        assert said.named("batch.recovered") == []
        # Its traceback not every second (86,400 a day): once per FAILED_LINE_SECONDS, with a count.
        monkeypatch.setattr(pipeline_module, "FAILED_LINE_SECONDS", 2.5)

        async def told_twice() -> list[dict] | None:
            failed = said.named("batch.failed")
            return failed if [line["level"] for line in failed].count("exception") >= 2 else None

        failed = await eventually(told_twice, timeout=30, what="the traceback said again")
    assert [(w["topic"], w["first_offset"], w["last_offset"]) for w in where] == [(lots, 0, 0)]
    assert failed[0]["level"] == "exception" and failed[0]["partitions"] == where and failed[0]["untold"] == 0
    again = next(n for n, line in enumerate(failed) if n and line["level"] == "exception")
    assert again >= 2 and {line["level"] for line in failed[1:again]} == {"debug"}, failed
    assert failed[again]["untold"] == again - 1


async def test_batches_failing_here_are_no_longer_said_once_their_partition_went_to_another_replica(kafka, settings):
    """The failing batch's partition given to another replica, which commits it, this one idle:
    its gauge grew for good and /health said batches failing (audit helper-181 #2)."""
    from services.common.messaging.partitioner import partition_for

    # Of the two, "aa-b" sorts first: the round-robin assignor gives it partitions 0, 2 and 4.
    uai = next(
        u
        for n in range(350100, 350200)
        if partition_for((u := valid_uai(f"0{n}")).encode(), range(TEST_PARTITIONS)) == 0
    )
    here = running(EQUIPEMENT, settings.model_copy(update={"consumer_instance_id": "zz-a"}))
    async with here as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        transaction = pipeline._transaction

        async def failing(*args):
            raise RuntimeError("this replica's database session is broken")

        pipeline._transaction = failing
        await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), [(uai, lot(uai, "L1", 30, 10))])
        await eventually(lambda: asyncio.sleep(0, pipeline.metrics.failing), what="the lot's batch failing here")

        other = running(EQUIPEMENT, settings.model_copy(update={"consumer_instance_id": "aa-b"}))
        async with other as taker:
            await eventually(
                lambda: taker.pool.fetchval("SELECT count(*) = 1 FROM lots"), what="the lot, by the other replica"
            )
            taken = {(tp.topic, tp.partition) for tp in taker.metrics._consumer().assignment()}
            assert (settings.topic(c.EQUIPEMENT), 0) in taken, "the other replica holds the lot's partition"
            status, health = await here.app.health()
            assert (status, health["batches_failing"]) == (200, None)
            assert value(await scrape(here.app), "feo_batches_failing_seconds", service="equipement") == 0
        pipeline._transaction = transaction


async def test_the_partitions_each_replica_holds_are_said_and_none_once_its_consumer_stopped(kafka, settings):
    """A replica whose consumer stopped answered /health 200 as before, and its lag series went
    away rather than grew: an alert on the lag fell silent then (audit helper-181 #7). Each
    replica now says how many partitions of each topic it holds; summed, every one is held."""
    topics = [settings.topic(t) for t in EQUIPEMENT.consumes]
    here = running(EQUIPEMENT, settings.model_copy(update={"consumer_instance_id": "zz-a"}))
    async with here:

        async def holding(app, expected: dict[str, int] | None = None) -> dict[str, int] | None:
            _, before = await app.health()
            scraped = await scrape(app)
            _, after = await app.health()
            if before["assigned_partitions"] != after["assigned_partitions"]:
                return None  # a rebalance came between /health and the scrape (CI, s60's stop)
            held = {
                t: value(scraped, "feo_consumer_assigned_partitions", service="equipement", topic=t) for t in topics
            }
            assert after["assigned_partitions"] == held
            return held if expected is None or held == expected else None

        every = dict.fromkeys(topics, TEST_PARTITIONS)
        await eventually(lambda: holding(here.app, every), what="every partition held by the one replica")
        other = running(EQUIPEMENT, settings.model_copy(update={"consumer_instance_id": "aa-b"}))
        async with other:

            async def shared() -> bool:
                a, b = await holding(here.app), await holding(other.app)
                return (
                    a is not None
                    and b is not None
                    and all(a[t] + b[t] == TEST_PARTITIONS and a[t] and b[t] for t in topics)
                )

            await eventually(shared, timeout=60, what="the partitions shared by the two replicas")
        await eventually(lambda: holding(here.app, every), timeout=60, what="all back to the one replica")
        [subscriber] = here.app.broker.subscribers
        await subscriber.stop()
        status, health = await here.app.health()
        assert status == 200 and health["assigned_partitions"] == dict.fromkeys(topics, 0)


async def test_postgresql_away_after_another_failure_is_still_said(kafka, settings, monkeypatch):
    """The outage's warning was said only when it was the first failure of a run: after one of
    another kind, every `batch.failed` of the outage was at DEBUG (review helper-183 #2)."""
    from services.common import pipeline as pipeline_module

    said = Said()
    monkeypatch.setattr(pipeline_module, "log", said)
    uai = valid_uai("0350013")
    async with running(EQUIPEMENT, settings) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        transaction, failures = pipeline._transaction, [RuntimeError("a bug"), *[ConnectionRefusedError()] * 2]

        async def failing(*args):
            if failures:
                raise failures.pop(0)
            return await transaction(*args)

        pipeline._transaction = failing
        await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), [(uai, lot(uai, "L1", 30, 10))])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM lots"), what="the lot, at last")
    levels = [(line["level"], line.get("error")) for line in said.named("batch.failed")]
    assert levels == [("exception", None), ("warning", "ConnectionRefusedError"), ("debug", "ConnectionRefusedError")]
    assert len(said.named("batch.recovered")) == 1
