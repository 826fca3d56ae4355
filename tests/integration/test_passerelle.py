"""The passerelle served for real (uvicorn on a free port) against the real broker and database,
with tokens of the local identity provider: what it refuses before judging (401, 400, 413,
429), what it judges per event (207 with the DLQ's reason codes, source-non-autorisee), and what
reaches Kafka (only the accepted events, bytes as sent less the payload's fields the contract
does not know, keyed by UAI, with the auth-principal header), written before the answer."""

import asyncio
import base64
import json
import logging
import threading
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import asyncpg
import jwt
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

import contracts as c
from contracts import parse_event
from deploy.identite import IdentiteLocale
from helpers import Said, TopicReader, at, event, eventually, kill_sender, record_count, send, serving, uai
from services.common.messaging.connection import kafka_options
from services.passerelle import api as passerelle_api
from services.passerelle import corps
from services.passerelle.app import SPEC
from services.passerelle.settings import PasserelleSettings

ECOLE, AUTRE_ECOLE, INCONNUE = uai("0350201"), uai("0350202"), uai("0350299")
RENNES = "/collectivites/communes/35238"
MAX_BODY = 4 * 1024 * 1024  # above the largest element the passerelle decodes (corps.WINDOWS)
STRUCTURED = {"content-type": "application/cloudevents+json"}
BATCHED = {"content-type": "application/cloudevents-batch+json"}
LEVELS = ("debug", "info", "warning", "error", "exception")


def ecole(code: str, commune: str) -> dict:
    data = {
        "uai": code,
        "nom": f"École {code}",
        "type": "ecole",
        "statut": "public",
        "code_commune": commune,
        "code_departement": "035",
        "code_academie": "14",
        "code_region": "53",
        "ouvert": True,
    }
    return event(c.ETABLISSEMENT, "/ministere", data, subject=code, time_=at(0))


def lot(where: str, source: str = RENNES, lot_id: str = "L1") -> dict:
    data = {"uai": where, "lot_id": lot_id, "kind": "TNI", "quantity": 2, "os": None, "browsers": []}
    return event(c.LOT, source, data, subject=where, time_=at(1))


@pytest.fixture
def identite(tmp_path) -> IdentiteLocale:
    provider = IdentiteLocale(tmp_path / "identite")
    provider.ensure()
    return provider


@asynccontextmanager
async def serve(settings: PasserelleSettings):
    """The passerelle as `python -m services.passerelle` serves it, in this process: (client, api)."""
    async with serving(SPEC, settings, timeout=30) as served:
        yield served


@pytest.fixture
async def passerelle(kafka, settings, identite):
    own = PasserelleSettings.of(settings).model_copy(
        update={"jwks_file": str(identite.jwks_path), "passerelle_max_body_bytes": MAX_BODY}
    )
    async with serve(own) as (client, api):
        yield client, api


