"""The passerelle's own settings, beside the shared ones: how it checks tokens and how much
it takes. Variables as documented in the README ("HTTP ingestion (passerelle)")."""

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

from services.common.runtime.settings import HttpUrl, ServiceSettings

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def in_clear_beyond_this_machine(url: str) -> bool:
    """Whether talking to `url` would cross a network in clear: not https, and not this machine."""
    parts = urlsplit(url)
    return parts.scheme != "https" and parts.hostname not in LOOPBACK


def _keys_over_tls(url: str) -> str:
    """Signing keys fetched in clear could be swapped on the way: https, or the machine itself."""
    if in_clear_beyond_this_machine(url):
        raise ValueError("must be an https:// URL (http:// only on this machine: 127.0.0.1, ::1, localhost)")
    return url


JwksUrl = Annotated[HttpUrl, AfterValidator(_keys_over_tls)]
MAX_BATCH_EVENTS = 1000  # CONTRACTS.md, Identity: a batch holds at most 1,000 events


class PasserelleSettings(ServiceSettings):
    # A request Kafka makes slower still (its producer renewed before or after the write, each
    # within the write timeout) is cut at a stop: its client's retry has no second effect.
    REQUEST_TIMEOUTS = ("passerelle_lookup_timeout_seconds", "passerelle_write_timeout_seconds")
    # Bearer tokens (JWT, asymmetric signatures) of the deployment's identity provider; JWKS_FILE or JWKS_URL.
    jwt_issuer: str = Field("feo-identite-locale", description="the tokens' expected `iss`")
    jwt_audience: str = Field("former-equiper-outiller", description="the tokens' expected `aud`")
    jwt_max_lifetime_seconds: int = Field(
        86_400, ge=60, description="how far ahead a token's `exp` may be: one valid longer is refused (no revocation)"
    )
    jwks_file: str | None = Field(None, description="JSON Web Key Set of the provider's signing keys, as a file")
    jwks_url: JwksUrl | None = Field(None, description="the same, fetched (and cached) from the provider, over https")
    # What one request may hold, and how fast one declarant may send.
    passerelle_max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="a request body beyond this is refused (413) before it is read"
    )
    passerelle_rate_events_per_s: float = Field(
        2000, gt=0, description="events per second one token subject may send, per replica (429 beyond)"
    )
    passerelle_rate_burst: int = Field(
        10_000,
        ge=MAX_BATCH_EVENTS,
        description="events one token subject may send at once, per replica (at least a full batch)",
    )
    passerelle_requests_per_subject: int = Field(
        4,
        ge=1,
        description="requests of one token subject a replica handles at once (one more: 429 before its body is read)",
    )
    passerelle_requests_total: int = Field(
        8,
        ge=1,
        description="requests a replica handles at once, every subject's (one more: 503 before its body is read); "
        "each holds its body, up to PASSERELLE_MAX_BODY_BYTES",
    )
    passerelle_body_timeout_seconds: float = Field(
        60,
        gt=0,
        description="how long a request's body may take to come whole (408 beyond): a request holds its place "
        "among those handled at once meanwhile",
    )
    passerelle_write_timeout_seconds: float = Field(
        15, gt=0, description="how long the accepted events of a request may take to reach Kafka (503 beyond)"
    )
    passerelle_lookup_timeout_seconds: float = Field(
        5, gt=0, description="how long reading a request's établissements in PostgreSQL may take (503 beyond)"
    )
