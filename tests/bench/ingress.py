"""Ingress: one service alone on a pre-filled topic of N valid declarations, against a raw
aiokafka consumer of the same records (issue 8's first figure).

The service's first run reads the référentiel (200 collèges) and stops, so every declaration
measured next is about a known établissement; the topic is then filled with N declarations
(lots for equipement, affectations for formation). Baseline: a raw consumer in a group of its
own that json-decodes every record and commits after each fetched batch, as fast as it can.
Measured: the service, from its group's first committed offset to its last (startup excluded).
"""

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer

import contracts as c
from harness import (
    Observer,
    Row,
    Runtime,
    Stage,
    cpu_seconds,
    machine_busy_seconds,
    peak_rss_mb,
    produce,
    running,
    wait_until,
)
from services.common.messaging.connection import kafka_options

COLLEGES = [f"0350{n:03d}" + c.uai_check_letter(f"0350{n:03d}") for n in range(200)]
T0 = datetime(2026, 9, 1, 8, tzinfo=UTC)
DECLARES = {"equipement": c.EQUIPEMENT, "formation": c.FORMATION}
TARGET = 0.2
TIMEOUT = 1800


def _event(type_: str, source: str, data: dict, n: int) -> bytes:
    return json.dumps({
        "specversion": "1.0", "id": f"bench-{n}", "source": source, "type": type_,
        "time": (T0 + timedelta(milliseconds=n)).isoformat(), "subject": data.get("uai"),
        "datacontenttype": "application/json", "data": data,
    }).encode()  # fmt: skip


def referentiel() -> list[tuple[str, bytes]]:
    return [(u, _event(c.ETABLISSEMENT, "/ministere", {
        "uai": u, "nom": f"Collège {u}", "type": "college", "statut": "public", "code_commune": "35238",
        "code_departement": "035", "code_academie": "14", "code_region": "53", "ouvert": True}, i))
        for i, u in enumerate(COLLEGES)]  # fmt: skip


def declaration(service: str, n: int) -> tuple[str, bytes]:
    uai = COLLEGES[n % len(COLLEGES)]
    if service == "equipement":
        data = {
            "uai": uai,
            "lot_id": f"lot-{n % 5000}",
            "kind": "tablette",
            "quantity": 1 + n % 30,
            "os": {"name": "iPadOS", "version": f"{12 + n % 6}.1"},
            "browsers": [{"name": "Safari", "version": "17"}],
        }
        return uai, _event(c.LOT, "/collectivites/departements/035", data, n)
    data = {"teacher_id": f"enseignant-{n % 20000:06d}", "uai": uai, "start": "2026-09-01", "end": None}
    return uai, _event(c.AFFECTATION, "/rectorats/14", data, n)


async def prefilled(runtime: Runtime, service: str, events: int) -> Stage:
    """A stage whose service knows the référentiel and whose topic holds `events` declarations."""
    stage = await runtime.stage(f"{service}-ingress")
    await produce(stage.bootstrap, stage.topic(c.REFERENTIEL), referentiel())
    async with running(stage, (service,)) as procs, Observer(stage) as observer:
        await observer.wait_drained(procs, timeout=120)
    await produce(stage.bootstrap, stage.topic(DECLARES[service]), [declaration(service, n) for n in range(events)])
    return stage


@dataclass
class Rate:
    per_second: float
    cpu_per_event: float
    """CPU seconds per event: what the consumer costs, however busy the machine is otherwise."""
    machine_busy: float
    """How busy the machine's cores were over the measure (0 to 1), every process included: a
    rate that stops growing with replicas while it is near 1 is bound by the machine."""


async def raw_rate(stage: Stage, topic: str, n: int) -> Rate:
    """A raw consumer that json-decodes and commits each fetched batch (in this process)."""
    consumer = AIOKafkaConsumer(topic, **kafka_options(stage.bootstrap), group_id=f"{stage.prefix}raw",
                                auto_offset_reset="earliest", enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        seen, start = 0, 0.0  # start: once the first batch is handled (the group has joined)
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            for records in batch.values():
                for r in records:
                    json.loads(r.value)
                seen += len(records)
            if batch:
                if not start:
                    start, cpu, counted, busy = time.perf_counter(), time.process_time(), seen, machine_busy_seconds()
                await consumer.commit()
        seconds = time.perf_counter() - start
        return Rate(n / seconds, (time.process_time() - cpu) / (n - counted), _busy_share(busy, seconds))
    finally:
        await consumer.stop()


async def consumption_rate(observer: Observer, group: str, topic: str, n: int, pids: Sequence[int]) -> Rate:
    """`group` on `topic` (its processes `pids`), from its first committed offset to its n-th:
    what the group commits is what it handled for good (the database transaction came first).
    The CPU per event is that of all its processes together."""
    first: tuple[float, float, int, float] | None = None

    def cpu() -> float:
        return sum(cpu_seconds(pid) for pid in pids)

    async def done() -> bool:
        nonlocal first
        committed = sum((await observer.committed(group, topic)).values())
        if committed and first is None:
            first = (time.monotonic(), cpu(), committed, machine_busy_seconds())
        return committed >= n

    await wait_until(done, timeout=TIMEOUT, what=f"{group} committing {n:,} records of {topic}")
    assert first is not None, "done() saw the offsets move"
    start, used, at_start, busy = first
    seconds = max(time.monotonic() - start, 1e-3)
    return Rate((n - at_start) / seconds, (cpu() - used) / (n - at_start), _busy_share(busy, seconds))


def _busy_share(busy_at_start: float, seconds: float) -> float:
    return (machine_busy_seconds() - busy_at_start) / (seconds * (os.cpu_count() or 1))


async def figure(runtime: Runtime, services: list[str], events: int) -> list[Row]:
    print(f"\n== ingress: one service alone on a pre-filled topic of {events:,} valid events")
    rows = []
    for service in services:
        stage = await prefilled(runtime, service, events)
        topic = stage.topic(DECLARES[service])
        raw = await raw_rate(stage, topic, events)
        async with running(stage, (service,)) as procs, Observer(stage) as observer:
            pid = procs.pids()[0]
            rate = await consumption_rate(observer, stage.group(service), topic, events, [pid])
            rss = peak_rss_mb(pid)
        ratio = rate.per_second / raw.per_second
        print(f"  {service:11s} {rate.per_second:9,.0f} ev/s   raw consumer {raw.per_second:9,.0f} ev/s   "
              f"ratio {ratio:6.3f}x   peak RSS {rss:5.0f} MB")  # fmt: skip
        # The rates' ratio moves with what else the machine runs (the raw consumer's share of it);
        # CPU time per event does not: its ratio says how much heavier the service's work is.
        print(f"  {'':11s} CPU per event: service {rate.cpu_per_event * 1e6:,.0f} µs, raw consumer "
              f"{raw.cpu_per_event * 1e6:,.1f} µs: {raw.cpu_per_event / rate.cpu_per_event:.3f}x")  # fmt: skip
        rows.append(
            Row(
                f"ingress {service} ({events:,} events)",
                f"{rate.per_second:,.0f} ev/s = {ratio:.3f}x",
                f"raw consumer {raw.per_second:,.0f} ev/s",
                f">= {TARGET}x raw",
                ratio >= TARGET,
            )
        )
    return rows
