"""Bearer tokens: who is calling the passerelle, and as which declarants.

A token is a JWT signed by the deployment's identity provider with an asymmetric key published
in a JWKS (a file, or the provider's URL). `Verificateur.verifier` checks its type (an access
token, not another JWT the provider signs), signature, issuer, audience, expiry (not further
ahead than a maximum lifetime) and not-before, and reads `sub` (the client) and `declarant` (one
CloudEvents `source` form, or a list of them). Anything else is a
`JetonRefuse` (401), whose message names the rule broken and never the token nor its claims.
`JwksIndisponible` (503) says the keys cannot be had at all: a valid token must not be told it
is invalid because the provider is down.

Keys from a URL are kept 5 minutes; a token signed with a key not seen yet (the provider
rotated its keys) fetches them again at once, at most every 10 seconds, so tokens with made-up
`kid`s cannot make the passerelle hammer the provider. A key that may be newer than those in
hand is not called unknown (401, which a client answers by getting a token signed with that
same key): when the keys could not be fetched again for it (the provider failing, or another
token's fetch less than 10 seconds ago with this one issued since), it is `ClesAVerifier`
(503, try again later). Keys from a file are read again whenever the file changes.

A token without `kid` (RFC 7515 makes it optional) is verified by the first of the set's keys,
in their order, whose algorithms hold its `alg` and whose signature it bears: at most
`CLES_SANS_KID` are tried. A provider that names no key publishes its new key beside the old one
while it rotates them, and each of its tokens must be accepted meanwhile; one that none of the
keys in hand verifies, issued since they were fetched, has them fetched again as an unknown kid
does (its key may be the new one, published without notice).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import structlog
from jwt.algorithms import get_default_algorithms

from contracts.envelope import parse_source

log = structlog.get_logger(__name__)

# Signatures by a key the provider alone holds; never "none" nor HS* (a shared secret).
ALGORITHMES = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
DUREE_CACHE = 300.0  # seconds a JWKS fetched from a URL is trusted without fetching it again
INTERVALLE_REFETCH = 10.0  # at least this many seconds between fetches forced by an unknown kid
REESSAI = 5.0  # seconds before fetching again after a failed fetch
LONGUEUR_SUB = 256  # `sub` becomes a Kafka header on every record the client sends
# The keys a token without `kid` may be tried against, each one signature checked: a JWKS holds a
# few (two while a provider rotates its key), and a set of hundreds must not make each token (a
# made-up one as well) cost hundreds of checks. Beyond these, the set's later keys are not tried.
CLES_SANS_KID = 5
# A token's `typ` (its header), compared without case: absent, a JWT, or an access token (RFC 9068).
# Another type is another JWT the provider signs with the same keys, perhaps with our audience
# (a logout token, a DPoP proof, a security event...): not a right to write (RFC 8725, 3.11).
TYPES = frozenset({"jwt", "application/jwt", "at+jwt", "application/at+jwt"})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated client: `subject` is the token's `sub`, `declarants` the sources it may use."""

    subject: str
    declarants: frozenset[str]


class JetonRefuse(Exception):
    """The token is not accepted; str() is the rule it breaks, in French, without its values."""


class JwksIndisponible(Exception):
    """The identity provider's keys cannot be read (file or URL); no token can be checked."""


