"""How a client reaches Kafka: bootstrap servers, security protocol, SASL credentials or client
certificate, CA.

Every Kafka client of the project (the services, the relay, the operators' tools, the tests)
takes its options from one `KafkaAccess`, read from the environment like the services'
settings:

| variable | meaning |
| --- | --- |
| `KAFKA_BOOTSTRAP_SERVERS` | host:port pairs separated by commas |
| `KAFKA_SECURITY_PROTOCOL` | `SASL_SSL` (CONTRACTS.md, Identity; the default), `SSL` or `PLAINTEXT` (unsecured) |
| `KAFKA_SASL_MECHANISM` | `SCRAM-SHA-512` |
| `KAFKA_USERNAME`, `KAFKA_PASSWORD` | the SCRAM credentials of this client's principal (`SASL_SSL`) |
| `KAFKA_CERT_FILE`, `KAFKA_KEY_FILE` | PEM files of this client's certificate, its principal, and its key (`SSL`) |
| `KAFKA_CA_FILE` | PEM file of the CA that signed the brokers' certificates (default: the system's CAs) |

`SSL` is how the platform's own principals connect on Kubernetes (deploy/k8s: the services and
the operators' tools, on the internal listener), so that no password of theirs works from
outside; the partners use SASL_SSL.

Certificates are renewed under a running process (Strimzi's User Operator renews a client's a
month before its end, its cluster CA yearly; Kubernetes updates the mounted files in place):
`reload_tls_files` loads the files again into every SSL context made here that is still in use,
so the connections the clients open next use the renewed ones (a service does it every
TLS_RELOAD_SECONDS, runtime/certificates.py).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

if TYPE_CHECKING:
    from cryptography import x509

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def _no_passphrase() -> bytes:
    """An encrypted key's passphrase: none (OpenSSL would otherwise ask for it on the terminal,
    and a service started by hand would wait there; refused, the key cannot be read)."""
    return b""


Protocol = Literal["SASL_SSL", "SSL", "PLAINTEXT"]
Mechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256"]
VARIABLES = {
    "bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "username": "KAFKA_USERNAME",
    "password": "KAFKA_PASSWORD",
    "ca_file": "KAFKA_CA_FILE",
    "cert_file": "KAFKA_CERT_FILE",
    "key_file": "KAFKA_KEY_FILE",
}


@dataclass(frozen=True)
class KafkaAccess:
    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    security_protocol: Protocol = "SASL_SSL"
    sasl_mechanism: Mechanism = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> KafkaAccess:
        """The access the environment describes; `overrides` (e.g. `bootstrap_servers=`) win."""
        given: dict[str, Any] = {name: environ[var] for name, var in VARIABLES.items() if environ.get(var)}
        access = cls(**{**given, **{k: v for k, v in overrides.items() if v is not None}})
        for name, allowed in (("security_protocol", get_args(Protocol)), ("sasl_mechanism", get_args(Mechanism))):
            if getattr(access, name) not in allowed:  # anything else would quietly mean no TLS
                raise ValueError(f"{VARIABLES[name]}: must be one of {', '.join(allowed)}")
        return access

    @classmethod
    def of(cls, settings: Any) -> KafkaAccess:
        """The access of a service's settings (`ServiceSettings`' `kafka_*` fields)."""
        return cls(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            username=settings.kafka_username,
            password=settings.kafka_password,
            ca_file=settings.kafka_ca_file,
            cert_file=settings.kafka_cert_file,
            key_file=settings.kafka_key_file,
        )

    def as_principal(self, username: str, password: str) -> KafkaAccess:
        return replace(self, username=username, password=password)

    @property
    def secured(self) -> bool:
        """Over TLS (SASL_SSL or SSL)."""
        return self.security_protocol != "PLAINTEXT"

    @property
    def principal(self) -> str | None:
        """The principal's name, for a message: its SCRAM user, else its certificate's CN (which
        Strimzi's brokers name `CN=<it>`, the local one `<it>`; None when the file cannot be read
        as a certificate)."""
        if self.scram or self.cert_file is None:
            return self.username
        from cryptography.x509.oid import NameOID

        if (certificate := self._certificate()) is None:
            return None
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else None

    @property
    def certificate_expiry(self) -> datetime | None:
        """When the client certificate (SSL) stops being valid; None without one it can read."""
        certificate = None if self.scram else self._certificate()
        return None if certificate is None else certificate.not_valid_after_utc

    def _certificate(self) -> x509.Certificate | None:
        from cryptography import x509

        if self.cert_file is None:
            return None
        try:
            return x509.load_pem_x509_certificate(Path(self.cert_file).read_bytes())
        except (OSError, ValueError):
            return None

    @property
    def scram(self) -> bool:
        """The principal named by SCRAM credentials (SASL_SSL), not by a client certificate (SSL)."""
        return self.security_protocol == "SASL_SSL"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A new SSL context of these files, reloaded by `reload_tls_files` for as long as it lives."""
        if not self.secured:
            return None
        files = TlsFiles(self.ca_file)
        if not (self.scram or self.cert_file is None or self.key_file is None):  # one missing: unusable() names it
            files = TlsFiles(self.ca_file, self.cert_file, self.key_file)
        contents = files.read()
        context = files.context(contents)
        if files != TlsFiles():  # the system's CAs alone: nothing to reload
            _LIVE[context] = _Loaded(files, _digests(contents))
        return context

    @property
    def credentials(self) -> tuple[tuple[str, str | None], ...]:
        """What names the principal, each variable with its value (None: not given): the SCRAM
        user and password (SASL_SSL), the client certificate and key (SSL), nothing (PLAINTEXT)."""
        if self.scram:
            return ("KAFKA_USERNAME", self.username), ("KAFKA_PASSWORD", self.password)
        if self.secured:
            return ("KAFKA_CERT_FILE", self.cert_file), ("KAFKA_KEY_FILE", self.key_file)
        return ()

    def unusable(self, read_files: bool = True) -> tuple[str, str] | None:
        """What keeps this access from connecting whatever the broker says: over SSL a client
        certificate or key not given, or TLS files that cannot be read as PEM (unless not
        `read_files`). The variables to check, and why (never a path or what a file holds)."""
        if self.security_protocol == "SSL":
            for variable, value in self.credentials:
                if value is None:
                    return variable, "not given: required over SSL (KAFKA_SECURITY_PROTOCOL)"
        return self.unreadable_tls_files() if read_files else None

    def unreadable_tls_files(self) -> tuple[str, str] | None:
        """When the TLS files given cannot be read as PEM (absent, unreadable, not a certificate, a
        key not the certificate's): the variables to check, and why, naming neither their paths
        nor what they hold. None otherwise."""
        try:
            self.ssl_context()
        except OSError as exc:  # an SSLError too
            return self.tls_files_refused(exc)
        return None

    def tls_files_refused(self, exc: OSError) -> tuple[str, str]:
        """The variables to check, and why, when making an SSL context of these files raised `exc`."""
        variables = "KAFKA_CA_FILE" if self.scram else "KAFKA_CERT_FILE, KAFKA_KEY_FILE, KAFKA_CA_FILE"
        return variables, f"the TLS files given cannot be read as PEM ({type(exc).__name__})"

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments of aiokafka's producer, consumer and admin client."""
        return self._options(lambda: {"ssl_context": self.ssl_context()})

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments of kafka-python's clients (the admin client that manages ACLs, tests)."""
        return self._options(
            lambda: (
                {"ssl_cafile": self.ca_file}
                | ({} if self.scram else {"ssl_certfile": self.cert_file, "ssl_keyfile": self.key_file})
            )
        )

    def _options(self, tls: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The options both clients spell alike, and `tls()`, how each takes the CA."""
        if not self.secured:
            return {"bootstrap_servers": self.bootstrap_servers}
        if not self.scram:
            return {"bootstrap_servers": self.bootstrap_servers, "security_protocol": "SSL", **tls()}
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password,
            **tls(),
        }

    def faststream_security(self) -> Any:
        """FastStream's `security=` for KafkaBroker; None over PLAINTEXT."""
        if not self.secured:
            return None
        from faststream.security import BaseSecurity, SASLScram256, SASLScram512

        if not self.scram:
            return BaseSecurity(ssl_context=self.ssl_context())

        scram = SASLScram512 if self.sasl_mechanism == "SCRAM-SHA-512" else SASLScram256
        return scram(username=self.username or "", password=self.password or "", ssl_context=self.ssl_context())

    def environ(self) -> dict[str, str]:
        """The variables that give a child process this access."""
        values = {name: getattr(self, name) for name in VARIABLES}
        return {VARIABLES[name]: str(value) for name, value in values.items() if value is not None}


Contents = tuple[bytes | None, bytes | None, bytes | None]
"""What TlsFiles held when read: each file's bytes (None: not given; b"": it could not be read)."""


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files an SSL context is made of (None: not given): CA, client certificate, its key."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    VARIABLES: ClassVar[tuple[str, ...]] = ("KAFKA_CA_FILE", "KAFKA_CERT_FILE", "KAFKA_KEY_FILE")

    def read(self, strict: bool = True) -> Contents:
        """Each file read once: a context is loaded from these bytes, never from the files again
        (they may be rewritten in between). A file that cannot be read raises, or is b"" unless
        `strict` (which loading then refuses)."""
        contents = []
        for path in (self.ca, self.cert, self.key):
            try:
                contents.append(None if path is None else Path(path).read_bytes())
            except OSError:
                if strict:
                    raise
                contents.append(b"")
        return contents[0], contents[1], contents[2]

    def context(self, contents: Contents) -> ssl.SSLContext:
        """A client context as aiokafka's create_ssl_context makes one (not by it: it logs the
        files' paths), trusting the CA (the system's without one), presenting the certificate."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=_pem(contents[0]))
        _load_certificate(context, contents)
        return context

    def load_into(self, context: ssl.SSLContext, contents: Contents) -> None:
        """Into a live context: the CA's certificates added to those it trusts (a renewed CA's new
        certificate; the former stays trusted until the process ends), its certificate and key
        replaced."""
        if (ca := _pem(contents[0])) is not None:
            context.load_verify_locations(cadata=ca)
        _load_certificate(context, contents)


def _pem(content: bytes | None) -> str | None:
    """A CA file's content as cadata takes PEM (as text: bytes would be read as DER)."""
    if content is None:
        return None
    if not content.strip():  # else the system's CAs would be trusted instead
        raise ssl.SSLError("an empty or unreadable CA file")
    return content.decode("ascii", errors="replace")


