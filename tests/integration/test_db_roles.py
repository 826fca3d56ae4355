"""A service on a PostgreSQL role of its own: the role owns its schema, created for it beforehand
(`CREATE SCHEMA … AUTHORIZATION`), and has no right on the database beyond connecting (PostgreSQL's
default for a new role). Its pool opens and its migrations run; another service's schema is
closed to it."""

from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from services.common.storage import db
from services.common.storage.db import SchemaAbsent, create_pool, migrate
from services.ressources.app import SPEC


def as_role(url: str, role: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(role)}:{quote(password)}@{host}"))


async def test_a_service_opens_and_migrates_its_schema_on_a_role_that_owns_only_it(database_url, unique):
    """PostgreSQL checks CREATE on the database before `CREATE SCHEMA IF NOT EXISTS`, even for a
    schema that exists: every start on such a role was refused."""
    admin = await asyncpg.connect(database_url)
    role = f"feo_{unique}"
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{unique}'")
        await admin.execute(f"CREATE SCHEMA ressources AUTHORIZATION {role}")
        await admin.execute("CREATE SCHEMA equipement")  # another service's, its own role's
        await admin.execute("CREATE TABLE equipement.outbox (seq bigint)")
        url = as_role(database_url, role, unique)
        pool = await create_pool(url, "ressources")
        try:
            await migrate(pool, "ressources", SPEC.package_dir)
            applied = {r["name"] for r in await pool.fetch("SELECT name FROM schema_migrations")}
            assert applied == {name for name, _ in db._migration_files(SPEC.package_dir)}
            owners = await admin.fetch(
                "SELECT DISTINCT relowner::regrole::text AS owner FROM pg_class "
                "WHERE relnamespace = 'ressources'::regnamespace"
            )
            assert [r["owner"] for r in owners] == [role]
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await pool.execute("INSERT INTO equipement.outbox VALUES (1)")
        finally:
            await pool.close()
        with pytest.raises(SchemaAbsent) as absent:  # said so, the way out named
            await create_pool(url, "formation")
        assert "'formation'" in str(absent.value) and f"'{role}'" in str(absent.value)
        assert "AUTHORIZATION" in str(absent.value)
    finally:
        await admin.execute(f"DROP OWNED BY {role} CASCADE")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
