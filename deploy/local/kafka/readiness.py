"""Whether the local broker is ready: a client fetches metadata listing it (it is then unfenced);
and the SCRAM users added to a running broker.

Only an asyncio client (aiokafka) can ask, yet the readiness wait is synchronous and is called
from inside running event loops (async fixtures, the demo), where `asyncio.run` is refused:
each probe therefore runs on a fresh loop in a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from kafka.admin import KafkaAdminClient, UserScramCredentialDeletion, UserScramCredentialUpsertion

from deploy.local.kafka.jars import KafkaRuntimeError
from services.common.messaging.connection import KafkaAccess


def serves_metadata(access: KafkaAccess) -> bool:
    """True once a client gets metadata listing a broker at `access`.

    The caller does not wait for the thread when interrupted (Ctrl-C), so it can stop the
    broker at once; the probe then ends by itself.
    """
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(asyncio.run, _metadata_available(access)).result()
    finally:
        pool.shutdown(wait=False)


async def _metadata_available(access: KafkaAccess) -> bool:
    admin = AIOKafkaAdminClient(**access.aiokafka(), request_timeout_ms=2000)
    try:
        await admin.start()
        return bool((await admin.describe_cluster())["brokers"])
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        await admin.close()


def add_scram_users(
    admin_access: KafkaAccess, passwords: Mapping[str, str], altered: Callable[[], None], timeout: float = 30
) -> None:
    """Create (or reset) the SCRAM-SHA-512 users `passwords` names, as the super user, call
    `altered` once the controller took them (where the caller keeps their passwords: a start
    interrupted by the wait below would otherwise make new ones, and reset users the broker
    knows), and return once the broker knows each of them (it takes them from the controller a
    moment later: a client of a new user connecting at once was refused). A reset password is
    not waited for: the broker's answer says which users it knows, not with which password."""
    admin = KafkaAdminClient(**admin_access.kafka_python(), client_id="feo-runtime")
    try:
        alterations = [UserScramCredentialUpsertion(name, "SCRAM-SHA-512", pw) for name, pw in passwords.items()]
        _alter_scram_users(admin, alterations, "SCRAM users not created")
        altered()
        _until_known(admin, list(passwords), known=True, timeout=timeout)
    finally:
        admin.close()


def delete_scram_users(admin_access: KafkaAccess, names: Collection[str], timeout: float = 30) -> None:
    """Delete the SCRAM-SHA-512 users `names` (one already gone is no error), as the super user,
    and return once the broker no longer knows them (it takes them from the controller a moment later)."""
    admin = KafkaAdminClient(**admin_access.kafka_python(), client_id="feo-runtime")
    try:
        alterations = [UserScramCredentialDeletion(name, "SCRAM-SHA-512") for name in names]
        _alter_scram_users(admin, alterations, "SCRAM users not deleted", absent_ok=True)
        _until_known(admin, list(names), known=False, timeout=timeout)
    finally:
        admin.close()


def _until_known(admin: KafkaAdminClient, names: list[str], known: bool, timeout: float) -> None:
    """Until the broker knows every one of `names` as a SCRAM user (`known`), or none of them."""
    deadline = time.monotonic() + timeout
    while True:
        # An unknown user comes back with an error and no credential.
        described = admin.describe_user_scram_credentials(names)
        if not (pending := [n for n in names if bool(described.get(n, {}).get("credential_infos")) != known]):
            return
        if time.monotonic() > deadline:
            said = "still unknown" if known else "still known"
            raise KafkaRuntimeError(f"SCRAM users {said} {timeout} s after their change: {', '.join(pending)}")
        time.sleep(0.05)


def _alter_scram_users(admin: KafkaAdminClient, alterations: list, failure: str, absent_ok: bool = False) -> None:
    failed = admin.alter_user_scram_credentials(alterations)
    # The messages name the user and the error only (no password ever reaches them).
    errors = {name: error for name, error in failed.items() if error and not (absent_ok and _absent(error))}
    if errors:
        raise KafkaRuntimeError(f"{failure}: {errors}")


def _absent(error: str) -> bool:
    """Whether the broker refused to delete a SCRAM user because there is none (already deleted)."""
    return "does not exist" in error
