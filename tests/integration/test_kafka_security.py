"""The session's broker is secured as CONTRACTS.md (Identity) says: SASL/SCRAM-SHA-512 over TLS
only, and each principal may do exactly what its ACLs allow (deploy/acl.py), on this test's
topics; and, on a listener of its own, clients named by their certificate (Kubernetes' way for
the platform's own pods, deploy/k8s), under the same ACLs. The expected rights are written out
here, not derived from deploy/acl.py."""

import asyncio
import dataclasses
import gc
import json
import ssl
import time
from pathlib import Path

import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)
from aiokafka.protocol.metadata import MetadataRequest

import contracts as c
from contracts.internal import COUVERTURES, PROFILS
from deploy.identite import IdentiteLocale
from deploy.local.kafka import KafkaRuntimeError, LocalKafka
from deploy.local.kafka.tls import client_certificate, ensure_tls
from deploy.local.processes import ServiceProcesses
from deploy.topology import platform_topics
from helpers import eventually
from services.common.messaging import connection
from services.common.messaging.connection import KafkaAccess, TlsFiles, reload_tls_files
from services.common.runtime.startup import (
    KAFKA_UNAVAILABLE,
    DependencyRefused,
    StartupTimeout,
    kafka_answers,
    wait_for,
)

DEADLINE = 20  # seconds: a refused client must fail, not hang
ALL_TOPICS = [t.name for t in platform_topics()]
WRITES = {
    "formation": {COUVERTURES, c.dlq(c.FORMATION)},
    "equipement": {PROFILS, c.dlq(c.EQUIPEMENT)},
    "ressources": {
        c.ALERTES,
        c.ALERTES_ETAT,
        c.dlq(c.REFERENTIEL),
        c.dlq(c.CATALOGUE),
        c.dlq(PROFILS),
        c.dlq(COUVERTURES),
    },
    "passerelle": {c.REFERENTIEL, c.FORMATION, c.EQUIPEMENT, c.CATALOGUE},  # HTTP ingestion, for any partner
    "ministere": {c.REFERENTIEL, c.CATALOGUE},
    "gar": {c.CATALOGUE},
    "tableau-de-bord": set(),
}


async def _writable(access: KafkaAccess, prefix: str) -> set[str]:
    """The platform topics `access` may write: each one tried, a refusal being exactly
    TopicAuthorizationFailedError (any other error fails the test). Not idempotent: a principal
    that may write no topic at all is refused an idempotent producer's id before any topic."""
    producer = AIOKafkaProducer(**access.aiokafka(), acks="all")
    writable = set()
    try:
        async with asyncio.timeout(60):
            await producer.start()
            for topic in ALL_TOPICS:
                try:
                    await producer.send_and_wait(prefix + topic, b"{}", key=b"k")
                except TopicAuthorizationFailedError:
                    continue
                writable.add(topic)
    finally:  # a refused start too (as `_read`)
        await producer.stop()
    return writable


async def _read(access: KafkaAccess, topic: str, group: str | None) -> None:
    """Read `topic`, in `group` if any: a refusal raises. The consumer stopped either way (its
    start refused leaves its client's tasks running in the session's event loop otherwise)."""
    consumer = AIOKafkaConsumer(topic, **access.aiokafka(), group_id=group, auto_offset_reset="earliest")
    try:
        async with asyncio.timeout(DEADLINE):
            await consumer.start()
            await consumer.getmany(timeout_ms=1000)
            assert consumer.assignment(), f"{access.username} got no partition of {topic}"
    finally:
        await consumer.stop()


async def test_a_client_without_sasl_and_tls_cannot_connect(kafka) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, request_timeout_ms=5000)
    with pytest.raises(KafkaConnectionError):
        async with asyncio.timeout(DEADLINE):
            await admin.start()
    await admin.close()


async def test_a_client_that_does_not_trust_the_ca_cannot_connect(kafka) -> None:
    host, port = kafka.bootstrap_servers.split(":")
    options = {**kafka.access.aiokafka(), "ssl_context": ssl.create_default_context()}  # the system's CAs
    del options["bootstrap_servers"]
    with pytest.raises(ssl.SSLCertVerificationError):
        async with asyncio.timeout(DEADLINE):
            await create_conn(host, int(port), **options)


