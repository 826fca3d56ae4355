"""The SSE stream of the read API, served for real, fed by the alert journal in the real
PostgreSQL: large events, resuming with Last-Event-ID (also under concurrent writes), the
journal's retention, the bounds (clients, lifetime, keep-alive, replay length, slow clients)."""

import asyncio
import json
import logging
import socket
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

import contracts as c
from contracts.internal import PROFILS
from helpers import SilentRelay, at, event, eventually, profil_lot, send, uai
from services.common.pipeline import EncodedEvent
from services.ressources import queries, stream
from test_read_api import etab, serve_api

FAST = {"sse_keepalive_seconds": 0.2}
UAI = uai("0350100")


class SseReader:
    """Reads SSE frames off a streamed response, as EventSource does (a comment line is part of
    its frame): {"comment": …, "id": …} for a comment, keep-alive or not, with the `id:` it may
    carry, {"id": …} for an `id:` alone, {"id", "event", "data"} for an event."""

    def __init__(self, response: httpx.Response):
        self._lines = response.aiter_lines()

    async def frame(self, timeout: float = 30) -> dict | None:
        """The next frame, or None when the server ended the stream."""

        async def read() -> dict | None:
            fields: dict = {}
            async for line in self._lines:
                if line == "":
                    if fields:
                        return fields
                    continue
                if line.startswith(":"):
                    fields.setdefault("comment", line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
            return fields or None

        return await asyncio.wait_for(read(), timeout)

    async def event(self, timeout: float = 30) -> dict | None:
        """The next event (comments and `id:`s alone skipped), its `data` parsed; None at the end
        of the stream."""
        while True:
            f = await self.frame(timeout)
            if f is None or "data" in f:
                if f is not None:
                    f["data"] = json.loads(f["data"])
                return f

    async def events(self, n: int, timeout: float = 30) -> list[dict]:
        out = []
        for _ in range(n):
            e = await self.event(timeout)
            assert e is not None, f"the stream ended after {len(out)} of {n} events"
            out.append(e)
        return out


def alert(
    n: int, *, kind: str = "equipement-incompatible", academie: str = "14", reasons: list[c.Reason] = ()
) -> EncodedEvent:
    data = c.AlerteLevee(
        alert_id=f"alerte-{n}",
        uai=UAI,
        resource_id=f"ark:/67375/r{n}",
        kind=kind,
        reasons=list(reasons),
        code_academie=academie,
        code_departement="035",
        compatible=0,
        devices=1,
        raised_at=datetime.now(UTC),
    )
    event = c.make_event(c.ALERTE_LEVEE, data, source="/plateforme/ressources")
    return EncodedEvent(event.type, event.id, dict(data), event.to_bytes())


async def journal(app, *events: EncodedEvent) -> list[int]:
    """Journals `events` the way the handler does (one writing transaction); returns their seqs."""

    async def work(store):
        await store.journal([(e.value, None) for e in events])
        return []

    pipeline = app.state.pipeline
    await pipeline.run_exclusive(work)
    rows = await pipeline.pool.fetch(
        "SELECT seq FROM alert_journal WHERE event_id = ANY($1) ORDER BY seq", [e.id for e in events]
    )
    return [r["seq"] for r in rows]


# --- an alert event beyond pg_notify's 8,000 bytes -------------------------------------------


async def test_an_alert_beyond_8000_bytes_is_committed_and_streamed(kafka, settings):
    """Five reasons of 256 characters, each control character 6 bytes of JSON, a resource id
    of 4-byte characters: the alert event is over 10 KB; pg_notify would refuse it."""
    rid = "ark:/67375/" + "\U0001d538" * 240
    lot_id = "\x01" * 256
    b = kafka.bootstrap_servers
    async with serve_api(settings.model_copy(update=FAST)) as (client, app):
        pool = app.state.pipeline.pool
        async with client.stream("GET", "/alertes/flux") as response:
            reader = SseReader(response)
            assert "comment" in await reader.frame()
            await send(b, settings.topic(c.REFERENTIEL), [(UAI, etab(UAI, "035", "14", "53"))])
            await send(
                b,
                settings.topic(PROFILS),
                [profil_lot(UAI, 1, lot_id=lot_id, quantity=10, os={"name": "iPadOS", "version": "17"})],
            )
            await eventually(lambda: pool.fetchval("SELECT count(*) = 1 FROM recus"), what="the lot")
            await send(
                b,
                settings.topic(c.CATALOGUE),
                [
                    (
                        rid,
                        event(
                            c.RESSOURCE_PUBLIEE,
                            "/ministere",
                            {
                                "resource_id": rid,
                                "title": "Lourde",
                                "editor": "E",
                                "requirements": [[{"type": "os", "name": f"Systeme{k}"}] for k in range(6)],
                                "tools": [],
                                "min_bandwidth_mbps": None,
                                "needs_ent": False,
                                "training": {"competences": [], "tools": []},
                            },
                            time_=at(2),
                        ),
                    ),
                    (
                        UAI,
                        event(
                            c.ABONNEMENT,
                            "/gar",
                            {"resource_id": rid, "uai": UAI, "start": "2026-09-01", "end": None},
                            time_=at(2),
                        ),
                    ),
                ],
            )
            received = await reader.event()
        assert received["event"] == "alerte-levee"
        assert received["data"]["data"]["resource_id"] == rid
        assert len(received["data"]["data"]["reasons"]) == 5
        size = await pool.fetchval(
            "SELECT octet_length(event::text) FROM alert_journal WHERE seq = $1", int(received["id"])
        )
        assert size > 8000
        assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
        assert await pool.fetchval("SELECT count(*) FROM alertes WHERE resource_id = $1", rid) == 1


# --- no client --------------------------------------------------------------------------------


async def test_with_no_client_the_hub_moves_past_the_rows_without_reading_them(settings):
    """Alerts come whether a dashboard watches or not: with no client, the hub's position
    follows the journal, but no row is read to be fanned out to nobody. A client that comes
    next gets what is journalled after it, once."""
    async with serve_api(settings.model_copy(update=FAST)) as (client, app):
        hub = app.state.hub
        fanned_out: list[int] = []
        fan_out = hub._fan_out
        hub._fan_out = lambda rows: (fanned_out.extend(r["seq"] for r in rows), fan_out(rows))
        unseen = await journal(app, *[alert(n) for n in range(5)])
        await eventually(lambda: _equal(hub.position, unseen[-1]), what="the hub to follow the journal")
        assert fanned_out == []
        async with client.stream("GET", "/alertes/flux") as response:
            reader = SseReader(response)
            assert "comment" in await reader.frame()
            await eventually(lambda: _equal(hub.clients, 1), what="the client to subscribe")
            later = await journal(app, alert(5), alert(6))
            assert [int(e["id"]) for e in await reader.events(2)] == later
        assert fanned_out == later


# --- resuming with Last-Event-ID -------------------------------------------------------------


async def test_resume_replays_exactly_the_missed_events_in_order_then_goes_live(settings):
    async with serve_api(settings.model_copy(update=FAST)) as (client, app):
        seqs = await journal(
            app,
            *[
                alert(
                    n,
                    kind="equipement-partiel" if n % 3 else "equipement-incompatible",
                    academie="17" if n == 4 else "14",
                )
                for n in range(8)
            ],
        )
        async with client.stream("GET", "/alertes/flux", headers={"Last-Event-ID": str(seqs[2])}) as response:
            reader = SseReader(response)
            replayed = await reader.events(5)
            assert [int(e["id"]) for e in replayed] == seqs[3:]
            assert [e["data"]["data"]["alert_id"] for e in replayed] == [f"alerte-{n}" for n in range(3, 8)]
            assert all(e["event"] == "alerte-levee" for e in replayed)
            # Live now: what is committed next comes once, right after the replay.
            later = await journal(app, alert(8), alert(9))
            live = await reader.events(2)
            assert [int(e["id"]) for e in live] == later

        # With filters, the replay keeps what the filters keep.
        async with client.stream(
            "GET",
            "/alertes/flux",
            params={"kind": "equipement-incompatible", "code_academie": "14"},
            headers={"Last-Event-ID": "0"},
        ) as response:
            reader = SseReader(response)
            replayed = await reader.events(5)
            assert [e["data"]["data"]["alert_id"] for e in replayed] == [f"alerte-{n}" for n in (0, 3, 6, 8, 9)]
            later = await journal(app, alert(10, kind="equipement-partiel"), alert(11))
            [live] = await reader.events(1)
            assert int(live["id"]) == later[1]


async def test_resume_under_concurrent_writes_has_no_gap_and_no_duplicate(settings):
    """Clients resume while the journal grows one transaction after another: each gets every
    seq after its Last-Event-ID exactly once, in order, across the replay/live boundary."""
    total, clients = 120, 4
    async with serve_api(settings.model_copy(update=FAST)) as (client, app):
        first = await journal(app, *[alert(n) for n in range(10)])
        written: list[int] = list(first)
        milestones = [asyncio.Event() for _ in range(clients)]

        async def writer():
            for n in range(10, total):
                written.extend(await journal(app, alert(n)))
                for k, m in enumerate(milestones):
                    if n == 10 + k * 25:
                        m.set()

        async def resumer(k: int) -> tuple[int, list[int]]:
            await milestones[k].wait()
            since = written[len(written) // 2]  # somewhere already journalled
            async with client.stream("GET", "/alertes/flux", headers={"Last-Event-ID": str(since)}) as response:
                reader = SseReader(response)
                got: list[int] = []
                while True:
                    e = await reader.event()
                    got.append(int(e["id"]))
                    if e["data"]["data"]["alert_id"] == f"alerte-{total - 1}":
                        return since, got

        tasks = [asyncio.create_task(resumer(k)) for k in range(clients)]
        await writer()
        for since, got in await asyncio.wait_for(asyncio.gather(*tasks), 60):
            assert got == [s for s in written if s > since]


async def test_a_purged_or_unknown_last_event_id_is_said_then_what_is_kept_follows(settings):
    async with serve_api(settings.model_copy(update=FAST)) as (client, app):
        pool = app.state.pipeline.pool
        seqs = await journal(app, *[alert(n) for n in range(5)])
        await pool.execute("UPDATE alert_journal SET created_at = now() - interval '2 days' WHERE seq <= $1", seqs[2])
        assert await stream.purge(pool, 24) == 3
        assert await pool.fetchval("SELECT array_agg(seq ORDER BY seq) FROM alert_journal") == seqs[3:]

        async with client.stream("GET", "/alertes/flux", headers={"Last-Event-ID": str(seqs[0])}) as response:
            reader = SseReader(response)
            notice = await reader.event()
            assert notice["event"] == "reprise-incomplete" and "id" not in notice
            assert notice["data"]["raison"] == "journal-purge" and notice["data"]["premier_conserve"] == seqs[2] + 1
            assert [int(e["id"]) for e in await reader.events(2)] == seqs[3:]

        async with client.stream("GET", "/alertes/flux", headers={"Last-Event-ID": str(seqs[2])}) as response:
            reader = SseReader(response)  # resuming right at the horizon misses nothing: no notice
            assert [int(e["id"]) for e in await reader.events(2)] == seqs[3:]

        async with client.stream("GET", "/alertes/flux", headers={"Last-Event-ID": str(10**12)}) as response:
            reader = SseReader(response)
            notice = await reader.event()
            assert notice["event"] == "reprise-incomplete" and notice["data"]["raison"] == "identifiant-inconnu"
            [later] = await journal(app, alert(5))
            assert int((await reader.event())["id"]) == later  # live from now on, not stuck behind 10**12


async def test_the_journal_dates_its_rows_in_the_order_of_their_seqs(settings):
    """The purge cuts the journal where its rows grow older than its hours, a prefix of seq: a row
    dated when its transaction began (a revival's, a large chunk's, begun before shorter ones that
    journalled ahead of it) made the cut take younger rows with it (audit s69 F6). Dated when
    written, after the journal's lock: in seq order; and so by the column's default, for a
    writer that gives no date."""
    async with serve_api(settings.model_copy(update=FAST)) as (_, app):
        pool = app.state.pipeline.pool
        async with pool.acquire() as conn, conn.transaction():
            began = await conn.fetchval("SELECT now()")
            [first] = await journal(app, alert(1))  # committed while the longer transaction runs
            await stream.notify(conn, [alert(2).value])
            await conn.execute("INSERT INTO alert_journal (event_id, alert_id, event) VALUES ('x', 'y', '{}')")
        rows = await pool.fetch("SELECT seq, created_at FROM alert_journal ORDER BY seq")
        assert len(rows) == 3 and rows[0]["seq"] == first
        assert began < rows[0]["created_at"] < rows[1]["created_at"] <= rows[2]["created_at"]


async def test_a_replica_started_on_a_journal_its_purge_emptied_streams_from_the_purge_s_horizon(settings):
    """After a quiet day the purge takes every row: a replica started then streamed from 0, so
    every client resuming with the id it was given was told of a purge (`reprise-incomplete`),
    though it had missed nothing, and the list said another position."""
    async with serve_api(settings.model_copy(update=FAST)) as (client, app):
        pool = app.state.pipeline.pool
        seqs = await journal(app, *[alert(n) for n in range(3)])
        await pool.execute("UPDATE alert_journal SET created_at = now() - interval '2 days'")
        assert await stream.purge(pool, 24) == 3
    async with serve_api(settings.model_copy(update=FAST)) as (client, app):
        assert app.state.hub.position == seqs[-1]
        page = (await client.get("/alertes")).json()
        async with client.stream("GET", "/alertes/flux") as response:
            opening = await SseReader(response).frame()
        assert opening["id"] == str(page["last_event_id"]) == str(seqs[-1])
        async with client.stream("GET", "/alertes/flux", headers={"Last-Event-ID": opening["id"]}) as response:
            reader = SseReader(response)
            [later] = await journal(app, alert(3))
            assert int((await reader.event())["id"]) == later, "no notice first: nothing was missed"


async def test_a_replay_stopped_past_the_statement_timeout_is_said_then_the_live_stream_follows(settings):
    """The stream has begun (200) when its replay is read: a replay the server stops past
    API_STATEMENT_TIMEOUT_MS (here waiting on a lock) is told in the stream, not a broken
    stream that EventSource would reopen, and fail again, at once."""
    async with serve_api(settings.model_copy(update={**FAST, "api_statement_timeout_ms": 300})) as (client, app):
        pool = app.state.pipeline.pool
        seqs = await journal(app, alert(0), alert(1))
        # Read by the hub first: a stream opened before would get the second live, not replayed.
        await eventually(lambda: _equal(app.state.hub.position, seqs[-1]), what="the hub to read the journal")
        async with pool.acquire() as locker, locker.transaction():
            await locker.execute("LOCK TABLE alert_journal_horizon IN ACCESS EXCLUSIVE MODE")
            async with client.stream("GET", "/alertes/flux", headers={"Last-Event-ID": str(seqs[0])}) as response:
                reader = SseReader(response)
                notice = await reader.event(timeout=10)
                await locker.execute("SELECT 1")  # the lock still held until here
                assert notice["event"] == "reprise-incomplete" and "id" not in notice
                assert notice["data"]["raison"] == "reprise-interrompue"
                assert notice["data"]["message"].startswith(
                    f"la reprise après Last-Event-ID {seqs[0]} n'a pas pu être lue en 300 ms (API_STATEMENT_TIMEOUT_MS)"
                )
                [later] = await journal(app, alert(2))
                assert int((await reader.event())["id"]) == later


async def test_a_long_replay_ends_with_a_fin_event_whose_id_resumes_it(settings):
    async with serve_api(settings.model_copy(update={**FAST, "sse_replay_max": 3})) as (client, app):
        seqs = await journal(app, *[alert(n) for n in range(7)])
        # Streams opened before the hub has read these rows would get them live, unbounded.
        await eventually(lambda: _equal(app.state.hub.position, seqs[-1]), what="the hub to read the journal")
        got, fins, last = [], [], 0
        for _ in range(5):
            async with client.stream("GET", "/alertes/flux", headers={"Last-Event-ID": str(last)}) as response:
                reader = SseReader(response)
                assert (await reader.frame())["retry"] == "3000"
                while len(got) < len(seqs):
                    e = await reader.event()
                    if e["event"] != "fin":
                        got.append(int(e["id"]))
                        continue
                    fins.append(e["data"]["raison"])
                    assert e["data"]["reconnecter"] and int(e["id"]) == e["data"]["last_event_id"] == got[-1]
                    # EventSource opens it again at once, not after its default 3-5 s (a national
                    # fan-out's catch-up took minutes); the next stream puts the default back.
                    assert e["retry"] == "250"
                    assert await reader.frame() is None  # and the stream closes
                    last = int(e["id"])
                    break
            if len(got) == len(seqs):
                break
        assert got == seqs
        assert fins == ["reprise-trop-longue"] * 2


# --- bounds ----------------------------------------------------------------------------------


async def test_a_stream_asked_of_a_stopping_hub_is_told_the_service_stops(settings):
    """Between the hub's stop and the process's end, a new stream was refused as "too many
    streams open", which is not why (and a plain EventSource gives up on a 503)."""
    async with serve_api(settings.model_copy(update=FAST)) as (client, app):
        await app.state.hub.stop()
        refused = await client.get("/alertes/flux")
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
        assert refused.json()["detail"].startswith("le service s'arrête : réessayer dans "), refused.text
        fin = await _refused_event_source(client, 7, 7)
        assert (fin["raison"], fin["last_event_id"]) == ("arret-du-service", 7)


async def test_beyond_the_client_cap_the_answer_is_503_with_retry_after(settings):
    async with serve_api(settings.model_copy(update={**FAST, "sse_max_clients": 2})) as (client, app):
        async with client.stream("GET", "/alertes/flux") as one, client.stream("GET", "/alertes/flux") as two:
            assert (one.status_code, two.status_code) == (200, 200)
            refused = await client.get("/alertes/flux")
            assert refused.status_code == 503
            assert int(refused.headers["Retry-After"]) > 0
            assert "trop de flux ouverts (2)" in refused.json()["detail"]
            # One that sent no Last-Event-ID resumes where the hub was: what is committed while it
            # waits to reconnect comes then (without an `id:`, it resumed from nothing, and lost it).
            position = app.state.hub.position
            fin = await _refused_event_source(client, None, position)
            assert (fin["raison"], fin["last_event_id"]) == ("trop-de-flux", position)
            assert "trop de flux ouverts (2)" in fin["message"]
        # Closed streams give their places back.
        await eventually(lambda: _zero(app.state.hub.clients), what="the hub to forget closed streams")
        async with client.stream("GET", "/alertes/flux") as again:
            assert again.status_code == 200


async def _refused_event_source(client, last_event_id: int | None, resumes_at: int) -> dict:
    """What a refused EventSource (its Accept) is answered: a 503 would close it for good (the
    HTML standard fails the connection on any status but 200, Retry-After unread), so a stream
    of one `fin` that has it reconnect when told, from `resumes_at` (its `id:`: the
    Last-Event-ID it sent, else the hub's position). Its `fin`'s data."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    answer = await client.get("/alertes/flux", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/event-stream")
    retry = int(answer.headers["Retry-After"])
    fields = dict(line.split(": ", 1) for line in answer.text.splitlines() if line and not line.startswith(":"))
    assert list(fields) == ["retry", "id", "event", "data"], answer.text
    assert (fields["retry"], fields["event"], fields["id"]) == (str(retry * 1000), "fin", str(resumes_at))
    fin = json.loads(fields["data"])
    assert fin["reconnecter"] is True
    return fin


async def _zero(n: int) -> bool:
    return n == 0


async def test_keep_alive_comments_then_a_final_event_at_the_end_of_the_lifetime(settings):
    # A lifetime long enough for the journal's row to be read by the hub before it ends, on a
    # busy machine too (the final event's id says how far the client was there).
    # 6 s: the row read one keep-alive (0.2 s) before the end however busy (audit helper-189 #18).
    async with serve_api(settings.model_copy(update={**FAST, "sse_max_seconds": 6})) as (client, app):
        hub = app.state.hub
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with client.stream("GET", "/alertes/flux", params={"kind": "equipement-incompatible"}) as response:
            reader = SseReader(response)
            frames = [await reader.frame()]
            [seq] = await journal(app, alert(0, kind="equipement-partiel"))  # the filter leaves it out
            await eventually(lambda: _equal(hub.position, seq), what="the hub to read the journal")
            while (f := await reader.frame(timeout=10)) is not None:
                frames.append(f)
        elapsed = loop.time() - started
        assert 6 <= elapsed < 25, "ended by its lifetime (6 s), with room for a busy machine"
        keep_alives = [f for f in frames if f.get("comment") == "keep-alive"]
        assert keep_alives and int(frames[0]["id"]) < seq, frames[:2]  # the stream's start, before the row
        # The client's resume point in each keep-alive: past the row filtered out once read.
        assert int(keep_alives[-1]["id"]) == seq, keep_alives[-1]
        fin = frames[-1]
        assert fin["event"] == "fin" and all("comment" in f for f in frames[:-1])
        data = json.loads(fin["data"])
        assert data["raison"] == "duree-maximale" and data["reconnecter"] and "Last-Event-ID" in data["message"]
        # Nothing matched the filter, but the client was there while the journal reached `seq`:
        # it resumes past it, rather than from before and rescanning what it had passed.
        assert int(fin["id"]) == data["last_event_id"] == seq
        await eventually(lambda: _zero(app.state.hub.clients), what="the hub to forget the ended stream")


async def test_a_stream_cut_before_its_first_event_resumes_where_it_was_without_a_gap(settings):
    """A stream that has received no event yet, cut without its final event (a replica killed, a
    proxy's reset): EventSource reopens it with the last `id:` it read. The stream had none
    before its first event, so it was reopened from the hub's position then, and the alerts
    committed during the cut were never sent."""
    async with serve_api(settings.model_copy(update=FAST)) as (client, app):
        [before] = await journal(app, alert(0))
        await eventually(lambda: _equal(app.state.hub.position, before), what="the hub to read the journal")
        async with client.stream("GET", "/alertes/flux") as response:
            opened = await SseReader(response).frame()
        assert opened == {"comment": "flux des alertes", "retry": str(stream.RECONNECT_MS), "id": str(before)}
        [during] = await journal(app, alert(1))  # while the client is away
        await eventually(lambda: _equal(app.state.hub.position, during), what="the hub to read the journal")
        resumed = {"Last-Event-ID": opened["id"]}  # what EventSource sends
        async with client.stream("GET", "/alertes/flux", headers=resumed) as response:
            event = await SseReader(response).event()
        assert int(event["id"]) == during and event["data"]["data"]["alert_id"] == "alerte-1"


async def test_a_client_that_stops_reading_is_dropped_with_a_final_event(settings):
    """The hub's drop, driven by real journal rows and notifications: a subscriber whose queue
    is full is let go, and its stream says so and where to resume; resuming there loses nothing."""
    update = {**FAST, "sse_queue_size": 2, "sse_max_clients": 1}
    async with serve_api(settings.model_copy(update=update)) as (client, app):
        hub = app.state.hub
        slow = hub.subscribe(queries.AlertFilter())
        seqs = await journal(app, alert(0))
        seqs += await journal(app, alert(1))
        seqs += await journal(app, alert(2))
        await eventually(lambda: _zero(hub.listening), what="the slow subscriber to be dropped")
        # Its place is its own until its stream ends: a client that never reads would otherwise
        # take one place after another, each connection left open.
        async with client.stream("GET", "/alertes/flux") as refused:  # (a stream: headers only)
            assert refused.status_code == 503
        frames = [f async for f in hub.events(slow, None)]
        hub.unsubscribe(slow)  # the stream ended (what the response does)
        assert frames[0].startswith(":")
        assert frames[1:] == [frames[-1]] and "event: fin\n" in frames[-1]
        fin = json.loads(frames[-1].split("data: ", 1)[1])
        assert fin["raison"] == "client-trop-lent" and fin["last_event_id"] == slow.start
        assert frames[-1].startswith(f"retry: 250\nid: {slow.start}\n")  # opened again at once

        async with client.stream("GET", "/alertes/flux", headers={"Last-Event-ID": str(slow.start)}) as response:
            assert [int(e["id"]) for e in await SseReader(response).events(3)] == seqs


async def test_a_client_that_never_reads_is_cut_once_a_frame_waits_too_long_and_its_place_freed(settings, monkeypatch):
    """A connection whose client reads nothing: once the socket's buffers are full, a frame waits
    for it; past SSE_SEND_SECONDS the stream is cut (not at the end of its lifetime, an hour)."""
    from services.ressources import api

    monkeypatch.setattr(api, "SSE_SEND_SECONDS", 0.5)
    said: list[str] = []
    server_log = logging.getLogger("uvicorn.error")  # which does not propagate to the root logger
    monkeypatch.setattr(server_log, "error", lambda msg, *args, **kw: said.append(msg % args if args else msg))
    update = {**FAST, "sse_max_clients": 1, "sse_queue_size": 10_000, "sse_max_seconds": 600}
    async with serve_api(settings.model_copy(update=update)) as (client, app):
        hub = app.state.hub
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connecting: a small window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", client.base_url.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        writer.write(b"GET /alertes/flux HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        try:
            await eventually(lambda: _equal(hub.clients, 1), what="the stream to start")
            big = [c.Reason(code="os-version", detail="x" * 256) for _ in range(32)]  # about 9 KB each
            for n in range(0, 400, 50):  # 3.6 MB for a client that reads nothing
                await journal(app, *(alert(n + i, reasons=big) for i in range(50)))
            await eventually(lambda: _zero(hub.clients), timeout=60, what="the stream cut, its place freed")
            async with client.stream("GET", "/alertes/flux") as again:
                assert again.status_code == 200
            # Reset, not closed: closed, it would stay open until its buffered frames were read.
            with pytest.raises(ConnectionResetError):
                async with asyncio.timeout(10):
                    while await reader.read(65536):
                        pass
            assert said == [], "the server saw the connection lost, not a response left unfinished"
        finally:
            writer.close()


async def test_a_stopping_hub_ends_its_streams_with_a_final_event(settings):
    async with serve_api(settings.model_copy(update=FAST)) as (_, app):
        hub = stream.AlertHub(settings.database_url, "ressources", app.state.pipeline.pool)
        await hub.start()
        sub = hub.subscribe(queries.AlertFilter())
        [seq] = await journal(app, alert(0))
        await eventually(lambda: _equal(hub.position, seq), what="the hub to read the journal")
        await hub.stop()
        frames = [f async for f in hub.events(sub, None)]
        assert frames[1].startswith(f"id: {seq}\n") and "event: alerte-levee" in frames[1]
        assert frames[2].startswith(f"id: {seq}\nevent: fin\n") and "arret-du-service" in frames[2]
        assert hub.subscribe(queries.AlertFilter()) is None


async def test_postgresql_away_is_said_once_by_the_hub_and_its_streams_miss_nothing(settings, monkeypatch):
    """The hub's journal reader said PostgreSQL away as an ERROR with its traceback at every
    round (every second or so) for as long as it lasted: now once, as a warning, its next rounds
    at DEBUG, then `sse.journal_read_recovered`; what was journalled meanwhile is sent. Out of
    reach first (a connection that never answers: a warning every round, `sse.journal_stalled`,
    review helper-186 C), then refusing."""
    from deploy.local.ports import free_port
    from helpers import Said

    said = Said()
    monkeypatch.setattr(stream, "log", said)
    url = urlsplit(settings.database_url)
    mute = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)  # accepts, never answers

    def at(port: int) -> str:
        return urlunsplit(url._replace(netloc=f"{url.netloc.rpartition('@')[0]}@127.0.0.1:{port}"))

    async with mute, serve_api(settings.model_copy(update=FAST)) as (_, app):
        hub = stream.AlertHub(settings.database_url, "ressources", app.state.pipeline.pool, replay_timeout_ms=500)
        await hub.start()
        try:
            frames = hub.events(hub.subscribe(queries.AlertFilter()), None)
            assert (await anext(frames)).startswith(":")
            hub._url = at(mute.sockets[0].getsockname()[1])  # its next connection never answered
            hub._drop_connection()
            later = await journal(app, alert(0))  # the service's own pool still reaches it

            def failures(level: str) -> list[dict]:
                return [line for line in said.named("sse.journal_read_failed") if line["level"] == level]

            def failing_on(rounds: int):
                async def check() -> bool:
                    hub._wake.set()  # a round now, not at the next poll
                    return len(failures("debug")) >= rounds

                return check

            await eventually(failing_on(2), what="rounds out of reach")
            hub._url = at(free_port())  # then refused, as PostgreSQL's when it is down
            await eventually(failing_on(4), what="rounds refused")
            [warned] = failures("warning")
            assert warned["error"] == "TimeoutError" and failures("exception") == []
            assert said.named("sse.journal_stalled") == [], "a connection not made is the outage's"
            hub._url = settings.database_url
            hub._wake.set()
            received = await asyncio.wait_for(anext(frames), stream.POLL_SECONDS + 10)
            assert received.startswith(f"id: {later[0]}\n")
            assert len(said.named("sse.journal_read_recovered")) == 1
            await frames.aclose()
        finally:
            await hub.stop()


async def test_a_hub_whose_first_session_is_slower_than_the_read_bound_starts(settings):
    """A new session slower to open than API_STATEMENT_TIMEOUT_MS (a loaded host, a bound chosen
    short): the hub's start, bound by it, failed, and the service's startup with it."""
    url = urlsplit(settings.database_url)
    async with (
        serve_api(settings.model_copy(update=FAST)) as (_, app),
        SilentRelay(url.hostname, url.port, 1.0) as relay,
    ):
        [seq] = await journal(app, alert(0))
        through = urlunsplit(url._replace(netloc=f"{url.netloc.rpartition('@')[0]}@127.0.0.1:{relay.port}"))
        hub = stream.AlertHub(through, "ressources", app.state.pipeline.pool, replay_timeout_ms=300)
        try:
            await hub.start()
            assert hub.position == seq
        finally:
            await hub.stop()


async def test_a_listening_connection_gone_silent_is_replaced_and_the_stream_misses_nothing(settings, capfd):
    """The hub's connection to PostgreSQL stays open but carries nothing (its peer gone without
    closing it, as after a failover): its next read is given up within the read bound, a new
    connection reads on from the hub's position, and the events journalled meanwhile arrive."""
    url = urlsplit(settings.database_url)
    async with serve_api(settings.model_copy(update=FAST)) as (_, app), SilentRelay(url.hostname, url.port) as relay:
        through = urlunsplit(url._replace(netloc=f"{url.netloc.rpartition('@')[0]}@127.0.0.1:{relay.port}"))
        hub = stream.AlertHub(through, "ressources", app.state.pipeline.pool, replay_timeout_ms=500)
        await hub.start()
        try:
            sub = hub.subscribe(queries.AlertFilter())
            frames = hub.events(sub, None)
            assert (await anext(frames)).startswith(":")
            [first] = await journal(app, alert(0))
            assert (await asyncio.wait_for(anext(frames), 10)).startswith(f"id: {first}\n")
            relay.silence()
            later = await journal(app, alert(1), alert(2))
            received = [await asyncio.wait_for(anext(frames), stream.POLL_SECONDS + 10) for _ in later]
            assert [int(f.split("\n", 1)[0].removeprefix("id: ")) for f in received] == later
            assert "sse.journal_stalled" in capfd.readouterr().err
            await frames.aclose()
        finally:
            async with asyncio.timeout(5):  # not held by the silent connection either
                await hub.stop()


async def test_a_failed_replay_on_a_hub_behind_the_one_the_client_left_repeats_nothing(settings, monkeypatch):
    """A client that saw up to N on one replica resumes on another whose hub is behind N, and the
    replay cannot be read: told so (`reprise-interrompue`), it gets the live events after N, not
    again those up to N, which that hub reads next."""
    async with serve_api(settings.model_copy(update=FAST)) as (_, app):
        seqs = await journal(app, *[alert(n) for n in range(4)])
        behind = stream.AlertHub(settings.database_url, "ressources", app.state.pipeline.pool)  # not started: at 0
        sub = behind.subscribe(queries.AlertFilter())

        async def unreadable(_sub, _last):
            return None

        monkeypatch.setattr(behind, "_replay", unreadable)
        frames = behind.events(sub, seqs[1])
        assert (await anext(frames)).startswith(":")
        notice = await anext(frames)
        assert "event: reprise-incomplete" in notice and "reprise-interrompue" in notice
        assert await anext(frames) == f"id: {seqs[1]}\n\n", "the client's own, a row the journal has"
        # The hub's rows, as it reads them next (still behind when the stream resumes: queued, as
        # its fan-out queues them, its position not moved).
        for row in await app.state.pipeline.pool.fetch("SELECT seq, event FROM alert_journal ORDER BY seq"):
            sub.queue.put_nowait(stream._Item(row["seq"], stream._alert_frame(row["seq"], row["event"])[1]))
        delivered = [int((await anext(frames)).split("\n", 1)[0].removeprefix("id: ")) for _ in seqs[2:]]
        assert delivered == seqs[2:], "after the client's Last-Event-ID only"
        await frames.aclose()


class _Away:
    """A pool while PostgreSQL cannot be reached."""

    def acquire(self):
        raise ConnectionRefusedError("PostgreSQL away")


@pytest.mark.parametrize("known", [True, False], ids=["handed-out", "bogus"])
async def test_with_postgresql_away_a_hub_behind_holds_the_live_rows_up_to_the_client_s_id_until_it_can_tell(
    settings, monkeypatch, known
):
    """The replay and the journal's extent unreadable (PostgreSQL away): the stream resumes at the
    client's own id, not this hub's lower position (EventSource would send that one back, and get
    again what it had), and once PostgreSQL answers, the live rows up to that id are dropped when
    the journal handed it out (a replica ahead of this hub delivered them), delivered when not
    (a bogus id skips nothing)."""
    async with serve_api(settings.model_copy(update=FAST)) as (_, app):
        seqs = await journal(app, *[alert(n) for n in range(4)])
        pool = app.state.pipeline.pool
        behind = stream.AlertHub(settings.database_url, "ressources", pool, replay_timeout_ms=300)  # not started: at 0
        sub = behind.subscribe(queries.AlertFilter())
        monkeypatch.setattr(behind, "_pool", _Away())
        last = seqs[1] if known else seqs[-1] + 1_000_000
        frames = behind.events(sub, last)
        assert (await anext(frames)).startswith(":")
        assert "reprise-interrompue" in await anext(frames)
        assert await anext(frames) == f"id: {last}\n\n", "the client's own resume point, not lowered"
        monkeypatch.setattr(behind, "_pool", pool)  # PostgreSQL back: the hub reads its rows next
        for row in await pool.fetch("SELECT seq, event FROM alert_journal ORDER BY seq"):
            sub.queue.put_nowait(stream._Item(row["seq"], stream._alert_frame(row["seq"], row["event"])[1]))
        expected = seqs[2:] if known else seqs
        delivered = [int((await anext(frames)).split("\n", 1)[0].removeprefix("id: ")) for _ in expected]
        assert delivered == expected
        await frames.aclose()


async def _equal(a, b) -> bool:
    return a == b


async def test_one_transaction_journalling_160_kb_of_alerts_streams_every_one_whole(settings):
    """Far beyond what pg_notify carries: the journal rows, not the notification, are the events."""
    big = [c.Reason(code="os-absent", detail="\x02" * 256) for _ in range(5)]
    events = [alert(n, reasons=big) for n in range(20)]
    assert all(len(e.to_bytes()) > 8000 for e in events)
    async with serve_api(settings.model_copy(update=FAST)) as (client, app):
        async with client.stream("GET", "/alertes/flux") as response:
            reader = SseReader(response)
            assert "comment" in await reader.frame()
            seqs = await journal(app, *events)
            got = await reader.events(len(events))
        assert [int(e["id"]) for e in got] == seqs
        assert [e["data"]["data"]["reasons"] for e in got] == [[r.model_dump() for r in big]] * len(events)
