"""The passerelle's bearer tokens (services/passerelle/jetons.py), checked against keys made by
the local identity provider: every rule of a token refused with its own reason, never showing
the token nor its claims; JWKS from a file (re-read when it is replaced) and from a URL served
over real HTTP (key rotation, refetch throttled, stale keys kept, the event loop never blocked)."""

import asyncio
import base64
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from deploy.identite import DEFAULT_AUDIENCE, DEFAULT_ISSUER, IdentiteLocale
from services.passerelle import jetons
from services.passerelle.jetons import ClesAVerifier, JetonRefuse, JwksIndisponible, Principal, Verificateur
from tests.helpers import Said, eventually

COMMUNE = "/collectivites/communes/35238"


@pytest.fixture(scope="module")
def identite(tmp_path_factory: pytest.TempPathFactory) -> IdentiteLocale:
    made = IdentiteLocale(tmp_path_factory.mktemp("idp") / "identite")
    made.ensure()
    return made


@pytest.fixture(scope="module")
def autre(tmp_path_factory: pytest.TempPathFactory) -> IdentiteLocale:
    """Another provider's key pair: a rotated key, or a forger's."""
    made = IdentiteLocale(tmp_path_factory.mktemp("idp2") / "identite")
    made.ensure()
    return made


@pytest.fixture(scope="module")
def troisieme(tmp_path_factory: pytest.TempPathFactory) -> IdentiteLocale:
    """A third key pair, in no key set of the tests that use it."""
    made = IdentiteLocale(tmp_path_factory.mktemp("idp3") / "identite")
    made.ensure()
    return made


def par_fichier(identite: IdentiteLocale) -> Verificateur:
    return Verificateur(DEFAULT_ISSUER, DEFAULT_AUDIENCE, jwks_file=identite.jwks_path)


def claims(**changes: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "iss": DEFAULT_ISSUER,
        "aud": DEFAULT_AUDIENCE,
        "sub": "client-35238",
        "iat": now,
        "exp": now + 600,
        "declarant": COMMUNE,
    }
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


async def test_a_valid_token_gives_its_subject_and_declarant(identite: IdentiteLocale) -> None:
    principal = await par_fichier(identite).verifier(identite.jeton(COMMUNE))

    assert principal == Principal("collectivites-communes-35238", frozenset({COMMUNE}))


async def test_a_token_may_declare_for_a_list_of_sources(identite: IdentiteLocale) -> None:
    token = identite.jeton([COMMUNE, "/collectivites/departements/035", "/rectorats/14"], subject="mairie-rennes")

    principal = await par_fichier(identite).verifier(token)

    assert principal.subject == "mairie-rennes"
    assert principal.declarants == {COMMUNE, "/collectivites/departements/035", "/rectorats/14"}


def _forged(identite: IdentiteLocale, autre: IdentiteLocale) -> str:
    """Signed by another key under the provider's kid."""
    return jwt.encode(claims(), autre.key_path.read_bytes(), algorithm="RS256", headers={"kid": identite.kid})


def _unsigned(identite: IdentiteLocale, autre: IdentiteLocale) -> str:
    return jwt.encode(claims(), "", algorithm="none", headers={"kid": identite.kid})


def _hs256(identite: IdentiteLocale, autre: IdentiteLocale) -> str:
    return jwt.encode(claims(), "a-shared-secret-of-32-bytes-long!", algorithm="HS256", headers={"kid": identite.kid})


def _no_kid(identite: IdentiteLocale) -> str:
    return jwt.encode(claims(), identite.key_path.read_bytes(), algorithm="RS256")


def _typ(identite: IdentiteLocale, typ: object) -> str:
    """A token of the provider, well signed, whose header's `typ` is `typ`."""
    return jwt.encode(
        claims(), identite.key_path.read_bytes(), algorithm="RS256", headers={"kid": identite.kid, "typ": typ}
    )


def _other_kid(identite: IdentiteLocale, autre: IdentiteLocale) -> str:
    return autre.jeton(COMMUNE)


def _header(header: dict) -> str:
    """A token whose header is `header` (any JSON), its payload and signature those of a good one."""
    _, payload, signature = jwt.encode(claims(), "", algorithm="none").split(".")
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return ".".join([encoded, payload, signature or "c2ln"])