class ClesAVerifier(JwksIndisponible):
    """This token's key is not among those in hand, which could not be fetched again for it:
    it may be a key the provider published since. `retry_after`: seconds until they can be."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


def declarant_valide(source: object) -> str:
    """`source` if a client may hold it as a declarant: one of the contract's source forms, not
    `/plateforme/...` (the platform's own services); ValueError naming the rule otherwise."""
    if not isinstance(source, str):
        raise ValueError("un declarant est une chaîne (une source CloudEvents)")
    if parse_source(source).kind == "plateforme":
        raise ValueError(f"{source!r} : /plateforme/... est réservé aux services de la plateforme")
    return source


def declarants_du_claim(claim: object) -> frozenset[str]:
    """The declarants of a `declarant` claim: one source, or a non-empty list of them."""
    sources = [claim] if isinstance(claim, str) else claim
    if not isinstance(sources, list) or not sources:
        raise ValueError("declarant : une source ou une liste non vide de sources")
    return frozenset(declarant_valide(source) for source in sources)


_REFUS: list[tuple[type[jwt.PyJWTError], str]] = [  # most specific first: they subclass each other
    (jwt.InvalidSignatureError, "signature invalide"),
    (jwt.ExpiredSignatureError, "jeton expiré"),
    (jwt.ImmatureSignatureError, "jeton pas encore valide (nbf ou iat dans le futur)"),
    (jwt.InvalidIssuerError, "émetteur inattendu (iss)"),
    (jwt.InvalidAudienceError, "audience inattendue (aud)"),
    (jwt.exceptions.InvalidSubjectError, "sujet invalide (sub : une chaîne)"),
    (jwt.exceptions.InvalidIssuedAtError, "date d'émission invalide (iat : un nombre)"),
    (jwt.exceptions.InvalidJTIError, "identifiant invalide (jti : une chaîne)"),
    (jwt.DecodeError, "jeton illisible (JWS compact attendu)"),
]


def _raison(error: jwt.PyJWTError) -> str:
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"claim {error.claim} absent"
    return next((raison for kind, raison in _REFUS if isinstance(error, kind)), "jeton invalide")


class Verificateur:
    """Checks bearer tokens against the keys of a JWKS file or URL (exactly one of them)."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks_file: Path | None = None,
        jwks_url: str | None = None,
        leeway_seconds: float = 30,
        max_lifetime_seconds: float = 86_400,
    ):
        if (jwks_file is None) == (jwks_url is None):
            raise ValueError("Verificateur : donner exactement un de jwks_file (JWKS_FILE) et jwks_url (JWKS_URL)")
        self.issuer = issuer
        self.audience = audience
        self.leeway_seconds = leeway_seconds
        self.max_lifetime_seconds = max_lifetime_seconds
        self._cles = _ClesFichier(jwks_file) if jwks_file is not None else _ClesUrl(str(jwks_url))

    def cles_en_main(self) -> float:
        """How many signing keys tokens are verified with now (feo_passerelle_jwks_keys): those
        of the file as it is (0 when unreadable), or of the provider as last fetched (0 once it
        answered none, or none was ever had; NaN before its first fetch, which the first token
        asks for: not known yet, no request refused for it)."""
        return self._cles.en_main()

    async def verifier(self, token: str) -> Principal:
        try:
            entete = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise JetonRefuse("jeton illisible (JWS compact attendu)") from None
        alg = entete.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMES:  # a list or an object: not hashable
            raise JetonRefuse(f"algorithme refusé : signature asymétrique attendue ({', '.join(sorted(ALGORITHMES))})")
        typ = entete.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in TYPES):
            raise JetonRefuse("type de jeton refusé (typ) : un jeton d'accès attendu (JWT ou at+jwt)")
        kid = entete.get("kid")  # a string or absent (PyJWT refuses the header otherwise)
        if kid is None:
            try:
                claims = self._sans_kid(token, alg, await self._cles.sans_kid(alg))
            except SansCleVerifiante:
                # Issued since the keys in hand were fetched, by a key they may not hold yet (a
                # provider that names no key, rotating): fetched again as for an unknown kid.
                relues = await self._cles.sans_kid_relues(alg, _emis(token), self.leeway_seconds)
                if relues is None:
                    raise
                claims = self._sans_kid(token, alg, relues)
        else:
            cle = await self._cles.cle(kid, _emis(token), self.leeway_seconds)
            if cle is None:
                raise JetonRefuse("clé inconnue (kid) : absente du JWKS du fournisseur d'identité")
            if alg not in cle.algorithmes:
                raise JetonRefuse("algorithme différent de celui de la clé (kid)")
            try:
                claims = self._decode(token, cle, alg)
            except jwt.PyJWTError as error:
                raise JetonRefuse(_raison(error)) from None
        exp = claims["exp"]
        if not isinstance(exp, int | float):  # PyJWT takes "1767225600" too (a boolean: expired in 1970)
            raise JetonRefuse("claim exp mal formée : une date numérique (NumericDate), pas une chaîne")
        # A token cannot be revoked: one valid for months, leaked, would write for months.
        if exp > time.time() + self.max_lifetime_seconds + self.leeway_seconds:
            raise JetonRefuse(
                f"jeton valide trop longtemps : exp à plus de {self.max_lifetime_seconds:g} s "
                "(JWT_MAX_LIFETIME_SECONDS)"
            )
        sub = claims["sub"]
        if not isinstance(sub, str) or not 0 < len(sub) <= LONGUEUR_SUB or not sub.isprintable():
            raise JetonRefuse(f"claim sub mal formé : une chaîne imprimable de 1 à {LONGUEUR_SUB} caractères")
        try:
            declarants = declarants_du_claim(claims.get("declarant"))
        except ValueError:
            raise JetonRefuse(
                "claim declarant absent ou mal formé : une source ou une liste de sources du contrat, "
                "hors /plateforme/..."
            ) from None
        return Principal(sub, declarants)

    def _decode(self, token: str, cle: Cle, alg: str) -> dict[str, Any]:
        """The token's claims, its signature (first: InvalidSignatureError) and claims checked."""
        return jwt.decode(
            token,
            cle.key,
            algorithms=[alg],
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway_seconds,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )

    def _sans_kid(self, token: str, alg: str, cles: tuple[Cle, ...]) -> dict[str, Any]:
        """The claims of a token without `kid`, checked with the first of `cles` that verifies its
        signature. PyJWT checks the signature before any claim, so a key that gets past it is the
        one that signed: the token's other faults (expired, another audience...) are then told
        as with a `kid`, and no later key is tried."""
        if not cles:
            raise SansCleVerifiante(
                "clé inconnue : sans kid, et aucune clé du JWKS du fournisseur d'identité pour l'algorithme du jeton"
            )
        for cle in cles:
            try:
                return self._decode(token, cle, alg)
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as error:
                raise JetonRefuse(_raison(error)) from None
        raise SansCleVerifiante(
            f"signature invalide : sans kid, aucune des clés du JWKS du fournisseur d'identité pour son algorithme "
            f"ne la vérifie ({len(cles)} essayée{'s' if len(cles) > 1 else ''}, {CLES_SANS_KID} au plus)"
        )


class SansCleVerifiante(JetonRefuse):
    """A token without `kid` that none of the keys tried verifies (none of its `alg`, or none
    whose signature it bears)."""


def _emis(token: str) -> float | None:
    """The token's `iat`, unverified (it only chooses between two refusals), if it is a number."""
    try:
        iat = jwt.decode(token, options={"verify_signature": False}).get("iat")
    except jwt.PyJWTError:
        return None
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        return None
    try:
        return float(iat)
    except OverflowError:  # an integer of hundreds of digits: no instant
        return None


class AucuneCle(ValueError):
    """A key set that holds no key the verifier may use (asymmetric, for signing)."""


@dataclass(frozen=True, slots=True)
class Cle:
    """A key of the provider's JWKS the verifier may use, and the algorithms it verifies."""

    key: Any
    """The public key (cryptography's), as jwt.decode takes it."""
    algorithmes: frozenset[str]


@dataclass(frozen=True, slots=True)
class JeuDeCles:
    """The keys of a JWKS the verifier may use: by `kid`, and all of them (with a kid or not)."""

    par_kid: dict[str, Cle]
    toutes: tuple[Cle, ...]

    def cle(self, kid: str) -> Cle | None:
        """The key `kid` names."""
        return self.par_kid.get(kid)

    def sans_kid(self, alg: str) -> tuple[Cle, ...]:
        """The keys a token without `kid` (RFC 7515 makes it optional) signed with `alg` may be
        signed by: those that verify `alg`, in the set's order, the first CLES_SANS_KID."""
        return tuple(cle for cle in self.toutes if alg in cle.algorithmes)[:CLES_SANS_KID]


AUCUNE = JeuDeCles({}, ())

_FAMILLE_RSA = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})


