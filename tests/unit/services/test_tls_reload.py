"""Renewed TLS files reach the SSL contexts a process's clients already hold (a service is not
restarted for a renewal: README, Kubernetes). Checked over real TLS connections to a local
server that requires a client certificate, as the broker's certificate listener does; the same
against the broker: tests/integration/test_kafka_security.py."""

import asyncio
import dataclasses
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509

from deploy.local.kafka.tls import TlsFiles as LocalCa
from deploy.local.kafka.tls import client_certificate, ensure_tls
from helpers import Said, eventually
from services.common.messaging.connection import KafkaAccess, TlsFiles, TlsReload, reload_tls_files
from services.common.runtime import certificates


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> LocalCa:
    return ensure_tls(tmp_path_factory.mktemp("ca"))


class Server:
    """A TLS server of the CA's broker certificate that requires a client certificate of that
    CA, and says which one each connection presented (its serial number)."""

    def __init__(self, ca: LocalCa) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.ca))
        self.context.load_cert_chain(str(ca.broker))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.port = 0

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert")
        writer.write(peer["serialNumber"].encode() + b"\n")
        await writer.drain()
        writer.close()

    async def presented(self, context: ssl.SSLContext) -> int:
        """The serial number of the client certificate a new connection of `context` presents."""
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", self.port, ssl=context, server_hostname="localhost"
            )
            try:
                return int((await reader.readline()).decode(), 16)
            finally:
                writer.close()


@asynccontextmanager
async def serving(ca: LocalCa) -> AsyncIterator[Server]:
    server = Server(ca)
    listening = await asyncio.start_server(server._answer, "127.0.0.1", 0, ssl=server.context)
    server.port = listening.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listening.close()


def serial(path: str | None) -> int:
    return x509.load_pem_x509_certificate(Path(path or "").read_bytes()).serial_number


def access(ca: LocalCa, directory: Path) -> KafkaAccess:
    """A client certificate of the CA, and a copy of the CA's certificate: the test's own files."""
    cert, key = client_certificate(ca, "formation", directory)
    (ca_file := directory / "ca.crt").write_bytes(ca.ca.read_bytes())
    return KafkaAccess(security_protocol="SSL", ca_file=str(ca_file), cert_file=str(cert), key_file=str(key))


def mine(reloads: list[TlsReload], access: KafkaAccess) -> list[TlsReload]:
    """The reloads of this access's files (other tests' contexts may still be alive)."""
    return [r for r in reloads if r.files == TlsFiles(access.ca_file, access.cert_file, access.key_file)]


async def test_a_renewed_certificate_is_presented_by_the_next_connections_of_a_live_context(ca, tmp_path) -> None:
    given = access(ca, tmp_path)
    context = given.ssl_context()
    first = serial(given.cert_file)
    async with serving(ca) as server:
        assert await server.presented(context) == first
        client_certificate(ca, "formation", tmp_path)  # renewed: the same files, rewritten
        renewed = serial(given.cert_file)
        assert renewed != first
        assert await server.presented(context) == first, "loaded once, until reloaded"
        assert [(r.changed, r.contexts, r.error) for r in mine(reload_tls_files(), given)] == [
            (("KAFKA_CERT_FILE", "KAFKA_KEY_FILE"), 1, None)
        ]
        assert await server.presented(context) == renewed
        assert mine(reload_tls_files(), given) == [], "nothing changed since"


async def test_a_certificate_without_its_new_key_is_not_loaded_and_is_told_once(ca, tmp_path) -> None:
    """Kubernetes rewrites a secret's files at once, but a read may fall between the two: the
    context keeps its former certificate and key (half-loaded, it would refuse every new
    connection) until the files agree."""
    given = access(ca, tmp_path)
    context = given.ssl_context()
    first = serial(given.cert_file)
    key = Path(given.key_file or "").read_bytes()
    client_certificate(ca, "formation", tmp_path)
    renewed_key = Path(given.key_file or "").read_bytes()
    Path(given.key_file or "").write_bytes(key)  # the former key, with the renewed certificate
    async with serving(ca) as server:
        assert [(r.changed, r.error) for r in mine(reload_tls_files(), given)] == [(("KAFKA_CERT_FILE",), "SSLError")]
        assert mine(reload_tls_files(), given) == [], "told once while the files stay the same"
        assert await server.presented(context) == first
        Path(given.key_file or "").write_bytes(renewed_key)
        assert [r.error for r in mine(reload_tls_files(), given)] == [None]
        assert await server.presented(context) == serial(given.cert_file) != first