def rated(settings, identite, rate: float, burst: int) -> PasserelleSettings:
    """The passerelle's settings with this rate and burst per subject."""
    return PasserelleSettings.of(settings).model_copy(
        update={
            "jwks_file": str(identite.jwks_path),
            "passerelle_rate_events_per_s": rate,
            "passerelle_rate_burst": burst,
        }
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _retype(token: str, identite: IdentiteLocale, typ: str) -> str:
    """`token`'s claims signed again by `identite`'s key, its header's `typ` being `typ`."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(
        claims, identite.key_path.read_bytes(), algorithm="RS256", headers={"kid": identite.kid, "typ": typ}
    )


async def test_a_request_without_a_valid_token_is_401_naming_the_rule(passerelle, identite, tmp_path):
    client, _ = passerelle
    body = json.dumps(lot(ECOLE)).encode()
    good = identite.jeton(RENNES)
    header, _claims, signature = good.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"sub": "x", "declarant": "/gar"}).encode()).rstrip(b"=").decode()
    elsewhere = IdentiteLocale(tmp_path / "ailleurs")
    cases = {
        "absent": ({}, "jeton absent"),
        "basic": ({"authorization": "Basic dXNlcjpwYXNz"}, "jeton absent"),
        "signature": (bearer(f"{header}.{forged}.{signature}"), "signature invalide"),
        "other provider": (bearer(elsewhere.jeton(RENNES)), "clé inconnue"),
        "issuer": (bearer(identite.jeton(RENNES, issuer="https://ailleurs.example")), "émetteur"),
        "audience": (bearer(identite.jeton(RENNES, audience="autre-api")), "audience"),
        "expired": (bearer(identite.jeton(RENNES, ttl_seconds=-120)), "expiré"),
        "valid for months": (bearer(identite.jeton(RENNES, ttl_seconds=90 * 86_400)), "valide trop longtemps"),
        # The provider's logout token (OpenID Connect Back-Channel Logout), well signed, for our audience.
        "not an access token": (bearer(_retype(identite.jeton(RENNES), identite, "logout+jwt")), "type de jeton"),
    }
    for name, (headers, rule) in cases.items():
        response = await client.post("/v1/evenements", content=body, headers={**STRUCTURED, **headers})
        assert response.status_code == 401, name
        assert rule in response.json()["detail"], name
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("Bearer"), name
        assert ('error="invalid_token"' in challenge) == ("authorization" in headers and name != "basic"), name
        token = headers.get("authorization", "").removeprefix("Bearer ")
        assert not token or token not in response.text, name


async def test_the_longest_lifetime_of_a_token_is_the_deployments(kafka, settings, identite):
    own = PasserelleSettings.of(settings).model_copy(
        update={"jwks_file": str(identite.jwks_path), "jwt_max_lifetime_seconds": 600}
    )
    async with serve(own) as (client, _):
        headers = {**STRUCTURED, **bearer(identite.jeton(RENNES, ttl_seconds=3600))}
        response = await client.post("/v1/evenements", content=json.dumps(lot(ECOLE)).encode(), headers=headers)

    assert response.status_code == 401
    assert "exp à plus de 600 s (JWT_MAX_LIFETIME_SECONDS)" in response.json()["detail"]


async def test_a_token_signed_by_a_key_the_provider_published_while_failing_is_503_not_401(
    kafka, settings, identite, tmp_path, monkeypatch
):
    """JWKS_URL: the provider rotates its keys and fails when the passerelle fetches them for
    the new key's first token. A 401 would tell the client its token is invalid (it would get
    another, signed by the same key); it is a 503 with Retry-After, and accepted once the
    provider answers. Said once for the requests of a few seconds (a line per request: anyone's
    made-up token, repeated, wrote the log's lines)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    said = Said()
    monkeypatch.setattr(passerelle_api, "log", said)

    served = {"jwks": identite.jwks_path.read_bytes()}

    class Provider(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(served["jwks"])

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    rotated = IdentiteLocale(tmp_path / "nouvelle-cle")
    rotated.ensure()
    own = PasserelleSettings.of(settings).model_copy(
        update={"jwks_url": f"http://127.0.0.1:{server.server_port}/certs", "jwks_file": None}
    )
    try:
        async with serve(own) as (client, _):
            ok = await client.post(
                "/v1/evenements", content=b"[]", headers={**BATCHED, **bearer(identite.jeton(RENNES))}
            )
            assert ok.status_code == 202, ok.text
            served["jwks"] = b"<html>502 Bad Gateway</html>"
            token = rotated.jeton(RENNES)
            refused = await client.post("/v1/evenements", content=b"[]", headers={**BATCHED, **bearer(token)})
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1, refused.text
            assert "pas encore connue" in refused.json()["detail"] and token not in refused.text
            for _ in range(4):
                again = await client.post("/v1/evenements", content=b"[]", headers={**BATCHED, **bearer(token)})
                assert again.status_code == 503
            [line] = said.named("jwks.cle_a_verifier")
            assert line["level"] == "warning" and line["autres_requetes"] == 0
            scraped = await _scraped(client)
            assert scraped[("feo_passerelle_unavailable_total", (("reason", "cle-a-verifier"),))] == 5
            assert scraped[("feo_passerelle_jwks_keys", ())] == 1  # the keys in hand, still used
            served["jwks"] = json.dumps(
                {"keys": [k for p in (identite, rotated) for k in json.loads(p.jwks_path.read_bytes())["keys"]]}
            ).encode()

            async def accepted() -> bool:
                answer = await client.post("/v1/evenements", content=b"[]", headers={**BATCHED, **bearer(token)})
                assert answer.status_code in (202, 503), answer.text
                return answer.status_code == 202

            await eventually(accepted, timeout=30, what="the new key's token accepted once the provider answers")
            assert (await _scraped(client))[("feo_passerelle_jwks_keys", ())] == 2
    finally:
        server.shutdown()
        server.server_close()


async def test_what_is_not_one_event_or_a_batch_within_the_limits_is_refused_whole(passerelle, identite):
    client, _ = passerelle
    auth = bearer(identite.jeton(RENNES))
    one = json.dumps(lot(ECOLE)).encode()

    async def post(content, headers):
        return await client.post("/v1/evenements", content=content, headers={**auth, **headers})

    response = await post(one, {"content-type": "application/json"})
    assert response.status_code == 400 and "application/cloudevents+json" in response.json()["detail"]
    for content, headers in [(b"[" + one + b"]", STRUCTURED), (one, BATCHED), (b"{", STRUCTURED), (b"[1,", BATCHED)]:
        response = await post(content, headers)
        assert response.status_code == 400, content[:10]
    huge = b"[" + b",".join([one] * (MAX_BODY // len(one) + 1)) + b"]"
    assert (await post(huge, BATCHED)).status_code == 413  # Content-Length beyond PASSERELLE_MAX_BODY_BYTES

    async def chunked():  # no Content-Length: cut while reading
        for _ in range(MAX_BODY // 65536 + 2):
            yield b" " * 65536

    response = await post(chunked(), BATCHED)
    assert response.status_code == 413 and str(MAX_BODY) in response.json()["detail"]
    padded = json.dumps(lot(ECOLE) | {"padding": "x" * 256 * 1024}).encode()
    assert (await post(padded, STRUCTURED)).status_code == 413  # one event beyond a record value
    assert (await post(json.dumps([{}] * 1001).encode(), BATCHED)).status_code == 413
    response = await client.get("/v1/evenements")
    assert response.status_code == 405 and "POST" in response.json()["detail"]
    response = await client.post("/v1/evenements/", content=one, headers={**auth, **STRUCTURED})
    assert response.status_code == 404  # not redirected: behind a proxy ending TLS, its Location said http://


async def test_a_body_is_read_into_its_events_off_the_event_loop(passerelle, identite, monkeypatch):
    """16 MiB took 0.2 s of CPU to read into events: in a worker thread, so that the passerelle
    answers other requests meanwhile; what it refuses is refused all the same."""
    client, _ = passerelle
    on_loop, split = [], corps.split

    def watched(body, media):
        on_loop.append(threading.current_thread() is threading.main_thread())
        return split(body, media)

    monkeypatch.setattr(corps, "split", watched)
    response = await client.post("/v1/evenements", content=b"[1,", headers=bearer(identite.jeton(RENNES)) | BATCHED)
    assert response.status_code == 400 and "tableau JSON" in response.json()["detail"]
    assert on_loop == [False]


async def test_a_batch_mixing_good_and_bad_events_writes_only_the_good_ones(kafka, settings, passerelle, identite):
    client, api = passerelle
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(ECOLE, ecole(ECOLE, "35238"))])
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(AUTRE_ECOLE, ecole(AUTRE_ECOLE, "35001"))])
    pool = api.state.passerelle.pool
    await eventually(lambda: pool.fetchval("SELECT count(*) = 2 FROM etablissements"), what="the référentiel")

    good = json.dumps(lot(ECOLE), indent=1).encode()  # sent as it is, not re-encoded
    connectivite = event(c.CONNECTIVITE, RENNES, {"uai": ECOLE, "bandwidth_mbps": 8, "ent": True}, time_=at(1))
    repeated = good[:-1] + b', "source": "/collectivites/communes/35001"}'
    batch = [
        good,
        json.dumps(lot(AUTRE_ECOLE)).encode(),  # another commune's école
        json.dumps(lot(AUTRE_ECOLE, "/collectivites/communes/35001")).encode(),  # not the token's declarant
        json.dumps(lot(INCONNUE)).encode(),
        repeated,
        json.dumps(lot(ECOLE, lot_id="x" * 257)).encode(),
        json.dumps(lot(ECOLE, lot_id="L2") | {"padding": "x" * 256 * 1024}).encode(),
        json.dumps(event(c.ALERTE_LEVEE, RENNES, {}, time_=at(1))).encode(),  # its data judged after its type
        json.dumps(connectivite).encode(),
    ]
    auth = bearer(identite.jeton(RENNES, subject="sig-rennes"))
    async with TopicReader(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT)) as topic:
        response = await client.post("/v1/evenements", content=b"[" + b",".join(batch) + b"]", headers=auth | BATCHED)
        assert response.status_code == 207
        results = response.json()["resultats"]
        assert [r["index"] for r in results] == list(range(len(batch)))
        assert [r["id"] for r in results] == [json.loads(e)["id"] for e in batch]
        assert [r.get("code", r["statut"]) for r in results] == [
            "accepted",
            "hors-competence",
            "source-non-autorisee",
            "uai-inconnu",
            "json-invalide",
            "trop-volumineux",
            "trop-volumineux",
            "type-hors-topic",
            "accepted",
        ]
        assert all(r["message"] for r in results if r["statut"] == "refused")
        # Written before the answer: counted at once, without waiting; and they are all there is.
        assert await record_count(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT)) == 2
        await topic.wait_for(lambda records: len(records) >= 2, what="the two accepted events")
        written = sorted(topic.records, key=lambda r: json.loads(r.value)["type"])
        assert [r.value for r in written] == [json.dumps(connectivite).encode(), good]
        for record in written:
            assert record.key == ECOLE.encode()
            assert dict(record.headers) == {"content-type": c.CONTENT_TYPE.encode(), c.PRINCIPAL_HEADER: b"sig-rennes"}

        response = await client.post(
            "/v1/evenements", content=json.dumps(lot(ECOLE, lot_id="L3")), headers=auth | STRUCTURED
        )
        assert response.status_code == 202
        [result] = response.json()["resultats"]
        assert result["statut"] == "accepted" and "code" not in result
        assert await record_count(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT)) == 3