REFUS = {
    "bad signature": (_forged, "signature invalide"),
    "alg none": (_unsigned, "algorithme refusé"),
    "HS256": (_hs256, "algorithme refusé"),
    "kid a number": (lambda i, a: _header({"alg": "RS256", "kid": 7}), "jeton illisible"),
    # Another JWT the provider signs, perhaps for our audience: not an access token (RFC 8725, 3.11).
    "typ logout+jwt": (lambda i, a: _typ(i, "logout+jwt"), "type de jeton refusé (typ)"),
    "typ dpop+jwt": (lambda i, a: _typ(i, "dpop+jwt"), "type de jeton refusé (typ)"),
    "typ a list": (lambda i, a: _typ(i, ["JWT"]), "type de jeton refusé (typ)"),
    "kid not in the JWKS": (_other_kid, "clé inconnue (kid)"),
    "no kid, signed by another key": (lambda i, a: _no_kid(a), "signature invalide : sans kid"),
    "no kid, no key of its alg": (lambda i, a: _header({"alg": "ES256"}), "clé inconnue : sans kid"),
    "alg a list": (lambda i, a: _header({"alg": ["RS256"], "kid": i.kid}), "algorithme refusé"),
    "alg an object": (lambda i, a: _header({"alg": {"RS256": 1}, "kid": i.kid}), "algorithme refusé"),
    "not a JWT": (lambda i, a: "not.a.jwt-" + COMMUNE, "jeton illisible"),
    "wrong issuer": (lambda i, a: i.jeton(COMMUNE, issuer="https://idp.example"), "émetteur inattendu"),
    "wrong audience": (lambda i, a: i.jeton(COMMUNE, audience="autre-plateforme"), "audience inattendue"),
    "expired beyond the leeway": (lambda i, a: i.jeton(COMMUNE, ttl_seconds=-31), "jeton expiré"),
    "not yet valid": (
        lambda i, a: i.jeton(COMMUNE, not_before=datetime.now(UTC) + timedelta(minutes=5)),
        "jeton pas encore valide",
    ),
    "no exp": (lambda i, a: i.signe(claims(exp=None)), "claim exp absent"),
    # PyJWT takes a numeric string for a date: the lifetime's check then compared it with a number (a 500).
    "exp a numeric string": (lambda i, a: i.signe(claims(exp=str(int(time.time()) + 600))), "claim exp mal formée"),
    "valid for more than a day": (
        lambda i, a: i.jeton(COMMUNE, ttl_seconds=86_400 + 60),
        "jeton valide trop longtemps",
    ),
    "no sub": (lambda i, a: i.signe(claims(sub=None)), "claim sub absent"),
    "empty sub": (lambda i, a: i.signe(claims(sub="")), "claim sub mal formé"),
    "sub with a NUL": (lambda i, a: i.signe(claims(sub="client\x00-035")), "claim sub mal formé"),
    "no declarant": (lambda i, a: i.signe(claims(declarant=None)), "claim declarant absent ou mal formé"),
    "declarant not a source": (
        lambda i, a: i.signe(claims(declarant="/collectivites/communes/3523")),
        "claim declarant absent ou mal formé",
    ),
    "declarant of the platform": (
        lambda i, a: i.signe(claims(declarant="/plateforme/formation")),
        "claim declarant absent ou mal formé",
    ),
    "empty list of declarants": (lambda i, a: i.signe(claims(declarant=[])), "claim declarant absent ou mal formé"),
    "sub a number": (lambda i, a: i.signe(claims(sub=35238)), "sujet invalide (sub"),
    "iat a word": (lambda i, a: i.signe(claims(iat="hier")), "date d'émission invalide (iat"),
    "list with a non-string": (
        lambda i, a: i.signe(claims(declarant=[COMMUNE, 35238])),
        "claim declarant absent ou mal formé",
    ),
}


@pytest.mark.parametrize("case", REFUS)
async def test_a_token_breaking_a_rule_is_refused_with_that_rule(
    case: str, identite: IdentiteLocale, autre: IdentiteLocale
) -> None:
    make, reason = REFUS[case]
    token = make(identite, autre)

    with pytest.raises(JetonRefuse) as refused:
        await par_fichier(identite).verifier(token)

    assert str(refused.value).startswith(reason)
    assert token not in str(refused.value) and "35238" not in str(refused.value)  # nor the token, nor its claims


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt", "application/at+JWT"])
async def test_an_access_token_or_a_plain_jwt_is_of_an_accepted_type(identite: IdentiteLocale, typ: str) -> None:
    assert await par_fichier(identite).verifier(_typ(identite, typ))


def _deux_cles(tmp_path: Path, *jeux: IdentiteLocale, **changes: object) -> Verificateur:
    """A verifier of a JWKS file holding these providers' keys, each with `changes` (None: removed)."""
    keys = [{k: v for k, v in {**cle, **changes}.items() if v is not None} for cle in json.loads(both(*jeux))["keys"]]
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": keys}))
    return Verificateur(DEFAULT_ISSUER, DEFAULT_AUDIENCE, jwks_file=jwks)