async def test_a_wrong_password_is_refused(kafka) -> None:
    host, port = kafka.bootstrap_servers.split(":")
    options = kafka.access.as_principal("ministere", "not-the-password").aiokafka()
    del options["bootstrap_servers"]
    with pytest.raises(SaslAuthenticationFailed):
        async with asyncio.timeout(DEADLINE):
            await create_conn(host, int(port), **options)


@pytest.mark.parametrize("principal", sorted(WRITES))
async def test_each_principal_writes_exactly_its_topics(kafka, topic_prefix, principal) -> None:
    assert await _writable(kafka.access_as(principal), topic_prefix) == WRITES[principal]


async def test_the_dashboard_reads_the_alerts_in_its_own_groups_only(kafka, topic_prefix) -> None:
    dashboard = kafka.access_as("tableau-de-bord")
    await _read(dashboard, topic_prefix + c.ALERTES, group=f"{topic_prefix}tableau-de-bord-academie-14")
    await _read(dashboard, topic_prefix + c.ALERTES_ETAT, group=None)
    with pytest.raises(GroupAuthorizationFailedError):
        await _read(dashboard, topic_prefix + c.ALERTES, group=f"{topic_prefix}ressources")


async def test_a_second_dashboard_reads_in_its_own_groups_and_not_in_the_others(
    kafka, topic_prefix, monkeypatch
) -> None:
    """Each dashboard its own principal and prefix (KAFKA_DASHBOARDS): neither can join or move
    the other's groups. The second one's password added to the running broker, as a start does."""
    from deploy import acl

    monkeypatch.setenv("KAFKA_DASHBOARDS", "tableau-de-bord,pilotage")
    kafka.sync_scram_users(everyone=False)
    try:
        acl.apply(kafka.access, topic_prefix)
        pilotage, tableau = kafka.access_as("pilotage"), kafka.access_as("tableau-de-bord")
        await _read(pilotage, topic_prefix + c.ALERTES, group=f"{topic_prefix}pilotage-historique")
        with pytest.raises(GroupAuthorizationFailedError):
            await _read(pilotage, topic_prefix + c.ALERTES, group=f"{topic_prefix}tableau-de-bord-academie-14")
        with pytest.raises(GroupAuthorizationFailedError):
            await _read(tableau, topic_prefix + c.ALERTES, group=f"{topic_prefix}pilotage-historique")
        with pytest.raises(TopicAuthorizationFailedError):
            await _read(pilotage, topic_prefix + c.EQUIPEMENT, group=None)
    finally:  # the session's broker without pilotage again: its password and its ACLs revoked
        monkeypatch.setenv("KAFKA_DASHBOARDS", "tableau-de-bord")
        kafka.sync_scram_users(everyone=False)


async def test_a_dashboard_taken_out_of_kafka_dashboards_is_revoked_at_the_next_start(
    kafka, topic_prefix, monkeypatch
) -> None:
    """Its password no longer authenticates, no ACL names it, the credentials file forgets it;
    the dashboard left keeps reading. Not while KAFKA_DASHBOARDS is unset (a shell that lost the
    variable): it is then kept. As a start does it (LocalKafka.sync_scram_users)."""
    from deploy import acl
    from deploy.local.kafka.credentials import Credentials

    monkeypatch.setenv("KAFKA_DASHBOARDS", "tableau-de-bord,pilotage")
    kafka.sync_scram_users(everyone=False)
    acl.apply(kafka.access, topic_prefix)
    pilotage = kafka.access_as("pilotage")
    await _read(pilotage, topic_prefix + c.ALERTES, group=f"{topic_prefix}pilotage")
    assert _acls_of(kafka, "pilotage")

    monkeypatch.delenv("KAFKA_DASHBOARDS")
    kafka.sync_scram_users(everyone=False)
    assert (kafka.revoked, kafka.unlisted) == ((), ("pilotage",))
    await _read(pilotage, topic_prefix + c.ALERTES, group=f"{topic_prefix}pilotage")

    monkeypatch.setenv("KAFKA_DASHBOARDS", "tableau-de-bord")
    kafka.sync_scram_users(everyone=False)

    assert (kafka.revoked, kafka.unlisted) == (("pilotage",), ())
    assert not _acls_of(kafka, "pilotage")
    host, port = kafka.bootstrap_servers.split(":")
    options = pilotage.aiokafka()
    del options["bootstrap_servers"]
    with pytest.raises(SaslAuthenticationFailed):
        async with asyncio.timeout(DEADLINE):
            await create_conn(host, int(port), **options)
    kept = Credentials.load(kafka.credentials.path.parent)
    assert kept is not None and "pilotage" not in kept.passwords and "tableau-de-bord" in kept.passwords
    await _read(kafka.access_as("tableau-de-bord"), topic_prefix + c.ALERTES, group=f"{topic_prefix}tableau-de-bord")
    kafka.sync_scram_users(everyone=False)  # nothing left to revoke
    assert kafka.revoked == ()