async def test_an_event_of_megabytes_in_a_batch_is_refused_alone(kafka, settings, passerelle, identite):
    """CONTRACTS.md: an event beyond 256 KiB is `trop-volumineux`, that event; 413 is for a request
    beyond the limits. One of several megabytes (past what the passerelle decodes) refused the
    whole batch, its valid neighbours with it."""
    client, api = passerelle
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(ECOLE, ecole(ECOLE, "35238"))])
    pool = api.state.passerelle.pool
    await eventually(lambda: pool.fetchval("SELECT count(*) = 1 FROM etablissements"), what="the référentiel")
    huge = lot(ECOLE, lot_id="L2")
    huge["data"]["browsers"] = [{"name": "x" * 1000, "version": "1"}] * (2 * corps.WINDOWS[-1] // 1000)
    batch = [json.dumps(lot(ECOLE)).encode(), json.dumps(huge).encode(), json.dumps(lot(ECOLE, lot_id="L3")).encode()]
    auth = bearer(identite.jeton(RENNES))
    async with TopicReader(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT)) as topic:
        response = await client.post("/v1/evenements", content=b"[" + b",".join(batch) + b"]", headers=auth | BATCHED)
        assert response.status_code == 207, response.text
        results = response.json()["resultats"]
        assert [r.get("code", r["statut"]) for r in results] == ["accepted", "trop-volumineux", "accepted"]
        assert [r["id"] for r in results] == [json.loads(batch[0])["id"], None, json.loads(batch[2])["id"]]
        await topic.wait_for(lambda records: len(records) >= 2, what="the two accepted events")
        assert sorted(r.value for r in topic.records) == sorted([batch[0], batch[2]])
    assert await record_count(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT)) == 2