async def test_a_token_without_kid_is_verified_by_the_key_of_the_set_that_signed_it(
    tmp_path: Path, identite: IdentiteLocale, autre: IdentiteLocale, troisieme: IdentiteLocale
) -> None:
    """RFC 7515 makes `kid` optional, and a provider that names no key publishes its new one
    beside the old while it rotates them: a token of either is accepted (it was refused, 401,
    for the whole rotation), one of a key the set has not is refused for its signature."""
    assert await par_fichier(identite).verifier(_no_kid(identite))

    both = _deux_cles(tmp_path, identite, autre)
    assert await both.verifier(identite.jeton(COMMUNE))  # named by its kid: found among the two
    assert await both.verifier(_no_kid(identite))
    assert await both.verifier(_no_kid(autre))  # the second key of the set
    forged = _no_kid(troisieme)
    with pytest.raises(JetonRefuse) as refused:
        await both.verifier(forged)
    assert str(refused.value).startswith("signature invalide : sans kid, aucune des clés du JWKS")
    assert "(2 essayées, 5 au plus)" in str(refused.value) and forged not in str(refused.value)


async def test_a_token_without_kid_is_told_its_fault_by_the_key_that_signed_it(
    tmp_path: Path, identite: IdentiteLocale, autre: IdentiteLocale
) -> None:
    """The signature is checked before the claims: the second key's expired token is told
    expired, not that no key verifies it."""
    expired = jwt.encode(claims(exp=int(time.time()) - 60), autre.key_path.read_bytes(), algorithm="RS256")

    with pytest.raises(JetonRefuse, match="jeton expiré"):
        await _deux_cles(tmp_path, identite, autre, kid=None).verifier(expired)


def _cle_ec() -> tuple[Any, dict[str, object]]:
    """An EC P-256 key pair (quick to make, unlike RSA) and its public JWK, without kid."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key, {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "alg": "ES256", "use": "sig"}


async def test_a_token_without_kid_is_tried_against_the_first_keys_of_its_alg_only(
    tmp_path: Path, identite: IdentiteLocale, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each key tried is a signature checked, for any token, a made-up one as well: at most
    CLES_SANS_KID, those of its alg, in the set's order (the RSA key is not one of them)."""
    pairs = [_cle_ec() for _ in range(jetons.CLES_SANS_KID + 1)]
    rsa = json.loads(identite.jwks_path.read_bytes())["keys"][0]
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [rsa] + [jwk for _, jwk in pairs]}))
    verificateur = Verificateur(DEFAULT_ISSUER, DEFAULT_AUDIENCE, jwks_file=jwks)

    last_tried, beyond = pairs[-2][0], pairs[-1][0]
    assert await verificateur.verifier(jwt.encode(claims(), last_tried, algorithm="ES256"))
    with pytest.raises(JetonRefuse, match=r"signature invalide : sans kid.*\(5 essayées, 5 au plus\)"):
        await verificateur.verifier(jwt.encode(claims(), beyond, algorithm="ES256"))
    monkeypatch.setattr(jetons, "CLES_SANS_KID", jetons.CLES_SANS_KID + 1)  # the bound alone refused it
    assert await verificateur.verifier(jwt.encode(claims(), beyond, algorithm="ES256"))


async def test_a_key_of_another_curve_than_its_alg_names_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider's mistake, a P-384 key published as ES256: PyJWK takes it, but it verifies no
    ES256 token, and tried first for a token without kid it refused that token, signed by the
    right key after it (review s63 M4)."""
    wrong = ec.generate_private_key(ec.SECP384R1())
    mislabelled = {**json.loads(ECAlgorithm.to_jwk(wrong.public_key())), "alg": "ES256", "use": "sig"}
    key, right = _cle_ec()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [mislabelled, right]}))
    verificateur = Verificateur(DEFAULT_ISSUER, DEFAULT_AUDIENCE, jwks_file=jwks)
    said = Said()
    monkeypatch.setattr(jetons, "log", said)
    assert await verificateur.verifier(jwt.encode(claims(), key, algorithm="ES256"))
    assert [(w["event"], w["alg"], w["kid"]) for w in said.lines] == [("jwks.cle_inutilisable", ["ES256"], None)]
    with pytest.raises(JetonRefuse, match="clé inconnue : sans kid"):  # nor taken for an ES384 one
        await verificateur.verifier(jwt.encode(claims(), wrong, algorithm="ES384"))


async def test_a_jwks_file_of_unusable_keys_alone_is_read_once_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused, it was read again at each token, and since feo_passerelle_jwks_keys at each
    scrape, its key's line said each time."""
    wrong = ec.generate_private_key(ec.SECP384R1())
    mislabelled = {**json.loads(ECAlgorithm.to_jwk(wrong.public_key())), "alg": "ES256", "use": "sig"}
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [mislabelled]}))
    verificateur = Verificateur(DEFAULT_ISSUER, DEFAULT_AUDIENCE, jwks_file=jwks)
    said = Said()
    monkeypatch.setattr(jetons, "log", said)
    key, right = _cle_ec()
    for _ in range(3):
        with pytest.raises(JwksIndisponible, match="aucune clé"):
            await verificateur.verifier(jwt.encode(claims(), key, algorithm="ES256"))
        assert verificateur.cles_en_main() == 0
    assert len(said.named("jwks.cle_inutilisable")) == 1
    jwks.write_text(json.dumps({"keys": [mislabelled, right]}))  # changed: read again
    assert await verificateur.verifier(jwt.encode(claims(), key, algorithm="ES256"))
    assert verificateur.cles_en_main() == 1