async def test_a_grant_the_code_no_longer_makes_is_deleted_by_an_exact_apply(kafka, topic_prefix) -> None:
    """The local broker kept every ACL it was ever given (applying only adds): a grant taken out
    of the code stayed in force on a kept data directory, where Strimzi drops it. `./dev up`
    applies exactly: the principal's other ACLs on its broker are deleted, those named with
    another prefix (another test's, on this shared broker) are not."""
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, KafkaAdminClient, ResourcePattern, ResourceType
    from kafka.admin import ACLResourcePatternType as Pattern

    from deploy import acl

    def grant(topic: str) -> ACL:
        pattern = ResourcePattern(ResourceType.TOPIC, topic, Pattern.LITERAL)
        return ACL("User:gar", "*", ACLOperation.READ, ACLPermissionType.ALLOW, pattern)

    ours, other = grant(topic_prefix + c.ALERTES), grant("another-prefix." + c.ALERTES)
    admin = KafkaAdminClient(**kafka.access.kafka_python(), client_id="test-acl")
    try:
        assert not admin.create_acls([ours, other])["failed"]
        await eventually(lambda: asyncio.sleep(0, ours in _acls_of(kafka, "gar")), what="the stray grant")
        await _read(kafka.access_as("gar"), topic_prefix + c.ALERTES, group=None)  # in force
        assert acl.apply(kafka.access, topic_prefix, exact=True) == 1
        held = _acls_of(kafka, "gar")
        assert ours not in held and other in held
        assert {a for a in held if a.resource_pattern.resource_name.startswith(topic_prefix)} == {
            b.acl() for b in acl.bindings(topic_prefix) if b.principal == "gar"
        }
        with pytest.raises(TopicAuthorizationFailedError):
            await _read(kafka.access_as("gar"), topic_prefix + c.ALERTES, group=None)
        assert acl.apply(kafka.access, topic_prefix, exact=True) == 0, "nothing more to delete"
    finally:
        admin.delete_acls([acl.exact_filter(other)])
        admin.close()


def test_deleting_a_scram_user_already_gone_is_no_error(kafka) -> None:
    """A start interrupted after deleting a revoked principal's SCRAM user deletes it again."""
    from deploy.local.kafka.readiness import delete_scram_users

    delete_scram_users(kafka.access, ["never-a-principal"])


def _acls_of(kafka, principal: str) -> list:
    from kafka.admin import KafkaAdminClient

    from deploy.acl import acl_filter

    admin = KafkaAdminClient(**kafka.access.kafka_python(), client_id="test-acl")
    try:
        acls, _ = admin.describe_acls(acl_filter(f"User:{principal}"))
    finally:
        admin.close()
    return acls


@pytest.mark.parametrize(
    ("principal", "topic"),
    [
        ("tableau-de-bord", c.FORMATION),
        ("tableau-de-bord", c.EQUIPEMENT),
        ("tableau-de-bord", c.dlq(c.EQUIPEMENT)),
        ("tableau-de-bord", PROFILS),
        ("ministere", c.FORMATION),
        ("ministere", c.dlq(c.REFERENTIEL)),
        ("gar", c.dlq(c.CATALOGUE)),
        ("equipement", c.FORMATION),
    ],
)
async def test_declarations_dlqs_and_internal_topics_are_not_readable_by_others(
    kafka, topic_prefix, principal, topic
) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await _read(kafka.access_as(principal), topic_prefix + topic, group=None)


