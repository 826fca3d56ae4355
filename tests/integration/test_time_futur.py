"""`time-futur` is judged against the instant the broker appended the record (the partner
topics stamp it: LogAppendTime, deploy/topology.py), not against the clock of whoever reads it,
so a service reading late, a replica, a rebuild all reach the verdict the others reached."""

import asyncio
from datetime import UTC, datetime, timedelta

import contracts as c
from helpers import college, eventually, running, send, uai
from services.formation.app import SPEC as FORMATION
from services.ressources.app import SPEC as RESSOURCES

AHEAD, BEHIND = uai("0350701"), uai("0350702")


async def test_a_record_from_the_future_stays_refused_for_services_that_read_it_late(kafka, settings):
    """Sent with its `time` past the receiving clock plus the allowed skew, read once the
    services' clocks have caught up with it: judged against their clocks, ressources (the
    référentiel's DLQ owner) and formation accepted it, and a service that had read it on time
    refused it (formation silently: it leaves the DLQ to ressources)."""
    skewed = settings.model_copy(update={"max_clock_skew": timedelta(seconds=1)})
    bootstrap, referentiel = kafka.bootstrap_servers, settings.topic(c.REFERENTIEL)
    # Appended more than the skew before its time: 6 s ahead covers a new producer's start on a
    # loaded machine (audit helper-189 #5), and the acknowledgement, after the append, checks it.
    ahead = datetime.now(UTC) + timedelta(seconds=6)
    future = college(AHEAD) | {"time": ahead.isoformat()}
    # One partition: the one behind it is read after it.
    await send(bootstrap, referentiel, [(AHEAD, future), (BEHIND, college(BEHIND))], partition=0)
    assert ahead - datetime.now(UTC) > skewed.max_clock_skew, "appended too late to be from the future"
    while datetime.now(UTC) < ahead:  # until the readers' clocks are past its time (a clock, not a guess)
        await asyncio.sleep(0.05)
    async with running(RESSOURCES, skewed) as ressources, running(FORMATION, skewed) as formation:
        for pipeline in (ressources, formation):
            await eventually(
                lambda p=pipeline: p.pool.fetchval("SELECT count(*) = 1 FROM etablissements WHERE uai = $1", BEHIND),
                what=f"{pipeline.service} read past it",
            )
            held = await pipeline.pool.fetchval("SELECT count(*) FROM etablissements WHERE uai = $1", AHEAD)
            assert held == 0, f"{pipeline.service} refused it, as on the day it was sent"
        reason = await ressources.pool.fetchval("SELECT reason FROM dead_letters WHERE id = $1", future["id"])
        assert reason == "time-futur"
