"""Who may do what on the platform's Kafka: the ACLs of CONTRACTS.md (Identity), derived.

The brokers refuse whatever no ACL allows (StandardAuthorizer, allow.everyone.if.no.acl.found
false), so each principal gets exactly:

- each platform service, from its `ServiceSpec`: READ of every topic it `consumes` and of its
  consumer group (its name), WRITE of every topic it `publishes` and of the DLQ of each topic in
  `dead_letters_for`. A new service's spec in `services.specs.specs()` brings its ACLs along;
- `ministere`: WRITE of the référentiel and the catalogue; `gar`: WRITE of the catalogue;
- each dashboard (KAFKA_DASHBOARDS, `tableau-de-bord` by default: `dashboards`), its own
  principal: READ of the alerts, their stream and their table (alertes.etat.v1, which
  CONTRACTS.md offers dashboards), with consumer groups whose name starts with its own name, so
  that no dashboard can join or move another's group.

Nothing else: partners and dashboards read no declaration topic and no DLQ, and write no
internal topic. `admin` is a super user and needs none. WRITE and READ imply DESCRIBE, and WRITE
on a topic allows an idempotent producer. Every name carries the topic prefix (the tests'
isolation), so a test's services run as their own principals on the test's topics.

    python -m deploy.acl [--prefix P]    # print the bindings
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
)

import contracts as c
from services.common.messaging.connection import KafkaAccess

DASHBOARD = "tableau-de-bord"
OPERATOR = "operateur"
"""The operators' principal on the Kubernetes cluster, a super user (deploy/k8s/strimzi/kafka.yaml's
superUsers: `CN=operateur`, as Strimzi names a principal of a certificate), as `admin` is
locally: the rebuild, the restore and the dead letters' replay read the services' own output
topics and DLQs, which no service may read."""
PARTNER_WRITES = {"ministere": (c.REFERENTIEL, c.CATALOGUE), "gar": (c.CATALOGUE,)}
DASHBOARD_READS = (c.ALERTES, c.ALERTES_ETAT)
DASHBOARDS = "KAFKA_DASHBOARDS"
"""The setting naming the dashboards' principals, comma-separated (DASHBOARD when unset)."""
_PRINCIPAL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")  # a KafkaUser's name too (DNS label)
_RESERVED = ("admin", OPERATOR, *PARTNER_WRITES)


