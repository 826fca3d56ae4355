"""KafkaAccess: the SASL_SSL options each client library gets from the KAFKA_* variables, the
PLAINTEXT ones unchanged, and no repr, message or log line that shows the password."""

import asyncio
import logging
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faststream.kafka.security import parse_security
from faststream.security import SASLScram256, SASLScram512

from services.common.messaging.connection import KafkaAccess, TlsFiles, kafka_options
from services.common.runtime import startup
from services.common.runtime.settings import ServiceSettings, check_environment

PASSWORD = "pw-0f3a9c"


def self_signed(cn: str, ca: bool = False, days: int = 1) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory) -> str:
    """A self-signed CA certificate, as the local runtime's (deploy/local/kafka) would be."""
    _, cert = self_signed("feo-test-ca", ca=True)
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


@pytest.fixture
def environ(ca_file) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": "broker-1:9093,broker-2:9093",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_USERNAME": "formation",
        "KAFKA_PASSWORD": PASSWORD,
        "KAFKA_CA_FILE": ca_file,
    }


def trusts_only_the_ca(context: ssl.SSLContext) -> bool:
    subjects = [dict(field[0] for field in cert["subject"]) for cert in context.get_ca_certs()]
    return (
        context.verify_mode == ssl.CERT_REQUIRED
        and context.check_hostname
        and subjects == [{"commonName": "feo-test-ca"}]
    )


def test_aiokafka_gets_sasl_ssl_with_the_credentials_and_a_context_trusting_the_ca(environ):
    options = kafka_options(environ=environ)
    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": "broker-1:9093,broker-2:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "formation",
        "sasl_plain_password": PASSWORD,
    }
    assert trusts_only_the_ca(context)


def test_a_tool_s_bootstrap_wins_over_the_environment_s_and_keeps_its_credentials(environ):
    options = kafka_options("127.0.0.1:19093", environ)
    assert (options["bootstrap_servers"], options["sasl_plain_username"]) == ("127.0.0.1:19093", "formation")


def test_kafka_python_gets_sasl_ssl_with_the_ca_file(environ, ca_file):
    assert KafkaAccess.from_environ(environ).kafka_python() == {
        "bootstrap_servers": "broker-1:9093,broker-2:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "formation",
        "sasl_plain_password": PASSWORD,
        "ssl_cafile": ca_file,
    }


@pytest.mark.parametrize(("mechanism", "kind"), [("SCRAM-SHA-512", SASLScram512), ("SCRAM-SHA-256", SASLScram256)])
def test_faststream_gets_the_same_options_as_aiokafka(environ, monkeypatch, mechanism, kind):
    """A service's broker: settings read from the environment, as `build_app` reads them."""
    for name, value in {**environ, "KAFKA_SASL_MECHANISM": mechanism}.items():
        monkeypatch.setenv(name, value)
    access = KafkaAccess.of(ServiceSettings())
    security = access.faststream_security()
    assert type(security) is kind
    given = parse_security(security)  # what FastStream hands aiokafka
    expected = access.aiokafka()
    assert trusts_only_the_ca(given.pop("ssl_context"))
    del expected["ssl_context"], expected["bootstrap_servers"]
    assert given == expected


def test_plaintext_gives_only_the_bootstrap_and_no_faststream_security(monkeypatch):
    for name in (
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_USERNAME",
        "KAFKA_PASSWORD",
        "KAFKA_CA_FILE",
        "KAFKA_CERT_FILE",
        "KAFKA_KEY_FILE",
    ):
        monkeypatch.delenv(name, raising=False)  # the test session's own access
    plaintext = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    access = KafkaAccess.from_environ(plaintext)
    assert access.aiokafka() == access.kafka_python() == {"bootstrap_servers": "127.0.0.1:9092"}
    assert access.faststream_security() is None
    settings = ServiceSettings(kafka_bootstrap_servers="127.0.0.1:9092", kafka_security_protocol="PLAINTEXT")
    assert KafkaAccess.of(settings) == access


def test_sasl_ssl_by_default(monkeypatch):
    monkeypatch.delenv("KAFKA_SECURITY_PROTOCOL", raising=False)
    assert KafkaAccess().secured and KafkaAccess.from_environ({}).secured
    assert ServiceSettings().kafka_security_protocol == "SASL_SSL"


def test_no_repr_shows_the_password(environ):
    access = KafkaAccess.from_environ(environ)
    shown = [repr(access), str(access), repr(access.faststream_security()), repr(access.ssl_context())]
    assert not [text for text in shown if PASSWORD in text]
    assert "formation" in repr(access)


