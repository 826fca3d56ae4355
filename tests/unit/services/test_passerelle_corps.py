"""The passerelle's request bodies: content types, size limits read without holding more than
the cap, batches split into each event's bytes as sent (a repeated key or NaN stays in its
element, for the contract's parser to refuse that element alone)."""

import asyncio
import json
import random
import tracemalloc

import pytest

from contracts.parsing import MAX_RECORD_BYTES
from services.passerelle import corps
from services.passerelle.corps import (
    BATCHED,
    SKIPPED_TOKENS,
    STRUCTURED,
    WINDOWS,
    CorpsRefuse,
    limit,
    media_type,
    read,
    split,
)
from services.passerelle.settings import MAX_BATCH_EVENTS


@pytest.mark.parametrize(
    ("content_type", "mode"),
    [
        ("application/cloudevents+json", STRUCTURED),
        ("Application/CloudEvents+JSON; charset=utf-8", STRUCTURED),
        ("application/cloudevents-batch+json", BATCHED),
    ],
)
def test_the_two_modes_are_read_from_content_type(content_type, mode):
    assert media_type(content_type) == mode


@pytest.mark.parametrize("content_type", [None, "", "application/json", "text/plain", "application/cloudevents"])
def test_any_other_content_type_is_400_naming_the_accepted_ones(content_type):
    """CONTRACTS.md (Identity) lists 400 for a body that is not an event or a batch, no 415."""
    with pytest.raises(CorpsRefuse) as refused:
        media_type(content_type)
    assert refused.value.status == 400
    assert STRUCTURED in refused.value.message and BATCHED in refused.value.message


@pytest.mark.parametrize(
    ("content_type", "content_encoding", "named"),
    [
        ("application/cloudevents+json; charset=iso-8859-1", None, "charset autre que utf-8"),
        ('application/cloudevents-batch+json; charset="latin1"', None, "charset autre que utf-8"),
        ("application/cloudevents-batch+json", "gzip", "Content-Encoding"),
        ("application/cloudevents+json", "br", "Content-Encoding"),
    ],
)
def test_a_body_in_another_charset_or_compressed_is_400_saying_so(content_type, content_encoding, named):
    """Read as UTF-8 and uncompressed all the same: accented letters made each event
    `json-invalide`, a gzip body was "not a JSON array" (audit helper-166 #7)."""
    with pytest.raises(CorpsRefuse) as refused:
        media_type(content_type, content_encoding)
    assert refused.value.status == 400 and named in refused.value.message


@pytest.mark.parametrize("content_encoding", [None, "identity", " Identity "])
def test_utf8_said_in_any_spelling_and_no_compression_are_read(content_encoding):
    assert media_type('application/cloudevents+json; Charset="UTF-8"', content_encoding) == STRUCTURED
    assert media_type("application/cloudevents-batch+json;charset=utf8", content_encoding) == BATCHED


def test_a_structured_event_is_limited_to_a_record_value():
    assert limit(STRUCTURED, 16 * 1024 * 1024) == MAX_RECORD_BYTES
    assert limit(BATCHED, 16 * 1024 * 1024) == 16 * 1024 * 1024
    assert limit(STRUCTURED, 4096) == 4096


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


async def test_a_declared_length_beyond_the_cap_is_refused_before_reading():
    async def never_read():
        raise AssertionError("the body was read")
        yield b""

    with pytest.raises(CorpsRefuse) as refused:
        await read(never_read(), "2049", 2048, 60)
    assert refused.value.status == 413
    assert "2049" in refused.value.message and "2048" in refused.value.message


async def test_a_body_longer_than_it_declared_is_cut_at_the_cap():
    read_so_far = []

    async def chunks():
        for _ in range(100):
            read_so_far.append(1)
            yield b"x" * 1000

    with pytest.raises(CorpsRefuse) as refused:
        await read(chunks(), "10", 4096, 60)
    assert refused.value.status == 413
    assert len(read_so_far) == 5  # stopped at the first chunk past the cap


async def test_a_body_that_does_not_come_in_time_is_408():
    async def stalled():
        yield b"["
        await asyncio.sleep(60)
        yield b"]"

    with pytest.raises(CorpsRefuse) as refused:
        await read(stalled(), None, 4096, 0.05)
    assert (refused.value.status, refused.value.message) == (408, "corps pas reçu en entier en 0.05 s")