async def test_a_field_the_contract_does_not_know_is_named_in_the_answer_and_never_reaches_kafka(
    kafka, settings, passerelle, identite
):
    client, api = passerelle
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(ECOLE, ecole(ECOLE, "35238"))])
    pool = api.state.passerelle.pool
    await eventually(lambda: pool.fetchval("SELECT count(*) = 1 FROM etablissements"), what="the référentiel")
    sent = lot(ECOLE)
    sent["data"] |= {"os": {"name": "iPadOS", "version": "17.1", "build": "21B101"}, "email": "prenom.nom@ac-rennes.fr"}
    sent["partitionkey"] = ECOLE  # a CloudEvents extension attribute: not the contract's either
    auth = bearer(identite.jeton(RENNES, subject="sig-rennes"))
    async with TopicReader(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT)) as topic:
        response = await client.post("/v1/evenements", content=json.dumps(sent, indent=1), headers=auth | STRUCTURED)
        assert response.status_code == 202
        [result] = response.json()["resultats"]
        assert result["statut"] == "accepted"
        assert result["champs_ignores"] == ["data.os.build", "data.email", "partitionkey"]
        await topic.wait_for(lambda records: len(records) >= 1, what="the accepted event")
    [record] = topic.records
    assert b"ac-rennes" not in record.value and b"21B101" not in record.value
    kept = sent | {"data": sent["data"] | {"os": {"name": "iPadOS", "version": "17.1"}}}
    del kept["data"]["email"], kept["partitionkey"]
    assert json.loads(record.value) == kept
    assert parse_event(record.value).data == parse_event(json.dumps(sent).encode()).data


async def test_an_event_dated_beyond_the_clock_skew_is_time_futur_over_http(kafka, settings, passerelle, identite):
    """CONTRACTS.md, Limits: `time` later than the receiving service's clock plus MAX_CLOCK_SKEW
    (5 minutes by default) is refused as `time-futur`, over HTTP as on Kafka (audit helper-188 7e)."""
    client, api = passerelle
    assert api.state.passerelle.settings.max_clock_skew == timedelta(minutes=5)
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(ECOLE, ecole(ECOLE, "35238"))])
    pool = api.state.passerelle.pool
    await eventually(lambda: pool.fetchval("SELECT count(*) = 1 FROM etablissements"), what="the référentiel")
    now = datetime.now(UTC)
    within, beyond = lot(ECOLE, lot_id="L1"), lot(ECOLE, lot_id="L2")
    within["time"] = (now + timedelta(minutes=4)).isoformat()
    beyond["time"] = (now + timedelta(hours=1)).isoformat()
    auth = bearer(identite.jeton(RENNES, subject="sig-rennes"))
    response = await client.post("/v1/evenements", content=json.dumps([within, beyond]), headers=auth | BATCHED)
    assert response.status_code == 207
    results = response.json()["resultats"]
    assert [r.get("code", r["statut"]) for r in results] == ["accepted", "time-futur"]
    assert results[1]["message"].startswith("time"), results[1]["message"]
    assert await record_count(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT)) == 1