def _cles_de_signature(jeu: object) -> JeuDeCles:
    """The keys of a JWKS document (RFC 7517) the verifier may use: asymmetric, for signatures
    (`use` absent or `sig`, `key_ops` absent or holding `verify`), their `kid` a non-empty string
    or absent. A key that names its `alg` verifies that one; one that does not, every algorithm
    of its type (RFC 7518): an RSA key RS* and PS*, an EC or OKP key the one its curve goes with.
    Keys of another kind are skipped; none left is `AucuneCle`. Not a JSON object: ValueError
    (not a key set at all)."""
    if not isinstance(jeu, dict):
        raise ValueError("le JWKS n'est pas un objet JSON")
    keys = jeu.get("keys")
    par_kid: dict[str, Cle] = {}
    toutes: list[Cle] = []
    for donnees in keys if isinstance(keys, list) else []:
        if not isinstance(donnees, dict):
            continue
        kid, alg, ops = donnees.get("kid"), donnees.get("alg", ""), donnees.get("key_ops")
        if kid is not None and (not isinstance(kid, str) or not kid):
            continue
        if not isinstance(alg, str) or donnees.get("use", "sig") != "sig":
            continue
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        try:
            jwk = jwt.PyJWK(donnees)
        except Exception:  # a type, curve or algorithm PyJWT does not know or cannot verify with ("none")
            continue
        algorithmes = _FAMILLE_RSA if not alg and jwk.key_type == "RSA" else frozenset({jwk.algorithm_name})
        # A key published with its private part (a provider's mistake): its public part verifies.
        public = jwk.key.public_key() if hasattr(jwk.key, "public_key") else jwk.key
        if not algorithmes <= ALGORITHMES:
            continue
        if not (verifiables := _verifiables(algorithmes, public)):
            # Its tokens are then refused as of a key not published: the provider is told why.
            log.warning("jwks.cle_inutilisable", kid=kid, alg=sorted(algorithmes), key_type=jwk.key_type)
            continue
        toutes.append(Cle(public, verifiables))
        if kid is not None:
            par_kid[kid] = toutes[-1]
    if not toutes:
        raise AucuneCle("aucune clé de signature asymétrique")
    return JeuDeCles(par_kid, tuple(toutes))


