"""The body of `POST /v1/evenements`: read within its size limits, then split into its events'
bytes exactly as the partner sent them.

Each event keeps its own bytes, so the contract judges what was sent, not a re-encoding of it
(and Kafka receives it, less the members the contract does not know: inconnus.py): a
re-encoding would hide a repeated key or a `NaN` that the services refuse as `json-invalide`.
The splitter reads JSON leniently (repeated keys, `NaN`, numbers of any length, invalid UTF-8
inside a string; nested deeper than the decoder goes: by its brackets) only to find where each
element starts and ends; the contract's parser then refuses that element alone, as the DLQ
would.
"""

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from contracts.parsing import MAX_RECORD_BYTES
from services.common.runtime.body import BodyTooLarge, read_capped
from services.passerelle.settings import MAX_BATCH_EVENTS

STRUCTURED = "application/cloudevents+json"
BATCHED = "application/cloudevents-batch+json"

# Numbers are not needed to split, and int() refuses more than 4,300 digits: read as 0. A raw
# control character inside a string (strict=False) is the contract parser's to refuse, in its element.
LENIENT = json.JSONDecoder(parse_int=lambda _: 0, parse_float=lambda _: 0.0, strict=False)
_SPACE = re.compile(r"[ \t\n\r]*")
MAX_ATTRIBUTE = 128  # CONTRACTS.md: an id; longer type names are no v1 type either
WINDOWS = (16 * 1024, 4 * MAX_RECORD_BYTES)
"""Characters within which a batch element is decoded: first the first window (most events are a
few hundred bytes), then the second. An element still going on past the second, four times the
contract's record limit, is not decoded: whole, its values would take ~10 times its size in
memory, for nothing, as it is too large anyway. Its end is found by reading its tokens (_skip),
and the contract's parser refuses it alone, `trop-volumineux`, as any element
beyond the limit (CONTRACTS.md, Limits: per event; 413 for the request is beyond its own)."""