async def test_the_ministere_and_the_gar_declare_over_http_written_to_their_topics(
    kafka, settings, passerelle, identite
):
    """HTTP ingestion is for any partner (CONTRACTS.md, Identity): the ministère's référentiel
    and resource, the GAR's subscription, each bound to its token, written as a partner's Kafka
    record would be (keyed by its subject), by the passerelle's own principal (its ACLs)."""
    client, api = passerelle
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(ECOLE, ecole(ECOLE, "35238"))])
    pool = api.state.passerelle.pool
    await eventually(lambda: pool.fetchval("SELECT count(*) = 1 FROM etablissements"), what="the référentiel")
    resource = "ark:/67375/par-http"
    publiee = {"resource_id": resource, "title": "t", "editor": "e", "requirements": [], "tools": []}
    publiee |= {"min_bandwidth_mbps": None, "needs_ent": False}
    abonnement = {"resource_id": resource, "uai": ECOLE, "start": "2026-09-01", "end": None}
    ministere = [
        event(c.ETABLISSEMENT, "/ministere", ecole(AUTRE_ECOLE, "35001")["data"], time_=at(1)),
        event(c.RESSOURCE_PUBLIEE, "/ministere", publiee, time_=at(1)),
        # The établissement posted just before is known to it, as it is over Kafka once stored.
        event(c.ABONNEMENT, "/ministere", abonnement | {"uai": AUTRE_ECOLE}, time_=at(1)),
    ]
    gar = [event(c.ABONNEMENT, "/gar", abonnement, time_=at(2)), event(c.ABONNEMENT, "/ministere", abonnement)]
    async with (
        TopicReader(kafka.bootstrap_servers, settings.topic(c.CATALOGUE)) as catalogue,
        TopicReader(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL)) as referentiel,
    ):
        auth = bearer(identite.jeton("/ministere", subject="dne"))
        response = await client.post("/v1/evenements", content=json.dumps(ministere), headers=auth | BATCHED)
        assert response.status_code == 202, response.text
        auth = bearer(identite.jeton("/gar", subject="gar"))
        response = await client.post("/v1/evenements", content=json.dumps(gar), headers=auth | BATCHED)
        assert response.status_code == 207
        assert [r.get("code", r["statut"]) for r in response.json()["resultats"]] == [
            "accepted",
            "source-non-autorisee",
        ]
        await catalogue.wait_for(lambda records: len(records) >= 3, what="the resource and the subscriptions")
        await referentiel.wait_for(lambda records: len(records) >= 2, what="the établissement posted")
    posted = [r for r in referentiel.records if r.key == AUTRE_ECOLE.encode()]  # not the one sent on Kafka
    [new_one] = [r for r in catalogue.records if r.key == AUTRE_ECOLE.encode()]
    assert (json.loads(new_one.value)["type"], dict(new_one.headers)[c.PRINCIPAL_HEADER]) == (c.ABONNEMENT, b"dne")
    written = {json.loads(r.value)["type"]: r for r in catalogue.records + posted if r is not new_one}
    assert {t: r.key for t, r in written.items()} == {
        c.ETABLISSEMENT: AUTRE_ECOLE.encode(),
        c.RESSOURCE_PUBLIEE: resource.encode(),
        c.ABONNEMENT: ECOLE.encode(),
    }
    assert {t: dict(r.headers)[c.PRINCIPAL_HEADER] for t, r in written.items()} == {
        c.ETABLISSEMENT: b"dne",
        c.RESSOURCE_PUBLIEE: b"dne",
        c.ABONNEMENT: b"gar",
    }


async def test_beyond_its_rate_a_subject_is_429_and_nothing_is_judged_nor_written(kafka, settings, identite):
    async with serve(rated(settings, identite, 1, 1000)) as (client, _):
        events = [lot(ECOLE, lot_id=f"L{i}") for i in range(600)]  # UAI unknown here: each refused, counted
        first = await client.post("/v1/evenements", json=events, headers=bearer(identite.jeton(RENNES)) | BATCHED)
        assert first.status_code == 207
        second = await client.post("/v1/evenements", json=events, headers=bearer(identite.jeton(RENNES)) | BATCHED)
        assert second.status_code == 429
        # 200 missing events at 1 per second, less the seconds between the two takes (each
        # judging or splitting 600 events: a few on a busy machine)
        assert 190 <= int(second.headers["retry-after"]) <= 200
        assert "débit" in second.json()["detail"]
        # Sent again at once, it was read and split again (a 15 MiB body as often as it came):
        # now refused before its body is read (which, read, would be a 400) until told.
        again = await client.post("/v1/evenements", content=b"[{", headers=bearer(identite.jeton(RENNES)) | BATCHED)
        assert again.status_code == 429, again.text
        other = bearer(identite.jeton("/collectivites/communes/35001"))
        assert (await client.post("/v1/evenements", json=events, headers=other | BATCHED)).status_code == 207
    assert await record_count(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT)) == 0


async def test_an_empty_batch_counts_as_one_event(settings, identite):
    """It took nothing: empty batches were let through at any rate, each a signature checked and
    a line logged."""
    async with serve(rated(settings, identite, 0.01, 1000)) as (client, _):
        auth = bearer(identite.jeton(RENNES)) | BATCHED
        events = [lot(ECOLE, lot_id=f"L{i}") for i in range(999)]
        assert (await client.post("/v1/evenements", json=events, headers=auth)).status_code == 207
        assert (await client.post("/v1/evenements", json=[], headers=auth)).status_code == 202  # the last one
        assert (await client.post("/v1/evenements", json=[], headers=auth)).status_code == 429


async def test_with_an_empty_bucket_a_request_is_429_before_its_body_is_read(settings, identite):
    async with serve(rated(settings, identite, 0.01, 1000)) as (client, _):
        auth = bearer(identite.jeton(RENNES)) | BATCHED
        events = [lot(ECOLE, lot_id=f"L{i}") for i in range(1000)]
        assert (await client.post("/v1/evenements", json=events, headers=auth)).status_code == 207  # the burst
        refused = await client.post("/v1/evenements", content=b"[{", headers=auth)  # read, a 400
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1