def _load_certificate(context: ssl.SSLContext, contents: Contents) -> None:
    _, cert, key = contents
    if cert is None or key is None:
        return
    with _in_memory(cert) as cert_path, _in_memory(key) as key_path:
        context.load_cert_chain(cert_path, key_path, password=_no_passphrase)


@contextmanager
def _in_memory(content: bytes) -> Iterator[str]:
    """A path OpenSSL reads `content` from (it takes a certificate chain and key from files
    only), in memory: an anonymous file of this process (memfd), never on a disk."""
    fd = os.memfd_create("feo-tls", os.MFD_CLOEXEC)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _digests(contents: Contents) -> tuple[bytes | None, ...]:
    return tuple(None if content is None else hashlib.sha256(content).digest() for content in contents)


@dataclass
class _Loaded:
    files: TlsFiles
    digests: tuple[bytes | None, ...]
    """Each file's digest as the context last loaded it."""
    refused: tuple[bytes | None, ...] | None = None
    """The digests of the files last refused (told once, tried again at each reload)."""


_LIVE: weakref.WeakKeyDictionary[ssl.SSLContext, _Loaded] = weakref.WeakKeyDictionary()
"""Every SSL context `KafkaAccess.ssl_context` made that is still referenced (by a client)."""


@dataclass(frozen=True)
class TlsReload:
    """Files that changed since contexts loaded them, and whether they were loaded again."""

    files: TlsFiles
    changed: tuple[str, ...]
    """The variables of the files that changed (TlsFiles.VARIABLES)."""
    contexts: int
    error: str | None = None
    """Why they could not be (the error's type: never a path or what the files hold); the
    contexts kept what they had, and the files are tried again at the next reload."""


