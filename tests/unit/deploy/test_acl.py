"""The ACLs derived from the services' specs and the partners of CONTRACTS.md (Identity)."""

import contracts as c
from contracts.internal import COUVERTURES, PROFILS
from deploy.acl import Binding, bindings


def _can(principal: str, operation: str, topic: str, prefix: str = "p.") -> bool:
    return Binding(principal, "topic", prefix + topic, operation) in bindings(prefix)


def test_a_service_writes_its_outputs_and_dlqs_and_nothing_else() -> None:
    assert _can("equipement", "write", PROFILS)
    assert _can("equipement", "write", c.dlq(c.EQUIPEMENT))
    assert not _can("equipement", "write", c.CATALOGUE)
    assert not _can("equipement", "write", COUVERTURES)
    assert not _can("equipement", "write", c.ALERTES)
    assert _can("formation", "write", COUVERTURES)
    assert not _can("formation", "write", PROFILS)
    assert _can("ressources", "write", c.ALERTES) and _can("ressources", "write", c.ALERTES_ETAT)
    # ressources dead-letters what it consumes, the internal topics included.
    assert _can("ressources", "write", c.dlq(PROFILS))
    assert not _can("ressources", "write", c.dlq(c.EQUIPEMENT))


def test_a_service_reads_its_inputs_in_its_own_group() -> None:
    assert _can("ressources", "read", COUVERTURES)
    assert _can("ressources", "read", PROFILS)
    assert not _can("ressources", "read", c.FORMATION)
    assert _can("equipement", "read", c.REFERENTIEL)
    groups = {(b.principal, b.name, b.prefixed) for b in bindings("p.") if b.resource == "group"}
    assert ("equipement", "p.equipement", False) in groups
    assert ("tableau-de-bord", "p.tableau-de-bord", True) in groups


def test_partners_and_dashboards_get_only_what_the_contract_says() -> None:
    """Each exactly: a topic grant made PREFIXED would also cover any topic named after it (a
    future alertes.compatibilite.v1.dlq), so the resource and its pattern are compared too."""
    partners = {
        (b.principal, b.operation, b.resource, b.name, b.prefixed)
        for b in bindings()
        if b.principal in ("ministere", "gar", "tableau-de-bord")
    }
    assert partners == {
        ("ministere", "write", "topic", c.REFERENTIEL, False),
        ("ministere", "write", "topic", c.CATALOGUE, False),
        ("gar", "write", "topic", c.CATALOGUE, False),
        ("tableau-de-bord", "read", "topic", c.ALERTES, False),
        ("tableau-de-bord", "read", "topic", c.ALERTES_ETAT, False),
        ("tableau-de-bord", "read", "group", "tableau-de-bord", True),
    }
    assert not [b for b in bindings() if b.prefixed and b.resource == "topic"], "no topic grant by prefix"


def test_every_name_carries_the_prefix() -> None:
    assert all(b.name.startswith("t1.") for b in bindings("t1."))


def test_each_dashboard_is_its_own_principal_with_its_own_groups(monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_DASHBOARDS", "tableau-de-bord, pilotage-14")
    groups = {(b.principal, b.name) for b in bindings("p.") if b.resource == "group" and b.prefixed}
    assert groups == {("tableau-de-bord", "p.tableau-de-bord"), ("pilotage-14", "p.pilotage-14")}
    assert _can("pilotage-14", "read", c.ALERTES) and _can("pilotage-14", "read", c.ALERTES_ETAT)
    assert not _can("pilotage-14", "read", c.EQUIPEMENT)


def test_a_dashboard_name_that_begins_another_or_takes_a_principal_is_refused() -> None:
    from deploy.acl import dashboards, dashboards_problems

    assert dashboards({}) == ("tableau-de-bord",), "one dashboard by default"
    problems = dashboards_problems({"KAFKA_DASHBOARDS": "pilotage,pilotage-14,gar,ressources,Pilotage X,form"})
    assert len(problems) == 5 and all(p.startswith("KAFKA_DASHBOARDS: ") for p in problems)
    assert any("'pilotage' begins 'pilotage-14'" in p for p in problems)
    assert any("'form' begins 'formation'" in p for p in problems), "the service's group would be its"
    assert sum("partner's principal" in p for p in problems) == 2, "gar and ressources"
    assert any("'Pilotage X' is not a principal's name" in p for p in problems)
