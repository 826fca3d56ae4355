"""Synonym folding (DOMAIN.md): names that denote the same software compare equal, others do not."""

import pytest

import contracts as c

SYNONYMS = [
    ("any", "Multi-OS"),
    ("Windows", "Microsoft Windows", "ms-windows"),
    ("macOS", "Mac OS", "macos"),
    ("Linux", "GNU/Linux"),
    ("ChromeOS", "Chrome OS"),
    ("iOS", "iPhone OS"),
    ("iPadOS", "iPad OS"),
    ("Firefox", "Mozilla Firefox"),
    ("Chrome", "Google Chrome"),
    ("Edge", "Microsoft Edge"),
    ("Internet Explorer", "ms-internet explorer"),
]


@pytest.mark.parametrize("spellings", SYNONYMS, ids=lambda s: s[0])
def test_synonyms_fold_to_one_key_whichever_side_is_written(spellings):
    for a in spellings:
        for b in spellings:
            assert c.fold_name(a) == c.fold_name(b)
            assert c.fold_name(a.upper()) == c.fold_name(b.lower())


def test_distinct_software_keep_distinct_keys():
    keys = [c.fold_name(spellings[0]) for spellings in SYNONYMS]
    keys += [c.fold_name(n) for n in ("Debian", "Ubuntu", "Fedora", "Android", "Safari", "Opera")]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("distro", ["Debian", "Ubuntu", "Fedora"])
def test_linux_distributions_are_not_linux(distro):
    assert c.fold_name(distro) != c.fold_name("Linux")
    assert c.fold_name(distro) != c.fold_name("GNU/Linux")
    assert c.fold_name(distro) == c.fold_name(distro.upper())


def test_unknown_names_compare_casefolded_and_nothing_more():
    """CONTRACTS.md: names compare case-insensitively after the synonyms are folded; spaces
    count (they were collapsed: ` Windows ` met a requirement on Windows)."""
    assert c.fold_name("ARCH Linux") == c.fold_name("arch linux") == "arch linux"
    assert c.fold_name("Straße OS") == c.fold_name("STRASSE os")
    assert c.fold_name("  Arch   Linux ") != c.fold_name("arch linux")
    assert c.fold_name(" Windows ") != c.fold_name("Windows")
    assert c.fold_name("Mozilla  Firefox") != c.fold_name("Firefox")


@pytest.mark.parametrize("name", ["any", "ANY", "Multi-OS", "multi-os"])
def test_any_and_multi_os_match_every_device(name):
    assert c.is_any(name)


@pytest.mark.parametrize("name", ["Windows", "anything", "Multi OS", "", " any ", " Multi-OS "])
def test_other_names_are_not_any(name):
    assert not c.is_any(name)


@pytest.mark.parametrize(
    ("written", "shown"),
    [("iPad OS", "iPadOS"), ("ms-windows", "Windows"), ("GNU/Linux", "Linux"), ("mozilla FIREFOX", "Firefox"),
     ("ms-internet explorer", "Internet Explorer"), ("android", "Android"), ("Multi-OS", "any"),
     ("Arch Linux", "Arch Linux"), ("  Arch   Linux", "  Arch   Linux")],
)  # fmt: skip
def test_display_name_is_the_usual_spelling(written, shown):
    assert c.display_name(written) == shown


def test_equipment_kinds_compare_case_insensitively():
    assert c.fold_kind("TNI") == c.fold_kind("tni") == c.fold_kind("Tni")
    assert c.fold_kind("TNI ") != c.fold_kind("TNI"), "nothing but the case: spaces count"
    assert c.fold_kind("Vidéoprojecteur") == c.fold_kind("VIDÉOPROJECTEUR")
    assert c.fold_kind("TNI") != c.fold_kind("TBI")


def test_scolomfr_kinds_are_listed_once_each():
    assert len(c.EQUIPMENT_KINDS) == 20
    assert len({c.fold_kind(k) for k in c.EQUIPMENT_KINDS}) == 20
