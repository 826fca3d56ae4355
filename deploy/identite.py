"""The local identity provider: tokens for development and tests, offline.

    ./dev token DECLARANT [DECLARANT...] [--ttl SECONDS] [--sub ID] [--data-dir DIR]
    python -m deploy.identite jeton DECLARANT... | jwks [--data-dir DIR]

An RSA key pair made on first use in DIR/identite (private key mode 0600) and its public half
published as a JWKS file, `jwks.json`: the passerelle reads it through JWKS_FILE exactly as it
reads a real provider's keys through JWKS_URL, so the same code checks both. `jeton` prints a
token alone on stdout, for `curl -H "Authorization: Bearer $(./dev token /gar)"`. DIR defaults
to the running platform's data directory (`./dev up`'s first, else the demo's; none running:
`./dev up`'s).
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from deploy.local.datadir import data_root
from services.passerelle.jetons import declarant_valide

DEFAULT_ISSUER = "feo-identite-locale"
DEFAULT_AUDIENCE = "former-equiper-outiller"


class IdentiteLocale:
    """A key pair in `directory`, and the tokens it signs."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.key_path = directory / "cle-privee.pem"
        self.jwks_path = directory / "jwks.json"

    def ensure(self) -> None:
        """Make the key pair and the JWKS on first call; later calls (any process) keep them."""
        made = False
        if not self.key_path.exists():
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            written = _ecrit(self.directory, pem, mode=0o600)
            try:  # link() never replaces: of two processes making a key at once, the first one's wins
                os.link(written, self.key_path)
                made = True
            except FileExistsError:
                pass
            finally:
                written.unlink()
        if made or not self.jwks_path.exists():
            jwk = {**self._jwk(), "alg": "RS256", "use": "sig"}
            os.replace(_ecrit(self.directory, json.dumps({"keys": [jwk]}, indent=2).encode()), self.jwks_path)

    @functools.cached_property
    def kid(self) -> str:
        return str(self._jwk()["kid"])

    def jeton(
        self,
        declarants: str | Sequence[str],
        subject: str | None = None,
        ttl_seconds: int = 3600,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
        not_before: datetime | None = None,
    ) -> str:
        """A token for a client declaring as `declarants` (each a contract source form, not
        /plateforme/...: ValueError naming the rule otherwise); `subject` defaults to the first
        declarant as an id, e.g. "collectivites-communes-35238"."""
        sources = [declarants] if isinstance(declarants, str) else list(declarants)
        if not sources:
            raise ValueError("declarant : au moins une source")
        for source in sources:
            declarant_valide(source)
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": issuer,
            "aud": audience,
            "sub": subject or sources[0].strip("/").replace("/", "-"),
            "iat": now,
            "exp": now + ttl_seconds,
            "declarant": sources[0] if len(sources) == 1 else sources,
        }
        if not_before is not None:
            claims["nbf"] = int(not_before.timestamp())
        return self.signe(claims)

    def signe(self, claims: Mapping[str, object]) -> str:
        """`claims` signed as they are (RS256, kid in the header): tests make malformed tokens with it."""
        self.ensure()
        return jwt.encode(dict(claims), self._cle, algorithm="RS256", headers={"kid": self.kid})

    @functools.cached_property
    def _cle(self) -> rsa.RSAPrivateKey:  # loading checks the key: slow enough to do it once
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey), f"{self.key_path} holds an RSA key"
        return key

    def _jwk(self) -> dict[str, object]:
        jwk = RSAAlgorithm.to_jwk(self._cle.public_key(), as_dict=True)
        # kid: the key's RFC 7638 thumbprint, so it names this key and no other
        canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
        kid = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
        return {**jwk, "kid": kid}


def _ecrit(directory: Path, content: bytes, mode: int = 0o644) -> Path:
    """A new file in `directory` holding `content`, created with `mode` (never wider, even briefly)."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-")  # mode 0600
    with os.fdopen(fd, "wb") as file:
        file.write(content)
    os.chmod(name, mode)
    return Path(name)


def default_data_dir() -> Path:
    """The data directory of the platform running here (`./dev up`'s first, else the demo's, as
    `./dev credentials` finds it): a token from other keys would be refused (401). Without one
    running, `./dev up`'s."""
    from deploy.local.datadir import running_platform

    holder = running_platform()
    return holder.data_dir if holder else data_root() / "platform"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.identite", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the platform's data directory; the keys are in DIR/identite (default: the running "
        "platform's, ./dev up's first, else the demo's; none running: ./dev up's)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    j = commands.add_parser("jeton", parents=[where], help="print a token for DECLARANT(s) (CloudEvents sources)")
    j.add_argument("declarants", nargs="+", metavar="DECLARANT", help="e.g. /collectivites/communes/35238")
    j.add_argument(
        "--ttl",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="lifetime (default: %(default)s; the passerelle refuses beyond JWT_MAX_LIFETIME_SECONDS, a day)",
    )
    j.add_argument("--sub", help="the client id (default: derived from the first declarant)")
    commands.add_parser("jwks", parents=[where], help="print the path of the JWKS file (the passerelle's JWKS_FILE)")
    args = parser.parse_args(argv)
    identite = IdentiteLocale((args.data_dir or default_data_dir()) / "identite")
    identite.ensure()
    if args.command == "jwks":
        print(identite.jwks_path)
        return 0
    try:
        print(identite.jeton(args.declarants, subject=args.sub, ttl_seconds=args.ttl))
    except ValueError as error:
        print(f"./dev token: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
