"""Passwords out of what is printed or logged.

`redact` masks the password of every URL in a text (`postgresql://user:***@host/db`), the
whole userinfo of an http(s) URL without a password (`https://***@host`: a token used as a
user name), the value of every query parameter of an http(s) URL or a path (`/v1/traces?api-key=***`:
an OTLP collector's or a JWKS endpoint's token), and the value of every `password=` pair
(libpq `key=value` DSNs). It masks too much rather than too little: a URL whose password holds a
raw `@`, `/` or `?` is still masked.
"""

import re

MASK = "***"

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_QUERY = re.compile(r"(?P<path>(?:\b[Hh][Tt][Tt][Pp][Ss]?://|(?<![\w:/])/)[^\s?#]*)\?(?P<query>[^\s#]+)")
"""An http(s) URL or a bare path, then its query string (an HTTP library names the request it
failed on by its path). Not a database URL's: its parameters are libpq's (`password=` is masked
as a pair), and `sslmode=require` says something worth reading."""
_PAIR = re.compile(
    r"""(?P<key>\b(?:password|passwd|pwd|sslpassword)\s*=\s*)"""
    r"""(?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s&;,]+)""",
    re.IGNORECASE,
)


def _mask_userinfo(url: str) -> str:
    head, _, rest = url.partition("://")
    # The credentials end at the last '@' (a raw '@' in a password is common enough); a ':'
    # before any '/' separates the user from the password.
    at = rest.rfind("@")
    if at < 0:
        return url
    userinfo = rest[:at]
    colon = userinfo.find(":")
    if colon < 0 and "/" not in userinfo and head.lower() in ("http", "https"):
        return f"{head}://{MASK}{rest[at:]}"  # no password: the user name is the secret (a token)
    if colon < 0 or "/" in userinfo[:colon]:
        return url
    return f"{head}://{userinfo[:colon]}:{MASK}{rest[at:]}"


def _mask_query(match: re.Match) -> str:
    parameters = (p.partition("=") for p in match.group("query").split("&"))
    return match.group("path") + "?" + "&".join(f"{k}={MASK}" if eq else k for k, eq, _ in parameters)


def _mask_pair(match: re.Match) -> str:
    value = match.group("value")
    quote = value[0] if value[0] in "'\"" else ""
    return f"{match.group('key')}{quote}{MASK}{quote}"


def redact(text: str) -> str:
    """`text` with the password of each URL, each query parameter's value and each `password=`
    value replaced by ***."""
    if "://" not in text and "=" not in text:
        return text
    text = _URL.sub(lambda m: _mask_userinfo(m.group()), text)
    return _PAIR.sub(_mask_pair, _QUERY.sub(_mask_query, text))