async def test_a_key_published_without_kid_verifies_tokens_without_kid_only(
    tmp_path: Path, identite: IdentiteLocale, autre: IdentiteLocale
) -> None:
    """Such a key was skipped: a provider that publishes none had every token refused (503)."""
    verificateur = _publiee(tmp_path, identite, kid=None)

    assert await verificateur.verifier(_no_kid(identite))
    with pytest.raises(JetonRefuse, match=r"clé inconnue \(kid\)"):  # the token names a key the set has not
        await verificateur.verifier(identite.jeton(COMMUNE))
    two = _deux_cles(tmp_path, identite, autre, kid=None)  # a rotation by a provider that names no key
    assert await two.verifier(_no_kid(autre))


async def test_expiry_within_the_leeway_is_accepted(identite: IdentiteLocale) -> None:
    assert await par_fichier(identite).verifier(identite.jeton(COMMUNE, ttl_seconds=-20))


async def test_a_token_valid_for_its_maximum_lifetime_is_accepted(identite: IdentiteLocale) -> None:
    assert await par_fichier(identite).verifier(identite.jeton(COMMUNE, ttl_seconds=86_400))
    court = Verificateur(DEFAULT_ISSUER, DEFAULT_AUDIENCE, jwks_file=identite.jwks_path, max_lifetime_seconds=600)
    with pytest.raises(JetonRefuse, match=r"exp à plus de 600 s \(JWT_MAX_LIFETIME_SECONDS\)"):
        await court.verifier(identite.jeton(COMMUNE, ttl_seconds=3600))


async def test_a_replaced_jwks_file_is_read_again(
    tmp_path: Path, identite: IdentiteLocale, autre: IdentiteLocale
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(identite.jwks_path.read_bytes())
    verificateur = Verificateur(DEFAULT_ISSUER, DEFAULT_AUDIENCE, jwks_file=jwks)
    assert await verificateur.verifier(identite.jeton(COMMUNE))

    rotated = tmp_path / "jwks.json.new"
    rotated.write_bytes(autre.jwks_path.read_bytes())
    os.replace(rotated, jwks)

    assert await verificateur.verifier(autre.jeton(COMMUNE))
    with pytest.raises(JetonRefuse, match=r"clé inconnue \(kid\)"):
        await verificateur.verifier(identite.jeton(COMMUNE))


async def test_a_missing_jwks_file_is_unavailable_not_a_bad_token(tmp_path: Path, identite: IdentiteLocale) -> None:
    verificateur = Verificateur(DEFAULT_ISSUER, DEFAULT_AUDIENCE, jwks_file=tmp_path / "absent.json")

    with pytest.raises(JwksIndisponible, match=r"JWKS_FILE .*absent\.json"):
        await verificateur.verifier(identite.jeton(COMMUNE))
    assert verificateur.cles_en_main() == 0  # feo_passerelle_jwks_keys
    (tmp_path / "absent.json").write_bytes(identite.jwks_path.read_bytes())
    assert verificateur.cles_en_main() == 1


def _publiee(tmp_path: Path, identite: IdentiteLocale, **changes: object) -> Verificateur:
    """A verifier of a JWKS file holding the provider's key with `changes` (None: field removed)."""
    (cle,) = json.loads(identite.jwks_path.read_bytes())["keys"]
    cle = {k: v for k, v in {**cle, **changes}.items() if v is not None}
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [cle]}))
    return Verificateur(DEFAULT_ISSUER, DEFAULT_AUDIENCE, jwks_file=jwks)


def _signe(identite: IdentiteLocale, alg: str) -> str:
    return jwt.encode(claims(), identite.key_path.read_bytes(), algorithm=alg, headers={"kid": identite.kid})


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS256", "PS384"])
async def test_an_rsa_key_published_without_alg_verifies_every_rs_and_ps_algorithm(
    tmp_path: Path, identite: IdentiteLocale, alg: str
) -> None:
    """RFC 7517 makes `alg` optional: such an RSA key may sign RS* or PS* (PyJWT alone would
    take it for RS256, refusing a provider that signs PS256)."""
    assert await _publiee(tmp_path, identite, alg=None).verifier(_signe(identite, alg))


async def test_a_key_verifies_only_the_alg_it_names(tmp_path: Path, identite: IdentiteLocale) -> None:
    verificateur = _publiee(tmp_path, identite, alg="PS256")
    assert await verificateur.verifier(_signe(identite, "PS256"))

    with pytest.raises(JetonRefuse, match=r"algorithme différent de celui de la clé \(kid\)"):
        await verificateur.verifier(_signe(identite, "RS256"))