async def test_a_body_refused_whole_counts_as_a_full_batch_so_repeating_it_meets_429(settings, identite):
    """Read and split for nothing, a refused body took nothing from the bucket: a client looping
    on a 16 MiB body with a stray byte was never told to slow down."""
    async with serve(rated(settings, identite, 0.01, 2000)) as (client, _):
        auth = bearer(identite.jeton(RENNES)) | BATCHED
        for _ in range(2):
            assert (await client.post("/v1/evenements", content=b"[1,", headers=auth)).status_code == 400
        refused = await client.post("/v1/evenements", json=[lot(ECOLE)], headers=auth)
        assert refused.status_code == 429 and "débit" in refused.json()["detail"]
        other = bearer(identite.jeton("/collectivites/communes/35001")) | BATCHED
        assert (await client.post("/v1/evenements", json=[lot(ECOLE)], headers=other)).status_code == 207


async def test_an_event_too_long_to_decode_counts_as_a_full_batch(settings, identite):
    """Read token by token without decoding it (corps._skip), up to corps.SKIPPED_TOKENS, about
    0.1 s of the passerelle's one splitting thread: at one event, a client could have sent them
    without end."""
    huge = json.dumps(lot(ECOLE) | {"blob": "x" * corps.WINDOWS[-1]})
    async with serve(rated(settings, identite, 0.01, 1000)) as (client, _):
        auth = bearer(identite.jeton(RENNES)) | BATCHED
        response = await client.post("/v1/evenements", content=f"[{huge}]", headers=auth)
        assert response.status_code == 207 and response.json()["resultats"][0]["code"] == "trop-volumineux"
        refused = await client.post("/v1/evenements", json=[lot(ECOLE)], headers=auth)
        assert refused.status_code == 429 and "débit" in refused.json()["detail"]


async def test_requests_at_once_are_bounded_per_subject_429_and_in_all_503_before_their_bodies(settings, identite):
    """Each request holds its body while it is handled: without a bound, one client sending many
    large ones at once took the replica's memory. Requests held in their body's reading here."""
    bounded = rated(settings, identite, 2000, 10_000).model_copy(
        update={"passerelle_requests_per_subject": 2, "passerelle_requests_total": 3}
    )
    async with serve(bounded) as (client, api):
        en_cours = api.state.passerelle.en_cours
        port = client.base_url.port
        held: list[asyncio.StreamWriter] = []

        async def hold(source: str) -> None:  # a request whose body never ends
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"POST /v1/evenements HTTP/1.1\r\nHost: passerelle\r\nAuthorization: Bearer {identite.jeton(source)}"
                f"\r\nContent-Type: {BATCHED['content-type']}\r\nContent-Length: 100000\r\n\r\n[".encode()
            )
            await writer.drain()
            held.append(writer)

        async def post(source: str):
            return await client.post(
                "/v1/evenements", json=[lot(ECOLE)], headers=bearer(identite.jeton(source)) | BATCHED
            )

        def subject(source: str) -> str:  # the token's `sub`, what the bound counts by
            payload = identite.jeton(source).split(".")[1]
            return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]

        other, third = "/collectivites/communes/35001", "/collectivites/communes/35002"
        try:
            for _ in range(2):
                await hold(RENNES)
            await eventually(lambda: asyncio.sleep(0, en_cours.refus(subject(RENNES)) == "sujet"), what="two held")
            refused = await post(RENNES)
            assert refused.status_code == 429 and "à la fois" in refused.json()["detail"], refused.text
            assert int(refused.headers["retry-after"]) >= 1
            assert (await post(other)).status_code == 207  # another subject is served
            await hold(other)
            await eventually(lambda: asyncio.sleep(0, en_cours.refus(subject(third)) == "total"), what="three held")
            full = await post(third)
            assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1, full.text
            assert (await _scraped(client))[
                ("feo_passerelle_unavailable_total", (("reason", "passerelle-pleine"),))
            ] == 1
        finally:
            for writer in held:
                writer.close()
        await eventually(lambda: asyncio.sleep(0, en_cours.refus(subject(RENNES)) is None), what="the held ones gone")
        assert (await post(RENNES)).status_code == 207
        assert (await post(third)).status_code == 207


async def test_a_body_that_does_not_come_in_time_is_408_and_gives_its_place_back(settings, identite):
    """A request holds its place among those handled at once while its body comes: one that
    never ends held it for ever (two such clients then kept every other out: 503)."""
    slow = rated(settings, identite, 2000, 10_000).model_copy(
        update={"passerelle_requests_per_subject": 1, "passerelle_body_timeout_seconds": 0.5}
    )
    async with serve(slow) as (client, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.base_url.port)
        writer.write(
            f"POST /v1/evenements HTTP/1.1\r\nHost: passerelle\r\nAuthorization: Bearer {identite.jeton(RENNES)}"
            f"\r\nContent-Type: {BATCHED['content-type']}\r\nContent-Length: 100000\r\n\r\n[".encode()
        )
        await writer.drain()
        try:  # answered, or not within 30 s (then closed: else the server's stop waits for its body)
            answer = await asyncio.wait_for(reader.read(4096), timeout=30)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert "corps pas reçu en entier en 0.5 s".encode() in answer, answer
        auth = bearer(identite.jeton(RENNES)) | BATCHED
        assert (await client.post("/v1/evenements", json=[lot(ECOLE)], headers=auth)).status_code == 207