async def test_a_service_reads_its_inputs_in_its_group(kafka, topic_prefix) -> None:
    await _read(kafka.access_as("ressources"), topic_prefix + COUVERTURES, group=f"{topic_prefix}ressources")
    with pytest.raises(GroupAuthorizationFailedError):
        await _read(kafka.access_as("ressources"), topic_prefix + COUVERTURES, group=f"{topic_prefix}formation")


def test_the_runtime_runs_each_service_as_its_own_principal(kafka, database_url, topic_prefix, tmp_path) -> None:
    (identite := IdentiteLocale(tmp_path / "identite")).ensure()  # the passerelle's token keys
    env = {"DATABASE_URL": database_url, "TOPIC_PREFIX": topic_prefix, "LOG_FORMAT": "json"}
    env["JWKS_FILE"] = str(identite.jwks_path)
    services = ServiceProcesses(env, log_dir=tmp_path, credentials=kafka.credentials)
    try:
        services.start()
        services.wait_healthy()  # consuming and publishing within their ACLs
        for name in services.names:
            given = psutil.Process(services.process(name).pid).environ()
            assert (given["KAFKA_USERNAME"], given["KAFKA_PASSWORD"]) == (name, kafka.credentials.password(name))
    finally:
        services.stop()


def test_a_storage_formatted_before_kafka_was_secured_is_refused(tmp_path) -> None:
    (tmp_path / "kafka-logs").mkdir()
    (tmp_path / "kafka-logs" / "meta.properties").write_text("cluster.id=old\nnode.id=1\n")
    with pytest.raises(KafkaRuntimeError) as refused:
        LocalKafka(tmp_path).start()
    assert str(refused.value) == (
        f"the Kafka storage in {tmp_path.resolve()} was made before Kafka was secured (it has no credentials.json); "
        "start with --fresh"
    )


async def test_a_principal_added_since_the_storage_was_formatted_gets_its_user_at_the_next_start(tmp_path) -> None:
    broker = LocalKafka(tmp_path)
    with broker:
        pass
    kept = json.loads((tmp_path / "credentials.json").read_text())
    (tmp_path / "credentials.json").write_text(json.dumps({k: v for k, v in kept.items() if k != "gar"}))
    with broker:
        assert broker.credentials is not None
        assert broker.credentials.password("gar") != kept["gar"]
        # Authenticated (a refused password fails the connection); no ACLs here, so every topic is refused.
        assert await _writable(broker.access_as("gar"), "") == set()
    assert json.loads((tmp_path / "credentials.json").read_text())["gar"] == broker.credentials.password("gar")


async def test_an_untrusted_broker_certificate_stops_a_service_at_once_naming_its_setting(kafka, tmp_path) -> None:
    """aiokafka reports a certificate it does not trust as an unreachable broker: the startup
    probe must not wait its whole deadline for it, and must name the setting."""
    access = dataclasses.replace(kafka.access_as("formation"), ca_file=str(ensure_tls(tmp_path / "another-ca").ca))
    started = time.monotonic()
    with pytest.raises(DependencyRefused) as refused:
        await _start_probe(access, seconds=120)
    assert time.monotonic() - started < DEADLINE, "refused at once, not retried until the deadline"
    assert str(refused.value).endswith("(check KAFKA_CA_FILE)")


async def test_a_refused_password_is_retried_naming_the_credentials_not_the_bootstrap(kafka, caplog, capfd) -> None:
    """A broker that is starting refuses every password until it has read its users back: the
    service retries, but says which settings to check, never the password (in what it raises,
    and in its log lines: structlog writes them to the process's output, not through logging)."""
    access = kafka.access_as("formation").as_principal("formation", "not-the-password")
    with pytest.raises(StartupTimeout) as gave_up:
        await _start_probe(access, seconds=8)  # a refused probe (TLS, SASL) within it on a loaded machine
    assert str(gave_up.value).endswith("(check KAFKA_USERNAME, KAFKA_PASSWORD)")
    logged = caplog.text + "".join(capfd.readouterr())
    assert "startup.waiting" in logged, "the retries were logged (else there is nothing to look in)"
    assert "not-the-password" not in str(gave_up.value) + logged


