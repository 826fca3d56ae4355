"""The local brokers' TLS material: a CA and a broker certificate, PEM, made with `cryptography`.

Made on first use and kept in the cache beside the jars (`cache_root()/tls`), so every local
platform and test session of this machine trusts one CA: clients are given `ca.pem`
(KAFKA_CA_FILE). The broker certificate names 127.0.0.1 and localhost, serves both TLS sides
(the client listener, and the controller listener where brokers authenticate to each other by
it, mTLS) and is made again when it comes within `RENEW_BEFORE` of its expiry. Its subject's
CN, `BROKER_CN`, is the principal the brokers get on the controller listener.

Private keys are unencrypted PKCS#8 in files of mode 0600. Several processes may start a
broker at once: the material is made under an exclusive lock and each file written whole
before it is renamed into place.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.local.kafka.jars import cache_root

BROKER_CN = "kafka-broker"
SUPER_USERS = ("admin", BROKER_CN)
"""The local brokers' super users (broker.py's super.users): no client certificate bears their names."""
CA_VALIDITY = dt.timedelta(days=3650)
BROKER_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    """The CA certificate, what clients trust (KAFKA_CA_FILE) and the brokers' truststore."""
    broker: Path
    """The broker's private key then its certificate: Kafka's PEM keystore."""


def tls_dir() -> Path:
    return cache_root() / "tls"


def ensure_tls(directory: Path | None = None) -> TlsFiles:
    """The CA and broker certificate in `directory` (default `tls_dir()`), made when missing
    and the broker's renewed when close to expiry."""
    directory = directory or tls_dir()
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "broker.pem")
    ca_key_file = directory / "ca-key.pem"
    with (directory / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (files.ca.exists() and ca_key_file.exists()):
            key = _new_key()
            _write(ca_key_file, _key_pem(key))
            _write(files.ca, _cert_pem(_ca_certificate(key)))
            files.broker.unlink(missing_ok=True)  # signed by the former CA
        if _needs_renewal(files.broker):
            key = _new_key()
            _write(files.broker, _key_pem(key) + _cert_pem(_broker_certificate(key, *_authority(files))))
    return files


def _authority(files: TlsFiles) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """The CA's certificate and key, which sign the others."""
    ca_key = serialization.load_pem_private_key((files.ca.parent / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey), "made by _new_key"
    return x509.load_pem_x509_certificate(files.ca.read_bytes()), ca_key


def client_certificate(files: TlsFiles, principal: str, directory: Path) -> tuple[Path, Path]:
    """A client certificate of `principal` (its CN) signed by the CA of `files`, and its private
    key: `directory/<principal>.crt` and `.key` (KAFKA_CERT_FILE, KAFKA_KEY_FILE), made anew at
    each call. The certificate listener (LocalKafka's `certificates`) names the client by it, as
    Strimzi's internal listener names the platform's own principals (deploy/k8s). Never one of
    a super user's names."""
    if principal in SUPER_USERS:
        raise ValueError(f"no client certificate for {principal!r}: a super user's name")
    ca, ca_key = _authority(files)
    key = _new_key()
    certificate = (
        _issued(principal, key, ca, ca_key)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{principal}.crt", directory / f"{principal}.key"
    _write(key_file, _key_pem(key))
    _write(cert_file, _cert_pem(certificate))
    return cert_file, key_file


def certificate_expiry(path: Path) -> dt.datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def _needs_renewal(broker: Path) -> bool:
    try:
        return certificate_expiry(broker) - _now() < RENEW_BEFORE
    except (FileNotFoundError, ValueError):
        return True


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    # Kafka's PEM keystore reads PKCS#8 only.
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca_certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = _name("former-equiper-outiller local CA")
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _issued(
    cn: str, key: rsa.RSAPrivateKey, ca: x509.Certificate, ca_key: rsa.RSAPrivateKey
) -> x509.CertificateBuilder:
    """A certificate of `cn` for `key` by the CA, valid BROKER_VALIDITY (within the CA's), its
    usages to add."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + BROKER_VALIDITY, ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )


def _broker_certificate(key: rsa.RSAPrivateKey, ca: x509.Certificate, ca_key: rsa.RSAPrivateKey) -> x509.Certificate:
    return (
        _issued(BROKER_CN, key, ca, ca_key)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _write(path: Path, data: bytes) -> None:
    """`data` in `path`, mode 0600, whole or not at all."""
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    staging.replace(path)
