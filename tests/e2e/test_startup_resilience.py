"""A service started before its dependencies waits for them and then works; one whose
dependencies never come, or go away for good, exits non-zero so that a supervisor restarts
it; `./dev up`'s supervisor restarts a real service that died (real processes throughout)."""

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request

import asyncpg
import pytest

import contracts as c
from contracts import Etablissement
from deploy import acl
from deploy.local.kafka import LocalKafka
from deploy.local.ports import free_port
from deploy.local.processes import ServiceProcesses
from deploy.referentiel.publish import publish_etablissements
from deploy.topic_admin import create_topics
from deploy.topology import platform_topics
from helpers import college, eventually, uai

pytestmark = pytest.mark.e2e


def log_events(path, event: str) -> list[dict]:
    """The service's JSON log lines named `event`."""
    if not path.exists():
        return []
    lines = (line for line in path.read_text(errors="replace").splitlines() if line.startswith("{"))
    return [e for e in map(json.loads, lines) if e.get("event") == event]


async def referentiel_applied(kafka, database_url: str, prefix: str, code: str, timeout: float = 30) -> None:
    """The ministère publishes the collège `code`; until equipement has stored it."""
    etab = Etablissement.model_validate(college(code)["data"])
    ministere = kafka.access_as("ministere")
    await publish_etablissements(kafka.bootstrap_servers, [etab], prefix + c.REFERENTIEL, access=ministere)
    conn = await asyncpg.connect(database_url)
    try:
        await eventually(
            lambda: conn.fetchval("SELECT count(*) = 1 FROM equipement.etablissements WHERE uai = $1", code),
            timeout=timeout,
            what="the référentiel entry applied",
        )
    finally:
        await conn.close()


def wait_until(condition, what: str, timeout: float, procs: ServiceProcesses | None = None, name: str = ""):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        if procs is not None:
            assert procs.process(name).poll() is None, f"{name} exited with code {procs.process(name).returncode}"
        time.sleep(0.1)
    return result


async def test_a_service_started_before_kafka_consumes_once_it_is_up_and_exits_once_it_is_gone(
    database_url, unique, tmp_path, monkeypatch
):
    port = free_port()
    prefix = f"t{unique}."
    # Formatted, given its topics and ACLs, and stopped beforehand, as a deployment's broker is:
    # the service starts knowing its principal's password (its idempotent producer is refused
    # without its ACLs), and this test's clients and the service reach this broker, not the
    # session's.
    kafka = LocalKafka(tmp_path / "late-kafka", port=port)
    kafka.start()
    try:
        for variable, value in kafka.access.environ().items():
            monkeypatch.setenv(variable, value)
        await create_topics(kafka.bootstrap_servers, platform_topics(prefix))
        acl.apply(kafka.access, prefix)
    finally:  # this broker's JVM not left running when its set-up fails
        kafka.stop()
    procs = ServiceProcesses(
        {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
            "DATABASE_URL": database_url,
            "TOPIC_PREFIX": prefix,
            "OUTBOX_POLL_MS": "200",
            "LOG_FORMAT": "json",
            "UNHEALTHY_EXIT_SECONDS": "3",
        },
        log_dir=tmp_path,
        names=("equipement",),
        credentials=kafka.credentials,
    )
    log = tmp_path / "equipement.log"
    procs.start()
    try:
        waits = wait_until(
            lambda: len(log_events(log, "startup.waiting")) >= 3 and log_events(log, "startup.waiting"),
            "three attempts to reach Kafka",
            30,
            procs,
            "equipement",
        )
        assert {w["waiting_for"] for w in waits} == {f"Kafka at 127.0.0.1:{port}"}
        assert [w["retry_in_s"] for w in waits[:3]] == [0.5, 1.0, 2.0]  # then 4, then 5 (the cap)
        assert not procs.health("equipement")

        kafka.start()
        up = time.monotonic()
        procs.wait_healthy(timeout=60)
        print(f"equipement healthy {time.monotonic() - up:.1f} s after the broker served metadata")
        await referentiel_applied(kafka, database_url, prefix, uai("0352001"), timeout=60)

        kafka.stop()
        gone = time.monotonic()
        wait_until(lambda: not procs.health("equipement"), "/health says 503", 30, procs, "equipement")
        assert await asyncio.to_thread(procs.wait_exit, "equipement", 60) == 1
        print(f"equipement exited {time.monotonic() - gone:.1f} s after the broker stopped")
        [exiting] = log_events(log, "service.exiting")
        assert exiting["reason"].startswith("Kafka unreachable for")
    finally:
        procs.stop()
        kafka.stop()