def test_no_repr_of_the_settings_shows_a_secret():
    settings = ServiceSettings(
        kafka_password=PASSWORD,
        database_url=f"postgresql://feo:{PASSWORD}@db/feo",
        otel_endpoint=f"https://collector/?token={PASSWORD}",
    )
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)


async def _probed(environ: dict[str, str], seconds: float, **waiting: float) -> tuple[Exception, int]:
    """What the start-up's wait for Kafka raises when `environ`'s access probes a port that
    closes every connection, and that port."""
    server = await asyncio.start_server(lambda _reader, writer: writer.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    access = KafkaAccess.from_environ(environ, bootstrap_servers=f"127.0.0.1:{port}")
    try:
        await startup.wait_for(
            f"Kafka at {access.bootstrap_servers}",
            lambda: startup.kafka_answers(access),
            variable="KAFKA_BOOTSTRAP_SERVERS",
            deadline=time.monotonic() + seconds,
            retry_on=startup.KAFKA_UNAVAILABLE,
            **waiting,
        )
    except Exception as failed:
        return failed, port
    finally:
        server.close()
        await server.wait_closed()
    raise AssertionError("the probe passed")


async def test_a_failed_probe_says_what_it_waited_for_without_the_password(
    environ, ca_file, caplog, capsys, monkeypatch
):
    """The startup probe over SASL_SSL (its client loads the CA), against a port that closes
    every connection: the error and every log line (the service's, aiokafka's at DEBUG) leave
    the password out."""
    caplog.set_level(logging.DEBUG)
    loaded, context = [], TlsFiles.context
    monkeypatch.setattr(
        TlsFiles, "context", lambda files, contents: loaded.append(files.ca) or context(files, contents)
    )
    failed, port = await _probed(environ, 1, first=0.1)
    assert isinstance(failed, startup.StartupTimeout)
    logged = caplog.text + "".join(capsys.readouterr())
    assert f"Kafka at 127.0.0.1:{port}" in str(failed)
    assert "startup.waiting" in logged or "startup.gave_up" in logged
    assert ca_file in loaded, "the probe connects with the access' TLS"
    assert PASSWORD not in str(failed) + logged


@pytest.mark.parametrize("missing", ["KAFKA_USERNAME", "KAFKA_PASSWORD"])
async def test_sasl_ssl_without_a_username_or_password_is_refused_naming_it(environ, missing):
    """aiokafka's SCRAM failed on None.encode() and the start ended blaming
    KAFKA_BOOTSTRAP_SERVERS; here a broker listens (it reads nothing: refused before)."""
    refused, _ = await _probed({k: v for k, v in environ.items() if k != missing}, 5)
    assert isinstance(refused, startup.DependencyRefused)
    assert f"no {missing} given: required over SASL_SSL" in str(refused)
    assert str(refused).endswith(f"(check {missing})")


@pytest.mark.parametrize("protocol", ["sasl_ssl", "ssl", "SASL_PLAINTEXT"])
def test_a_protocol_it_does_not_know_is_refused_rather_than_read_as_plaintext(protocol):
    with pytest.raises(ValueError, match="KAFKA_SECURITY_PROTOCOL: must be one of SASL_SSL, SSL, PLAINTEXT"):
        KafkaAccess.from_environ({"KAFKA_SECURITY_PROTOCOL": protocol})


@pytest.fixture
def certificate_environ(environ, tmp_path) -> dict[str, str]:
    """SSL: the principal named by a client certificate (Kubernetes' way for the platform's own)."""
    key, cert = self_signed("formation")
    (cert_file := tmp_path / "user.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pkcs8, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    (key_file := tmp_path / "user.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, none))
    given = {k: v for k, v in environ.items() if k not in ("KAFKA_USERNAME", "KAFKA_PASSWORD", "KAFKA_SASL_MECHANISM")}
    return given | {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_CERT_FILE": str(cert_file),
        "KAFKA_KEY_FILE": str(key_file),
    }


def test_ssl_gives_the_certificate_and_no_sasl_to_every_client(certificate_environ, ca_file, monkeypatch):
    access = KafkaAccess.from_environ(certificate_environ)
    options = access.aiokafka()
    assert trusts_only_the_ca(options.pop("ssl_context"))
    assert options == {"bootstrap_servers": "broker-1:9093,broker-2:9093", "security_protocol": "SSL"}
    assert access.kafka_python() == {
        "bootstrap_servers": "broker-1:9093,broker-2:9093",
        "security_protocol": "SSL",
        "ssl_cafile": ca_file,
        "ssl_certfile": certificate_environ["KAFKA_CERT_FILE"],
        "ssl_keyfile": certificate_environ["KAFKA_KEY_FILE"],
    }
    given = parse_security(access.faststream_security())  # what FastStream hands aiokafka
    assert given["security_protocol"] == "SSL" and trusts_only_the_ca(given["ssl_context"])
    for name in ("KAFKA_USERNAME", "KAFKA_PASSWORD"):
        monkeypatch.delenv(name, raising=False)  # the test session's own access
    for name, value in certificate_environ.items():
        monkeypatch.setenv(name, value)
    assert KafkaAccess.of(ServiceSettings()) == access, "a service reads the same access from its settings"


