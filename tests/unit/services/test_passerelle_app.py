"""The passerelle's wiring: what it reads and writes (the ACLs are derived from it), and a
start refused, before any connection, when it has no keys to check tokens with."""

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError

import contracts as c
from services.common.runtime.app import build_app
from services.common.runtime.settings import check_environment
from services.common.runtime.startup import StartupFailed
from services.passerelle.api import create_api, record_headers
from services.passerelle.app import SPEC
from services.passerelle.settings import PasserelleSettings


def test_it_reads_the_referentiel_and_writes_every_partner_topic_only():
    assert tuple(SPEC.consumes) == (c.REFERENTIEL,)
    assert {p.topic for p in SPEC.publishes} == {c.REFERENTIEL, c.FORMATION, c.EQUIPEMENT, c.CATALOGUE}
    assert tuple(SPEC.dead_letters_for) == ()  # ressources dead-letters the référentiel


@pytest.mark.parametrize(
    "keys", [{}, {"jwks_file": "/etc/jwks.json", "jwks_url": "https://idp.example/jwks"}], ids=["neither", "both"]
)
async def test_it_refuses_to_start_without_exactly_one_source_of_keys(keys):
    settings = PasserelleSettings(kafka_bootstrap_servers="127.0.0.1:1", **keys)
    api = create_api(build_app(SPEC, settings), settings)
    with pytest.raises(StartupFailed, match=r"JWKS_FILE.*JWKS_URL"):
        async with api.router.lifespan_context(api):
            pass


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"


def test_the_requests_trace_context_becomes_the_records_headers_only_when_well_formed():
    base = [("content-type", c.CONTENT_TYPE.encode()), (c.PRINCIPAL_HEADER, b"client-035")]
    http = [("authorization", "Bearer secret"), ("content-type", "application/cloudevents+json")]
    traced = [("traceparent", TRACEPARENT), ("tracestate", "congo=t61rcWkgMzE")]
    assert record_headers("client-035", [*http, *traced]) == [
        *base,
        ("traceparent", TRACEPARENT.encode()),
        ("tracestate", b"congo=t61rcWkgMzE"),
    ]
    assert record_headers("client-035", http) == base
    baggage = [("baggage", "territoire=035")]  # would travel on to alerts other territories read
    assert record_headers("client-035", [*traced, *baggage]) == record_headers("client-035", traced)
    for malformed in (
        TRACEPARENT.replace("0af7", "0AF7"),  # upper case hex
        TRACEPARENT.replace("0af7651916cd43dd8448eb211c80319c", "0" * 32),  # no trace
        TRACEPARENT[:-3],
        "ff" + TRACEPARENT[2:],  # the forbidden version
    ):
        assert record_headers("client-035", [("traceparent", malformed), ("tracestate", "congo=t61rcWkgMzE")]) == base
    assert record_headers("client-035", [("tracestate", "congo=t61rcWkgMzE")]) == base


def test_signing_keys_are_fetched_over_https_except_from_this_machine():
    problems = check_environment({"JWKS_URL": "http://idp.example.org/certs"}, [PasserelleSettings])
    assert problems == [  # its value not shown: an endpoint may carry a token (settings.SECRET)
        "JWKS_URL: must be an https:// URL (http:// only on this machine: 127.0.0.1, ::1, localhost)"
    ]
    for fine in (
        "https://idp.example.org/certs",
        "http://127.0.0.1:8080/certs",
        "http://[::1]:8080/certs",
        "http://localhost/certs",
    ):
        assert check_environment({"JWKS_URL": fine}, [PasserelleSettings]) == []


class _Producer:
    """A stand-in for the passerelle's producer: its start hangs, fails or succeeds."""

    def __init__(self, start: str):
        self._start, self.stopped = start, False

    async def start(self) -> None:
        if self._start == "hangs":
            await asyncio.Event().wait()
        if self._start == "fails":
            raise KafkaConnectionError("Kafka away")

    async def stop(self) -> None:
        self.stopped = True


async def test_a_renewal_waits_at_most_the_write_timeout_and_a_failed_one_pauses_the_next(monkeypatch):
    """Requests wait on the renewal's lock: a start that hangs is given up at the write timeout,
    and after a failed one no other is tried for RETRY_UNAVAILABLE_SECONDS (each request would
    otherwise pay a whole bootstrap attempt in turn)."""
    from services.passerelle import api

    made: list[_Producer] = []
    kinds = iter(["hangs", "fails", "starts"])

    def new_producer(settings: PasserelleSettings) -> _Producer:
        made.append(_Producer(next(kinds)))
        return made[-1]

    monkeypatch.setattr(api, "new_producer", new_producer)
    settings = PasserelleSettings(kafka_bootstrap_servers="127.0.0.1:1", passerelle_write_timeout_seconds=0.2)
    dead = _Producer("starts")
    gateway = api.Passerelle(settings, None, None, dead, None)  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        await gateway._renew(dead, RuntimeError("sender died"))  # hangs: given up at the timeout
    assert gateway.producer is dead and made[0].stopped
    await gateway._renew(dead, RuntimeError("sender died"))
    assert len(made) == 1, "none tried during the pause after a failed renewal"
    gateway._renew_after = 0  # the pause over
    await gateway._renew(dead, RuntimeError("sender died"))  # fails: paused again
    await gateway._renew(dead, RuntimeError("sender died"))
    assert len(made) == 2 and gateway.producer is dead
    gateway._renew_after = 0
    await gateway._renew(dead, RuntimeError("sender died"))
    assert len(made) == 3 and gateway.producer is made[2]
    for task in list(gateway._retiring):  # the former one, stopped after the write timeout
        await task
    assert dead.stopped


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"content-type", b"application/json")], b"no-store"),
        ([(b"Content-Type", b"application/problem+json")], b"no-store"),
        ([(b"content-type", b"application/json"), (b"Cache-Control", b"no-cache")], b"no-cache"),
        ([(b"content-type", b"text/html; charset=utf-8")], None),
    ],
    ids=["json", "problem+json", "its own", "not json"],
)
async def test_a_json_answer_without_its_own_cache_control_is_not_stored(headers, expected):
    """Both HTTP APIs (ressources' reads, the passerelle's answers): a shared cache kept them."""
    from services.common.runtime.app import AnswerHeaders

    async def answer(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    await AnswerHeaders(answer)({"type": "http"}, None, send)
    said = {name.lower(): value for name, value in sent[0]["headers"]}
    assert said.get(b"cache-control") == expected
    assert (said[b"x-content-type-options"], said[b"referrer-policy"]) == (b"nosniff", b"no-referrer")
    assert sent[1]["body"] == b"{}"


@pytest.mark.parametrize(
    ("bound", "status", "said"),
    [
        ("sujet", 429, "au plus 4 en cours"),
        ("reserve", 429, "gardées aux déclarants sans requête en cours"),
        ("total", 503, "traite déjà 8 requêtes"),
    ],
)
def test_each_bound_on_requests_at_once_answers_its_status_and_says_which(bound, status, said):
    from services.passerelle.api import busy

    refused = busy(PasserelleSettings(), "client-035", bound)
    assert refused.status_code == status and said in refused.detail
    assert int(refused.headers["Retry-After"]) >= 1