EXIT_AFTER = 5
"""UNHEALTHY_EXIT_SECONDS in the test of who stays while Kafka is away."""


def _post_event(port: int, token: str, event: dict) -> tuple[int, dict, dict]:
    """The passerelle's answer to one event posted: its status, headers and JSON body."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/evenements",
        data=json.dumps(event).encode(),
        headers={"content-type": "application/cloudevents+json", "authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read())


def _get(port: int, path: str) -> tuple[int, dict]:
    """The service's answer to GET `path`: its status and JSON body (an error status too)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def test_while_kafka_is_away_ressources_readers_and_the_passerelles_partners_are_served_and_a_consumer_is_not(
    database_url, unique, tmp_path, monkeypatch, identite
):
    """Kubernetes sends requests to ready pods only (`/readyz`): ressources' read API answers from
    PostgreSQL, so Kafka away keeps it in the Service (its /health says 503 all the same); the
    passerelle answers partners itself, 503 with Retry-After (taken out of the Service, they met
    the ingress's error page); equipement, which serves nothing without Kafka, leaves it. And past
    UNHEALTHY_EXIT_SECONDS only equipement exits: the other two, restarted, would serve nobody
    until Kafka is back (ops audit s68 #2, #3)."""
    port = free_port()
    prefix = f"t{unique}."
    kafka = LocalKafka(tmp_path / "own-kafka", port=port)
    kafka.start()
    procs = None
    try:
        for variable, value in kafka.access.environ().items():
            monkeypatch.setenv(variable, value)
        await create_topics(kafka.bootstrap_servers, platform_topics(prefix))
        acl.apply(kafka.access, prefix)
        procs = ServiceProcesses(
            {
                "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
                "DATABASE_URL": database_url,
                "TOPIC_PREFIX": prefix,
                "LOG_FORMAT": "json",
                "UNHEALTHY_EXIT_SECONDS": str(EXIT_AFTER),
                "JWKS_FILE": str(identite.jwks_path),
                "PASSERELLE_WRITE_TIMEOUT_SECONDS": "2",
            },
            log_dir=tmp_path,
            names=("equipement", "ressources", "passerelle"),
            credentials=kafka.credentials,
        )
        procs.start()
        procs.wait_healthy(timeout=90)
        ressources, equipement, passerelle = (procs.ports[n] for n in ("ressources", "equipement", "passerelle"))
        assert _get(ressources, "/readyz")[0] == _get(equipement, "/readyz")[0] == _get(passerelle, "/readyz")[0] == 200

        kafka.stop()
        gone = time.monotonic()
        wait_until(lambda: not procs.health("ressources"), "ressources' /health says 503", 30, procs, "ressources")
        wait_until(lambda: _get(equipement, "/readyz")[0] == 503, "equipement not ready", 30, procs, "equipement")
        status, body = _get(ressources, "/readyz")
        assert (status, body["ready"], body["database"]) == (200, True, True), body
        assert _get(ressources, "/health")[1]["kafka"] is False
        status, alertes = _get(ressources, "/alertes?limit=1")
        assert status == 200 and alertes["total"] == 0, alertes
        assert _get(passerelle, "/readyz")[0] == 200 and not procs.health("passerelle")
        status, headers, answer = _post_event(passerelle, identite.jeton("/ministere"), college(uai("0352009")))
        assert status == 503 and headers["retry-after"], (status, answer)

        assert await asyncio.to_thread(procs.wait_exit, "equipement", 60) == 1
        # The others' watchdogs probe as often: still there twice the bound after the loss.
        while time.monotonic() - gone < 2 * EXIT_AFTER:
            for name in ("ressources", "passerelle"):
                assert procs.process(name).poll() is None, f"{name} exited"
            await asyncio.sleep(0.5)
        assert _get(ressources, "/alertes?limit=1")[0] == _get(passerelle, "/readyz")[0] == 200
    finally:
        if procs is not None:
            procs.stop()
        kafka.stop()


def test_a_service_whose_kafka_never_comes_exits_non_zero_after_the_startup_timeout(database_url, tmp_path):
    procs = ServiceProcesses(
        {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "DATABASE_URL": database_url,
            "LOG_FORMAT": "json",
            "STARTUP_TIMEOUT_SECONDS": "4",
        },
        log_dir=tmp_path,
        names=("formation",),
    )
    started = time.monotonic()
    procs.start()
    try:
        assert procs.wait_exit("formation", 60) != 0
        took = time.monotonic() - started
        assert 4 <= took < 30, took
        [gave_up] = log_events(tmp_path / "formation.log", "startup.gave_up")
        assert gave_up["waiting_for"].startswith("Kafka at")
    finally:
        procs.stop()


