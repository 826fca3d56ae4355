"""Identifier rules of the French education system, as plain functions and pydantic types.

Each annotated type raises a `PydanticCustomError` whose type is the DLQ reason code, so a bad
UAI in any payload surfaces as `uai-invalide` rather than as a generic schema error. The types
accept only strings (integers for levels): a UAI exported as a number has lost its leading zeros,
which is a UAI problem, not a JSON one.
"""

import functools
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from ._base import whole_number

UAI_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # 23 letters: no I, O, Q
CRCN_CODES = (
    *("1.1", "1.2", "1.3"),
    *("2.1", "2.2", "2.3", "2.4"),
    *("3.1", "3.2", "3.3", "3.4"),
    *("4.1", "4.2", "4.3"),
    *("5.1", "5.2"),
)
CRCN_LEVELS = range(1, 9)
# The DLQ reason codes of the annotated types below.
IDENTIFIER_REASONS = frozenset(
    ("uai-invalide", "crcn-invalide", "niveau-invalide", "version-invalide", "teacher-id-invalide", "code-invalide")
)
# Fields whose refused values may identify a person: a message names the field, never the value.
# The envelope's `subject` reprises the entity's key, a formation-suivie's teacher_id.
PERSONAL_FIELDS = frozenset({"teacher_id", "subject"})

# [0-9] rather than \d, which also matches other scripts' digits (and int() would take them).
UAI_PATTERN = "^[0-9]{7}[A-Z]$"
VERSION_PATTERN = r"^[0-9]{1,9}(\.[0-9]{1,9}){0,3}$"  # CONTRACTS.md Limits: 4 parts of 9 digits
TEACHER_ID_PATTERN = "^[A-Za-z0-9_-]{8,64}$"
# The annuaire de l'éducation's own forms, and only them, so that codes compare by equality.
DEPARTEMENT_PATTERN = "^([0-9]{3}|02[AB])$"
ACADEMIE_PATTERN = "^[0-9]{2}$"
REGION_PATTERN = "^[0-9]{2}$"
COMMUNE_PATTERN = "^([0-9]{5}|2[AB][0-9]{3})$"


def _matcher(pattern: str) -> Callable[[object], bool]:
    # fullmatch on the unanchored pattern: a `$` anchor would also accept a trailing newline.
    compiled = re.compile(pattern.removeprefix("^").removesuffix("$"))
    return lambda s: isinstance(s, str) and compiled.fullmatch(s) is not None


_uai_shaped = _matcher(UAI_PATTERN)
_version_shaped = _matcher(VERSION_PATTERN)
_teacher_id_shaped = _matcher(TEACHER_ID_PATTERN)


def short_repr(value: object) -> str:
    """The bad value as a DLQ message shows it: quoted, and short enough for a record header."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def uai_check_letter(digits7: str) -> str:
    """The letter a UAI must end with, given its first seven digits."""
    return UAI_LETTERS[int(digits7) % 23]


def is_valid_uai(s: object) -> bool:
    return _uai_shaped(s) and uai_check_letter(s[:7]) == s[7]  # type: ignore[index]


def is_valid_teacher_id(s: object) -> bool:
    """8 to 64 of [A-Za-z0-9_-]: a pseudonym, into which no name, e-mail or NUMEN fits."""
    return _teacher_id_shaped(s)


@functools.lru_cache(maxsize=65536)  # compatibility rules compare the same few versions again and again
def parse_version(s: str) -> tuple[int, int, int, int]:
    """`"16.4"` -> `(16, 4, 0, 0)`, so that versions compare as tuples; ValueError otherwise."""
    parts = [int(p) for p in s.split(".")] if _version_shaped(s) else []
    if not parts:
        raise ValueError(
            f"{short_repr(s)} n'est pas une version (1 à 4 entiers de 9 chiffres au plus, séparés par des points)"
        )
    return tuple(parts + [0] * (4 - len(parts)))  # type: ignore[return-value]


def _uai_problem(v: Any) -> str | None:
    if not _uai_shaped(v):
        return f"UAI {short_repr(v)}: attendu 7 chiffres puis une lettre majuscule"
    expected = uai_check_letter(v[:7])
    return None if v[7] == expected else f"UAI {v}: la lettre de contrôle devrait être {expected}"


def _version_problem(v: Any) -> str | None:
    try:
        parse_version(v)
    except ValueError as e:
        return str(e)
    except TypeError:  # unhashable JSON (a list, an object): the cache cannot even look it up
        return f"{short_repr(v)} n'est pas une version"
    return None


def _crcn_problem(v: Any) -> str | None:
    return None if v in CRCN_CODES else f"{short_repr(v)} n'est pas une compétence CRCN (1.1 à 5.2)"


def _level_problem(v: Any) -> str | None:
    ok = type(v) is int and v in CRCN_LEVELS  # type(): bool is an int subclass, refuse it
    return None if ok else f"{short_repr(v)} n'est pas un niveau CRCN (entier de 1 à 8)"


def _teacher_id_problem(v: Any) -> str | None:
    # The refused value is never repeated: it may be a person's name, e-mail or NUMEN.
    if is_valid_teacher_id(v):
        return None
    return "pas un pseudonyme d'enseignant (8 à 64 caractères [A-Za-z0-9_-]; valeur non reproduite)"


def _checked(
    base: type, code: str, problem: Callable[[Any], str | None], schema: dict, read: Callable[[Any], Any] = lambda v: v
) -> Any:
    """An annotated type whose failures are reported under the reason `code`; `read` first."""

    def validate(v: Any) -> Any:
        v = read(v)
        message = problem(v)
        if message is not None:
            raise PydanticCustomError(code, message)
        return v

    return Annotated[base, PlainValidator(validate), WithJsonSchema(schema)]


def _code(what: str, pattern: str, example: str) -> Any:
    matches = _matcher(pattern)

    def problem(v: Any) -> str | None:
        return None if matches(v) else f"{short_repr(v)} n'est pas {what} (forme: {example})"

    return _checked(str, "code-invalide", problem, _string(pattern, f"annuaire form, e.g. {example}"))


def _string(pattern: str, description: str) -> dict:
    return {"type": "string", "pattern": pattern, "description": description}


Uai = _checked(
    str,
    "uai-invalide",
    _uai_problem,
    _string(UAI_PATTERN, f"7 digits then the check letter '{UAI_LETTERS}'[int(digits) % 23]"),
)
CrcnCode = _checked(str, "crcn-invalide", _crcn_problem, {"enum": list(CRCN_CODES)})
CrcnLevel = _checked(
    int,
    "niveau-invalide",
    _level_problem,
    {"type": "integer", "minimum": 1, "maximum": 8},
    read=whole_number,  # 2.0 is the integer 2 to the schema
)
Version = _checked(
    str,
    "version-invalide",
    _version_problem,
    _string(VERSION_PATTERN, "1 to 4 dot-separated integers; missing parts count as 0"),
)
TeacherId = _checked(
    str,
    "teacher-id-invalide",
    _teacher_id_problem,
    _string(TEACHER_ID_PATTERN, "a pseudonym: never a name, an e-mail or a NUMEN"),
)
CodeDepartement = _code("un code département", DEPARTEMENT_PATTERN, "'035', '02A', '974'")
CodeAcademie = _code("un code académie", ACADEMIE_PATTERN, "'14'")
CodeRegion = _code("un code région", REGION_PATTERN, "'53'")
CodeCommune = _code("un code commune INSEE", COMMUNE_PATTERN, "'35016', '2A004'")
