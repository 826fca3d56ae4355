"""A service as a real process: bad settings stop it before it connects anywhere, a dependency
that refuses it is one line naming the variable, and its console is one format (JSON lines
when not a terminal, the libraries' lines included), one line per batch and per alert."""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import contracts as c
from contracts.internal import PROFIL_LOT, PROFILS
from deploy.local.kafka.tls import client_certificate, ensure_tls
from deploy.local.ports import free_port
from deploy.local.processes import ServiceProcesses
from helpers import TopicReader, college, eventually, send, uai
from test_equipement import lot
from test_ressources import abonnement, profil, publiee

RETRIED_SECONDS = 30


def lines_of(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []


def events_of(log: Path, event: str) -> list[dict]:
    return [e for e in map(json.loads, lines_of(log)) if e.get("event") == event]


def service(name: str, env: dict[str, str], tmp_path: Path) -> ServiceProcesses:
    """One service whose stdout and stderr go to tmp_path/<name>.log (not a terminal)."""
    return ServiceProcesses({"LOG_FORMAT": "auto", "OUTBOX_POLL_MS": "200", **env}, log_dir=tmp_path, names=(name,))


def test_a_service_with_a_bad_setting_exits_2_with_one_line_naming_the_variable_before_connecting():
    nowhere = free_port()  # nothing listens: a service that tried to connect would wait 120 s
    env = {
        **os.environ,
        "BATCH_MAX_RECORDS": "abc",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{nowhere}",
        "DATABASE_URL": f"postgresql://feo:s3cret@127.0.0.1:{nowhere}/feo",
        "INBOX_RETENTION_DAY": "7",  # misspelled: said first, by its name alone (review s72 #3)
        "POSTGRESQL_SERVICE_HOST": "10.0.0.1",  # Kubernetes' variables of a Service named postgresql
        "POSTGRESQL_PORT": "tcp://10.0.0.1:5432",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "services.formation"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "INBOX_RETENTION_DAY: not a setting, ignored (did you mean INBOX_RETENTION_DAYS?)",
        "BATCH_MAX_RECORDS: must be an integer ≥ 1 (got 'abc')",
    ]
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_tls_files_that_cannot_be_read_exit_2_with_one_line_naming_them_not_quoting_them(tmp_path, protocol):
    """The broker's client is made with them before anything connects: it was a traceback, exit
    1. Over SSL a key that is not one (the CA and the certificate fine); over SASL_SSL a CA file
    that is not there."""
    nowhere = free_port()
    tls = ensure_tls(tmp_path / "ca")
    cert_file, key_file = client_certificate(tls, "formation", tmp_path)
    key_file.write_text("-----BEGIN PRIVATE KEY-----\nnot-a-key\n-----END PRIVATE KEY-----\n")
    env = {
        **os.environ,
        "KAFKA_SECURITY_PROTOCOL": protocol,
        "KAFKA_CERT_FILE": str(cert_file),
        "KAFKA_KEY_FILE": str(key_file),
        "KAFKA_CA_FILE": str(tls.ca if protocol == "SSL" else tmp_path / "absent-ca.pem"),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{nowhere}",
        "DATABASE_URL": f"postgresql://feo:s3cret@127.0.0.1:{nowhere}/feo",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.formation"], env=env, capture_output=True, text=True, timeout=60
    )
    variables = "KAFKA_CERT_FILE, KAFKA_KEY_FILE, KAFKA_CA_FILE" if protocol == "SSL" else "KAFKA_CA_FILE"
    assert (done.returncode, done.stdout) == (2, "")
    [line] = done.stderr.splitlines()
    assert line.startswith(f"{variables}: the TLS files given cannot be read as PEM (")
    assert str(tmp_path) not in line and "not-a-key" not in line


def test_a_database_that_refuses_the_service_is_one_line_naming_database_url_without_password_or_traceback(
    postgres, kafka, tmp_path
):
    url = urlsplit(postgres.url("feo_no_such_database"))
    refused = url._replace(netloc=f"{url.username}:s3cret@{url.hostname}:{url.port}").geturl()
    procs = service(
        "formation", {"DATABASE_URL": refused, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers}, tmp_path
    )
    procs.start()
    try:
        started = time.monotonic()
        assert procs.wait_exit("formation", RETRIED_SECONDS) == 3
        assert time.monotonic() - started < RETRIED_SECONDS / 2, "not retried like an unreachable server"
    finally:
        procs.stop()
    log = tmp_path / "formation.log"
    [line] = events_of(log, "startup.refused")
    assert line["variable"] == "DATABASE_URL" and line["level"] == "error"
    assert line["waiting_for"] == f"PostgreSQL at {refused.replace('s3cret', '***')}"
    text = log.read_text()
    assert "s3cret" not in text and "Traceback" not in text
    assert all(json.loads(line) for line in lines_of(log))


async def test_off_a_terminal_every_line_is_json_library_lines_included_and_a_batch_is_one_line(
    kafka, database_url, topic_prefix, tmp_path
):
    colleges = [college(uai(f"03540{i:02d}")) for i in range(20)]
    # One key, one partition: the service finds the 20 records there and takes them as one batch.
    await send(kafka.bootstrap_servers, topic_prefix + c.REFERENTIEL, [("same-key", e) for e in colleges])
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DATABASE_URL": database_url,
        "TOPIC_PREFIX": topic_prefix,
        "LIBRARY_LOG_LEVEL": "INFO",
    }
    procs = service("equipement", env, tmp_path)
    log = tmp_path / "equipement.log"
    procs.start()
    try:
        procs.wait_healthy()

        async def applied():
            return events_of(log, "batch.applied")

        await eventually(applied, timeout=60, what="the batch applied")
    finally:
        procs.stop()  # FastStream's and uvicorn's shutdown lines too

    text = log.read_text()
    assert "\x1b[" not in text, "no colour codes"
    lines = [json.loads(line) for line in lines_of(log)]  # each line one JSON object
    loggers = {line["logger"].split(".")[0] for line in lines if "logger" in line}
    assert {"faststream", "aiokafka", "uvicorn"} <= loggers
    assert all(line["service"] == "equipement" and "timestamp" in line for line in lines)
    [batch] = [line for line in lines if line["event"] == "batch.applied"]
    assert batch["level"] == "info"
    assert {k: batch[k] for k in ("records", "applied", "stale", "duplicates", "refused")} == {
        "records": 20,
        "applied": 20,
        "stale": 0,
        "duplicates": 0,
        "refused": {},
    }
    assert list(batch["partitions"]) == [topic_prefix + c.REFERENTIEL]
    assert not [line for line in lines if line["event"] == "event.applied"], "per-event lines are DEBUG"