async def test_a_renewed_ca_certificate_is_trusted_by_a_live_context(ca, tmp_path) -> None:
    """The cluster CA renewed: its new certificate added to those the context trusts."""
    other = ensure_tls(tmp_path / "other-ca")
    given = access(ca, tmp_path)
    ca_file = tmp_path / "live-ca.crt"
    ca_file.write_bytes(other.ca.read_bytes())  # not the server's: refused
    context = KafkaAccess(
        security_protocol="SSL", ca_file=str(ca_file), cert_file=given.cert_file, key_file=given.key_file
    ).ssl_context()
    async with serving(ca) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await server.presented(context)
        ca_file.write_bytes(ca.ca.read_bytes())
        reloads = [r for r in reload_tls_files() if r.files.ca == str(ca_file)]
        assert [(r.changed, r.error) for r in reloads] == [(("KAFKA_CA_FILE",), None)]
        assert await server.presented(context) == serial(given.cert_file)
        ca_file.write_bytes(other.ca.read_bytes())  # added, not replacing: the former stays trusted
        assert [r.error for r in reload_tls_files() if r.files.ca == str(ca_file)] == [None]
        assert await server.presented(context) == serial(given.cert_file)


async def test_an_empty_ca_file_is_not_read_as_the_system_s_cas(ca, tmp_path) -> None:
    """Python's cadata, empty, loads the system's CAs instead: refused, the context kept."""
    given = access(ca, tmp_path)
    context = given.ssl_context()
    Path(given.ca_file or "").write_bytes(b"")
    assert [r.error for r in mine(reload_tls_files(), given)] == ["SSLError"]
    with pytest.raises(ssl.SSLError):
        dataclasses.replace(given, cert_file=None).ssl_context()
    Path(given.ca_file or "").write_bytes(ca.ca.read_bytes())
    async with serving(ca) as server:
        assert await server.presented(context) == serial(given.cert_file)


async def test_a_running_service_takes_a_renewal_by_itself_and_says_so_without_a_path(
    ca, tmp_path, monkeypatch
) -> None:
    said = Said()
    monkeypatch.setattr(certificates, "log", said)
    given = access(ca, tmp_path)
    context = given.ssl_context()
    watching = asyncio.create_task(certificates.watch(given, period=0.05))
    try:
        async with serving(ca) as server:
            client_certificate(ca, "formation", tmp_path)
            renewed = serial(given.cert_file)

            async def presents_the_renewed() -> bool:
                return await server.presented(context) == renewed

            await eventually(presents_the_renewed, timeout=10, what="the renewed certificate presented")
    finally:
        watching.cancel()
    assert ["KAFKA_CERT_FILE", "KAFKA_KEY_FILE"] in [line["files"] for line in said.named("kafka.tls_reloaded")]
    assert [(line["level"], line["principal"]) for line in said.named("kafka.certificate")] == [("info", "formation")]
    assert str(tmp_path) not in repr(said.lines)


async def three_rounds_of_the_watcher(
    monkeypatch, given: KafkaAccess, reload: Callable[[int], list[TlsReload]] = lambda _: []
) -> None:
    """The watcher run over `given` for three rounds at least, each calling `reload` (told the
    round's number, from 1) in place of reload_tls_files."""
    rounds = []

    def counted() -> list[TlsReload]:
        rounds.append(1)
        return reload(len(rounds))

    monkeypatch.setattr(certificates, "reload_tls_files", counted)
    watching = asyncio.create_task(certificates.watch(given, period=0.01))
    try:

        async def three_rounds() -> bool:
            return len(rounds) >= 3

        await eventually(three_rounds, timeout=10, what="three rounds of the watcher")
    finally:
        watching.cancel()


async def test_the_watcher_goes_on_after_a_failure(ca, tmp_path, monkeypatch) -> None:
    """Ended, it would leave renewals unseen until the certificate expired."""
    said = Said()
    monkeypatch.setattr(certificates, "log", said)

    def failing_once(round_: int) -> list[TlsReload]:
        if round_ == 1:
            raise RuntimeError("a bug")
        return []

    await three_rounds_of_the_watcher(monkeypatch, access(ca, tmp_path), failing_once)
    assert [line["level"] for line in said.named("kafka.tls_watch_failed")] == ["exception"]


@pytest.mark.parametrize("days_left", [1, 365])
async def test_a_running_service_warns_while_its_certificate_ends_within_the_renewal(
    ca, tmp_path, monkeypatch, days_left
) -> None:
    """Said at start only, a near end would go unseen in a service that runs for months: the
    watcher warns every EXPIRY_WARNING_EVERY (here at each round) while it is near, and says
    nothing of a far one."""
    import datetime as dt

    from cryptography.hazmat.primitives import serialization
    from test_kafka_access import self_signed

    key, cert = self_signed("formation", days=days_left)
    (cert_file := tmp_path / "user.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pkcs8, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    (key_file := tmp_path / "user.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, none))
    given = KafkaAccess(security_protocol="SSL", cert_file=str(cert_file), key_file=str(key_file))
    said = Said()
    monkeypatch.setattr(certificates, "log", said)
    monkeypatch.setattr(certificates, "EXPIRY_WARNING_EVERY", dt.timedelta(0))
    await three_rounds_of_the_watcher(monkeypatch, given)
    lines = said.named("kafka.certificate")
    if days_left == 1:
        assert len(lines) >= 2 and {(line["level"], line["days_left"]) for line in lines} == {("warning", 0)}
    else:
        assert lines == [], "a far end is said at start only"