def test_ssl_refuses_a_key_that_is_not_the_certificate_s(certificate_environ, tmp_path):
    """The context is made with the pair: a mismatch fails there (startup names the files)."""
    other = ec.generate_private_key(ec.SECP256R1())
    pkcs8, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    (tmp_path / "user.key").write_bytes(other.private_bytes(serialization.Encoding.PEM, pkcs8, none))
    with pytest.raises(ssl.SSLError):
        KafkaAccess.from_environ(certificate_environ).ssl_context()


def test_the_principal_is_named_by_its_user_or_its_certificate_s_cn(environ, certificate_environ):
    assert KafkaAccess.from_environ(environ).principal == "formation"
    assert KafkaAccess.from_environ(certificate_environ | {"KAFKA_USERNAME": "ignored"}).principal == "formation"
    unreadable = certificate_environ | {"KAFKA_CERT_FILE": certificate_environ["KAFKA_KEY_FILE"]}
    assert KafkaAccess.from_environ(unreadable).principal is None


def test_a_missing_key_or_certificate_is_left_for_the_probe_to_name(certificate_environ):
    """Not a PEM error at the client's making (load_cert_chain would read the key from the
    certificate's file): the start-up probe names the one missing (exit code 3)."""
    for missing in ("KAFKA_CERT_FILE", "KAFKA_KEY_FILE"):
        access = KafkaAccess.from_environ({k: v for k, v in certificate_environ.items() if k != missing})
        assert access.unreadable_tls_files() is None
        assert trusts_only_the_ca(access.aiokafka()["ssl_context"])