async def test_a_client_gone_before_its_whole_body_is_a_line_not_an_error(passerelle, identite, monkeypatch, caplog):
    """Starlette's ClientDisconnect went to the catch-all: a 500 nobody read and an ERROR line
    with its traceback for each interrupted upload."""
    client, _ = passerelle
    said: list[str] = []
    monkeypatch.setattr(passerelle_api, "log", SimpleNamespace(**dict.fromkeys(LEVELS, lambda e, **_: said.append(e))))
    _, writer = await asyncio.open_connection("127.0.0.1", client.base_url.port)
    writer.write(
        f"POST /v1/evenements HTTP/1.1\r\nHost: passerelle\r\nAuthorization: Bearer {identite.jeton(RENNES)}\r\n"
        f"Content-Type: {BATCHED['content-type']}\r\nContent-Length: 100000\r\n\r\n[".encode()
    )
    await writer.drain()
    writer.close()
    await eventually(lambda: asyncio.sleep(0, "requete.abandonnee" in said), what="the request said abandoned")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize(
    "away",
    [
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        None,  # no answer at all
    ],
)
async def test_while_postgresql_restarts_or_does_not_answer_a_request_is_503_to_send_again(
    kafka, settings, identite, away
):
    own = PasserelleSettings.of(settings).model_copy(
        update={"jwks_file": str(identite.jwks_path), "passerelle_lookup_timeout_seconds": 0.5}
    )
    async with serve(own) as (client, api):

        async def etablissements(uais):
            if away is None:
                await asyncio.sleep(60)
            raise away

        api.state.passerelle.etablissements = etablissements
        response = await client.post(
            "/v1/evenements", content=json.dumps(lot(ECOLE)), headers=bearer(identite.jeton(RENNES)) | STRUCTURED
        )
        assert response.status_code == 503 and "PostgreSQL" in response.json()["detail"]
        assert int(response.headers["retry-after"]) >= 1
        assert (await _scraped(client))[("feo_passerelle_unavailable_total", (("reason", "postgresql"),))] == 1
    assert await record_count(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT)) == 0


async def test_after_kafka_refused_an_event_the_next_ones_of_its_partition_are_written(
    kafka, settings, passerelle, identite
):
    """A topic whose max.message.bytes is under the contract's 256 KiB (an operator's setting)
    refuses an event the contract accepts: a 503, logged as an error. That refusal used sequence
    numbers of the idempotent producer on the event's partition: with the same producer, every
    later event of that partition would be refused as out of order until a restart. The
    passerelle writes them with a new producer."""
    client, api = passerelle
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(ECOLE, ecole(ECOLE, "35238"))])
    pool = api.state.passerelle.pool
    await eventually(lambda: pool.fetchval("SELECT count(*) = 1 FROM etablissements"), what="the référentiel")
    equipement, auth = settings.topic(c.EQUIPEMENT), bearer(identite.jeton(RENNES)) | STRUCTURED
    first = await client.post("/v1/evenements", content=json.dumps(lot(ECOLE, lot_id="L1")), headers=auth)
    assert first.status_code == 202, "the producer has written to the partition before the refusal"
    admin = AIOKafkaAdminClient(**kafka_options(kafka.bootstrap_servers))
    await admin.start()
    try:
        limit = {"max.message.bytes": str(2 * 1024)}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, equipement, configs=limit)])
    finally:
        await admin.close()

    def big(n: int) -> str:
        """A lot of 32 browsers, 4 KB, its own fields only (an unknown one would be left out)."""
        sent = lot(ECOLE, lot_id=f"B{n}")
        sent["data"]["browsers"] = [{"name": f"{b:02}" + "n" * 62, "version": f"{n}.{b}.0.0"} for b in range(32)]
        return json.dumps(sent)

    bigs = iter(big(n) for n in range(100))

    async def refused() -> bool:  # once the broker applies the topic's new limit
        return (await client.post("/v1/evenements", content=next(bigs), headers=auth)).status_code == 503

    await eventually(refused, what="Kafka refusing a 4 KB event")
    assert (await _scraped(client))[("feo_passerelle_unavailable_total", (("reason", "kafka"),))] >= 1
    written = await record_count(kafka.bootstrap_servers, equipement)
    response = await client.post("/v1/evenements", content=json.dumps(lot(ECOLE, lot_id="L2")), headers=auth)
    assert response.status_code == 202, response.text
    assert await record_count(kafka.bootstrap_servers, equipement) == written + 1