async def _start_probe(access: KafkaAccess, seconds: float) -> None:
    """What a service does at start: wait for Kafka to answer its access, `seconds` at most."""
    await wait_for(
        "Kafka",
        lambda: kafka_answers(access),
        variable="KAFKA_BOOTSTRAP_SERVERS",
        deadline=time.monotonic() + seconds,
        retry_on=KAFKA_UNAVAILABLE,
    )


# Kubernetes' way for the platform's own principals (deploy/k8s: the services and the operators'
# tools): TLS, each named by its client certificate, on a listener of its own; SCRAM stays the
# partners'. The session's broker has such a listener (LocalKafka's `certificates`).


@pytest.mark.parametrize("principal", ["formation", "ressources"])
async def test_a_principal_named_by_its_certificate_writes_exactly_its_topics(
    kafka, topic_prefix, principal, tmp_path
) -> None:
    access = kafka.access_by_certificate(principal, tmp_path)
    assert (access.security_protocol, access.username, access.password) == ("SSL", None, None)
    assert await _writable(access, topic_prefix) == WRITES[principal]


async def test_the_certificate_listener_refuses_a_client_without_a_certificate(kafka, tmp_path) -> None:
    access = kafka.access_by_certificate("formation", tmp_path)
    host, port = access.bootstrap_servers.split(":")
    options = dataclasses.replace(access, cert_file=None, key_file=None).aiokafka()
    del options["bootstrap_servers"]
    with pytest.raises((ssl.SSLError, ConnectionError, KafkaConnectionError)):
        async with asyncio.timeout(DEADLINE):
            conn = await create_conn(host, int(port), **options)
            await conn.send(MetadataRequest([]))  # TLS 1.3: the refusal comes after the handshake


async def test_a_certificate_of_another_ca_is_refused_naming_its_files(kafka, tmp_path) -> None:
    """Retried as a refused password is (CredentialsRefused), naming the files to check."""
    other = client_certificate(ensure_tls(tmp_path / "another-ca"), "formation", tmp_path / "other")
    access = dataclasses.replace(
        kafka.access_by_certificate("formation", tmp_path), cert_file=str(other[0]), key_file=str(other[1])
    )
    with pytest.raises(StartupTimeout) as gave_up:
        await _start_probe(access, seconds=8)
    assert str(gave_up.value).endswith("(check KAFKA_CERT_FILE, KAFKA_KEY_FILE)")


async def _admitted(access: KafkaAccess, context: ssl.SSLContext) -> None:
    """A new connection of `context` (a long-lived client's, reconnecting) answered by the broker."""
    host, port = access.bootstrap_servers.split(":")
    options = access.aiokafka() | {"ssl_context": context}
    del options["bootstrap_servers"]
    async with asyncio.timeout(DEADLINE):
        conn = await create_conn(host, int(port), **options)
        try:
            await conn.send(MetadataRequest([]))  # TLS 1.3: a refusal comes after the handshake
        finally:
            conn.close()