async def test_an_rsa_key_without_alg_verifies_no_other_type(tmp_path: Path, identite: IdentiteLocale) -> None:
    token = _header({"alg": "ES256", "kid": identite.kid})

    with pytest.raises(JetonRefuse, match=r"algorithme différent de celui de la clé \(kid\)"):
        await _publiee(tmp_path, identite, alg=None).verifier(token)


@pytest.mark.parametrize(
    "changes",
    [
        {"use": "enc"},
        {"key_ops": ["encrypt", "wrapKey"]},
        {"key_ops": "verify"},
        {"alg": ["RS256"]},
        {"kid": 7},
        {"alg": "none"},
        {"alg": "HS256"},
    ],
    ids=["use enc", "key_ops without verify", "key_ops not a list", "alg a list", "kid a number", "alg none", "HS256"],
)
async def test_a_key_not_for_verifying_signatures_is_not_used(
    tmp_path: Path, identite: IdentiteLocale, changes: dict[str, object]
) -> None:
    """Its set then holds no key to verify with: unavailable (503), not a bad token, nor a 500."""
    with pytest.raises(JwksIndisponible, match="aucune clé de signature asymétrique"):
        await _publiee(tmp_path, identite, **changes).verifier(identite.jeton(COMMUNE))


async def test_a_key_published_with_its_private_part_verifies_with_its_public_one(
    tmp_path: Path, identite: IdentiteLocale
) -> None:
    """A provider's mistake (the token's signer exposed) that made every request a 500."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from jwt.algorithms import RSAAlgorithm

    private = json.loads(RSAAlgorithm.to_jwk(load_pem_private_key(identite.key_path.read_bytes(), None)))
    assert "d" in private
    assert await _publiee(tmp_path, identite, **private | {"key_ops": None}).verifier(identite.jeton(COMMUNE))


async def test_a_key_whose_key_ops_hold_verify_is_used(tmp_path: Path, identite: IdentiteLocale) -> None:
    assert await _publiee(tmp_path, identite, key_ops=["verify"], use=None).verifier(identite.jeton(COMMUNE))


def test_exactly_one_source_of_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactement un de jwks_file"):
        Verificateur(DEFAULT_ISSUER, DEFAULT_AUDIENCE)
    with pytest.raises(ValueError, match="exactement un de jwks_file"):
        Verificateur(DEFAULT_ISSUER, DEFAULT_AUDIENCE, jwks_file=tmp_path, jwks_url="https://idp.example/certs")


class Fournisseur:
    """A provider's JWKS endpoint over real HTTP: what it serves, how often it was asked, and a
    gate that holds its answers while closed."""

    def __init__(self) -> None:
        self.jwks = b""
        self.requests = 0
        self.gate = threading.Event()
        self.gate.set()
        fournisseur = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fournisseur.requests += 1
                fournisseur.gate.wait(timeout=30)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(fournisseur.jwks)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/realms/feo/protocol/openid-connect/certs"

    def verificateur(self) -> Verificateur:
        return Verificateur(DEFAULT_ISSUER, DEFAULT_AUDIENCE, jwks_url=self.url)


@pytest.fixture
def fournisseur(identite: IdentiteLocale) -> Iterator[Fournisseur]:
    served = Fournisseur()
    served.jwks = identite.jwks_path.read_bytes()
    thread = threading.Thread(target=served.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served
    served.gate.set()
    served.server.shutdown()
    served.server.server_close()
    thread.join()


async def test_keys_from_a_url_are_fetched_once_and_kept(fournisseur: Fournisseur, identite: IdentiteLocale) -> None:
    verificateur = fournisseur.verificateur()

    principals = await asyncio.gather(*(verificateur.verifier(identite.jeton(COMMUNE)) for _ in range(20)))

    assert {p.declarants for p in principals} == {frozenset({COMMUNE})}
    assert fournisseur.requests == 1


async def test_a_rotated_key_is_fetched_at_its_first_token_and_unknown_kids_do_not_hammer_the_provider(
    fournisseur: Fournisseur, identite: IdentiteLocale, autre: IdentiteLocale
) -> None:
    verificateur = fournisseur.verificateur()
    assert await verificateur.verifier(identite.jeton(COMMUNE))
    fournisseur.jwks = json.dumps(
        {"keys": json.loads(identite.jwks_path.read_bytes())["keys"] + json.loads(autre.jwks_path.read_bytes())["keys"]}
    ).encode()

    assert await verificateur.verifier(autre.jeton(COMMUNE))
    assert fournisseur.requests == 2

    made_up = jwt.encode(  # issued before the keys in hand were fetched: not a key published since
        claims(iat=int(time.time()) - 60), identite.key_path.read_bytes(), algorithm="RS256", headers={"kid": "inventé"}
    )
    for _ in range(5):
        with pytest.raises(JetonRefuse, match=r"clé inconnue \(kid\)"):
            await verificateur.verifier(made_up)
    assert fournisseur.requests == 2  # the rotation's refetch was less than INTERVALLE_REFETCH ago


def signed_by(identite: IdentiteLocale, issued: int) -> str:
    """A token of `identite`'s key, issued at `issued` (epoch seconds)."""
    return jwt.encode(
        claims(iat=issued), identite.key_path.read_bytes(), algorithm="RS256", headers={"kid": identite.kid}
    )