def test_an_encrypted_key_cannot_be_read_rather_than_asked_for(certificate_environ, tmp_path):
    """The certificate's own key, encrypted: OpenSSL is given no passphrase (none asked on a
    terminal, where a service started by hand would wait)."""
    key, cert = self_signed("formation")
    (tmp_path / "user.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pkcs8, locked = serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"phrase")
    (tmp_path / "user.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, locked))
    unreadable = KafkaAccess.from_environ(certificate_environ).unreadable_tls_files()
    assert unreadable is not None and unreadable[0] == "KAFKA_CERT_FILE, KAFKA_KEY_FILE, KAFKA_CA_FILE"
    assert str(tmp_path) not in unreadable[1]


def test_the_client_certificate_s_end_is_logged_a_warning_within_the_renewal(certificate_environ, monkeypatch):
    """Its end is said at start, and by the running service only when it is near (a renewal
    should have reached the pod's files already: README, Kubernetes); an error once ended."""
    from helpers import Said
    from services.common.runtime import certificates

    said = Said()
    monkeypatch.setattr(certificates, "log", said)
    access = KafkaAccess.from_environ(certificate_environ)
    expiry = access.certificate_expiry
    assert expiry is not None and expiry - datetime.now(UTC) <= timedelta(days=1), "the fixture's: a day"
    certificates.log_certificate(access, now=expiry - timedelta(days=31))
    certificates.log_certificate(access, now=expiry - timedelta(days=29))
    certificates.log_certificate(access, now=expiry - timedelta(days=31), soon_only=True)
    certificates.log_certificate(access, now=expiry - timedelta(days=28), soon_only=True)
    certificates.log_certificate(access, now=expiry + timedelta(hours=1), soon_only=True)  # ended
    sasl = KafkaAccess.from_environ({**certificate_environ, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})
    certificates.log_certificate(sasl)
    assert [(line["level"], line["days_left"], line["principal"]) for line in said.named("kafka.certificate")] == [
        ("info", 31, "formation"),
        ("warning", 29, "formation"),
        ("warning", 28, "formation"),
        ("error", -1, "formation"),
    ]


@pytest.mark.parametrize("missing", ["KAFKA_CERT_FILE", "KAFKA_KEY_FILE"])
def test_settings_over_ssl_without_a_certificate_or_its_key_are_refused_naming_it(certificate_environ, missing):
    """Before anything connects, for the services (exit 2) and the operators' tools alike: the
    tools do not run the start-up probe, and failed on aiokafka's bootstrap error."""
    given = {k: v for k, v in certificate_environ.items() if k != missing}
    assert check_environment(given) == [f"{missing}: not given: required over SSL (KAFKA_SECURITY_PROTOCOL)"]
    assert check_environment(certificate_environ) == []
    sasl = {**given, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_USERNAME": "u", "KAFKA_PASSWORD": PASSWORD}
    assert check_environment(sasl) == [], "the certificate is not SASL_SSL's"


def test_settings_whose_tls_files_cannot_be_read_are_refused_once_without_quoting_them(certificate_environ, tmp_path):
    from services.ressources.settings import RessourcesSettings

    Path(certificate_environ["KAFKA_KEY_FILE"]).write_text(
        "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"
    )
    [line] = check_environment(certificate_environ, [ServiceSettings, RessourcesSettings])
    assert line.startswith("KAFKA_CERT_FILE, KAFKA_KEY_FILE, KAFKA_CA_FILE: the TLS files given cannot be read as PEM")
    assert str(tmp_path) not in line and "nope" not in line


def test_a_command_that_does_not_connect_to_kafka_is_not_refused_for_its_files(certificate_environ):
    no_certificate = {k: v for k, v in certificate_environ.items() if k != "KAFKA_CERT_FILE"}
    unreadable = certificate_environ | {"KAFKA_CA_FILE": certificate_environ["KAFKA_CA_FILE"] + ".absent"}
    assert check_environment(no_certificate, kafka="none") == check_environment(unreadable, kafka="none") == []
    assert check_environment(unreadable, kafka="elsewhere") == [], "a pod's environment: its files are not here"
    assert check_environment(no_certificate, kafka="elsewhere") == [
        "KAFKA_CERT_FILE: not given: required over SSL (KAFKA_SECURITY_PROTOCOL)"
    ]


TOOLS = {
    "rebuild": ("deploy.reconstruire", ["formation"]),
    "kafka": ("deploy.kafka_client", ["consume", "t"]),
    "dead-letters show --headers": (
        "services.common.messaging.dead_letters",
        ["show", "--topic", "t", "--partition", "0", "--offset", "0", "--headers"],
    ),
    "backup": ("deploy.sauvegarde", ["backup", "{tmp}/sauvegarde.dump"]),
    "dead-letters list": ("services.common.messaging.dead_letters", ["list"]),
    "outbox": ("services.common.messaging.outbox_failed", ["list"]),
}


@pytest.mark.parametrize("tool", TOOLS)
def test_an_operator_s_tool_over_ssl_without_a_certificate_stops_with_one_line_if_it_uses_kafka(
    certificate_environ, monkeypatch, capsys, tmp_path, tool
):
    """Those that use Kafka stop at once, naming the setting; those that read PostgreSQL alone
    (a backup during a certificate's incident) go on, and fail here on the database, nowhere."""
    import importlib

    from deploy.local.ports import free_port

    for variable, value in certificate_environ.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("KAFKA_CERT_FILE")
    monkeypatch.setenv("DATABASE_URL", f"postgresql://feo@127.0.0.1:{free_port()}/feo")
    module, argv = TOOLS[tool]
    try:
        code = importlib.import_module(module).main([arg.format(tmp=tmp_path) for arg in argv])
    except SystemExit as exit:  # settings_or_exit's
        code = exit.code
    lines = capsys.readouterr().err.splitlines()
    kafka_lines = [line for line in lines if "KAFKA_CERT_FILE" in line]
    if tool in ("rebuild", "kafka", "dead-letters show --headers"):
        assert code == 2 and lines == kafka_lines
        assert lines[0].endswith("KAFKA_CERT_FILE: not given: required over SSL (KAFKA_SECURITY_PROTOCOL)")
    else:
        assert code == 1 and not kafka_lines, lines


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("https://collector/?token=t", "https://collector/v1/traces?token=t"),
        ("http://collector:4318/v1/traces", "http://collector:4318/v1/traces"),
        ("https://gateway.example/otlp/traces", "https://gateway.example/otlp/traces"),
    ],
)
def test_a_collector_s_base_address_gets_the_traces_path(endpoint: str, url: str) -> None:
    """OTEL_ENDPOINT set to a collector's address, as OTEL_EXPORTER_OTLP_ENDPOINT takes it: its
    spans went to `/`, answered 404 (audit helper-181 #10); a full URL is kept as it is."""
    from services.common.runtime.telemetry import traces_url

    assert traces_url(endpoint) == url