async def test_a_body_within_the_cap_is_read_whole():
    assert await read(_chunks(b"[", b"]"), None, 2, 60) == b"[]"


def test_a_batch_is_split_into_each_event_s_bytes_as_sent():
    first = b'{"id": "a",  "type": "t1", "n": 1e400}'
    second = '{"id":"é","x":[1,{"y":"]"}]}'.encode()
    body = b" [ " + first + b" ,\n" + second + b"\t] \n"
    elements = split(body, BATCHED)
    assert [e.raw for e in elements] == [first, second]
    assert [(e.id, e.type) for e in elements] == [("a", "t1"), ("é", None)]


def test_a_repeated_key_nan_or_non_utf8_string_stays_in_its_element():
    repeated = b'{"id": "r", "source": "/gar", "source": "/ministere"}'
    nan = b'{"id": "n", "data": {"quantity": NaN}}'
    latin1 = b'{"id": "l", "nom": "\xe9cole"}'
    huge = b'{"id": "h", "q": ' + b"9" * 5000 + b"}"
    elements = split(b"[" + b",".join([repeated, nan, latin1, huge]) + b"]", BATCHED)
    assert [e.raw for e in elements] == [repeated, nan, latin1, huge]
    assert [e.id for e in elements] == ["r", "n", "l", "h"]


