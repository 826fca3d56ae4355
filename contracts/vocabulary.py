"""OS, browser and equipment names as partners write them, folded so that they compare.

Rectorats, collectivités (GLPI exports) and the ministry (ScoLOMFR voc-024) spell the same
software differently; a requirement `Microsoft Windows` must match a lot declared `ms-windows`.
Names outside the vocabulary still compare, case-insensitively: the catalogue may be ahead of it.
"""

ANY = "any"

# Display form -> every spelling of it (the display form included), from DOMAIN.md.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    ANY: ("any", "Multi-OS"),
    "Windows": ("Windows", "Microsoft Windows", "ms-windows"),
    "macOS": ("macOS", "Mac OS"),
    # Debian, Ubuntu, Fedora stay distinct names: a requirement on one is not met by another.
    "Linux": ("Linux", "GNU/Linux"),
    "ChromeOS": ("ChromeOS", "Chrome OS"),
    "Android": ("Android",),
    "iOS": ("iOS", "iPhone OS"),
    "iPadOS": ("iPadOS", "iPad OS"),
    "Firefox": ("Firefox", "Mozilla Firefox"),
    "Chrome": ("Chrome", "Google Chrome"),
    "Safari": ("Safari",),
    "Opera": ("Opera",),
    "Edge": ("Edge", "Microsoft Edge"),
    "Internet Explorer": ("Internet Explorer", "ms-internet explorer"),
}


def _casefold(name: str) -> str:
    """Case-insensitive, nothing more (CONTRACTS.md): `Mozilla  Firefox` or ` Windows` name
    no software of the vocabulary, and meet no requirement but `any`."""
    return name.casefold()


_KEY = {_casefold(s): _casefold(display) for display, spellings in _SYNONYMS.items() for s in spellings}
_DISPLAY = {_casefold(display): display for display in _SYNONYMS}


def fold_name(name: str) -> str:
    """The key two OS or browser names share when they name the same software."""
    key = _casefold(name)
    return _KEY.get(key, key)


def is_any(name: str) -> bool:
    """True for `any` / `Multi-OS`, a requirement that every device meets."""
    return fold_name(name) == ANY


def display_name(name: str) -> str:
    """The usual spelling (`iPad OS` -> `iPadOS`), for reasons a person reads."""
    return _DISPLAY.get(fold_name(name), name)


def fold_kind(kind: str) -> str:
    """Equipment kinds compare case-insensitively (`TNI` = `tni`; `TNI ` is another kind)."""
    return kind.casefold()


# ScoLOMFR scolomfr-voc-020. Informational: `lot.kind` and `tools` are not restricted to it.
EQUIPMENT_KINDS = (
    "ordinateur",
    "ordinateur portable",
    "tablette",
    "classe mobile",
    "smartphone",
    "équipement individuel mobile",
    "TNI",
    "TBI",
    "VPI",
    "vidéoprojecteur",
    "vidéoprojecteur interactif",
    "visualiseur",
    "ENT",
    "webcam",
    "casque",
    "microphone",
    "scanner",
    "imprimante 3D",
    "robot programmable",
    "calculatrice",
)