class CorpsRefuse(Exception):
    """The request as a whole is refused: `status` (400, 413) and why, in French."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Element:
    """One event of the body: its bytes as sent, and what it says its `id` and `type` are."""

    raw: bytes
    id: str | None
    type: str | None
    oversize: int = 0
    """The characters of an element past what is decoded (its `raw` then empty): refused for its
    size, `trop-volumineux`."""
    skimmed: bool = False
    """Read token by token (_skip), too long or too deeply nested to be decoded: the rate of a
    full batch (api.py)."""


def media_type(content_type: str | None, content_encoding: str | None = None) -> str:
    """The body's mode, from Content-Type; else 400: a body in neither mode is not an event or a
    batch (CONTRACTS.md, Identity, lists 400 for it). So is a body said to be in another charset
    than UTF-8 (JSON's, RFC 8259: read as UTF-8, its accented letters were each event's
    `json-invalide`) or compressed (it was read as it came: "not a JSON array")."""
    media, _, parameters = (content_type or "").partition(";")
    media = media.strip().lower()
    if media not in (STRUCTURED, BATCHED):
        raise CorpsRefuse(
            400,
            f"Content-Type {media or 'absent'} : attendu {STRUCTURED} (un événement) "
            f"ou {BATCHED} (un tableau d'au plus {MAX_BATCH_EVENTS} événements)",
        )
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise CorpsRefuse(400, "Content-Type : charset autre que utf-8 ; les événements sont du JSON en UTF-8")
    if (content_encoding or "identity").strip().lower() not in ("identity", ""):
        raise CorpsRefuse(400, "Content-Encoding : le corps est lu tel qu'il vient, non compressé (identity)")
    return media


def limit(media: str, max_body_bytes: int) -> int:
    """The largest body of that mode: one event is one record value (CONTRACTS.md, Limits)."""
    return min(max_body_bytes, MAX_RECORD_BYTES) if media == STRUCTURED else max_body_bytes


async def read(chunks: AsyncIterator[bytes], content_length: str | None, cap: int, seconds: float) -> bytes:
    """The body, refused (413) as soon as it is known to exceed `cap` bytes (body.read_capped),
    or (408) when it has not all come within `seconds`: a request holds its place among those
    a replica handles at once (debit.EnCours) while its body comes."""
    try:
        async with asyncio.timeout(seconds):
            return await read_capped(chunks, content_length, cap)
    except BodyTooLarge as e:
        raise CorpsRefuse(413, e.message) from None
    except TimeoutError:
        raise CorpsRefuse(408, f"corps pas reçu en entier en {seconds:g} s") from None


def split(body: bytes, media: str) -> list[Element]:
    """The events of a structured (one) or batched (a JSON array) body; 400 when the body is not
    that, 413 beyond MAX_BATCH_EVENTS events."""
    # surrogateescape: a byte that is not UTF-8 becomes one character and gives back that byte,
    # so each slice re-encodes to exactly the bytes sent.
    text = body.decode("utf-8", "surrogateescape")
    if media == STRUCTURED:
        skimmed = False
        try:
            try:
                value = LENIENT.decode(text)
            except RecursionError:  # nested too deep to decode: one object still, for the contract to judge
                start, skimmed = past_space(text, 0), True
                # Every token of it may be read: it is one record value at most (limit).
                end = _skip(text, start, _Budget(MAX_RECORD_BYTES))
                value = {} if text[start : start + 1] == "{" and past_space(text, end) == len(text) else None
        except (ValueError, _TooLong):
            value = None
        if not isinstance(value, dict):
            raise CorpsRefuse(400, f"le corps n'est pas un objet JSON : en {STRUCTURED}, un événement")
        return [_element(body, value, skimmed)]
    return _array(text)


def _array(text: str) -> list[Element]:
    """The elements, each kept as its bytes and the two attributes an answer quotes: its decoded
    values are dropped at once, so a batch never holds more than one element's."""
    not_array = f"le corps n'est pas un tableau JSON : en {BATCHED}, un tableau d'événements"
    at = past_space(text, 0)
    if text[at : at + 1] != "[":
        raise CorpsRefuse(400, not_array)
    at = past_space(text, at + 1)
    elements: list[Element] = []
    budget = _Budget()
    if text[at : at + 1] != "]":
        while True:
            if len(elements) == MAX_BATCH_EVENTS:
                if text[at : at + 1] == "]":  # a comma and no element: not an array, whatever its count
                    raise CorpsRefuse(400, f"{not_array} (élément {len(elements)} illisible)")
                raise CorpsRefuse(413, f"plus de {MAX_BATCH_EVENTS} événements dans le lot : c'est le maximum")
            try:
                try:
                    value, end = _value(text, at)
                    element = _element(text[at:end].encode("utf-8", "surrogateescape"), value)
                except (RecursionError, _TooLong):  # too deep or too long to decode: read token by token
                    end = _skip(text, at, budget)
                    if end - at <= MAX_RECORD_BYTES:  # too deep: judged alone, by the contract's parser
                        element = _element(text[at:end].encode("utf-8", "surrogateescape"), None, skimmed=True)
                    else:  # Not copied (a slice, then its bytes: twice a 16 MiB element, four times with
                        # one emoji in the body): refused for its size, which its characters exceed.
                        element = Element(b"", None, None, oversize=end - at, skimmed=True)
            except ValueError:
                raise CorpsRefuse(400, f"{not_array} (élément {len(elements)} illisible)") from None
            except _TooLong:
                raise CorpsRefuse(
                    413,
                    f"élément {len(elements)} : trop long ou trop imbriqué pour être décodé, et au-delà de "
                    f"{SKIPPED_TOKENS} valeurs et signes JSON à lire dans la requête pour en trouver la fin ; "
                    f"un événement fait au plus {MAX_RECORD_BYTES} octets",
                ) from None
            elements.append(element)
            at = past_space(text, end)
            if text[at : at + 1] == "]":
                break
            if text[at : at + 1] != ",":
                raise CorpsRefuse(400, f"{not_array} (après l'élément {len(elements) - 1} : attendu , ou ])")
            at = past_space(text, at + 1)
    if past_space(text, at + 1) != len(text):
        raise CorpsRefuse(400, f"{not_array} (du texte après le tableau)")
    return elements


class _TooLong(Exception):
    """An element still going on at the end of the last window."""


def _value(text: str, at: int) -> tuple[Any, int]:
    """The JSON value starting at `at` and where it ends, read within WINDOWS (ValueError when it
    is not JSON there, _TooLong when it does not end within the last window)."""
    for window in WINDOWS:
        if at + window >= len(text):  # the rest of the body is within the window: read in place
            return LENIENT.raw_decode(text, at)
        chunk = text[at : at + window]
        try:
            value, end = LENIENT.raw_decode(chunk)
        except json.JSONDecodeError as e:
            if not _cut(e, chunk):
                raise
            continue
        # Ended inside the window; a number ending near its edge may go on (`1` of `1e5`, `1.5`).
        if end < len(chunk) - (3 if isinstance(value, int | float) else 0):
            return value, at + end
    raise _TooLong


