"""The passerelle's wiring: what it reads and writes (the ACLs are derived from it), and a
start refused, before any connection, when it has no keys to check tokens with."""

import pytest

import contracts as c
from services.common.runtime.app import build_app
from services.common.runtime.settings import check_environment
from services.common.runtime.startup import StartupFailed
from services.passerelle.api import create_api, record_headers
from services.passerelle.app import SPEC
from services.passerelle.settings import PasserelleSettings


def test_it_reads_the_referentiel_and_writes_the_declaration_topics_only():
    assert tuple(SPEC.consumes) == (c.REFERENTIEL,)
    assert {p.topic for p in SPEC.publishes} == {c.FORMATION, c.EQUIPEMENT}
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
    assert problems == [
        "JWKS_URL: must be an https:// URL (http:// only on this machine: 127.0.0.1, localhost) "
        "(got 'http://idp.example.org/certs')"
    ]
    for fine in ("https://idp.example.org/certs", "http://127.0.0.1:8080/certs", "http://localhost/certs"):
        assert check_environment({"JWKS_URL": fine}, [PasserelleSettings]) == []
