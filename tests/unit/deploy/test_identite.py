"""The local identity provider (deploy/identite.py): one key pair per directory, whoever asks
first and however many ask at once; the JWKS it publishes checks its tokens; the CLI prints a
token alone, or refuses a declarant in one line."""

import json
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from deploy.identite import DEFAULT_AUDIENCE, DEFAULT_ISSUER, IdentiteLocale
from helpers import platform_on
from services.passerelle.jetons import Principal, Verificateur

COMMUNE = "/collectivites/communes/35238"


def test_ensure_makes_a_private_key_only_its_owner_reads_and_a_jwks_naming_it(tmp_path: Path) -> None:
    identite = IdentiteLocale(tmp_path / "identite")

    identite.ensure()

    assert stat.S_IMODE(identite.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(identite.directory.stat().st_mode) == 0o700
    (key,) = json.loads(identite.jwks_path.read_text())["keys"]
    assert (key["kty"], key["alg"], key["use"], key["kid"]) == ("RSA", "RS256", "sig", identite.kid)
    assert "d" not in key  # the public half only
    assert sorted(p.name for p in identite.directory.iterdir()) == ["cle-privee.pem", "jwks.json"]


def test_ensure_keeps_the_key_made_first_even_when_many_make_it_at_once(tmp_path: Path) -> None:
    directory = tmp_path / "identite"
    start = threading.Barrier(4)

    def make() -> None:
        start.wait()
        IdentiteLocale(directory).ensure()

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    key = (directory / "cle-privee.pem").read_bytes()
    IdentiteLocale(directory).ensure()

    assert (directory / "cle-privee.pem").read_bytes() == key
    (published,) = json.loads((directory / "jwks.json").read_text())["keys"]
    assert published["kid"] == IdentiteLocale(directory).kid
    assert sorted(p.name for p in directory.iterdir()) == ["cle-privee.pem", "jwks.json"]


async def test_its_tokens_pass_the_passerelle_s_check_with_the_subject_derived_from_the_declarant(
    tmp_path: Path,
) -> None:
    identite = IdentiteLocale(tmp_path / "identite")
    verificateur = Verificateur(DEFAULT_ISSUER, DEFAULT_AUDIENCE, jwks_file=identite.jwks_path)

    assert await verificateur.verifier(identite.jeton(COMMUNE)) == Principal(
        "collectivites-communes-35238", frozenset({COMMUNE})
    )
    assert (await verificateur.verifier(identite.jeton(["/gar", "/ministere"]))).subject == "gar"


@pytest.mark.parametrize(
    ("declarants", "rule"),
    [
        ("/collectivites/communes/3523", "n'est pas une source connue"),
        ("/plateforme/formation", "réservé aux services de la plateforme"),
        ([], "au moins une source"),
    ],
)
def test_a_token_for_a_declarant_no_client_may_hold_is_not_made(
    tmp_path: Path, declarants: str | list[str], rule: str
) -> None:
    with pytest.raises(ValueError, match=rule):
        IdentiteLocale(tmp_path / "identite").jeton(declarants)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.identite", *args], capture_output=True, text=True, timeout=60, check=False
    )


async def test_the_cli_prints_a_token_alone_that_the_passerelle_accepts(tmp_path: Path) -> None:
    done = _cli("jeton", COMMUNE, "/rectorats/14", "--sub", "mairie-rennes", "--ttl", "60", "--data-dir", str(tmp_path))
    jwks = _cli("jwks", "--data-dir", str(tmp_path))

    assert done.returncode == 0, done.stderr
    (token,) = done.stdout.splitlines()
    assert jwks.stdout == f"{tmp_path / 'identite' / 'jwks.json'}\n"
    verificateur = Verificateur(DEFAULT_ISSUER, DEFAULT_AUDIENCE, jwks_file=Path(jwks.stdout.strip()))
    assert await verificateur.verifier(token) == Principal("mairie-rennes", frozenset({COMMUNE, "/rectorats/14"}))


def test_the_cli_refuses_a_bad_declarant_in_one_line(tmp_path: Path) -> None:
    done = _cli("jeton", "/collectivites/communes/3523", "--data-dir", str(tmp_path))

    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("./dev token: '/collectivites/communes/3523' n'est pas une source connue (")


def test_without_data_dir_the_keys_are_those_of_the_platform_running_here(tmp_path: Path, monkeypatch) -> None:
    """A demo runs on its own data directory: `./dev token` without --data-dir signs with its
    keys, which its passerelle reads (it made new ones under ./dev up's directory, every token
    refused 401). None running: ./dev up's directory, as before."""
    monkeypatch.setenv("FEO_DATA_DIR", str(tmp_path))
    assert _cli("jwks").stdout == f"{tmp_path / 'platform' / 'identite' / 'jwks.json'}\n"
    demo = tmp_path / "demo"
    demo.mkdir()
    with platform_on(demo):  # the demo's runtime, by its lock
        assert _cli("jwks").stdout == f"{demo / 'identite' / 'jwks.json'}\n"
        assert _cli("jeton", COMMUNE).returncode == 0
        assert (demo / "identite" / "jwks.json").exists()