def test_a_service_waits_for_postgresql_without_showing_its_password(kafka, tmp_path):
    url = f"postgresql://feo:s3cr%40t@127.0.0.1:{free_port()}/feo"
    procs = ServiceProcesses(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "DATABASE_URL": url,
            "LOG_FORMAT": "json",
            "STARTUP_TIMEOUT_SECONDS": "3",
        },
        log_dir=tmp_path,
        names=("ressources",),
        credentials=kafka.credentials,
    )
    procs.start()
    try:
        assert procs.wait_exit("ressources", 60) != 0
        log = (tmp_path / "ressources.log").read_text()
        waits = log_events(tmp_path / "ressources.log", "startup.waiting")
        assert waits and waits[0]["waiting_for"] == f"PostgreSQL at {url.replace('s3cr%40t', '***')}"
        assert "s3cr" not in log
    finally:
        procs.stop()


def test_a_service_asked_to_stop_while_it_waits_stops_at_once(database_url, tmp_path):
    # Its start-up and its stop's grace given 120 s: what a wait through either would take, far
    # beyond the bound below.
    procs = ServiceProcesses(
        {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "DATABASE_URL": database_url,
            "LOG_FORMAT": "json",
            "STARTUP_TIMEOUT_SECONDS": "120",
            "SHUTDOWN_GRACE_SECONDS": "120",
        },
        log_dir=tmp_path,
        names=("formation",),
    )
    procs.start()
    try:
        wait_until(
            lambda: log_events(tmp_path / "formation.log", "startup.waiting"),
            "waiting for Kafka",
            30,
            procs,
            "formation",
        )
        proc = procs.process("formation")
        asked = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        assert time.monotonic() - asked < 30  # at once: not at the start-up's timeout nor the grace's end
    finally:
        procs.stop()


def test_the_supervisor_restarts_a_real_service_that_died(kafka, database_url, topic_prefix, tmp_path):
    said: list[str] = []
    procs = ServiceProcesses(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "DATABASE_URL": database_url,
            "TOPIC_PREFIX": topic_prefix,
            "LOG_FORMAT": "json",
        },
        log_dir=tmp_path,
        names=("equipement",),
        supervise=True,
        backoff=(0.5, 5),
        announce=said.append,
        credentials=kafka.credentials,
    )
    procs.start()
    try:
        procs.wait_healthy()
        [first] = procs.pids()
        os.killpg(first, signal.SIGKILL)  # a crash, not procs.kill(): nobody asked for it
        second = wait_until(
            lambda: procs.pids() not in ([], [first]) and procs.health("equipement") and procs.pids(),
            "a healthy restart",
            60,
        )
        assert said[0] == "equipement was killed by SIGKILL; restarting in 0.5 s (attempt 1)"
    finally:
        procs.stop()
    for pid in (first, *second):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_service_started_before_its_topics_waits_for_them_then_consumes_at_once(
    kafka, database_url, own_prefix, tmp_path
):
    """Started before its topics exist (a first install, Strimzi's Topic Operator creating them as
    the services start; or a mistyped TOPIC_PREFIX, whose topics never come), it answered /health
    200 and said nothing. It waits for them now, naming them and the setting, then consumes."""
    prefix = own_prefix  # its topics and ACLs deleted at the end
    acl.apply(kafka.access, prefix)  # its principal's rights, and no topic yet
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "DATABASE_URL": database_url, "TOPIC_PREFIX": prefix}
    procs = ServiceProcesses(
        env | {"LOG_FORMAT": "json"}, log_dir=tmp_path, names=("equipement",), credentials=kafka.credentials
    )
    log = tmp_path / "equipement.log"
    procs.start()
    try:
        waits = wait_until(lambda: log_events(log, "startup.waiting"), "a wait for the topics", 60, procs, "equipement")
        assert waits[0]["variable"] == "TOPIC_PREFIX", waits[0]
        assert prefix + c.REFERENTIEL in waits[0]["error"] and prefix + c.EQUIPEMENT in waits[0]["error"]
        await create_topics(kafka.bootstrap_servers, platform_topics(prefix, partitions=2))
        await asyncio.to_thread(procs.wait_healthy, 60)
        await referentiel_applied(kafka, database_url, prefix, uai("0352002"))
    finally:
        procs.stop()
