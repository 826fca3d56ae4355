"""The AsyncAPI documents: produced by `./dev gen` (FastStream), naming every topic of
CONTRACTS.md, and in step with the committed copies in contracts/asyncapi/."""

import json

import pytest

import contracts as c
from contracts.internal import COUVERTURES, PROFILS
from services.specs import OPENAPI, OUT, document, openapi, specs

# CONTRACTS.md's topics, and the DLQ of each topic the platform consumes. The alerts topic
# is only written by the platform, which never refuses its own records: it has no DLQ.
CONTRACT_TOPICS = set(c.PUBLIC_TOPICS) | {c.dlq(t) for t in (c.REFERENTIEL, c.FORMATION, c.EQUIPEMENT, c.CATALOGUE)}


@pytest.fixture(scope="module")
def documents() -> dict[str, dict]:
    return {spec.name: document(spec) for spec in specs()}


def _addresses(doc: dict) -> set[str]:
    return {ch.get("address", name) for name, ch in doc["channels"].items()}


def test_every_contract_topic_is_named(documents):
    named = set().union(*(_addresses(d) for d in documents.values()))
    assert named >= CONTRACT_TOPICS, f"missing: {sorted(CONTRACT_TOPICS - named)}"


def test_committed_documents_match_the_code(documents):
    for name, doc in documents.items():
        committed = json.loads((OUT / f"{name}.json").read_text(encoding="utf-8"))
        assert committed == json.loads(json.dumps(doc, sort_keys=True)), (
            f"contracts/asyncapi/{name}.json is out of date: run ./dev gen"
        )


# Each service serving an HTTP API, and paths its OpenAPI document must hold.
HTTP_PATHS = {
    "ressources": {"/alertes", "/alertes/flux", "/etablissements/{uai}", "/ressources/{resource_id}"},
    "passerelle": {"/v1/evenements", "/health"},
}


def test_the_services_serving_http_are_known():
    assert {spec.name for spec in specs() if spec.http_api is not None} == set(HTTP_PATHS)


@pytest.mark.parametrize("spec", [s for s in specs() if s.http_api is not None], ids=lambda s: s.name)
def test_committed_openapi_documents_match_the_apis(spec):
    committed = json.loads((OPENAPI / f"{spec.name}.json").read_text(encoding="utf-8"))
    assert committed == json.loads(json.dumps(openapi(spec), sort_keys=True)), (
        f"contracts/openapi/{spec.name}.json is out of date: run ./dev gen"
    )
    assert HTTP_PATHS[spec.name] <= set(committed["paths"])


def test_the_internal_topics_documents_name_each_type_they_carry(documents):
    """equipement's and formation's internal topics carry two types each: the documents said
    the first one only (a bare payload, not its CloudEvent)."""
    from contracts.internal import INTERNAL_PAYLOADS, INTERNAL_TOPIC_TYPES

    for service, topic in (("equipement", PROFILS), ("formation", COUVERTURES)):
        doc = documents[service]
        payload = doc["components"]["schemas"][f"{service}:{topic}:Message:Payload"]
        named = {ref["$ref"].rsplit("/", 1)[-1] for ref in payload["anyOf"]}
        assert named == {INTERNAL_PAYLOADS[t].__name__ + "Event" for t in INTERNAL_TOPIC_TYPES[topic]}
        for name in named:
            event = doc["components"]["schemas"][name]
            assert event["properties"]["data"]["$ref"].endswith("/" + name.removesuffix("Event"))
