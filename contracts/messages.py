"""The rule a refused record broke, in French, from pydantic's and jiter's errors.

pydantic and jiter word their errors in English; a DLQ message is French like the rest of the
platform. So a rule is built from an error's `type` and `ctx`, never from its English `msg`:
each type the contract's models can raise has its sentence (the contract's tests generate them
all), and a type they cannot raise today still reads in French, naming pydantic's type.
"""

import re
from collections.abc import Callable
from typing import Any

DATE = "attendu une date AAAA-MM-JJ"
INSTANT = "attendu un instant RFC 3339 avec son décalage (AAAA-MM-JJThh:mm:ss puis Z ou ±hh:mm)"


def _one_of(expected: str) -> str:
    # pydantic lists a Literal's values as "'a', 'b' or 'c'", or "'a'" alone.
    others, _, last = expected.rpartition(" or ")
    return f"attendu {others} ou {last}" if others else f"attendu {last}"


def _at_least_chars(n: int) -> str:
    return f"attendu au moins {n} caractère{'s' if n > 1 else ''}"


# pydantic's error type -> the rule, from the error (its `ctx`, its `input`).
RULES: dict[str, Callable[[Any], str]] = {
    "missing": lambda e: "attribut obligatoire absent",
    "bool_type": lambda e: "attendu true ou false",
    "int_type": lambda e: "attendu un entier",
    "float_type": lambda e: "attendu un nombre",
    "finite_number": lambda e: "attendu un nombre fini",
    "string_type": lambda e: "attendu une chaîne",
    "list_type": lambda e: "attendu un tableau",
    "dict_type": lambda e: "attendu un objet",
    "model_type": lambda e: "attendu un objet",
    "none_required": lambda e: "attendu null",
    "literal_error": lambda e: _one_of(e["ctx"]["expected"]),
    "greater_than_equal": lambda e: f"attendu au moins {e['ctx']['ge']}",
    "less_than_equal": lambda e: f"attendu au plus {e['ctx']['le']}",
    "string_too_short": lambda e: _at_least_chars(e["ctx"]["min_length"]),
    "string_too_long": lambda e: f"texte de {len(e['input'])} caractères, au plus {e['ctx']['max_length']}",
    "too_long": lambda e: f"tableau de {len(e['input'])} éléments, au plus {e['ctx']['max_length']}",
    "date_type": lambda e: DATE,
    "date_parsing": lambda e: DATE,
    "datetime_type": lambda e: INSTANT,
    "datetime_parsing": lambda e: INSTANT,
    "timezone_aware": lambda e: "instant sans décalage horaire: attendu Z ou ±hh:mm à la fin",
    # The ValueError of one of the contract's own validators, worded in French there.
    "value_error": lambda e: str(e["ctx"]["error"]),
}


def rule(error: Any) -> str:
    """What a pydantic error (an item of `ValidationError.errors()`) says the value should be."""
    known = RULES.get(error["type"])
    return known(error) if known else f"valeur refusée par la règle pydantic {error['type']}"


# jiter's JSON syntax errors (serde_json's wording), without their position.
_JSON_SYNTAX = {
    "EOF while parsing a list": "fin du JSON au milieu d'un tableau",
    "EOF while parsing an object": "fin du JSON au milieu d'un objet",
    "EOF while parsing a string": "fin du JSON au milieu d'une chaîne",
    "EOF while parsing a value": "fin du JSON avant une valeur",
    "expected `:`": "« : » attendu après une clé",
    "expected `,` or `]`": "« , » ou « ] » attendu dans un tableau",
    "expected `,` or `}`": "« , » ou « } » attendu dans un objet",
    "expected ident": "true, false ou null attendu",
    "expected value": "valeur JSON attendue (NaN et Infinity n'en sont pas)",
    "invalid escape": "séquence d'échappement invalide",
    "invalid number": "nombre mal formé",
    "number out of range": "nombre hors limites",
    "invalid unicode code point": "caractère invalide (UTF-8 attendu)",
    "control character (\\u0000-\\u001F) found while parsing a string": (
        "caractère de contrôle (U+0000 à U+001F) non échappé dans une chaîne"
    ),
    "key must be a string": "clé d'objet qui n'est pas une chaîne",
    "lone leading surrogate in hex escape": "demi-codet (surrogate) isolé dans un échappement \\u",
    "trailing comma": "virgule avant la fin d'un tableau ou d'un objet",
    "trailing characters": "caractères après la fin de la valeur JSON",
    "unexpected end of hex escape": "échappement \\u incomplet",
    "recursion limit exceeded": "tableaux ou objets imbriqués trop profondément",
}
_AT = re.compile(r"(?P<what>.*) at line (?P<line>\d+) column (?P<column>\d+)", re.DOTALL)
_DUPLICATE_KEY = re.compile(r"Detected duplicate key (?P<key>.*)", re.DOTALL)


def json_syntax(error: str) -> str:
    """jiter's `expected value at line 1 column 7` as `valeur JSON attendue (...) (ligne 1, colonne 7)`."""
    at = _AT.fullmatch(error)
    what, where = (at["what"], f" (ligne {at['line']}, colonne {at['column']})") if at else (error, "")
    duplicate = _DUPLICATE_KEY.fullmatch(what)
    if duplicate:  # the key as jiter quotes it, cut like any value a message shows
        key = duplicate["key"]
        return f"clé {key if len(key) <= 60 else key[:57] + '...'} répétée dans un objet{where}"
    return _JSON_SYNTAX.get(what, "JSON mal formé") + where
