"""`./dev demo`: a morning of the platform's life (`scenario.py`) played on a started platform,
told as it goes: the référentiel, the declarations, the alerts raised by kind with one example
each, a renovation and the alerts it resolves, then the read API for dashboards.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable

import asyncpg
from aiokafka import AIOKafkaConsumer

import contracts as c
from deploy.acl import dashboards
from deploy.local import scenario
from deploy.local.console import say, show
from deploy.local.partenaires import Partenaires
from deploy.local.platform import Platform
from deploy.referentiel.publish import publish_etablissements
from services.common.messaging.connection import KafkaAccess


async def _wait(database_url: str, query: str, expected: int, what: str, timeout: float = 120) -> None:
    """Until `query` returns `expected` (a count): the services work in their own time."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while (value := await conn.fetchval(query)) != expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {value} after {timeout} s, expected {expected}")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


class AlertTail:
    """The dashboard's view: every alert event on alertes.compatibilite.v1, in order, read as the
    dashboards' principal (read-only)."""

    def __init__(self, access: KafkaAccess):
        self.consumer = AIOKafkaConsumer(c.ALERTES, **access.aiokafka(), auto_offset_reset="earliest", group_id=None)
        self.events: list[dict] = []

    async def drain(self, complete: Callable[[], bool] = lambda: True, timeout: float = 60) -> None:
        """Every event on the topic up to its end as it is now (a first fetch may come back empty,
        over TLS on a loaded machine, which ended the reading with nothing read), then on until
        `complete()` or `timeout`: alerts the scenario awaits may come from work still under way
        (a resource's fan-out in the background, profiles on their way to ressources)."""
        deadline = time.monotonic() + timeout
        while not (assigned := self.consumer.assignment()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{c.ALERTES}: no partition assigned to the dashboard's reader after {timeout} s")
            await asyncio.sleep(0.1)
        ends = await self.consumer.end_offsets(list(assigned))
        for tp, end in ends.items():
            while await self.consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{c.ALERTES}: not read to its end within {timeout} s")
                batch = await self.consumer.getmany(tp, timeout_ms=1000)
                self.events += [json.loads(r.value) for records in batch.values() for r in records]
        while not complete() and time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=500)
            self.events += [json.loads(r.value) for records in batch.values() for r in records]

    def missing(self, type_: str) -> list[str]:
        """The alert kinds of which no event of `type_` was read."""
        return [
            kind
            for kind in c.ALERT_KINDS
            if not any(e["type"] == type_ and e["data"]["kind"] == kind for e in self.events)
        ]

    def summary(self, type_: str) -> str:
        counts = Counter(e["data"]["kind"] for e in self.events if e["type"] == type_)
        return "\n".join(f"      {kind:28s} {counts.get(kind, 0):4d}" for kind in c.ALERT_KINDS)

    def example(self, kind: str) -> str:
        d = next((e["data"] for e in self.events if e["type"] == c.ALERTE_LEVEE and e["data"]["kind"] == kind), None)
        if d is None:
            return f"      {kind}: none"
        reasons = "; ".join(f"{r['code']}: {r['detail']}" for r in d["reasons"])
        return f"      {kind} at {d['uai']} for {d['resource_id']}: {reasons}"


