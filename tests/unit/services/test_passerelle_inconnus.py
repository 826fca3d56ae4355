"""An accepted event written without the payload's fields the contract does not know, everything
else as sent; and the answer naming them."""

import json
from datetime import UTC, datetime

import contracts as c
from contracts import parse_event
from contracts.parsing import MAX_PATH
from helpers import event, uai
from services.passerelle.inconnus import MAX_NAMED, sans_inconnus

ECOLE, AILLEURS = uai("0350101"), uai("0350102")
COMMUNE = "/collectivites/communes/35238"
NOW = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
SAFARI = {"name": "Safari", "version": "17.1"}


def lot(**data) -> dict:
    base = {"uai": ECOLE, "lot_id": "L1", "kind": "tablette", "quantity": 30, "os": None, "browsers": []}
    return event(c.LOT, COMMUNE, base | data, time_=NOW)


def trimmed(sent: dict | bytes) -> tuple[bytes, bytes, list[str]]:
    """(the event's bytes as sent, as written, the paths left out)."""
    raw = sent if isinstance(sent, bytes) else json.dumps(sent, indent=1, ensure_ascii=False).encode()
    written, paths = sans_inconnus(raw, parse_event(raw))
    return raw, written, paths


def test_an_event_without_unknown_fields_is_written_as_sent():
    raw = json.dumps(lot(os={"name": "iPadOS", "version": "17.1"}, browsers=[SAFARI]), indent=3).encode()
    written, paths = sans_inconnus(raw, parse_event(raw))
    assert written is raw and paths == []


def test_unknown_fields_are_left_out_at_any_depth_and_named_never_their_values():
    sent = lot(
        email="prenom.nom@ac-rennes.fr",
        os={"name": "iPadOS", "build": "21B101", "version": "17.1"},
        browsers=[SAFARI | {"canal": {"nom": "bêta", "liste": [1, {"}": "]"}]}}, {"name": "Chrome", "version": "120"}],
    )
    sent["auteur"] = "Jeanne Martin"  # a CloudEvents extension attribute: not the contract's either
    raw, written, paths = trimmed(sent)
    assert paths == ["data.os.build", "data.browsers[].canal", "data.email", "auteur"]
    for value in (b"ac-rennes", b"21B101", "bêta".encode(), b"Jeanne"):
        assert value in raw and value not in written
    expected = {k: v for k, v in sent.items() if k != "auteur"} | {
        "data": lot(os={"name": "iPadOS", "version": "17.1"}, browsers=[SAFARI, sent["data"]["browsers"][1]])["data"]
    }
    assert json.loads(written) == expected
    # Key order too (dicts compare without it).
    assert list(json.loads(written)) == list(expected) and list(json.loads(written)["data"]) == list(expected["data"])
    assert parse_event(written) == parse_event(raw)


def test_what_loses_no_member_stays_byte_for_byte():
    sent = lot(browsers=[SAFARI | {"canal": "bêta"}, {"name": "Chrome", "version": "120"}], quantity=30.0)
    raw, written, _ = trimmed(sent)
    text = raw.decode()
    # The untouched browser, with its spaces and line breaks; a number as written (30.0, not 30);
    # a text as written (not escaped); an envelope attribute.
    chrome = text[text.index("{", text.index('"Chrome"') - 20) : text.index("}", text.index('"Chrome"')) + 1]
    for kept in (chrome, '"quantity": 30.0', '"id": "' + sent["id"] + '"'):
        assert kept.encode() in written, kept
    assert written.decode().count("\n") == chrome.count("\n")  # only objects that lost one are written again


def test_keys_are_read_as_json_says_escaped_or_not():
    raw = json.dumps(lot(), indent=1).encode().replace(b'"uai"', b'"\\u0075ai"', 1)
    raw = raw.replace(b'"quantity"', b'"e\\u006dail": "x@y.fr", "quantity"', 1)
    _, written, paths = trimmed(raw)
    assert paths == ["data.email"]
    assert b'"\\u0075ai"' in written and b"x@y.fr" not in written
    assert parse_event(written) == parse_event(raw)


def test_requirements_groups_are_looked_into():
    data = {
        "resource_id": "ark:/67375/inconnus",
        "title": "Ressource",
        "editor": "Éditeur",
        "requirements": [[{"type": "os", "name": "iPadOS", "min_version": "15", "note": "n"}], []],
        "training": {"competences": [{"code": "1.1", "level": 2, "titre": "t"}], "tools": [], "heures": 3},
    }
    _, written, paths = trimmed(event(c.RESSOURCE_PUBLIEE, "/gar", data, time_=NOW))
    assert paths == ["data.requirements[][].note", "data.training.competences[].titre", "data.training.heures"]
    assert json.loads(written)["data"]["requirements"] == [[{"type": "os", "name": "iPadOS", "min_version": "15"}], []]


def test_the_paths_named_are_bounded_in_number_and_length():
    many = {f"champ{i}": i for i in range(MAX_NAMED + 5)}
    _, written, paths = trimmed(lot(**many, **{"k" * 500: 1}))
    assert paths == [f"data.champ{i}" for i in range(MAX_NAMED)]
    assert json.loads(written)["data"] == lot()["data"]
    _, _, [long] = trimmed(lot(**{"k" * 500: 1}))
    assert len(long) == MAX_PATH and long.startswith("data.kkk") and long.endswith("…")
