"""The outbox's form of a record's headers (jsonb): byte-exact both ways, whatever a partner
put in them, and rows written before a form was added still read."""

from services.common.messaging.outbox import dump_headers, load_headers


def test_any_header_comes_back_byte_exact_and_a_nul_in_a_name_is_not_written_as_text():
    headers = (
        ("content-type", b"application/cloudevents+json"),
        ("trace\x00id", b"\x00\xff"),  # PostgreSQL's jsonb holds no NUL character in a text
        ("vide", None),
        ("trace\x00id", None),
        ("é", b""),
    )
    dumped = dump_headers(headers)
    assert "\\u0000" not in dumped
    assert load_headers(dumped) == headers


def test_rows_written_in_the_former_form_are_read():
    assert load_headers('[["traceparent", "MDA="], ["x", null]]') == (("traceparent", b"00"), ("x", None))
