"""A service on a PostgreSQL role of its own: the role owns its schema, created for it beforehand
(`CREATE SCHEMA … AUTHORIZATION`), and has no right on the database beyond connecting (PostgreSQL's
default for a new role). Its pool opens and its migrations run; another service's schema is
closed to it."""

from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

import contracts as c
from helpers import college, eventually, running, send, uai
from services.common.storage import db
from services.common.storage.db import SchemaAbsent, create_pool, migrate
from services.equipement.app import SPEC as EQUIPEMENT
from services.ressources.app import SPEC
from test_dead_letters import lot


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
        other = await admin.fetchval("SELECT current_user")
        with pytest.raises(SchemaAbsent, match=f"member of '{other}'"):  # a tool making it for a service
            await create_pool(url, "formation", owner=other)
    finally:
        await dropped(admin, role)


async def dropped(admin: asyncpg.Connection, *roles: str) -> None:
    """The roles and what they own dropped (roles are the cluster's, not the test's database's),
    then the admin's connection closed."""
    try:
        for role in roles:
            if await admin.fetchval("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", role):
                await admin.execute(f"DROP OWNED BY {db.quoted(role)} CASCADE")
                await admin.execute(f"DROP ROLE {db.quoted(role)}")
    finally:
        await admin.close()


def schema_owners_sql(schema: str) -> str:
    """The roles owning `schema` and what it holds."""
    return (
        f"SELECT nspowner::regrole::text AS owner FROM pg_namespace WHERE nspname = '{schema}' UNION "
        f"SELECT relowner::regrole::text FROM pg_class WHERE relnamespace = '{schema}'::regnamespace"
    )


async def test_a_rebuild_and_a_restore_by_an_operator_keep_the_schema_the_service_s_role_s(
    kafka, settings, database_url, unique, tmp_path
):
    """The operator's role (a member of each service's, may create schemas) makes a schema anew
    in a rebuild and a restore: made its own, the schema was closed to the service after the
    switch, every batch refused ("permission denied for schema")."""
    from deploy import reconstruire, sauvegarde

    admin = await asyncpg.connect(database_url)
    role, operator = f"feo_{unique}", f"feo_{unique}_op"
    as_service = settings.model_copy(update={"database_url": as_role(database_url, role, unique)})
    as_operator = settings.model_copy(update={"database_url": as_role(database_url, operator, unique)})
    bootstrap, where = kafka.bootstrap_servers, uai("0350911")
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{unique}'")
        await admin.execute(f"CREATE ROLE {operator} LOGIN PASSWORD '{unique}' IN ROLE {role}")
        await admin.execute(
            f"GRANT CREATE ON DATABASE {await admin.fetchval('SELECT current_database()')} TO {operator}"
        )
        await admin.execute(f"CREATE SCHEMA equipement AUTHORIZATION {role}")
        async with running(EQUIPEMENT, as_service) as pipeline:
            await send(bootstrap, settings.topic(c.REFERENTIEL), [(where, college(where))])
            await send(bootstrap, settings.topic(c.EQUIPEMENT), [(where, lot(where, "L1", 1))])
            await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM lots"), what="the lot stored")

        former = await reconstruire.rebuild(EQUIPEMENT, as_operator)
        assert {r["owner"] for r in await admin.fetch(schema_owners_sql("equipement"))} == {role}
        await admin.execute(f'DROP SCHEMA "{former}" CASCADE')

        latest = await admin.fetchval(  # a backup of before the latest migration: the catch-up migrates it
            "DELETE FROM equipement.schema_migrations WHERE name = "
            "(SELECT max(name) FROM equipement.schema_migrations WHERE name LIKE 'equipement/%') RETURNING name"
        )
        backup = tmp_path / "sauvegarde.dump"
        sauvegarde.backup(as_operator.database_url, backup)
        assert await sauvegarde.restore(as_operator, backup) == [EQUIPEMENT.name]
        assert await admin.fetchval("SELECT count(*) FROM equipement.schema_migrations WHERE name = $1", latest) == 1
        assert {r["owner"] for r in await admin.fetch(schema_owners_sql("equipement"))} == {role}
        await admin.execute("DROP SCHEMA equipement CASCADE")  # a new server: its owner is the dump's
        assert await sauvegarde.restore(as_operator, backup) == [EQUIPEMENT.name]
        assert {r["owner"] for r in await admin.fetch(schema_owners_sql("equipement"))} == {role}

        async with running(EQUIPEMENT, as_service) as pipeline:  # and the service works on it
            await send(bootstrap, settings.topic(c.EQUIPEMENT), [(where, lot(where, "L2", 2))])
            await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 2 FROM lots"), what="the next lot")
    finally:
        await dropped(admin, operator, role)


