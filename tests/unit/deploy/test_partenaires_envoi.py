"""deploy/local/partenaires.py's posts to the passerelle, without one: the batches an
établissement's events go in, and what a passerelle unavailable for a while does to a run."""

import base64
import json

import httpx
import pytest

from deploy.local import partenaires
from deploy.local.partenaires import BATCH_EVENTS, Partenaires, PasserelleIndisponible, batches

DECLARANT = "/collectivites/departements/035"


def events(*runs: tuple[str, int]) -> list[dict]:
    return [{"id": f"{subject}-{n}", "subject": subject} for subject, count in runs for n in range(count)]


def test_an_etablissement_s_events_go_in_one_batch_unless_they_fill_one():
    cut = list(batches(events(("A", 600), ("B", 600), ("C", 300))))
    assert [(b[0]["subject"], len(b)) for b in cut] == [("A", 600), ("B", 900)]
    assert {e["subject"] for e in cut[1]} == {"B", "C"}
    alone = list(batches(events(("A", 2 * BATCH_EVENTS + 500))))
    assert [len(b) for b in alone] == [BATCH_EVENTS, BATCH_EVENTS, 500]
    exact = list(batches(events(("A", 400), ("B", 600), ("C", 10))))
    assert [len(b) for b in exact] == [1000, 10], "a batch that ends with an établissement is not cut"
    assert [e["id"] for b in cut for e in b] == [e["id"] for e in events(("A", 600), ("B", 600), ("C", 300))]


def records(count: int) -> list[tuple[str, str, bytes]]:
    topic = "equipement.declarations.v1"
    return [
        (topic, "0350001L", json.dumps({"id": f"e{n}", "source": DECLARANT, "subject": "0350001L"}).encode())
        for n in range(count)
    ]


def _with(monkeypatch, answer) -> None:
    """Posts answered by `answer(request)` (a Response, or an exception to raise)."""
    real = httpx.AsyncClient
    monkeypatch.setattr(
        partenaires.httpx, "AsyncClient", lambda **kw: real(transport=httpx.MockTransport(answer), **kw)
    )
    monkeypatch.setattr(partenaires, "FIRST_RETRY_SECONDS", 0.01)


def accepted(request: httpx.Request) -> httpx.Response:
    posted = json.loads(request.content)
    return httpx.Response(202, json={"resultats": [{"index": i, "statut": "accepted"} for i in range(len(posted))]})


async def test_a_passerelle_unavailable_a_while_gets_the_batch_again_and_loses_nothing(monkeypatch):
    """A 503 (its Retry-After read), a proxy's 502, a connection refused: the run stopped at the
    first (exit 2, the later batches not sent). Each is waited out, the batch posted again."""
    answers = iter(
        [
            httpx.Response(503, headers={"retry-after": "0"}),
            httpx.ConnectError("refused"),
            httpx.Response(502),
        ]
    )
    posted: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        posted.append(len(json.loads(request.content)))
        following = next(answers, None)
        if isinstance(following, Exception):
            raise following
        return following or accepted(request)

    _with(monkeypatch, answer)
    said: list[str] = []
    sender = Partenaires("http://passerelle", jeton=lambda _: "t", kafka=lambda _: None, said=said.append)
    sent = await sender.send(records(BATCH_EVENTS + 5))
    assert (sent.accepted, sent.refused) == (BATCH_EVENTS + 5, [])
    assert posted == [BATCH_EVENTS] * 4 + [5], "the first batch three times more, then the next"
    assert sum("indisponible" in line for line in said) == 2, said
    assert sum("injoignable (ConnectError)" in line for line in said) == 1, said
    assert f"{DECLARANT} : {BATCH_EVENTS + 5}/{BATCH_EVENTS + 5} événements envoyés" in said


async def test_a_passerelle_unavailable_too_long_stops_the_run_saying_how_far_it_went(monkeypatch):
    monkeypatch.setattr(partenaires, "RETRY_SECONDS", 0.1)
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return accepted(request) if calls == 1 else httpx.Response(503, headers={"retry-after": "0.02"})

    _with(monkeypatch, answer)
    sender = Partenaires("http://passerelle", jeton=lambda _: "t", kafka=lambda _: None)
    with pytest.raises(PasserelleIndisponible, match=f"{BATCH_EVENTS} événements envoyés sur {BATCH_EVENTS + 5}"):
        await sender.send(records(BATCH_EVENTS + 5))


async def test_a_declarant_over_its_rate_waits_as_told_says_so_and_stops_if_it_lasts(monkeypatch):
    """A 429 (the passerelle's rate for the declarant) was posted again after its Retry-After,
    silently and for ever: another client of the same declarant taking the whole rate held the
    run with nothing said. Now a line each time, and the same 5 minutes as a 503."""
    answers = [httpx.Response(429, headers={"retry-after": "0"})]
    for_good = False

    def answer(request: httpx.Request) -> httpx.Response:
        if for_good:
            return httpx.Response(429, headers={"retry-after": "0.02"})
        return answers.pop() if answers else accepted(request)

    _with(monkeypatch, answer)
    said: list[str] = []
    sender = Partenaires("http://passerelle", jeton=lambda _: "t", kafka=lambda _: None, said=said.append)
    sent = await sender.send(records(5))
    assert (sent.accepted, sent.refused) == (5, [])
    assert said == ["http://passerelle/v1/evenements débit dépassé (429) : nouvel essai dans 0 s"]

    monkeypatch.setattr(partenaires, "RETRY_SECONDS", 0.1)
    for_good = True
    with pytest.raises(PasserelleIndisponible, match="débit dépassé depuis 0 s \\(429\\) : 0 événements envoyés sur 5"):
        await sender.send(records(5))


