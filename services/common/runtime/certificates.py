"""A service's Kafka certificates while it runs: renewals taken without a restart, and their end
told. Strimzi's User Operator renews a client certificate CERTIFICATE_RENEWED_BEFORE its end,
its Cluster Operator the cluster CA's certificate yearly; Kubernetes rewrites the secret's files
in the pod (within a minute or two). Every TLS_RELOAD_SECONDS the service reads the files
again and, when they changed, loads them into the SSL contexts its clients hold: the
connections they open next use them (those open keep theirs: Kafka checks a certificate when a
connection is made)."""

import asyncio
from datetime import UTC, datetime, timedelta

import structlog

from services.common.messaging.connection import KafkaAccess, TlsReload, reload_tls_files

log = structlog.get_logger(__name__)

CERTIFICATE_RENEWED_BEFORE = timedelta(days=30)
"""Strimzi's User Operator renews a client certificate this long before its end (its default)."""
TLS_RELOAD_SECONDS = 60.0
EXPIRY_WARNING_EVERY = timedelta(days=1)


def log_certificate(access: KafkaAccess, now: datetime | None = None, *, soon_only: bool = False) -> None:
    """When the client certificate (SSL) ends: an error once it has (the broker refuses the
    client), a warning when it ends within CERTIFICATE_RENEWED_BEFORE (a renewal has not reached
    the pod's files: the User Operator's secret is to check), else an information (none with
    `soon_only`)."""
    if (expiry := access.certificate_expiry) is None:
        return
    left = expiry - (now or datetime.now(UTC))
    said = {"principal": access.principal, "expires_at": expiry.isoformat(), "days_left": left.days}
    if left <= timedelta(0):
        hint = "ended: the broker refuses this client's connections until a renewed one is loaded"
        log.error("kafka.certificate", **said, hint=hint)
    elif left < CERTIFICATE_RENEWED_BEFORE:
        log.warning("kafka.certificate", **said)
    elif not soon_only:
        log.info("kafka.certificate", **said)


def report(reloads: list[TlsReload], period: float = TLS_RELOAD_SECONDS) -> None:
    """One line per set of files loaded again (or refused), naming the variables, never a path."""
    for reload in reloads:
        if reload.error is None:
            log.info("kafka.tls_reloaded", files=list(reload.changed), contexts=reload.contexts)
        else:
            log.warning(
                "kafka.tls_not_reloaded",
                files=list(reload.changed),
                error=reload.error,
                hint=f"the TLS files cannot be loaded: the former ones stay in use; read again every {period:g} s",
            )


async def watch(access: KafkaAccess, period: float = TLS_RELOAD_SECONDS) -> None:
    """Until cancelled: the TLS files loaded again when they change, the client certificate's end
    told when it was renewed, and every EXPIRY_WARNING_EVERY while it ends within
    CERTIFICATE_RENEWED_BEFORE (serve() tells it at start). A failure is logged, and the next
    round tried: this task ended, renewals would go unseen until the certificate expired."""
    loop = asyncio.get_running_loop()
    looked_at = loop.time()
    while True:
        await asyncio.sleep(period)
        try:
            reloads = reload_tls_files()
            report(reloads, period)
            if any(r.error is None and "KAFKA_CERT_FILE" in r.changed for r in reloads):
                log_certificate(access)
                looked_at = loop.time()
            elif loop.time() - looked_at >= EXPIRY_WARNING_EVERY.total_seconds():
                log_certificate(access, soon_only=True)
                looked_at = loop.time()
        except Exception:
            log.exception("kafka.tls_watch_failed")