def test_elements_longer_than_the_first_window_are_split_whole():
    """Past the first window an element is read again within the second: a string, an escape
    or a number the first window cuts in two is read whole, its bytes exact."""
    first = WINDOWS[0]
    long_number = b"7" * (first + 10)
    elements = [long_number]
    for shift in range(6):  # a \u escape across the first window's edge, wherever it falls in it
        elements.append(b'{"id": "e%d", "s": "' % shift + b"x" * shift + b"\\u00e9" * (first // 6 + 2) + b'"}')
    for cut in range(1, 10):  # a literal across it, `cut` characters of it in the first window
        head = b'{"id": "i%d", "p": "' % cut
        tail = b'", "v": -Infinity}'
        elements.append(head + b"p" * (first - cut - len(head) - len(b'", "v": ')) + tail)
    for digits in range(first - 3, first):  # a number's exponent or fraction across it
        elements += [b"1" * digits + b"e+12", b"1" * digits + b".25"]
    elements.append(b'{"id": "big", "padding": "' + b"p" * (MAX_RECORD_BYTES + 1) + b'"}')  # refused alone, later
    split_out = split(b"[" + b", ".join(elements) + b", {}]", BATCHED)
    assert [e.raw for e in split_out] == [*elements, b"{}"]
    ids = [*(f"e{n}" for n in range(6)), *(f"i{n}" for n in range(1, 10)), *[None] * 6, "big"]
    assert [e.id for e in split_out[1:-1]] == ids


def test_a_batch_is_split_holding_its_text_and_its_elements_bytes_not_their_values():
    """Decoded JSON takes about ten times its text: a batch of a thousand 15 KB events held
    whole would be ~12 times the body. Each element's values are dropped once its id and type
    are read (tracemalloc: what Python allocated, at its peak)."""
    element = json.dumps({"id": "a", "type": "t", "data": {"l": [[0, 0, 0] for _ in range(1400)]}})
    body = ("[" + ",".join([element] * 1000) + "]").encode()
    tracemalloc.start()
    try:
        assert len(split(body, BATCHED)) == 1000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(body), f"{peak / len(body):.1f} times the body"


@pytest.mark.parametrize(
    "huge",
    [
        b'{"id": "b", "blob": "' + b"x" * WINDOWS[-1] + b'", "l": [[0, "]}\\"", {"k": []}], -1.5e3, null]}',
        b'"' + b'x\\"' * WINDOWS[-1] + b'\\\\"',
        b"7" * 3 * WINDOWS[-1],
    ],
    ids=["object", "string", "number"],
)
def test_an_element_going_on_past_the_last_window_is_refused_alone_without_being_decoded_or_copied(huge):
    """Not decoded past the last window (its values would take ten times its size or more), its
    end found by reading its tokens: refused alone for its size, `trop-volumineux`, not the batch
    (413). Nor copied: what it takes in memory does not grow with its size."""
    body = b'[{"id": "a"}, ' + huge + b' , {"id": "c"}]'
    tracemalloc.start()
    try:
        elements = split(body, BATCHED)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [e.raw for e in elements] == [b'{"id": "a"}', b"", b'{"id": "c"}']
    assert [(e.id, e.oversize) for e in elements] == [("a", 0), (None, len(huge)), ("c", 0)]
    assert peak < 20 * WINDOWS[-1] + 2 * len(body), f"{peak / len(body):.1f} times the body"  # the window decoded


def test_elements_past_the_last_window_are_read_through_so_many_tokens_at_most_then_413():
    """Read token by token, one of nested arrays took 1.5 s for 14 MiB of the passerelle's one
    splitting thread: SKIPPED_TOKENS for the whole request."""
    blob = b'"' + b"x" * WINDOWS[-1] + b'"'  # one token
    dense = b'{"id": "b", "p": ' + blob + b', "l": [' + b"[0, 1]," * (SKIPPED_TOKENS // 5) + b"[0]]}"  # 5 each
    with pytest.raises(CorpsRefuse) as refused:
        split(b"[" + dense + b"]", BATCHED)
    assert refused.value.status == 413 and str(SKIPPED_TOKENS) in refused.value.message
    half = b'{"id": "b", "l": [' + b"[0, 1]," * (SKIPPED_TOKENS // 10 - 10) + b"[0]]}"
    padded = half[:-1] + b', "p": ' + blob + b"}"  # past the window, half the tokens
    assert [e.oversize for e in split(b"[" + padded + b"]", BATCHED)] == [len(padded)]
    with pytest.raises(CorpsRefuse) as refused:  # the budget is the request's, not each element's
        split(b"[" + padded + b", " + padded + b", " + padded + b"]", BATCHED)
    assert refused.value.status == 413


@pytest.mark.parametrize(
    "left_open",
    [
        b'{"id": "b", "l": ["' + b"x" * WINDOWS[-1] + b'", 1',
        b'"' + b"x" * WINDOWS[-1],
        b'{"id": "b", "s": "' + b"x" * WINDOWS[-1] + b'}, {"id": "c"}',  # its string left open
        b'{"id": "b", "s": "' + b"x" * WINDOWS[-1] + b'"]',  # closed by the wrong bracket
        b'{"id": "b", "s": "' + b"x" * WINDOWS[-1] + b'\\x"}',  # an escape JSON has not
        b'{"id": "b", "s": "' + b"x" * WINDOWS[-1] + b'" "t": 1}',  # no comma
    ],
    ids=["array", "string", "string-open", "bracket", "escape", "comma"],
)
def test_an_element_past_the_last_window_that_is_no_json_is_400(left_open):
    """As one within it is: read by its brackets alone, a string left open took the elements
    after it in, the answer's indexes no longer those sent."""
    with pytest.raises(CorpsRefuse) as refused:
        split(b'[{"id": "a"}, ' + left_open + b"]", BATCHED)
    assert refused.value.status == 400
    assert "élément 1 illisible" in refused.value.message


def test_past_the_last_window_a_batch_is_split_as_json_reads_it(monkeypatch):
    """Random batches, valid and broken, with the windows made small so that most elements go
    past them: split where LENIENT's decoder splits, and refused (400) where it fails."""
    monkeypatch.setattr(corps, "WINDOWS", (8, 24))
    rng = random.Random(70)
    pieces = ['"', "\\", '\\"', "\\\\", "]", "}", "[", "{", ",", ":", "é", "😀", "\\u00e9", "\\n", " ", "x"]

    def value(depth: int) -> object:
        roll = rng.random()
        if depth < 3 and roll < 0.3:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        if depth < 3 and roll < 0.6:
            return {"".join(rng.choices(pieces, k=3)): value(depth + 1) for _ in range(rng.randrange(4))}
        return rng.choice(
            [0, -1.5e-3, 12345678901234567890, True, None, "".join(rng.choices(pieces, k=rng.randrange(40)))]
        )

    compared = 0
    for _ in range(3000):
        text = json.dumps([value(0) for _ in range(rng.randrange(1, 5))], ensure_ascii=rng.random() < 0.5)
        if rng.random() < 0.5:  # broken somewhere
            at = rng.randrange(len(text))
            text = text[:at] + rng.choice(['"', "]", "}", ",", "\\", "x", ""]) + text[at + 1 :]
        try:
            expected = corps.LENIENT.decode(text)
        except ValueError:
            expected = None
        try:
            elements = split(text.encode(), BATCHED)
        except CorpsRefuse as e:
            assert expected is None or not isinstance(expected, list), (text, e.message)
            assert e.status == 400, (text, e.message)
            continue
        assert isinstance(expected, list) and len(elements) == len(expected), text
        for element, decoded in zip(elements, expected, strict=True):
            if not element.oversize:
                assert corps.LENIENT.decode(element.raw.decode()) == decoded, text
        compared += 1
    assert compared > 1000


def test_an_element_broken_past_the_first_window_is_400_not_413():
    body = b'[{"id": "a", "l": [' + b"1, " * WINDOWS[0] + b"x]}]"
    with pytest.raises(CorpsRefuse) as refused:
        split(body, BATCHED)
    assert refused.value.status == 400
    assert "élément 0 illisible" in refused.value.message


def test_an_id_an_answer_cannot_quote_is_not_reported():
    elements = split(b'[{"id": 5}, {"id": "\xff"}, {"id": "' + b"i" * 129 + b'"}, 3, {"id": ""}]', BATCHED)
    assert [e.id for e in elements] == [None, None, None, None, None]
    assert elements[3].raw == b"3"  # not an object: the contract's parser refuses it, alone


def test_an_empty_batch_has_no_event():
    assert split(b" [ ] ", BATCHED) == []


@pytest.mark.parametrize(
    "body",
    [b"", b"{}", b'"x"', b"[", b"[{}", b"[{} {}]", b"[{},]", b"[{}] []", b"[{]", b"[" * 100_000, b"\xff[]"],
)
def test_a_body_that_is_not_a_json_array_is_400(body):
    with pytest.raises(CorpsRefuse) as refused:
        split(body, BATCHED)
    assert refused.value.status == 400
    assert "tableau JSON" in refused.value.message


def test_more_than_1000_events_is_413():
    assert len(split(json.dumps([{}] * 1000).encode(), BATCHED)) == 1000
    with pytest.raises(CorpsRefuse) as refused:
        split(json.dumps([{}] * 1001).encode(), BATCHED)
    assert refused.value.status == 413
    assert "1000" in refused.value.message


def test_a_structured_body_is_one_event_with_its_bytes_unchanged():
    body = b'{"id": "s", "source": "/gar", "source": "/gar", "n": NaN}'
    [element] = split(body, STRUCTURED)
    assert element.raw == body and element.id == "s"


@pytest.mark.parametrize("body", [b"", b"[]", b"[{}]", b'"event"', b"{", b"{} {}", b"null"])
def test_a_structured_body_that_is_not_an_object_is_400(body):
    with pytest.raises(CorpsRefuse) as refused:
        split(body, STRUCTURED)
    assert refused.value.status == 400
    assert "objet JSON" in refused.value.message


def test_a_raw_control_character_in_one_element_leaves_it_to_the_contract_parser_alone():
    """JSON forbids a raw tab or newline inside a string: the contract's parser refuses that
    element (`json-invalide`); the splitter, lenient, must not refuse the whole batch for it."""
    from contracts import ContractError, parse_event

    good, bad = b'{"id": "a", "type": "t"}', b'{"id": "b", "type": "t", "title": "a\tb"}'
    elements = split(b"[" + good + b", " + bad + b"]", BATCHED)
    assert [(e.raw, e.id) for e in elements] == [(good, "a"), (bad, "b")]
    with pytest.raises(ContractError) as refused:
        parse_event(bad, "equipement.declarations.v1")
    assert refused.value.code == "json-invalide"


DEEP = b"[" * 5000 + b"]" * 5000
"""Nested deeper than Python's JSON decoder goes (its recursion limit)."""


def test_an_element_nested_too_deep_to_decode_is_split_out_and_refused_alone():
    """The decoder gives up on it; its brackets still say where it ends: the batch's other
    events are judged, and the contract's parser refuses that one (`json-invalide`), as the DLQ
    would, instead of the whole batch being a 400. Brackets inside its strings are text."""
    from contracts import ContractError, parse_event

    good = b'{"id": "a", "type": "t"}'
    deep = b'{"id": "b", "s": "]}\\"[", "x": ' + DEEP + b"}"
    elements = split(b"[" + good + b", " + deep + b", " + good + b"]", BATCHED)
    assert [e.raw for e in elements] == [good, deep, good]
    assert elements[1].id is None  # not decoded: its id is not quoted
    with pytest.raises(ContractError) as refused:
        parse_event(deep, "equipement.declarations.v1")
    assert refused.value.code == "json-invalide"
    [alone] = split(deep, STRUCTURED)
    assert alone.raw == deep
    assert [e.skimmed for e in elements] == [False, True, False] and alone.skimmed  # the rate of a full batch


@pytest.mark.parametrize(
    "broken",
    [b"[" * 1100 + b"]" * 1099 + b"}", b"[[[" * 400 + b'"\\q"' + b"]]]" * 400, b"[" * 1100 + b"1 2" + b"]" * 1100],
    ids=["bracket", "escape", "comma"],
)
def test_a_deep_element_that_is_no_json_is_400(broken):
    """Its end found by its brackets alone, a wrong bracket, an escape JSON has not or a missing
    comma inside made a 207, its neighbours written (review 2 s70 #1)."""
    with pytest.raises(CorpsRefuse) as refused:
        split(b'[{"id": "a"}, ' + broken + b', {"id": "c"}]', BATCHED)
    assert refused.value.status == 400


def test_a_deep_element_beyond_a_record_s_size_is_refused_for_it_not_copied():
    """Its bytes were kept to the answer (15 MiB of a 16 MiB body held), then refused
    `trop-volumineux` all the same (review 3 s70 #4)."""
    deep = b'{"id": "b", "p": "' + b"x" * MAX_RECORD_BYTES + b'", "x": ' + DEEP + b"}"
    [element] = split(b"[" + deep + b"]", BATCHED)
    assert (element.raw, element.oversize, element.skimmed) == (b"", len(deep), True)


def test_deep_elements_share_the_request_s_token_budget():
    """16 of 1 MB took 3 s of the one splitting thread, charged 16 events (review 2 s70 #1)."""
    deep = b"[" * (SKIPPED_TOKENS // 4) + b"]" * (SKIPPED_TOKENS // 4)  # half the budget each
    assert len(split(b"[" + deep + b"]", BATCHED)) == 1
    with pytest.raises(CorpsRefuse) as refused:
        split(b"[" + deep + b", " + deep + b", " + deep + b"]", BATCHED)
    assert refused.value.status == 413 and str(SKIPPED_TOKENS) in refused.value.message


@pytest.mark.parametrize(
    "body",
    [b'[{"x": ' + b"[" * 5000 + b"]}]", b'[{"x": "' + b"[" * 5000 + b"]", b'[{"x": ' + DEEP + b"} {}]"],
)
def test_a_deep_element_left_open_or_followed_by_anything_but_a_comma_is_400(body):
    with pytest.raises(CorpsRefuse) as refused:
        split(body, BATCHED)
    assert refused.value.status == 400


@pytest.mark.parametrize("body", [DEEP, b'{"x": ' + DEEP + b"} {}", b'{"x": ' + b"[" * 5000 + b"}"])
def test_a_deep_structured_body_that_is_not_one_object_is_400(body):
    with pytest.raises(CorpsRefuse) as refused:
        split(body, STRUCTURED)
    assert refused.value.status == 400


def test_a_full_batch_with_a_trailing_comma_is_400_not_413():
    """1,000 events and a comma: not an array (as 999 and a comma is), not one too many."""
    one = json.dumps({"id": "x"})
    with pytest.raises(CorpsRefuse) as refused:
        split(("[" + ",".join([one] * MAX_BATCH_EVENTS) + ",]").encode(), BATCHED)
    assert refused.value.status == 400