async def play(platform: Platform) -> AlertTail:
    """The scenario; returns the dashboard's view of the alerts."""
    bootstrap, db = platform.kafka.bootstrap_servers, platform.database_url
    etabs = scenario.referentiel()
    equipped = [e for e in etabs if e.ouvert and scenario.equipeur(e)]
    types = Counter(e.type for e in etabs)
    say(
        f"ministère: référentiel of {len(etabs)} synthetic établissements of département {scenario.DEPARTEMENT} "
        f"({', '.join(f'{n} {t}' for t, n in sorted(types.items()))})"
    )
    await publish_etablissements(bootstrap, etabs, access=platform.kafka.access_as("ministere"))
    for schema in ("formation", "equipement", "ressources", "passerelle"):
        await _wait(db, f"SELECT count(*) FROM {schema}.etablissements", len(etabs), f"{schema}'s référentiel")
    assert platform.services is not None, "started by Platform.start"
    partners = Partenaires(
        f"http://127.0.0.1:{platform.services.ports['passerelle']}",
        platform.identite.jeton,
        platform.kafka.access_as,
    )
    sent = await _send(partners, scenario.declarations(etabs))
    say(
        f"communes, département 035, région 53 and rectorat 14, each with its token: {sent} declarations (lots, "
        "connectivity, affectations, trainings) posted to the passerelle"
    )
    # Every declaration applied, then ressources holds the latest version of every profile and
    # coverage the other two published.
    await _wait(
        db,
        f"SELECT (SELECT count(*) FROM equipement.inbox WHERE type <> '{c.ETABLISSEMENT}') "
        f"+ (SELECT count(*) FROM formation.inbox WHERE type <> '{c.ETABLISSEMENT}')",
        sent,
        "declarations",
    )
    for producer, what in (("equipement", "equipment records"), ("formation", "training coverage records")):
        await _wait(
            db,
            f"SELECT count(*) FROM {producer}.publies p LEFT JOIN ressources.recus r "
            "USING (type, uai, entity, version) WHERE r.uai IS NULL",
            0,
            what,
        )
    subs = list(scenario.catalogue(etabs))
    say(f"ministère: 3 resources; GAR: {len(subs) - 3} subscriptions (each on Kafka as its own principal)")
    await _send(partners, subs)
    await _wait(db, "SELECT count(*) FROM ressources.abonnements", len(subs) - 3, "subscriptions")
    await _wait(db, "SELECT count(*) FROM ressources.outbox", 0, "alerts published")
    tail = AlertTail(platform.kafka.access_as(dashboards()[0]))
    await tail.consumer.start()
    try:
        await tail.drain(lambda: not tail.missing(c.ALERTE_LEVEE))
        say(f"alerts raised on {c.ALERTES}, by kind:\n{tail.summary(c.ALERTE_LEVEE)}")
        if missing := tail.missing(c.ALERTE_LEVEE):  # the scenario declares a case of each
            raise RuntimeError(f"the scenario raised no alert of kind {', '.join(missing)}: a bug of the platform's")
        say("one of each:\n" + "\n".join(tail.example(k) for k in c.ALERT_KINDS))
        sent = await _send(partners, scenario.renovation(etabs))
        say(f"département 035 moves the old Windows 7 rooms of its collèges to Windows 11 ({sent} lots)")
        await _wait(db, "SELECT count(*) FROM equipement.outbox", 0, "new profiles published")
        await _wait(db, "SELECT count(*) FROM ressources.outbox", 0, "alerts published")
        await tail.drain(lambda: "equipement-partiel" not in tail.missing(c.ALERTE_RESOLUE))
        say(f"alerts resolved, by kind:\n{tail.summary(c.ALERTE_RESOLUE)}")
        if "equipement-partiel" in tail.missing(c.ALERTE_RESOLUE):  # the renovation's rooms were partial
            raise RuntimeError("the renovation resolved no equipement-partiel alert: a bug of the platform's")
    finally:
        await tail.consumer.stop()
    _show_api(platform.services.ports["ressources"], next(e.uai for e in equipped if e.type == "college"))
    return tail


async def _send(partners: Partenaires, records) -> int:
    """The records as their partners send them; any refusal is the scenario's bug: said, then raised."""
    sent = await partners.send(records)
    if sent.refused:
        for declarant, event_id, code, message in sent.refused[:5]:
            say(f"the passerelle refused {event_id} of {declarant}: {code}: {message}")
        raise RuntimeError(f"{len(sent.refused)} events of the scenario refused by the passerelle")
    return sent.accepted


def _show_api(port: int, uai: str) -> None:
    base = f"http://127.0.0.1:{port}"
    say(f"the read API for dashboards (OpenAPI: {base}/docs):")
    for path in (
        "/alertes?code_departement=035&state=open&limit=2",
        f"/etablissements/{uai}",
        f"/ressources/{scenario.MANUEL}",
    ):
        with urllib.request.urlopen(base + path, timeout=10) as response:
            body = json.dumps(json.loads(response.read()), ensure_ascii=False, indent=1)
        lines = body.splitlines()
        show(
            f"\n  $ curl '{base}{path}'\n"
            + "\n".join("    " + line for line in lines[:25])
            + ("\n    …" if len(lines) > 25 else "")
            + "\n"
        )
    show(f"\n  live stream of alert changes (Server-Sent Events): curl -N '{base}/alertes/flux'\n\n")
