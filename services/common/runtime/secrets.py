"""Passwords out of what is printed or logged.

`redact` masks the password of every URL in a text (`postgresql://user:***@host/db`) and the
value of every `password=` pair (query strings, libpq `key=value` DSNs). It masks too much
rather than too little: a URL whose password holds a raw `@`, `/` or `?` is still masked.
"""

import re

MASK = "***"

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
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
    if colon < 0 or "/" in userinfo[:colon]:
        return url
    return f"{head}://{userinfo[:colon]}:{MASK}{rest[at:]}"


def _mask_pair(match: re.Match) -> str:
    value = match.group("value")
    quote = value[0] if value[0] in "'\"" else ""
    return f"{match.group('key')}{quote}{MASK}{quote}"


def redact(text: str) -> str:
    """`text` with the password of each URL and each `password=` value replaced by ***."""
    if "://" not in text and "=" not in text:
        return text
    return _PAIR.sub(_mask_pair, _URL.sub(lambda m: _mask_userinfo(m.group()), text))