async def test_a_token_refused_during_a_run_is_replaced_by_the_provider_s_next_and_the_batch_posted_again(monkeypatch):
    """A provider's token lives minutes (Keycloak's: 5), a large run longer: a token is asked for
    each batch, and one the passerelle refuses (expired during a wait) is told to its provider,
    the batch posted once more with the next (audit s67 ingestion F1: the run stopped, exit 2)."""
    tokens = iter(["t1", "t2", "t3"])
    asked: list[str] = []
    refused: list[str] = []
    seen: list[str] = []

    def jeton(declarant: str) -> str:
        asked.append(declarant)
        return next(tokens)

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(401, text="jeton expiré") if len(seen) == 2 else accepted(request)

    _with(monkeypatch, answer)
    said: list[str] = []
    sender = Partenaires(
        "http://passerelle", jeton=jeton, kafka=lambda _: None, said=said.append, jeton_refuse=refused.append
    )
    sent = await sender.send(records(BATCH_EVENTS + 5))
    assert (sent.accepted, sent.refused) == (BATCH_EVENTS + 5, [])
    assert seen == ["Bearer t1", "Bearer t2", "Bearer t3"] and refused == ["t2"]
    assert asked == [DECLARANT] * 3
    assert "http://passerelle/v1/evenements : jeton refusé (401), nouvel essai avec un nouveau jeton" in said


async def test_a_token_refused_again_stops_the_run_naming_the_answer(monkeypatch):
    """A token given (not a provider's), or the provider's next refused too: no loop."""
    _with(monkeypatch, lambda request: httpx.Response(401, text="jeton refusé : audience"))
    sender = Partenaires("http://passerelle", jeton=lambda _: "t", kafka=lambda _: None, jeton_refuse=lambda _: None)
    with pytest.raises(RuntimeError, match=r"answered 401 to .*jeton refusé : audience"):
        await sender.send(records(5))


def _provider(monkeypatch, answers: list[httpx.Response]) -> list[httpx.Request]:
    """The token endpoint answering `answers` in turn: the requests it got."""
    got: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        got.append(request)
        return answers.pop(0)

    _with(monkeypatch, answer)
    return got


async def test_a_client_s_token_is_kept_while_it_lives_and_asked_again_before_it_expires(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(partenaires.time, "monotonic", lambda: now[0])
    got = _provider(
        monkeypatch,
        [
            httpx.Response(200, json={"access_token": "a", "expires_in": 300, "token_type": "Bearer"}),
            httpx.Response(200, json={"access_token": "b", "expires_in": 300}),
            httpx.Response(200, json={"access_token": "c"}),
        ],
    )
    client = partenaires.ClientCredentials("https://idp/token", "glpi-035", "s3cret")
    assert await client.jeton() == "a"
    now[0] += 239
    assert await client.jeton() == "a", "until a minute before it expires"
    now[0] += 1
    assert await client.jeton() == "b"
    client.refused("a")
    assert await client.jeton() == "b", "a former token refused: the one in hand kept"
    client.refused("b")
    assert await client.jeton() == "c"
    now[0] += 10**6
    assert await client.jeton() == "c", "no expires_in: kept until refused"
    assert len(got) == 3
    assert got[0].headers["authorization"] == "Basic " + base64.b64encode(b"glpi-035:s3cret").decode()
    assert got[0].content == b"grant_type=client_credentials"


async def test_a_client_the_provider_refuses_is_said_in_its_words_never_with_its_secret(monkeypatch):
    _provider(
        monkeypatch,
        [httpx.Response(401, json={"error": "unauthorized_client", "error_description": "Invalid client secret"})],
    )
    client = partenaires.ClientCredentials("https://idp/token", "glpi-035", "s3cret")
    with pytest.raises(RuntimeError) as refused:
        await client.jeton()
    said = str(refused.value)
    assert "glpi-035" in said and "401" in said and "Invalid client secret" in said and "s3cret" not in said


async def test_a_client_s_credentials_are_form_encoded_and_a_lifetime_written_as_text_is_read(monkeypatch):
    """RFC 6749, 2.3.1: a secret holding `+` or `%` was read otherwise by a provider that decodes
    them (Keycloak); some providers write `expires_in` as a string, taken for "never expires"."""
    now = [0.0]
    monkeypatch.setattr(partenaires.time, "monotonic", lambda: now[0])
    got = _provider(
        monkeypatch,
        [httpx.Response(200, json={"access_token": t, "expires_in": "300"}) for t in ("a", "b")],
    )
    client = partenaires.ClientCredentials("https://idp/token", "glpi 035", "a+b%c")
    assert await client.jeton() == "a"
    now[0] += 240
    assert await client.jeton() == "b"
    assert got[0].headers["authorization"] == "Basic " + base64.b64encode(b"glpi%20035:a%2Bb%25c").decode()
