"""Passwords out of what is printed or logged.

`redact` masks the password of every URL in a text (`postgresql://user:***@host/db`), the
whole userinfo of a web URL without a password (`https://***@host`: a token used as a user
name), every value of a web URL's or a path's query and fragment (`/v1/traces?api-key=***`: an
OTLP collector's or a JWKS endpoint's token), the value of every password pair (libpq
`key=value` DSNs, `PGPASSWORD=`, a client's settings printed as a dict) and of every secret or
token pair (`client_secret=`, `"access_token": …`), a bearer token and any JSON Web Token,
PostgreSQL's DETAIL line in English or French (a row's values, which may be personal), and the
value a pydantic error quotes (`input_value=…`). It masks too much rather than too little: a
URL whose password holds a raw `@`, `/` or `?` is still masked.
"""

import re

MASK = "***"

_URL = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://\S+")
"""A scheme starts where no scheme character precedes it: else a long run of them, with no
`://` after it, was scanned again from each of its characters (quadratic: 4 s for 60,000)."""
_WORD = re.compile(r"\S+")
_WEB = ("http://", "https://", "ws://", "wss://")
_OPENING, _CLOSING = "\"'(<[{", re.compile(r"[\"'<>(){}\[\],;]")
"""Around a URL in a text: what may open it, what ends it (a quote, a bracket, a comma)."""
_PAIR = re.compile(
    r"""(?P<key>\b\w*(?:password|passwd|pwd|secret|token)(?:\s*=\s*|["']\s*:\s*))"""
    r"""(?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s&;,]+)""",
    re.IGNORECASE,
)
"""`password=…`, and any key ending so (`PGPASSWORD=…`, `sasl_plain_password=…`), or quoted before a
colon (`{'sasl_plain_password': '…'}`, a client's settings printed as a dict or JSON)."""
_SECRET_KEYS = ("pass", "pwd", "secret", "token")
"""What a pair's key holds for _PAIR to be looked for (substrings of the lowered text: four
alternatives in one regex under IGNORECASE cost every logged string 4 to 6 times more)."""
_ROW_DETAIL = re.compile(
    r"((?:DETAIL|DÉTAIL)[ \t]*:[ \t]*).+?(?=\n[ \t|]*(?:HINT|ASTUCE)[ \t]*:|\n[ \t|]*\n|\Z)", re.DOTALL
)
"""PostgreSQL's DETAIL, which asyncpg's errors and psql print: it quotes a row's values (`Key
(teacher_id, uai)=(…) already exists`, `Failing row contains (…)`), labelled in the server's
language (`DÉTAIL :` where lc_messages is French), over several lines when a value holds a line
break; up to its HINT, a blank line or the text's end (an exception group's traceback indents
it behind `| `)."""
_BEARER = re.compile(r"(\bBearer\s+)(?!realm=)\S+", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]*")
"""A JSON Web Token: its header's base64url always opens with `eyJ` (`{"`)."""
_INPUT_VALUE = re.compile(r"(input_value=).*?(?=, input_type=|\]$|$)", re.MULTILINE)
"""A pydantic ValidationError's text quotes each refused value: `[type=…, input_value='…', input_type=str]`."""

_ARGUMENT_AT = r"(query argument \$\d+(?: in element #\d+ of executemany\(\) sequence)?: )"
_ARGUMENT = re.compile(_ARGUMENT_AT + r".{0,43}( \((?:[^()\n]|\([^()\n]*\))*\))$", re.MULTILINE)
_ARGUMENT_LINE = re.compile(_ARGUMENT_AT + r"(?!\*\*\* \()[^\n]*")
"""asyncpg's error for a value it cannot send quotes the value (`invalid input for query
argument $2: ['T-0042', 'T-0043'… (expected str, got int)`, its repr cut at 40 characters): a
teacher's id, a row of a batch. The value masked, the reason kept (the longest value that
leaves a parenthesised reason at the line's end: a value may hold parentheses too); the rest of
its line when no such reason ends it."""


def _mask_userinfo(url: str) -> str:
    head, _, rest = url.partition("://")
    # The credentials end at the last '@' (a raw '@' in a password is common enough); a ':'
    # before any '/' separates the user from the password.
    at = rest.rfind("@")
    if at < 0:
        return url
    userinfo = rest[:at]
    colon = userinfo.find(":")
    if colon < 0 and "/" not in userinfo and head.lower() in ("http", "https", "ws", "wss"):
        return f"{head}://{MASK}{rest[at:]}"  # no password: the user name is the secret (a token)
    if colon < 0 or "/" in userinfo[:colon]:
        return url
    return f"{head}://{userinfo[:colon]}:{MASK}{rest[at:]}"


def _mask_queries(word: re.Match) -> str:
    """A web URL's or a bare path's query and fragment values masked (an HTTP library names the
    request it failed on by its path). Not a database URL's: its parameters are libpq's
    (`password=` is masked as a pair), and `sslmode=require` says something worth reading. Word
    by word: linear in the text, whatever it holds."""
    text = word.group()
    start = len(text) - len(text.lstrip(_OPENING))
    url = text[start:]
    if not (url.lower().startswith(_WEB) or (url.startswith("/") and not url.startswith("//"))):
        return text
    end = _CLOSING.search(url)
    url, tail = (url[: end.start()], url[end.start() :]) if end else (url, "")
    head, hash_, fragment = url.partition("#")
    path, question, query = head.partition("?")
    masked = path + question + _values(query) + hash_ + _values(fragment)
    return text[:start] + masked + tail


def _values(pairs: str) -> str:
    """`a=1&b` as `a=***&***`: every value, and a parameter that is only a value."""
    if not pairs:
        return pairs
    return "&".join(f"{k}={MASK}" if eq else MASK for k, eq, _ in (p.partition("=") for p in pairs.split("&")))


def _mask_pair(match: re.Match) -> str:
    value = match.group("value")
    quote = value[0] if value[0] in "'\"" else ""
    return f"{match.group('key')}{quote}{MASK}{quote}"


def redact(text: str) -> str:
    """`text` with the password of each URL, each query parameter's value, each password, secret
    or token pair's value, bearer tokens and JSON Web Tokens, PostgreSQL's DETAIL line, the value
    asyncpg could not send and those a pydantic error quotes replaced by ***."""
    if "DETAIL" in text or "DÉTAIL" in text:
        text = _ROW_DETAIL.sub(rf"\g<1>{MASK}", text)
    if "input_value=" in text:
        text = _INPUT_VALUE.sub(rf"\g<1>{MASK}", text)
    if "eyJ" in text:
        text = _JWT.sub(MASK, text)
    lowered = text.lower()
    if "bearer" in lowered:
        text = _BEARER.sub(rf"\g<1>{MASK}", text)
    if "query argument $" in text:
        text = _ARGUMENT_LINE.sub(rf"\g<1>{MASK}", _ARGUMENT.sub(rf"\g<1>{MASK}\g<2>", text))
    if "://" in text or "=" in text:
        text = _URL.sub(lambda m: _mask_userinfo(m.group()), text)
        if "?" in text or "#" in text:
            text = _WORD.sub(_mask_queries, text)
    return _PAIR.sub(_mask_pair, text) if any(key in lowered for key in _SECRET_KEYS) else text