def _verifiables(algorithmes: frozenset[str], public: Any) -> frozenset[str]:
    """Those of `algorithmes` the key `public` verifies: an EC key of another curve than its `alg`
    names (a provider's mistake, which PyJWK takes) verifies none, and tried first for a token
    without kid, it refused that token, signed by a right key after it."""
    verifiables = set()
    for nom in algorithmes:
        try:
            get_default_algorithms()[nom].prepare_key(public)
        except jwt.InvalidKeyError:
            continue
        verifiables.add(nom)
    return frozenset(verifiables)


class _ClesFichier:
    """A JWKS file, read again when it changes (a rotated key is picked up by the next token)."""

    def __init__(self, path: Path):
        self.path = path
        self._version: tuple[int, int, int] | None = None
        self._cles = AUCUNE
        self._refus: tuple[tuple[int, int, int], str] | None = None
        """The file as it was last refused and why: not read again until it changes (its keys'
        lines, `jwks.cle_inutilisable`, said once, not at each token and scrape)."""

    async def cle(self, kid: str, emis: float | None = None, leeway: float = 0) -> Cle | None:
        return self._lues().cle(kid)

    async def sans_kid(self, alg: str) -> tuple[Cle, ...]:
        return self._lues().sans_kid(alg)

    async def sans_kid_relues(self, alg: str, emis: float | None, leeway: float) -> tuple[Cle, ...] | None:
        return None  # the file is read again whenever it changes, at each token

    def en_main(self) -> float:
        try:
            return len(self._lues().toutes)
        except JwksIndisponible:
            return 0

    def _lues(self) -> JeuDeCles:
        try:
            stat = os.stat(self.path)
        except OSError as error:
            raise JwksIndisponible(f"JWKS_FILE {self.path} illisible : {error}") from None
        version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if self._refus is not None and self._refus[0] == version:
            raise JwksIndisponible(self._refus[1])
        if version != self._version:
            try:
                self._cles = _cles_de_signature(json.loads(self.path.read_text()))
            except OSError as error:  # not reading it (rights, descriptors): read again at the next token
                raise JwksIndisponible(f"JWKS_FILE {self.path} illisible : {error}") from None
            except ValueError as error:  # its content: not read again until it changes
                self._refus = version, f"JWKS_FILE {self.path} illisible : {error}"
                raise JwksIndisponible(self._refus[1]) from None
            self._version = version
        return self._cles


