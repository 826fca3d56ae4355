"""The inbox's scope of an event (source, id) is unique within (storage/inbox.py): the domain of
its type, read in Python as PostgreSQL reads it for the column `domaine`."""

import pytest

import contracts as c
from services.common.storage.inbox import scope


@pytest.mark.parametrize(
    ("type_", "split_part"),  # split_part(type_, '.', 3), as PostgreSQL answers it
    [
        ("fr.education.referentiel.etablissement.v1", "referentiel"),
        ("fr.education.plateforme.profil-lot.v1", "plateforme"),
        ("a.b.c", "c"),
        ("a.b.c.d.e.f", "c"),
        ("a..c.d", "c"),
        ("a.b", ""),
        ("", ""),
    ],
)
def test_the_scope_is_postgresql_s_split_part(type_, split_part):
    """A scope unlike the column's: an event inserted, not found among those returned, and
    dropped as a duplicate for good."""
    assert scope(type_) == split_part


def test_each_topic_partners_write_has_a_domain_of_its_own():
    """What keeps a catalogue record, which two partners write, from taking first an id of the
    référentiel's (contract audit s69 F1)."""
    partners = [t for t in c.TOPIC_TYPES if t not in (c.ALERTES, c.ALERTES_ETAT)]
    domains = {topic: {scope(t) for t in c.TOPIC_TYPES[topic]} for topic in partners}
    assert all(len(d) == 1 for d in domains.values()), domains
    assert len(set.union(*domains.values())) == len(partners)
