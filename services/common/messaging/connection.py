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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from aiokafka.helpers import create_ssl_context

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
        if not (self.scram or self.cert_file is None or self.key_file is None):  # one missing: the probe names it
            files = TlsFiles(self.ca_file, self.cert_file, self.key_file)
        digests = files.digests()  # before loading: a change meanwhile is loaded at the next reload
        context = files.context()
        if files != TlsFiles():  # the system's CAs alone: nothing to reload
            _LIVE[context] = _Loaded(files, digests)
        return context

    def unusable(self, read_files: bool = True) -> tuple[str, str] | None:
        """What keeps this access from connecting whatever the broker says: over SSL a client
        certificate or key not given, or TLS files that cannot be read as PEM (unless not
        `read_files`). The variables to check, and why (never a path or what a file holds)."""
        if self.security_protocol == "SSL":
            for variable, value in (("KAFKA_CERT_FILE", self.cert_file), ("KAFKA_KEY_FILE", self.key_file)):
                if value is None:
                    return variable, "not given: required over SSL (KAFKA_SECURITY_PROTOCOL)"
        return self.unreadable_tls_files() if read_files else None

    def unreadable_tls_files(self) -> tuple[str, str] | None:
        """When the TLS files given cannot be read as PEM (absent, unreadable, not a certificate, a
        key not the certificate's): the variables to check, and why, naming neither their paths
        nor what they hold. None otherwise."""
        try:
            self.ssl_context()
        except (OSError, ssl.SSLError) as exc:
            variables = "KAFKA_CA_FILE" if self.scram else "KAFKA_CERT_FILE, KAFKA_KEY_FILE, KAFKA_CA_FILE"
            return variables, f"the TLS files given cannot be read as PEM ({type(exc).__name__})"
        return None

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


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files an SSL context is made of (None: not given): CA, client certificate, its key."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    VARIABLES: ClassVar[tuple[str, ...]] = ("KAFKA_CA_FILE", "KAFKA_CERT_FILE", "KAFKA_KEY_FILE")

    def digests(self) -> tuple[bytes | None, ...]:
        """Each file's SHA-256 (b"" when it cannot be read: a change too, which the loading reports)."""
        return tuple(None if path is None else _digest(path) for path in (self.ca, self.cert, self.key))

    def context(self) -> ssl.SSLContext:
        if self.cert is None or self.key is None:
            return create_ssl_context(cafile=self.ca)
        return create_ssl_context(cafile=self.ca, certfile=self.cert, keyfile=self.key, password=_no_passphrase)

    def load_into(self, context: ssl.SSLContext) -> None:
        """Into a live context: the CA's certificates added to those it trusts (a renewed CA's new
        certificate; the former stays trusted until the process ends), its certificate and key
        replaced by the files'."""
        if self.ca is not None:
            context.load_verify_locations(cafile=self.ca)
        if self.cert is not None and self.key is not None:
            context.load_cert_chain(self.cert, self.key, password=_no_passphrase)


def _digest(path: str) -> bytes:
    try:
        return hashlib.sha256(Path(path).read_bytes()).digest()
    except OSError:
        return b""


@dataclass
class _Loaded:
    files: TlsFiles
    digests: tuple[bytes | None, ...]
    """Each file's digest as the context last loaded it."""
    refused: tuple[bytes | None, ...] | None = None
    """The digests of files found unreadable at the last attempt (told once, tried again)."""


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
    """The live SSL contexts whose files changed since they loaded them, loaded again in place;
    what changed, by set of files. Files that cannot be read as PEM (a renewal half-written, a
    key not the certificate's) are not loaded: the contexts keep their former certificates, and
    the files are read again at the next call (reported once while they stay the same)."""
    stale: dict[tuple[TlsFiles, tuple[bytes | None, ...]], list[tuple[ssl.SSLContext, _Loaded]]] = {}
    for context, loaded in list(_LIVE.items()):
        if (digests := loaded.files.digests()) != loaded.digests:
            stale.setdefault((loaded.files, digests), []).append((context, loaded))
    outcomes = []
    for (files, digests), contexts in stale.items():
        changed = tuple(
            variable
            for variable, was, now in zip(TlsFiles.VARIABLES, contexts[0][1].digests, digests, strict=True)
            if was != now
        )
        try:
            files.context()  # the files checked first: a context half-loaded would refuse every new connection
            for context, loaded in contexts:
                files.load_into(context)
                loaded.digests, loaded.refused = digests, None
        except (OSError, ssl.SSLError) as exc:
            if any(loaded.refused != digests for _, loaded in contexts):
                outcomes.append(TlsReload(files, changed, len(contexts), type(exc).__name__))
            for _, loaded in contexts:
                loaded.refused = digests
            continue
        outcomes.append(TlsReload(files, changed, len(contexts)))
    return outcomes


def kafka_options(bootstrap_servers: str | None = None, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """aiokafka's keyword arguments for the environment's access, at `bootstrap_servers` if given."""
    return KafkaAccess.from_environ(environ, bootstrap_servers=bootstrap_servers).aiokafka()