def origin(url: str) -> str:
    """`https://idp.example:8443` of `https://user:pw@idp.example:8443/realms/x/certs?k=v`."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")


class _ClesUrl:
    """A provider's JWKS endpoint, fetched in a thread (PyJWKClient blocks) and kept DUREE_CACHE."""

    def __init__(self, url: str):
        try:
            self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=10)
        except jwt.PyJWKClientError as error:
            raise ValueError(f"JWKS_URL : {error}") from None
        self.shown = origin(url)
        """What the lines and the errors show of it: its scheme, host and port. The settings
        check never shows JWKS_URL (README, Settings): a token in its path or its query."""
        self._cles = AUCUNE
        self._echec = ""
        self._echoue = False  # the latest fetch failed: the keys in hand may be stale
        self._obtenues = -math.inf  # when (time.time()) the keys in hand were fetched
        self._prochain = -math.inf  # when the keys are fetched again
        self._force = -math.inf  # when an unknown kid last forced a fetch
        self._generation = 0  # fetches done: a caller that waited for another's fetch skips its own
        self._verrou = asyncio.Lock()
        self._rafraichissement: asyncio.Task | None = None

    async def cle(self, kid: str, emis: float | None = None, leeway: float = 0) -> Cle | None:
        """The key `kid` names (JeuDeCles.cle); None when it is not the provider's (`emis`: the
        token's `iat`, `leeway`: how far in the future it may be, as for the token's times)."""
        vue = self._generation
        maintenant = time.monotonic()
        if maintenant >= self._prochain:
            await self._expirees(vue, en_main=self._cles.cle(kid) is not None)
        elif self._cles.cle(kid) is None and maintenant - self._force >= INTERVALLE_REFETCH:
            self._force = maintenant
            await self._charger(vue)
        self._disponibles()
        cle = self._cles.cle(kid)
        if cle is None and self._echoue:
            raise ClesAVerifier(
                f"JWKS_URL {self.shown} : la clé du jeton peut être nouvelle, les clés n'ont pu être relues "
                f"({self._echec})",
                max(self._prochain - time.monotonic(), 1.0),
            )
        # Issued after the keys in hand were fetched (`iat` is in whole seconds: in the second of
        # the fetch too): its key may be new, fetched again when allowed. Not one issued in the
        # future beyond the leeway, which no key makes valid (else anyone's made-up token was
        # answered 503 for ever, every fetch being before its `iat`).
        if cle is None and emis is not None and math.floor(self._obtenues) <= emis <= time.time() + leeway:
            raise ClesAVerifier(
                f"JWKS_URL {self.shown} : la clé du jeton peut être nouvelle, les clés seront relues sous "
                f"{INTERVALLE_REFETCH:g} s",
                max(self._force + INTERVALLE_REFETCH - time.monotonic(), 1.0),
            )
        return cle

    async def sans_kid(self, alg: str) -> tuple[Cle, ...]:
        """The keys a token without `kid` may be signed by (JeuDeCles.sans_kid), read again once
        they expire (`sans_kid_relues` when none of them verifies it)."""
        vue = self._generation
        if time.monotonic() >= self._prochain:
            await self._expirees(vue, en_main=bool(self._cles.sans_kid(alg)))
        self._disponibles()
        return self._cles.sans_kid(alg)

    async def sans_kid_relues(self, alg: str, emis: float | None, leeway: float) -> tuple[Cle, ...] | None:
        """The keys again, for a token without `kid` none of those in hand verified: fetched again
        when its key may be newer than they are, as for an unknown kid (issued since they were
        fetched, not beyond the leeway in the future; at most once per INTERVALLE_REFETCH, the
        same throttle: anyone can send such a token); ClesAVerifier (503) when they cannot be
        now. None when its key cannot be new (issued before the keys in hand were fetched): the
        refusal stands."""
        if emis is None or not math.floor(self._obtenues) <= emis <= time.time() + leeway:
            return None
        vue, maintenant = self._generation, time.monotonic()
        if maintenant - self._force < INTERVALLE_REFETCH:
            raise ClesAVerifier(
                f"JWKS_URL {self.shown} : la clé du jeton (sans kid) peut être nouvelle, les clés seront relues "
                f"sous {INTERVALLE_REFETCH:g} s",
                max(self._force + INTERVALLE_REFETCH - maintenant, 1.0),
            )
        self._force = maintenant
        await self._charger(vue)
        self._disponibles()
        if self._echoue:
            raise ClesAVerifier(
                f"JWKS_URL {self.shown} : la clé du jeton (sans kid) peut être nouvelle, les clés n'ont pu être "
                f"relues ({self._echec})",
                max(self._prochain - time.monotonic(), 1.0),
            )
        return self._cles.sans_kid(alg)

    async def _expirees(self, vue: int, en_main: bool) -> None:
        """The keys have expired: fetched again behind this request when the keys it needs are
        in hand (`en_main`), which then never waits for a slow or absent provider (its keys are
        used until it answers); fetched again before it otherwise."""
        if not en_main:
            await self._charger(vue)
        elif self._rafraichissement is None or self._rafraichissement.done():
            self._rafraichissement = asyncio.create_task(self._charger(vue))

    def en_main(self) -> float:
        return math.nan if self._generation == 0 else len(self._cles.toutes)

    def _disponibles(self) -> None:
        if not self._cles.toutes:
            raise JwksIndisponible(f"JWKS_URL {self.shown} : aucune clé obtenue ({self._echec})")

    async def _charger(self, vue: int) -> None:
        async with self._verrou:
            if self._generation != vue:
                return
            try:
                demandees = time.time()
                self._cles = _cles_de_signature(await asyncio.to_thread(self._client.fetch_data))
                self._obtenues, self._echoue = demandees, False
                self._prochain = time.monotonic() + DUREE_CACHE
            except AucuneCle as error:
                # The provider answered, with no key to verify with (its keys withdrawn, or none
                # usable left): those in hand are no longer its, and no token is accepted (503,
                # as with a JWKS_FILE that holds none). Kept, a key withdrawn so stayed trusted.
                self._echoue, self._echec = True, f"{type(error).__name__}: {error}"
                self._prochain = time.monotonic() + REESSAI
                if self._cles.toutes:
                    log.error("jwks.sans_cle", url=self.shown, error=self._echec, retry_in_s=REESSAI)
                self._cles = AUCUNE
            except Exception as error:  # unreachable, not JSON, cut while read: its keys kept meanwhile
                self._echoue = True
                self._echec = f"{type(error).__name__}: {error}"
                self._prochain = time.monotonic() + REESSAI
                if self._cles.toutes:
                    log.warning("jwks.non_relues", url=self.shown, error=self._echec, retry_in_s=REESSAI)
            finally:  # once done: callers that came while it ran use its result
                self._generation += 1