def reload_tls_files() -> list[TlsReload]:
    """The live SSL contexts whose files changed since they loaded them, loaded again in place
    from one reading of the files; what changed, by set of files. Files that cannot be loaded (a
    renewal half-written, a key not the certificate's) are first tried on a context of their
    own, and the live contexts keep their former certificates (half-loaded, one would refuse
    every new connection): reported once while the files stay the same, tried at every call."""
    by_files: dict[TlsFiles, list[tuple[ssl.SSLContext, _Loaded]]] = {}
    for context, loaded in list(_LIVE.items()):
        by_files.setdefault(loaded.files, []).append((context, loaded))
    outcomes = []
    for files, members in by_files.items():
        contents = files.read(strict=False)
        digests = _digests(contents)
        stale = [(context, loaded) for context, loaded in members if loaded.digests != digests]
        if not stale:
            continue
        changed = tuple(
            variable
            for i, variable in enumerate(TlsFiles.VARIABLES)
            if any(loaded.digests[i] != digests[i] for _, loaded in stale)
        )
        try:
            files.context(contents)
        except OSError as exc:  # an SSLError: the files refused, the live contexts untouched
            if any(loaded.refused != digests for _, loaded in stale):
                outcomes.append(TlsReload(files, changed, len(stale), type(exc).__name__))
            for _, loaded in stale:
                loaded.refused = digests
            continue
        for context, loaded in stale:
            files.load_into(context, contents)  # what loaded into a new context loads into this one
            loaded.digests, loaded.refused = digests, None
        outcomes.append(TlsReload(files, changed, len(stale)))
    return outcomes


def kafka_options(bootstrap_servers: str | None = None, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """aiokafka's keyword arguments for the environment's access, at `bootstrap_servers` if given."""
    return KafkaAccess.from_environ(environ, bootstrap_servers=bootstrap_servers).aiokafka()
