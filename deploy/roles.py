"""A PostgreSQL role per service, as Kafka has a principal per service (README, Security).

Each service's role owns its schema and nothing else, so that a service taken over cannot write
another's tables (its outbox, which that service's relay would publish under its own Kafka
principal). The operators' tools (`./dev rebuild`, `./dev restore`, `./dev dead-letters`, the
nightly backup) keep the role they had, the one that made the schemas until now: made a member
of each service's role, it works in every schema and makes a schema anew as its service's
(db.owner_of). The services need no right on the database beyond PostgreSQL's defaults
(CONNECT, TEMP).

    python -m deploy.roles --operator ROLE [--schema SERVICE=SCHEMA ...]   # print the SQL

prints what a superuser runs once, and again after a new service or to repair (each statement
may run again): `python -m deploy.roles --operator feo | psql "$ADMIN_URL" -v ON_ERROR_STOP=1`.
Then give each role its password (`\\password feo_formation` in psql) and its service the URL
(on Kubernetes, the secret `feo-database-<service>`; README, Kubernetes). A deployment already
running keeps running through it: the operator's role, the services' until their new secrets
come, stays a member of each.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from services.common.storage.db import do_block, given_to_sql, quoted, sql_name


def role_of(service: str, prefix: str = "feo") -> str:
    """The PostgreSQL role of a service."""
    return f"{prefix}_{service}"


def provisioning_sql(operator: str, schemas: Mapping[str, str], prefix: str = "feo") -> str:
    """The SQL giving each service (`schemas`: its name, its schema) a role that owns its schema
    and all it holds (`{prefix}_{service}`), of which `operator` is a member."""
    sql_name(operator)
    lines = [
        f"-- The services' roles; `{operator}`, the operators' tools', a member of each.",
        do_block(
            "BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO %I', current_database(), "
            f"'{operator.replace(chr(39), chr(39) * 2)}'); END"
        ),
    ]
    for service, schema in schemas.items():
        role = role_of(service, prefix)
        literal = role.replace("'", "''")
        lines += [
            f"-- {service}",
            do_block(
                f"BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{literal}') "
                f"THEN CREATE ROLE {quoted(role)} LOGIN; END IF; END"
            ),
            f"GRANT {quoted(role)} TO {quoted(operator)};",
            f"CREATE SCHEMA IF NOT EXISTS {quoted(schema)} AUTHORIZATION {quoted(role)};",
            f"ALTER SCHEMA {quoted(schema)} OWNER TO {quoted(role)};",
            given_to_sql(schema, role).rstrip("\n"),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from services.specs import specs

    parser = argparse.ArgumentParser(prog="python -m deploy.roles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--operator", required=True, help="the role the operators' tools connect as")
    parser.add_argument(
        "--prefix",
        default="feo",
        help="the roles' prefix (`feo`: feo_formation…); roles are the server's, not a database's: "
        "another deployment on the same server takes another",
    )
    parser.add_argument(
        "--schema",
        action="append",
        default=[],
        metavar="SERVICE=SCHEMA",
        help="a service's schema when its DB_SCHEMA is set (default: its name)",
    )
    args = parser.parse_args(argv)
    schemas = {spec.name: spec.name for spec in specs()}
    for given in args.schema:
        service, _, schema = given.partition("=")
        if service not in schemas or not schema:
            parser.error(f"--schema {given}: SERVICE=SCHEMA, SERVICE one of {', '.join(schemas)}")
        schemas[service] = schema
    try:
        print(provisioning_sql(args.operator, schemas, args.prefix), end="")
    except ValueError as e:
        parser.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
