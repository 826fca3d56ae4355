"""The local brokers' CA and certificate (deploy/local/kafka/tls.py)."""

import datetime as dt

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploy.local.kafka import tls
from deploy.local.kafka.credentials import ADMIN


def test_the_broker_certificate_is_renewed_near_its_expiry(tmp_path, monkeypatch) -> None:
    first = tls.ensure_tls(tmp_path)
    issued = tls.certificate_expiry(first.broker)
    ca = first.ca.read_bytes()
    assert tls.ensure_tls(tmp_path).broker.read_bytes() == first.broker.read_bytes()  # kept while valid
    later = dt.datetime.now(dt.UTC) + tls.BROKER_VALIDITY - tls.RENEW_BEFORE + dt.timedelta(days=1)
    monkeypatch.setattr(tls, "_now", lambda: later)
    renewed = tls.ensure_tls(tmp_path)
    assert tls.certificate_expiry(renewed.broker) > issued
    assert renewed.ca.read_bytes() == ca  # the clients' CA file stays valid
    assert oct((tmp_path / "ca-key.pem").stat().st_mode & 0o777) == "0o600"


def test_the_broker_certificate_names_the_local_addresses_for_both_tls_sides(tmp_path) -> None:
    cert = x509.load_pem_x509_certificate(tls.ensure_tls(tmp_path).broker.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_a_client_certificate_names_its_principal_and_never_a_super_user(tmp_path) -> None:
    """The certificate listener takes a certificate's CN for its principal: one named as a
    super user would be one."""
    files = tls.ensure_tls(tmp_path)
    cert_file, key_file = tls.client_certificate(files, "formation", tmp_path / "clients")
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=formation"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    for name in (ADMIN, tls.BROKER_CN):
        with pytest.raises(ValueError, match="a super user's name"):
            tls.client_certificate(files, name, tmp_path / "clients")