SKIPPED_TOKENS = 100_000
"""JSON tokens (strings, numbers, brackets, commas…) a batch's elements past the last window,
or nested deeper than the decoder goes, are read through, in all, to find where each ends (an
event posted alone, at most MAX_RECORD_BYTES long, is read whole, up to one token per byte,
262,144: 0.14 s):
0.04 s of CPU (a string of any length is one: a 16 MiB one, 0.08 s, against 0.38 s for 1,000
events of 15 KB, 7 December 2026). Past it, 413: read by their brackets, one of nested arrays
took 1.5 s for 14 MiB of the passerelle's one splitting thread, 16 deep ones 3 s."""
_LEXEME = re.compile(
    r"[ \t\n\r]*+(?:"
    r'(?P<string>"[^"\\]*+(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\]*+)*+")'  # possessive: no backtracking state
    r"|(?P<scalar>-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][-+]?+[0-9]++)?+(?![0-9.eE])"
    r"|true|false|null|NaN|-?Infinity)"
    r"|(?P<mark>[][{}:,]))",
    re.DOTALL,
)
"""One token of JSON as LENIENT reads it (raw control characters in strings, NaN, Infinity)."""
_CLOSING = {"[": "]", "{": "}"}


class _Budget:
    """The tokens left to read without decoding, for a whole request (SKIPPED_TOKENS)."""

    def __init__(self, tokens: int = SKIPPED_TOKENS) -> None:
        self.left = tokens


def _skip(text: str, at: int, budget: _Budget) -> int:
    """Where the value starting at `at` ends, read token by token without decoding anything nor
    recursion: an element past the last window, or nested deeper than the decoder goes. Its
    grammar is JSON's as LENIENT reads it, so that it ends where a parser would end it, its
    neighbours read as sent (a string left open took the next element in: a body that is no
    JSON is 400, whatever its element's length).
    ValueError when it is not JSON; _TooLong past the budget."""
    stack: list[str] = []
    expect = "value"  # or "value]" (after `[`), "key" , "key}" (after `{`), ":", ",]" (after a value)
    pos = at
    while True:
        lexeme = _LEXEME.match(text, pos)
        if lexeme is None:
            raise ValueError("pas du JSON")
        budget.left -= 1
        if budget.left < 0:
            raise _TooLong
        pos, kind = lexeme.end(), lexeme.lastgroup
        mark = text[pos - 1] if kind == "mark" else ""
        closed = False
        if expect in ("value", "value]"):
            if mark in _CLOSING:
                stack.append(mark)
                expect = "value]" if mark == "[" else "key}"
                continue
            if mark == "]" and expect == "value]":
                closed = True
            elif mark:
                raise ValueError("valeur attendue")
        elif expect in ("key", "key}"):
            if kind == "string":
                expect = ":"
                continue
            if mark != "}" or expect != "key}":
                raise ValueError("clé attendue")
            closed = True
        elif expect == ":":
            if mark != ":":
                raise ValueError(": attendu")
            expect = "value"
            continue
        elif mark == ",":  # expect == ",]"
            expect = "value" if stack[-1] == "[" else "key"
            continue
        elif mark == _CLOSING[stack[-1]]:
            closed = True
        else:
            raise ValueError(", ou fermeture attendue")
        if closed:
            stack.pop()
        if not stack:
            return pos
        expect = ",]"


def _cut(error: json.JSONDecodeError, chunk: str) -> bool:
    """Whether reading `chunk` failed for want of what follows it: at its very end, or a few
    characters before (a `\\u` escape or a literal such as `-Infinity` cut in two fails at its
    start), or in a string still open there. A real error within those last characters is
    found in the next window."""
    return error.pos >= len(chunk) - 10 or error.msg.startswith("Unterminated string")


def past_space(text: str, at: int) -> int:
    """Where the JSON whitespace from `at` ends."""
    match = _SPACE.match(text, at)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _element(raw: bytes, value: Any, skimmed: bool = False) -> Element:
    def text(name: str) -> str | None:
        """The attribute if it is a string an answer can quote (UTF-8, the contract's length)."""
        field = value.get(name) if isinstance(value, dict) else None
        if not isinstance(field, str) or not 0 < len(field) <= MAX_ATTRIBUTE:
            return None
        try:
            field.encode()
        except UnicodeEncodeError:  # a byte that was not UTF-8 (surrogateescape)
            return None
        return field

    return Element(raw, text("id"), text("type"), skimmed=skimmed)
