"""What `dead_letters` keeps of a refused record's key and CloudEvents attributes: searchable text,
bounded so that it always fits its index, and nothing PostgreSQL cannot store."""

import pytest
from aiokafka import ConsumerRecord

from services.common.messaging import dlq
from services.common.messaging.dlq import SHOWN, attributes, key_text


@pytest.mark.parametrize(
    "key, kept",
    [
        (None, None),
        (b"0350042F", "0350042F"),
        (b"0350042F/L1", "0350042F/L1"),
        ("Collège".encode(), "Collège"),
        (b"\xff\x00A", "\\xff0041"),  # not UTF-8
        (b"A\x00B", "\\x410042"),  # UTF-8, but PostgreSQL text holds no NUL
        (b"k" * 300, "k" * (SHOWN - 1) + "…"),
        (b"\xff" * 300, ("\\x" + "ff" * 300)[: SHOWN - 1] + "…"),
    ],
)
def test_a_key_is_kept_as_text_or_hex_and_shortened(key, kept):
    assert key_text(key) == kept
    assert kept is None or len(kept) <= SHOWN


@pytest.mark.parametrize(
    "value, found",
    [
        (b'{"source": "/gar", "id": "a-1", "type": "t", "subject": "0350042F", "data": {}}', None),
        (b'{"source": "/gar", "id": "a-1", "type": "t", "subject": "0350042F", "x": NaN}', None),
        (b'{"source": "/gar", "id": 42, "type": ["t"], "subject": null}', {"source": "/gar"}),
        (b'{"source": "/g\\u0000ar", "id": "a-1"}', {"source": "/gar", "id": "a-1"}),
        (b'{"id": "' + b"i" * 1000 + b'"}', {"id": "i" * (SHOWN - 1) + "…"}),
        (b"", {}),
        (None, {}),  # a tombstone
        (b"\xff not json", {}),
        (b'"prenom.nom@ac-rennes.fr"', {}),
        (b'[{"source": "/gar"}]', {}),
        (b'{"source": "/gar", "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}),
    ],
)
def test_the_attributes_are_read_as_far_as_the_value_allows(value, found):
    whole = {"source": "/gar", "id": "a-1", "type": "t", "subject": "0350042F"}
    assert attributes(value) == (whole if found is None else found)


def _copy_of(headers: list[tuple[str, bytes | None]], partition: int = 3, offset: int = 41) -> list:
    """The headers of the DLQ copy of a record read at t:partition@offset with these headers."""
    record = ConsumerRecord("t", partition, offset, 0, 0, b"k", b"v", None, 1, 1, headers)
    return list(dlq.dead_letter(dlq.Rejection(record, "uai-inconnu", "l'UAI n'est pas connu")).headers)


def test_a_dlq_copy_names_its_origin_and_a_replay_keeps_the_partner_headers_then_marks_it():
    partner = [("traceparent", b"00-abc-def-01"), ("odd", None), ("odd", b"\xff")]
    copy = _copy_of(partner)
    assert dlq.origin(copy) == ("t", 3, 41)
    assert dlq.replayed_headers(copy, ("t", 3, 41)) == [*partner, ("dlq-replay", b"t:3@41")]


def test_a_replay_refused_again_is_replayed_with_one_marker_the_latest():
    refused_again = _copy_of([("traceparent", b"x"), ("dlq-replay", b"t:3@41")], partition=5, offset=7)
    assert dlq.origin(refused_again) == ("t", 5, 7)
    assert dlq.replayed_headers(refused_again, ("t", 5, 7)) == [("traceparent", b"x"), ("dlq-replay", b"t:5@7")]


def test_a_copy_put_back_by_outbox_retry_is_replayed_with_the_partner_s_headers_as_they_came():
    """The retry dropped a partner's header of its marker's name and appended its marker after
    the dlq-* headers: a replay then took that marker for one of them and sent the copy's
    dlq-reason on as a partner's header."""
    from services.common.messaging import outbox_failed
    from services.common.messaging.outbox import dump_headers, load_headers

    partner = [("traceparent", b"x"), ("outbox-retry", b"the partner's own"), ("odd", None)]
    row = {"headers": dump_headers(_copy_of(partner)), "seq": 42}
    once = load_headers(outbox_failed._marked(row))
    twice = load_headers(outbox_failed._marked({"headers": dump_headers(once), "seq": 57}))
    for retried, seq in ((once, b"42"), (twice, b"57")):
        assert retried[-1] == ("outbox-retry", seq) and retried.count(("outbox-retry", seq)) == 1
        assert dlq.origin(retried) == ("t", 3, 41)
        assert dlq.replayed_headers(retried, ("t", 3, 41)) == [*partner, ("dlq-replay", b"t:3@41")]


def test_headers_without_the_dlq_tail_have_no_origin():
    assert dlq.origin([("traceparent", b"x")]) is None
    assert dlq.origin([]) is None
    names = ("dlq-reason", "dlq-message", "dlq-topic", "dlq-partition", "dlq-offset")
    assert dlq.origin([(name, b"?") for name in names]) is None, "an offset that is not a number"


@pytest.mark.parametrize("value", [None, b"", b"\xff{"])
def test_a_dlq_copy_keeps_the_value_as_it_was_null_included(value):
    record = ConsumerRecord("t", 0, 1, 0, 0, b"k", value, None, 1, 0, [])
    assert dlq.dead_letter(dlq.Rejection(record, "json-invalide", "pas un objet JSON")).value == value


def _refused(topic: str, type_: str, key: bytes, subject: str) -> ConsumerRecord:
    value = f'{{"source": "/rectorats/14", "id": "e1", "type": "{type_}", "subject": "{subject}"}}'.encode()
    return ConsumerRecord(topic, 0, 1, 0, 0, key, value, None, len(key), len(value), [])


TEACHER = "T0123456789abc"
SUIVIE = "fr.education.formation.formation-suivie.v1"
PUBLIEE = "fr.education.ressources.ressource-publiee.v1"


@pytest.mark.parametrize(
    "topic, type_, key, kept",
    [
        ("p.formation.declarations.v1", SUIVIE, TEACHER, None),
        # A formation-suivie sent to another partner topic (type-hors-topic): its teacher_id too.
        ("p.ressources.catalogue.v1", SUIVIE, TEACHER, None),
        ("p.equipement.declarations.v1", SUIVIE, TEACHER, None),
        ("referentiel.etablissements.v1", SUIVIE, TEACHER, None),
        ("p.formation.declarations.v1", "fr.education.formation.affectation.v1", "0350042F", "0350042F"),
        ("p.equipement.declarations.v1", "fr.education.equipement.lot.v1", "0350042F", "0350042F"),
        ("p.ressources.catalogue.v1", PUBLIEE, "ark:/67375/R1", "ark:/67375/R1"),
        ("p.ressources.catalogue.v1", PUBLIEE, TEACHER, TEACHER),  # a resource_id, as the type says
        ("p.equipement.declarations.v1", PUBLIEE, TEACHER, None),  # not on the catalogue: not a resource's
    ],
)
def test_on_the_partners_topics_a_key_or_subject_is_kept_only_if_it_cannot_be_a_teacher_id(topic, type_, key, kept):
    source, event_id, found_type, subject, found_key = dlq.searchable(_refused(topic, type_, key.encode(), key))
    assert (source, event_id, found_type) == ("/rectorats/14", "e1", type_)
    assert (subject, found_key) == (kept, kept)
