"""What `dead_letters` keeps of a refused record's key and CloudEvents attributes: searchable text,
bounded so that it always fits its index, and nothing PostgreSQL cannot store."""

import pytest

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