def dashboards(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The dashboards' principals, each reading the alerts in the consumer groups named with its
    own name first (CONTRACTS.md, Identity: a principal and a prefix per dashboard)."""
    environ = os.environ if environ is None else environ
    if problems := dashboards_problems(environ):
        raise ValueError("; ".join(problems))
    return _dashboard_names(environ)


def _dashboard_names(environ: Mapping[str, str]) -> tuple[str, ...]:
    names = [name.strip() for name in environ.get(DASHBOARDS, "").split(",") if name.strip()]
    return tuple(dict.fromkeys(names)) or (DASHBOARD,)


def dashboards_problems(environ: Mapping[str, str]) -> list[str]:
    """What is wrong with KAFKA_DASHBOARDS, one line each, naming the variable and the rule."""
    return dashboard_names_problems(_dashboard_names(environ))


def dashboard_names_problems(names: tuple[str, ...]) -> list[str]:
    """What is wrong with these dashboards' names, one line each (as KAFKA_DASHBOARDS's)."""
    from services.specs import specs

    services = [spec.name for spec in specs()]
    taken = {*_RESERVED, *services}
    problems = [
        f"{DASHBOARDS}: {name!r} is not a principal's name (lowercase letters, digits and inner hyphens, 63 at most)"
        for name in names
        if not _PRINCIPAL.fullmatch(name)
    ]
    problems += [
        f"{DASHBOARDS}: {name!r} is the platform's or a partner's principal" for name in names if name in taken
    ]
    # A dashboard's groups are those named with its name first: it must begin no other's group
    # name (another dashboard's prefix, or a service's group, named after the service).
    problems += [
        f"{DASHBOARDS}: {name!r} begins {other!r}, whose consumer groups would then be its too"
        for name in names
        for other in (*names, *services)
        if other != name and other.startswith(name)
    ]
    return problems


def acl_filter(principal: str | None = None) -> ACLFilter:
    """Every ACL (of `principal`, when given: `User:NAME`)."""
    return ACLFilter(
        principal=principal,
        host="*",
        operation=ACLOperation.ANY,
        permission_type=ACLPermissionType.ANY,
        resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
    )


class AclError(RuntimeError):
    """The broker refused some ACLs."""


@dataclass(frozen=True, order=True)
class Binding:
    principal: str
    resource: Literal["topic", "group"]
    name: str
    operation: Literal["read", "write"]
    prefixed: bool = False
    """The binding covers every resource whose name starts with `name`."""

    def __str__(self) -> str:
        pattern = "*" if self.prefixed else ""
        return f"User:{self.principal} {self.operation.upper()} {self.resource} {self.name}{pattern}"

    def acl(self) -> ACL:
        return ACL(
            principal=f"User:{self.principal}",
            host="*",
            operation=ACLOperation.READ if self.operation == "read" else ACLOperation.WRITE,
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(
                ResourceType.TOPIC if self.resource == "topic" else ResourceType.GROUP,
                self.name,
                ACLResourcePatternType.PREFIXED if self.prefixed else ACLResourcePatternType.LITERAL,
            ),
        )


def bindings(prefix: str = "", dashboard_names: tuple[str, ...] | None = None) -> list[Binding]:
    """Every binding of the platform for topics and groups named with `prefix`; the dashboards
    `dashboard_names`, else those of KAFKA_DASHBOARDS (`dashboards`)."""
    from services.specs import specs

    out: set[Binding] = set()
    for spec in specs():
        out |= {Binding(spec.name, "topic", prefix + t, "read") for t in spec.consumes}
        out.add(Binding(spec.name, "group", prefix + spec.name, "read"))
        written = [p.topic for p in spec.publishes] + [c.dlq(t) for t in spec.dead_letters_for]
        out |= {Binding(spec.name, "topic", prefix + t, "write") for t in written}
    for partner, topics in PARTNER_WRITES.items():
        out |= {Binding(partner, "topic", prefix + t, "write") for t in topics}
    for dashboard in dashboards() if dashboard_names is None else dashboard_names:
        out |= {Binding(dashboard, "topic", prefix + t, "read") for t in DASHBOARD_READS}
        out.add(Binding(dashboard, "group", prefix + dashboard, "read", prefixed=True))
    return sorted(out)


def apply(admin_access: KafkaAccess, prefix: str = "", timeout: float = 30, exact: bool = False) -> int:
    """Create the bindings on the broker, as a super user, and return once the broker enforces
    them (the controller takes them first, the broker's authorizer a moment later); those
    already there are kept as they are, so applying again changes nothing. `exact`, on a broker
    the caller owns (`./dev up`'s): the other ACLs of the same principals on resources named
    with `prefix` are deleted, a grant the code no longer makes being kept otherwise (Strimzi
    makes a KafkaUser's ACLs exactly its resource's). How many were deleted."""
    wanted = {binding.acl() for binding in bindings(prefix)}
    principals = {acl.principal for acl in wanted}
    admin = KafkaAdminClient(**admin_access.kafka_python(), client_id="feo-acl")
    try:
        result = admin.create_acls(list(wanted))
        if result["failed"]:
            raise AclError(f"the broker refused {len(result['failed'])} ACLs: {result['failed'][0]}")
        stale = [
            acl
            for acl in (held_under(admin, prefix) if exact else [])
            if acl.principal in principals and acl not in wanted
        ]
        if stale:
            results = admin.delete_acls([exact_filter(acl) for acl in stale])
            if refused := sorted({error.__name__ for _, _, error in results if error.errno != 0}):
                raise AclError(f"the broker refused to delete ACLs: {', '.join(refused)}")
        deadline = time.monotonic() + timeout
        while True:
            held = set(admin.describe_acls(acl_filter())[0])
            missing, left = wanted - held, held.intersection(stale)
            if not missing and not left:
                return len(stale)
            if time.monotonic() > deadline:
                raise AclError(f"{len(missing)} ACLs not in force, {len(left)} not deleted after {timeout} s")
            time.sleep(0.05)
    finally:
        admin.close()


def held_under(admin: KafkaAdminClient, prefix: str) -> list[ACL]:
    """The ACLs the broker holds, of any principal, on resources named with `prefix`."""
    return [
        acl for acl in admin.describe_acls(acl_filter())[0] if acl.resource_pattern.resource_name.startswith(prefix)
    ]


def exact_filter(acl: ACL) -> ACLFilter:
    """The filter matching this ACL alone."""
    pattern = acl.resource_pattern
    return ACLFilter(
        principal=acl.principal,
        host=acl.host,
        operation=acl.operation,
        permission_type=acl.permission_type,
        resource_pattern=ResourcePatternFilter(pattern.resource_type, pattern.resource_name, pattern.pattern_type),
    )


def revoke(admin_access: KafkaAccess, principals: Collection[str], timeout: float = 30) -> None:
    """Delete every ACL of these principals, on any resource, as a super user, and return once the
    broker no longer lists any (as `apply`, it enforces what the controller took a moment later)."""
    if not principals:
        return
    filters = [acl_filter(f"User:{name}") for name in principals]
    admin = KafkaAdminClient(**admin_access.kafka_python(), client_id="feo-acl")
    try:
        results = admin.delete_acls(filters)
        if refused := sorted({error.__name__ for _, _, error in results if error.errno != 0}):
            raise AclError(f"the broker refused to delete ACLs: {', '.join(refused)}")
        deadline = time.monotonic() + timeout
        while left := [acl for f in filters for acl in admin.describe_acls(f)[0]]:
            if time.monotonic() > deadline:
                raise AclError(f"{len(left)} ACLs still in force {timeout} s after their deletion, e.g. {left[0]}")
            time.sleep(0.05)
    finally:
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.acl", description="Print the platform's ACLs.")
    parser.add_argument("--prefix", default="", help="topic and group prefix (the tests')")
    prefix = parser.parse_args().prefix
    if problems := dashboards_problems(os.environ):
        parser.exit(2, "".join(f"error: {problem}\n" for problem in problems))
    for binding in bindings(prefix):
        print(binding)


if __name__ == "__main__":
    main()
