"""Each event of a request judged as the services judge it, then bound to the token.

In order: the contract, by the services' own parser (`parse_event`, on the event's bytes as
sent, with the topic its type goes to and the same `MAX_CLOCK_SKEW`); then `source` must be one
of the token's declarants (`source-non-autorisee`); then who may declare what (`rights.check`)
against the passerelle's own view of the référentiel. The reason codes are the DLQ's. An event
accepted is written without the attributes and fields the contract does not know (inconnus.py).
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import contracts as c
from contracts import CloudEvent, ContractError, Etablissement
from contracts.parsing import MAX_RECORD_BYTES, TOO_LARGE
from services.common.rules import rights
from services.common.rules.rights import Refusal
from services.passerelle.corps import Element
from services.passerelle.inconnus import sans_inconnus

SOURCE_NON_AUTORISEE = "source-non-autorisee"
PARTNER_TOPICS = (c.REFERENTIEL, c.FORMATION, c.EQUIPEMENT, c.CATALOGUE)
TOPICS = {t: topic for topic in PARTNER_TOPICS for t in sorted(c.TOPIC_TYPES[topic])}
"""Every type a partner declares, and the topic each is written to: HTTP ingestion is for
rectorats, collectivités and any partner (CONTRACTS.md, Identity), so the ministère's
référentiel and catalogue and the GAR's catalogue too, each bound to its token like the rest.
Only the platform's own types (the alerts) are refused (`type-hors-topic`)."""
PLATFORM_TYPES = {t: topic for topic, types in c.TOPIC_TYPES.items() for t in types if t not in TOPICS}
"""The v1 types only the platform writes, and the topic of each."""
SLICE_BYTES = 256 * 1024
"""Events judged between two turns of the event loop, by their size: a request's 1,000 events of
up to 16 MiB took 0.6–0.8 s of CPU to judge, during which the passerelle answered nobody else
(its probes neither); a slice is a few milliseconds (measured 2 December 2026)."""


@dataclass(frozen=True)
class Accepte:
    """An event to write: its topic (unprefixed), record key and bytes as sent, less the members
    the contract does not know, named in `ignores` (inconnus.py)."""

    topic: str
    key: str
    raw: bytes
    ignores: tuple[str, ...] = ()


Verdict = Accepte | Refusal


class _Held(NamedTuple):
    """What the rights read of an event that passed the contract and the token, and what its
    record needs: not the event (a resource of 32 requirement groups of 32 entries is a few
    hundred KB as a model; a request of them, hundreds of MB held until the last is parsed)."""

    type: str
    source: str
    uai: str | None
    accepte: Accepte
    etablissement: Etablissement | None = None
    """An établissement's own event: the référentiel entry it declares."""


async def judge(
    elements: Sequence[Element],
    declarants: Iterable[str],
    not_after: datetime,
    etablissements: Callable[[list[str]], Awaitable[dict[str, Etablissement]]],
) -> list[Verdict]:
    """One verdict per element, in order. `etablissements` loads the référentiel's entries of
    some UAIs (once per request, for the events that pass the first two checks)."""
    allowed = frozenset(declarants)
    verdicts: list[Verdict | _Held] = []
    judged = 0  # bytes since the last turn of the event loop
    for element in elements:
        if judged >= SLICE_BYTES:
            await asyncio.sleep(0)
            judged = 0
        judged += len(element.raw)
        try:
            event, topic = _contract(element, not_after)
        except ContractError as e:
            verdicts.append(Refusal(e.code, e.message))
            continue
        if event.source not in allowed:
            verdicts.append(Refusal(SOURCE_NON_AUTORISEE, _not_yours(event.source, allowed)))
        else:
            raw, ignores = sans_inconnus(element.raw, event)
            accepte = Accepte(topic, event.data.key, raw, tuple(ignores))
            declared = event.data if isinstance(event.data, Etablissement) else None
            verdicts.append(_Held(event.type, event.source, c.uai_of(event), accepte, declared))
    uais = {v.uai for v in verdicts if isinstance(v, _Held) and v.uai}
    etabs = await etablissements(sorted(uais))
    out: list[Verdict] = []
    for v in verdicts:
        verdict = _rights(v, etabs) if isinstance(v, _Held) else v
        if isinstance(v, _Held) and v.etablissement and verdict is v.accepte and v.etablissement.uai not in etabs:
            # An établissement the référentiel does not hold yet, accepted: known to the events
            # after it in this request (over Kafka, the services wait for it: uai-inconnu, then
            # judged again once it is stored). One it holds stays as held until its record is read.
            etabs[v.etablissement.uai] = v.etablissement
        out.append(verdict)
    return out


def _contract(element: Element, not_after: datetime) -> tuple[CloudEvent, str]:
    if element.oversize:  # not decoded, nor kept: its characters alone exceed the bound
        raise ContractError(TOO_LARGE, f"valeur de {element.oversize} caractères, au-delà de {MAX_RECORD_BYTES} octets")
    topic = TOPICS.get(element.type or "")
    if topic is None and element.type in PLATFORM_TYPES:
        # Judged as on any partner's topic, where the DLQ refuses it: the size and the envelope
        # first, then its type, before its data (the same reason code over HTTP as on Kafka).
        try:
            c.parse_event(element.raw, PARTNER_TOPICS[0], not_after=not_after)
        except ContractError as e:
            if e.code != "type-hors-topic":
                raise
        raise ContractError(
            "type-hors-topic",
            f"type {element.type} : publié par la plateforme ({PLATFORM_TYPES[element.type]}), pas par les "
            f"partenaires (cette API accepte {', '.join(sorted(TOPICS))})",
        )
    event = c.parse_event(element.raw, topic, not_after=not_after)
    assert topic is not None  # a type of no topic is refused by the parser (type-inconnu)
    return event, topic


def _not_yours(source: str, allowed: frozenset[str]) -> str:
    return f"source {source} : le jeton déclare pour {', '.join(sorted(allowed)) or 'personne'}, pas pour elle"


def _rights(held: _Held, etabs: dict[str, Etablissement]) -> Verdict:
    declarant = c.parse_source(held.source)
    refusal = rights.check_declaration(held.type, held.source, held.uai, declarant, etabs.get(held.uai or ""))
    return refusal or held.accepte