async def test_after_its_producer_s_sender_died_the_passerelle_writes_with_a_new_one(
    kafka, settings, passerelle, identite
):
    """aiokafka's sender task, ended by an unexpected error, never restarts: with that producer
    every request would be a 503 until a restart, /health still 200. The next request after the
    death is written with a new producer."""
    client, api = passerelle
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(ECOLE, ecole(ECOLE, "35238"))])
    gateway = api.state.passerelle
    await eventually(lambda: gateway.pool.fetchval("SELECT count(*) = 1 FROM etablissements"), what="the référentiel")
    equipement, auth = settings.topic(c.EQUIPEMENT), bearer(identite.jeton(RENNES)) | STRUCTURED
    first = await client.post("/v1/evenements", content=json.dumps(lot(ECOLE, lot_id="L1")), headers=auth)
    assert first.status_code == 202, first.text
    await kill_sender(gateway.producer, equipement)
    written = await record_count(kafka.bootstrap_servers, equipement)
    response = await client.post("/v1/evenements", content=json.dumps(lot(ECOLE, lot_id="L2")), headers=auth)
    assert response.status_code == 202, response.text
    assert await record_count(kafka.bootstrap_servers, equipement) == written + 1


async def test_metrics_count_the_referentiel_it_consumes(kafka, settings, passerelle):
    """The passerelle serves /metrics too: its référentiel consumer's events and lag."""
    client, _ = passerelle
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(ECOLE, ecole(ECOLE, "35238"))])

    async def applied():
        response = await client.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        line = 'feo_events_total{outcome="applied",reason="",service="passerelle"} 1.0'
        return line in response.text.splitlines()

    await eventually(applied, what="the école counted as applied on /metrics")


async def test_a_restored_schema_needs_no_catch_up_before_the_passerelle_starts(kafka, settings, identite):
    """A restore marks the schemas it does not catch up (deploy/sauvegarde.py); the passerelle
    numbers nothing it publishes, and its view of the référentiel catches up as it runs: it
    starts on a marked schema, and the mark goes."""
    from services.common.runtime.lifecycle import CATCH_UP_PENDING

    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(
            f"CREATE SCHEMA passerelle; CREATE TABLE passerelle.{CATCH_UP_PENDING} AS "
            "SELECT now() AS depuis, 0::bigint AS journal_floor"
        )
        own = PasserelleSettings.of(settings).model_copy(update={"jwks_file": str(identite.jwks_path)})
        async with serve(own) as (client, _):
            assert (await client.get("/health")).status_code == 200
        assert await conn.fetchval("SELECT to_regclass($1)", f"passerelle.{CATCH_UP_PENDING}") is None
    finally:
        await conn.close()


async def test_metrics_count_requests_by_status_and_events_by_outcome(kafka, settings, identite):
    """The passerelle exported nothing of its own: a partner refused by a wrong token or its rate
    left no figure and no line (audit helper-181 #9). Never labelled by client: a made-up token
    names the `sub` it likes."""
    async with serve(rated(settings, identite, 0.01, 1000)) as (client, api):
        pool = api.state.passerelle.pool
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(ECOLE, ecole(ECOLE, "35238"))])
        await eventually(lambda: pool.fetchval("SELECT count(*) = 1 FROM etablissements"), what="the référentiel")
        auth = bearer(identite.jeton(RENNES)) | BATCHED
        statuses = [
            (await client.post("/v1/evenements", json=[lot(ECOLE), lot(INCONNUE)], headers=auth)).status_code,
            (await client.post("/v1/evenements", json=[lot(ECOLE, lot_id="L2")], headers=auth)).status_code,
            (await client.post("/v1/evenements", json=[lot(ECOLE)] * 998, headers=auth)).status_code,
            (await client.post("/v1/evenements", json=[lot(ECOLE)], headers=BATCHED)).status_code,
            (
                await client.post("/v1/evenements", json=[lot(ECOLE)], headers=bearer("made.up.token") | BATCHED)
            ).status_code,
        ]
        scraped = await _scraped(client)
    assert statuses == [207, 202, 429, 401, 401]
    requests = {
        dict(labels)["status"]: n for (name, labels), n in scraped.items() if name == "feo_passerelle_requests_total"
    }
    assert requests == {"207": 1, "202": 1, "429": 1, "401": 2}
    events = {
        (dict(labels)["outcome"], dict(labels)["code"]): n
        for (name, labels), n in scraped.items()
        if name == "feo_passerelle_events_total"
    }
    assert events == {("accepted", ""): 2, ("refused", "uai-inconnu"): 1}
    unavailable = {
        dict(labels)["reason"]: n for (name, labels), n in scraped.items() if name == "feo_passerelle_unavailable_total"
    }
    assert unavailable == dict.fromkeys(passerelle_api.INDISPONIBLE, 0)  # each at 0 from the start
    assert scraped[("feo_passerelle_jwks_keys", ())] == 1


async def _scraped(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The passerelle's own series on its /metrics: (name, labels but `service`) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "service"))): s.value
        for family in text_string_to_metric_families((await client.get("/metrics")).text)
        for s in family.samples
        if s.name.startswith("feo_passerelle_")
    }