async def test_an_alert_raised_is_one_debug_line_in_an_info_summary_and_a_default_start_says_nothing_of_its_libraries(
    kafka, database_url, topic_prefix, tmp_path
):
    where = uai("0354101")
    bootstrap = kafka.bootstrap_servers
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": database_url,
        "TOPIC_PREFIX": topic_prefix,
        "LOG_LEVEL": "DEBUG",  # the service's own per-event lines; the libraries stay at WARNING
    }
    procs = service("ressources", env, tmp_path)
    log = tmp_path / "ressources.log"
    procs.start()
    try:
        procs.wait_healthy()
        async with TopicReader(bootstrap, topic_prefix + c.ALERTES) as alerts:
            await send(bootstrap, topic_prefix + c.REFERENTIEL, [(where, college(where))])
            await send(bootstrap, topic_prefix + PROFILS, [profil(where, 1, "12.5")])

            async def stored():
                applied = {e["event_type"] for e in events_of(log, "event.applied")}
                return {c.ETABLISSEMENT, PROFIL_LOT} <= applied

            # The profile too (another topic): evaluated before it, the pair's alert is raised
            # then updated, two summaries (audit helper-189 #11).
            await eventually(stored, timeout=60, what="the référentiel entry and the profile stored")
            await send(bootstrap, topic_prefix + c.CATALOGUE, [("rid", publiee(1)), (where, abonnement(where, 1))])
            [levee] = await alerts.wait_for(lambda rs: len(rs) == 1, timeout=60, what="alerte-levee")
    finally:
        procs.stop()

    lines = [json.loads(line) for line in lines_of(log)]
    [raised] = [line for line in lines if line["event"] == "alert.raised"]
    alert = json.loads(levee.value)["data"]
    assert raised["level"] == "debug"
    [summary] = [line for line in lines if line["event"] == "alerts.evaluated"]
    assert summary["level"] == "info"
    assert {k: summary[k] for k in ("pairs", "raised", "resolved", "updated")} == {
        "pairs": 1,
        "raised": 1,
        "resolved": 0,
        "updated": 0,
    }
    assert {k: raised[k] for k in ("alert_id", "kind", "uai", "resource_id")} == {
        k: alert[k] for k in ("alert_id", "kind", "uai", "resource_id")
    }
    [published] = [
        line for line in lines if line["event"] == "event.applied" and line["event_type"] == c.RESSOURCE_PUBLIEE
    ]
    assert published["resource_id"] == alert["resource_id"] and "uai" not in published
    assert not [line for line in lines if "logger" in line], "libraries quiet at their default level"
    assert not [line for line in lines if line["level"] in ("warning", "error", "critical")]


async def test_a_batch_of_refused_records_is_one_warning_each_record_a_debug_line(
    kafka, database_url, topic_prefix, tmp_path
):
    """A broken feed was a warning per record: 20 lines here, 100,000 for a backlog of them."""
    where = uai("0354100")
    # One key, one partition: one batch. Each lot names an établissement the référentiel lacks.
    lots = [("same-key", lot(where, f"L{i}", 30, 1)) for i in range(20)]
    await send(kafka.bootstrap_servers, topic_prefix + c.EQUIPEMENT, lots)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DATABASE_URL": database_url,
        "TOPIC_PREFIX": topic_prefix,
    }
    procs = service("equipement", env, tmp_path)
    log = tmp_path / "equipement.log"
    procs.start()
    try:
        procs.wait_healthy()
        [warned] = await eventually(lambda: asyncio.sleep(0, events_of(log, "events.rejected")), what="the warning")
    finally:
        procs.stop()
    assert warned["level"] == "warning" and warned["refused"] == {"uai-inconnu": 20}, warned
    assert warned["first"]["topic"] == topic_prefix + c.EQUIPEMENT and warned["first"]["reason"] == "uai-inconnu"
    assert events_of(log, "event.rejected") == [], "per-record lines are DEBUG"
    [batch] = events_of(log, "batch.applied")
    assert batch["refused"] == {"uai-inconnu": 20}
