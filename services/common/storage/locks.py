"""Locks per key, so replicas of a service wait for each other only on the keys they share.

A service derives state per key (a UAI's profile, coverage or alerts) from records that may
arrive on several partitions (and so on several replicas). The rule that keeps derived state
exact without a schema-wide lock: a transaction writes its inputs, then locks the keys whose
state it derives, then reads what it derives from and writes the result. Transactions that
derive the same key are serialised by its lock, and each reads (READ COMMITTED: every
statement sees what was committed before it started) the inputs of those before it; a
transaction whose inputs another could not see yet derives that key again itself, later.

Keys are locked in one statement, sorted, so two transactions never wait for each other in a
cycle. A transaction that locks in several steps does so in a fixed order of namespaces
(`NAMESPACES`), each step sorted. Locks are row locks on `verrous` (held until the
transaction ends), created on first use.
"""

from collections.abc import Iterable

from services.common.storage.db import Conn

NAMESPACES = ("enseignant", "uai")
"""The order in which a transaction that locks several namespaces takes them."""


async def lock_keys(conn: Conn, namespace: str, keys: Iterable[str]) -> None:
    """Hold `keys` of `namespace` until the transaction ends (waiting for whoever holds them)."""
    if namespace not in NAMESPACES:
        raise ValueError(f"unknown lock namespace {namespace!r}; known: {', '.join(NAMESPACES)}")
    names = sorted({f"{namespace}:{k}" for k in keys})
    if not names:
        return
    # One statement: a new key's row is inserted (and so held), an existing one is locked by the
    # DO UPDATE, which updates nothing (WHERE false) but locks every row it conflicts with, in
    # the sorted order of `names`. A third less than an insert then a SELECT … FOR UPDATE.
    await conn.execute(
        "INSERT INTO verrous AS v (cle) SELECT unnest($1::text[]) "
        "ON CONFLICT (cle) DO UPDATE SET cle = v.cle WHERE false",
        names,
    )