@pytest.mark.parametrize("renewed", ["certificate", "ca"])
async def test_files_renewed_under_a_live_client_are_what_its_next_connections_use(kafka, tmp_path, renewed) -> None:
    """A client certificate the broker refuses (another CA's), or a CA that does not sign the
    broker's, replaced in the files a live context was made of: once reloaded (a running service
    does it every TLS_RELOAD_SECONDS), that context's next connection is admitted."""
    right = kafka.access_by_certificate("formation", tmp_path)
    other_ca = ensure_tls(tmp_path / "another-ca")
    if renewed == "certificate":
        cert, key = client_certificate(other_ca, "formation", tmp_path / "other")
        wrong = {"cert_file": cert, "key_file": key}
    else:
        wrong = {"ca_file": other_ca.ca}
    live = {name: tmp_path / f"live-{name}" for name in wrong}
    for name, path in live.items():
        path.write_bytes(Path(wrong[name]).read_bytes())
    access = dataclasses.replace(right, **{name: str(path) for name, path in live.items()})
    context = access.ssl_context()
    assert context is not None
    with pytest.raises((ssl.SSLError, ConnectionError, KafkaConnectionError)):
        await _admitted(access, context)
    for name, path in live.items():
        path.write_bytes(Path(getattr(right, name)).read_bytes())
    files = TlsFiles(access.ca_file, access.cert_file, access.key_file)
    assert [r.error for r in reload_tls_files() if r.files == files] == [None]
    await _admitted(access, context)


@pytest.mark.parametrize("missing", ["KAFKA_CERT_FILE", "KAFKA_KEY_FILE"])
async def test_ssl_without_a_certificate_or_its_key_stops_the_start_naming_it(kafka, tmp_path, missing) -> None:
    field = {"KAFKA_CERT_FILE": "cert_file", "KAFKA_KEY_FILE": "key_file"}[missing]
    access = dataclasses.replace(kafka.access_by_certificate("formation", tmp_path), **{field: None})
    with pytest.raises(DependencyRefused) as refused:
        await _start_probe(access, seconds=30)
    assert f"no {missing} given: required over SSL" in str(refused.value)
    assert str(refused.value).endswith(f"(check {missing})")


async def test_unreadable_certificate_files_stop_the_start_without_quoting_them(kafka, tmp_path) -> None:
    access = kafka.access_by_certificate("formation", tmp_path)
    Path(access.key_file or "").write_text("-----BEGIN PRIVATE KEY-----\nsecret-ish\n-----END PRIVATE KEY-----\n")
    with pytest.raises(DependencyRefused) as refused:
        await _start_probe(access, seconds=30)
    assert str(refused.value).endswith("(check KAFKA_CERT_FILE, KAFKA_KEY_FILE, KAFKA_CA_FILE)")
    assert "secret-ish" not in str(refused.value) and str(tmp_path) not in str(refused.value)


async def test_a_service_runs_over_its_certificate(kafka, settings, tmp_path) -> None:
    """equipement as on Kubernetes: its consumer, its relay and its start-up probe over TLS,
    named by its certificate: a lot in, its profile out."""
    from helpers import TopicReader, college, running, send, uai
    from services.equipement.app import SPEC
    from test_equipement import lot, referentiel_loaded

    access = kafka.access_by_certificate("equipement", tmp_path)
    by_certificate = settings.model_copy(
        update={
            "kafka_bootstrap_servers": access.bootstrap_servers,
            "kafka_security_protocol": "SSL",
            "kafka_username": None,
            "kafka_password": None,
            "kafka_cert_file": access.cert_file,
            "kafka_key_file": access.key_file,
        }
    )
    code = uai("0350002")
    async with (
        running(SPEC, by_certificate) as pipeline,
        TopicReader(kafka.bootstrap_servers, settings.topic(PROFILS)) as profils,
    ):
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(code, college(code))])
        await referentiel_loaded(pipeline, 1)
        await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), [(code, lot(code, "L1", 30, 1))])
        records = await profils.wait_for(lambda rs: len(rs) >= 1, what="the lot's profile")
        assert records[0].key == f"{code}/L1".encode()
        assert "equipement-tls" in {t.get_name() for t in asyncio.all_tasks()}, "renewals watched"
        # Every Kafka client of the service (FastStream's consumer and producer, the relay's)
        # holds a context the watcher reloads, not a copy.
        gc.unfreeze()  # the service froze what it held at start (lifecycle): out of get_objects' sight
        clients = [
            o for o in gc.get_objects() if isinstance(o, AIOKafkaClient) and o._client_id.startswith("feo-equipement")
        ]
        gc.collect()
        gc.freeze()
        assert {o._client_id for o in clients} >= {"feo-equipement", "feo-equipement-relay"}
        assert all(o._ssl_context in connection._LIVE for o in clients)