async def test_the_provisioning_gives_a_running_deployment_s_schemas_to_the_services_roles(database_url, unique):
    """A deployment whose one role made and migrated every schema (as all did before): each
    schema and all it holds become its service's role's, which works in it and in no other; the
    former role, the operators' tools' from then on, still works in each. Run twice, the same."""
    from deploy.roles import provisioning_sql, role_of

    admin = await asyncpg.connect(database_url)
    shared, prefix = f"feo_{unique}", f"feo_{unique}"
    services = {"equipement": EQUIPEMENT, "ressources": SPEC}
    try:
        await admin.execute(f"CREATE ROLE {shared} LOGIN PASSWORD '{unique}'")
        await admin.execute(f"GRANT CREATE ON DATABASE {await admin.fetchval('SELECT current_database()')} TO {shared}")
        for name, spec in services.items():
            pool = await create_pool(as_role(database_url, shared, unique), name)
            try:
                await migrate(pool, name, spec.package_dir)
            finally:
                await pool.close()
        sql = provisioning_sql(shared, {name: name for name in services}, prefix=prefix)
        for _ in range(2):
            await admin.execute(sql)
        roles = {name: role_of(name, prefix) for name in services}
        for name, role in roles.items():
            assert {r["owner"] for r in await admin.fetch(schema_owners_sql(name))} == {role}
            await admin.execute(f"ALTER ROLE {role} PASSWORD '{unique}'")
        pool = await create_pool(as_role(database_url, roles["equipement"], unique), "equipement")
        try:
            await migrate(pool, "equipement", EQUIPEMENT.package_dir)
            assert await pool.fetchval("DELETE FROM outbox RETURNING 1") is None
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await pool.execute("DELETE FROM ressources.outbox")
        finally:
            await pool.close()
        operator = await asyncpg.connect(as_role(database_url, shared, unique))
        try:
            for name in services:
                assert await operator.fetchval(f"SELECT count(*) FROM {name}.outbox") == 0
        finally:
            await operator.close()
    finally:
        await dropped(admin, *(role_of(name, prefix) for name in services), shared)


async def test_names_holding_dollars_are_provisioned(database_url, unique):
    """PostgreSQL names may hold `$` (not first): the provisioning's `DO` blocks, quoted by
    `$$`, refused them (a restore of a schema owned by such a role failed the same way)."""
    from deploy.roles import provisioning_sql, role_of

    admin = await asyncpg.connect(database_url)
    operator, prefix, schema = f"op${unique}$$", f"feo${unique}$feo$", f"s${unique}$$x"
    role = role_of("equipement", prefix)
    try:
        await admin.execute(f"CREATE ROLE {db.quoted(operator)}")
        await admin.execute(f"CREATE SCHEMA {db.quoted(schema)}; CREATE TABLE {db.quoted(schema)}.t (n serial)")
        await admin.execute(provisioning_sql(operator, {"equipement": schema}, prefix=prefix))
        owners = {r["owner"] for r in await admin.fetch(schema_owners_sql(schema))}
        assert owners == {db.quoted(role)}  # regrole's text quotes a name holding `$`
        assert await admin.fetchval("SELECT pg_has_role($1, $2, 'MEMBER')", operator, role)
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {db.quoted(schema)} CASCADE")
        await dropped(admin, role, operator)