def both(*providers: IdentiteLocale) -> bytes:
    return json.dumps({"keys": [k for p in providers for k in json.loads(p.jwks_path.read_bytes())["keys"]]}).encode()


async def test_a_key_published_while_the_provider_fails_is_not_called_unknown(
    fournisseur: Fournisseur, identite: IdentiteLocale, autre: IdentiteLocale, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider rotates its keys and fails when they are fetched for the new one: its token
    is not told invalid (a client would get another signed by the same key) but to come back;
    the keys in hand still serve; once they can be read, it is accepted."""
    monkeypatch.setattr(jetons, "REESSAI", 0.2)
    verificateur = fournisseur.verificateur()
    assert await verificateur.verifier(identite.jeton(COMMUNE))
    fournisseur.jwks = b"<html>502 Bad Gateway</html>"

    with pytest.raises(ClesAVerifier) as refused:
        await verificateur.verifier(autre.jeton(COMMUNE))
    assert fournisseur.requests == 2 and refused.value.retry_after >= 1
    assert await verificateur.verifier(identite.jeton(COMMUNE)), "the keys in hand still serve"

    fournisseur.jwks = both(identite, autre)

    async def accepted() -> Principal | None:
        try:
            return await verificateur.verifier(autre.jeton(COMMUNE))
        except ClesAVerifier:
            return None

    assert await eventually(accepted, timeout=10, what="the new key's token accepted once the keys are read")


async def test_a_token_issued_after_the_keys_were_last_fetched_waits_for_the_next_fetch(
    fournisseur: Fournisseur, identite: IdentiteLocale, autre: IdentiteLocale, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made-up kids forced a fetch less than INTERVALLE_REFETCH ago (anyone can, without a valid
    signature), then the provider rotated: a token issued since, signed by the new key, is told
    to come back when the keys can be fetched again, not that its key is unknown. One issued
    before that fetch had its key looked for, and is refused."""
    verificateur = fournisseur.verificateur()
    before = int(time.time()) - 60
    made_up = jwt.encode(claims(iat=before), identite.key_path.read_bytes(), algorithm="RS256", headers={"kid": "x"})
    for _ in range(2):  # the first fetch, then one forced by the unknown kid
        with pytest.raises(JetonRefuse, match=r"clé inconnue \(kid\)"):
            await verificateur.verifier(made_up)
    assert fournisseur.requests == 2
    fournisseur.jwks = both(identite, autre)

    with pytest.raises(ClesAVerifier) as refused:
        await verificateur.verifier(signed_by(autre, int(time.time()) + 2))
    assert 1 <= refused.value.retry_after <= jetons.INTERVALLE_REFETCH
    with pytest.raises(JetonRefuse, match=r"clé inconnue \(kid\)"):
        await verificateur.verifier(signed_by(autre, before))
    assert fournisseur.requests == 2, "no fetch before INTERVALLE_REFETCH"

    monkeypatch.setattr(jetons, "INTERVALLE_REFETCH", 0.0)
    assert await verificateur.verifier(signed_by(autre, int(time.time()) + 2))
    assert fournisseur.requests == 3


async def test_an_iat_of_hundreds_of_digits_on_an_unknown_kid_is_a_401_not_a_500(
    fournisseur: Fournisseur, identite: IdentiteLocale
) -> None:
    """Its `iat` is read before the signature is checked (to tell an unknown key from a new
    one): a number no float holds raised OverflowError, a 500 for anyone."""
    token = jwt.encode(
        claims(iat=10**400), identite.key_path.read_bytes(), algorithm="RS256", headers={"kid": "inventé"}
    )
    with pytest.raises(JetonRefuse, match=r"clé inconnue \(kid\)"):
        await fournisseur.verificateur().verifier(token)


async def test_an_unknown_kid_refetches_once_then_is_refused(fournisseur: Fournisseur, autre: IdentiteLocale) -> None:
    verificateur = fournisseur.verificateur()

    with pytest.raises(JetonRefuse, match=r"clé inconnue \(kid\)"):  # issued before the keys were fetched
        await verificateur.verifier(signed_by(autre, int(time.time()) - 60))
    assert fournisseur.requests == 1  # the first fetch already was the fresh one


async def test_a_token_without_kid_of_a_key_published_since_the_keys_were_fetched_fetches_them_again(
    fournisseur: Fournisseur, identite: IdentiteLocale, autre: IdentiteLocale, troisieme: IdentiteLocale
) -> None:
    """A provider that names no key rotates without publishing its new key ahead: a token of the
    new key was refused (401) until the keys in hand expired, 5 minutes, and the client's new
    token with it (review s63 L1). As for an unknown kid: one issued since the keys were fetched
    has them fetched again (at most every 10 s, anyone can send one: 503 meanwhile); one issued
    before cannot be of a key published since, 401 without a fetch."""
    verificateur = fournisseur.verificateur()
    assert await verificateur.verifier(_no_kid(identite))
    before = jwt.encode(claims(iat=int(time.time()) - 60), autre.key_path.read_bytes(), algorithm="RS256")
    with pytest.raises(JetonRefuse, match="signature invalide : sans kid"):
        await verificateur.verifier(before)
    assert fournisseur.requests == 1

    fournisseur.jwks = both(identite, autre)  # the new key, signing already
    assert await verificateur.verifier(_no_kid(autre))
    assert fournisseur.requests == 2
    with pytest.raises(ClesAVerifier) as waiting:  # a made-up one within 10 s of that fetch
        await verificateur.verifier(_no_kid(troisieme))
    assert 1 <= waiting.value.retry_after <= jetons.INTERVALLE_REFETCH
    verificateur._cles._force -= jetons.INTERVALLE_REFETCH  # 10 s later
    with pytest.raises(JetonRefuse, match="signature invalide : sans kid"):
        await verificateur.verifier(_no_kid(troisieme))
    assert fournisseur.requests == 3


async def test_a_token_of_a_key_published_in_the_second_the_keys_were_fetched_is_503_not_401(
    fournisseur: Fournisseur, identite: IdentiteLocale, autre: IdentiteLocale
) -> None:
    """`iat` is in whole seconds, the fetch's time was not: a token issued in the second of the
    last fetch, by a key published just after it, was told its key is unknown (401), not to
    come back once the keys are fetched again (503)."""
    verificateur = fournisseur.verificateur()
    assert await verificateur.verifier(identite.jeton(COMMUNE))
    made_up = jwt.encode(claims(iat=0), identite.key_path.read_bytes(), algorithm="RS256", headers={"kid": "x"})
    with pytest.raises(JetonRefuse, match=r"clé inconnue \(kid\)"):  # forces a fetch (anyone can)
        await verificateur.verifier(made_up)
    assert fournisseur.requests == 2
    fournisseur.jwks = both(identite, autre)  # rotated just after that fetch
    with pytest.raises(ClesAVerifier):
        await verificateur.verifier(signed_by(autre, math.floor(verificateur._cles._obtenues)))


async def test_the_event_loop_runs_while_the_keys_are_fetched(
    fournisseur: Fournisseur, identite: IdentiteLocale
) -> None:
    fournisseur.gate.clear()
    verifying = asyncio.create_task(fournisseur.verificateur().verifier(identite.jeton(COMMUNE)))

    async def provider_asked() -> bool:  # runs only if the loop is free while the fetch waits
        return fournisseur.requests == 1

    await eventually(provider_asked, timeout=10, what="the JWKS request")
    assert not verifying.done()
    fournisseur.gate.set()
    assert await verifying


async def test_expired_keys_are_still_used_when_the_provider_is_down(
    fournisseur: Fournisseur, identite: IdentiteLocale, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jetons, "DUREE_CACHE", 0.0)  # every token finds the keys expired
    verificateur = fournisseur.verificateur()
    assert await verificateur.verifier(identite.jeton(COMMUNE))
    fournisseur.jwks = b"<html>502 Bad Gateway</html>"

    assert await verificateur.verifier(identite.jeton(COMMUNE))

    async def answered_again() -> bool:  # asked, and its answer (the error) taken in
        refetch = verificateur._cles._rafraichissement
        return fournisseur.requests == 2 and refetch is not None and refetch.done()

    await eventually(answered_again, timeout=10, what="the expired keys fetched again")
    assert await verificateur.verifier(identite.jeton(COMMUNE)), "the provider's error leaves the keys in use"


@pytest.mark.parametrize(
    "served",
    [b'{"keys": []}', b'{"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}'],
    ids=["no key", "a shared secret only"],
)
async def test_keys_the_provider_withdrew_are_no_longer_accepted(
    fournisseur: Fournisseur, identite: IdentiteLocale, monkeypatch: pytest.MonkeyPatch, served: bytes
) -> None:
    """The provider answered, with no key to verify with: its former keys were kept as if it were
    unreachable, so a key withdrawn that way stayed trusted for good. Now no token is accepted
    (503, as with a JWKS_FILE that holds none), until it publishes a key again."""
    monkeypatch.setattr(jetons, "DUREE_CACHE", 0.0)  # every token finds the keys expired
    verificateur = fournisseur.verificateur()
    assert await verificateur.verifier(identite.jeton(COMMUNE))
    fournisseur.jwks = served

    async def refused() -> bool:
        try:
            await verificateur.verifier(identite.jeton(COMMUNE))
        except JwksIndisponible:
            return True
        return False

    await eventually(refused, timeout=10, what="the withdrawn key refused")
    fournisseur.jwks = identite.jwks_path.read_bytes()
    monkeypatch.setattr(jetons, "REESSAI", 0.0)
    await eventually(lambda: accepted(verificateur, identite), timeout=10, what="its key published again")


async def accepted(verificateur, identite: IdentiteLocale) -> bool:
    try:
        return bool(await verificateur.verifier(identite.jeton(COMMUNE)))
    except JwksIndisponible:
        return False


async def test_a_slow_provider_never_holds_a_request_whose_key_is_in_hand(
    fournisseur: Fournisseur, identite: IdentiteLocale, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jetons, "DUREE_CACHE", 0.0)  # every token finds the keys expired
    verificateur = fournisseur.verificateur()
    assert await verificateur.verifier(identite.jeton(COMMUNE))
    fournisseur.gate.clear()  # the provider stops answering

    async with asyncio.timeout(5):  # a fetch would wait 30 s for the gate
        principals = await asyncio.gather(*(verificateur.verifier(identite.jeton(COMMUNE)) for _ in range(5)))
    assert {p.subject for p in principals} == {principals[0].subject}
    fournisseur.gate.set()


async def test_a_jwks_without_an_asymmetric_signing_key_is_unavailable_not_a_bad_token(
    fournisseur: Fournisseur, identite: IdentiteLocale
) -> None:
    fournisseur.jwks = b'{"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}'  # a shared secret only

    verificateur = fournisseur.verificateur()
    with pytest.raises(JwksIndisponible, match="aucune clé de signature asymétrique"):
        await verificateur.verifier(identite.jeton(COMMUNE))
    assert verificateur.cles_en_main() == 0  # feo_passerelle_jwks_keys
    fournisseur.jwks = identite.jwks_path.read_bytes()
    assert verificateur.cles_en_main() == 0  # as last fetched: not fetched for the gauge
    assert math.isnan(fournisseur.verificateur().cles_en_main()), "before its first fetch: not known"


async def test_a_token_issued_in_the_future_on_an_unknown_kid_is_a_401_not_a_503(
    fournisseur: Fournisseur, identite: IdentiteLocale, autre: IdentiteLocale, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its unverified `iat` beyond now and the leeway: no key would make it valid (its `iat`
    refused once the signature checks), so it is not told its key may be new: a made-up token
    was answered 503 for ever, every fetch being before its `iat`. One a little ahead, within
    the leeway (a provider's clock ahead of ours), signed by a key published since, is told to
    come back."""
    monkeypatch.setattr(jetons, "INTERVALLE_REFETCH", 0.0)
    verificateur = fournisseur.verificateur()
    assert await verificateur.verifier(identite.jeton(COMMUNE))
    future = jwt.encode(
        claims(iat=int(time.time()) + 3600), identite.key_path.read_bytes(), algorithm="RS256", headers={"kid": "zz"}
    )
    for _ in range(3):
        with pytest.raises(JetonRefuse, match=r"clé inconnue \(kid\)"):
            await verificateur.verifier(future)
    assert fournisseur.requests == 4, "each fetched the keys again"
    monkeypatch.setattr(jetons, "INTERVALLE_REFETCH", 3600.0)  # the keys not fetched again for it
    ahead = int(time.time()) + int(verificateur.leeway_seconds) // 2
    with pytest.raises(ClesAVerifier):
        await verificateur.verifier(signed_by(autre, ahead))


async def test_the_jwks_url_is_shown_by_its_origin_only(
    identite: IdentiteLocale, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings check never shows JWKS_URL (a token may be in its path or query), but the
    keys' lines and errors quoted it whole (helper-185's list): now its scheme, host and port."""
    from deploy.local.ports import free_port
    from tests.helpers import Said

    assert jetons.origin("https://u:pw@idp.example:8443/realms/x/certs/SECRET?k=v") == "https://idp.example:8443"
    said = Said()
    monkeypatch.setattr(jetons, "log", said)
    monkeypatch.setattr(jetons, "REESSAI", 0.0)
    port = free_port()
    verificateur = Verificateur(DEFAULT_ISSUER, DEFAULT_AUDIENCE, jwks_url=f"http://127.0.0.1:{port}/jwks/SECRET-42")
    with pytest.raises(JwksIndisponible) as refused:
        await verificateur.verifier(identite.jeton(COMMUNE))
    assert f"http://127.0.0.1:{port}" in str(refused.value) and "SECRET" not in str(refused.value)
    assert "SECRET" not in repr(said.lines)
