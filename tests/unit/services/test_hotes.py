"""ressources' read API answers only requests naming a host it is served under
(`HTTP_ALLOWED_HOSTS`, services/ressources/hotes.py): a page of a site whose DNS points its own
name at the service (DNS rebinding) read it as same-origin (security audit s69 F1)."""

import httpx
import pytest
from pydantic import ValidationError

from services.common.runtime.app import build_app
from services.common.runtime.settings import ServiceSettings
from services.ressources.api import create_api
from services.ressources.app import SPEC
from services.ressources.hotes import host_name
from services.ressources.settings import RessourcesSettings

NOWHERE = ServiceSettings(kafka_bootstrap_servers="127.0.0.1:1", database_url="postgresql://feo@127.0.0.1:1/feo")


async def answer(path: str, host: str, allowed: str = "localhost") -> httpx.Response:
    settings = RessourcesSettings.of(NOWHERE).model_copy(update={"http_allowed_hosts": allowed})
    api = create_api(build_app(SPEC, settings), settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://ignored") as client:
        return await client.get(path, headers={"Host": host})


@pytest.mark.parametrize(
    "host, allowed, served",
    [
        ("rebind.attacker.example:8000", "localhost", False),
        ("rebind.attacker.example", "ressources,*.feo.svc", False),
        ("ressources.feo.svc.attacker.example", "ressources,*.feo.svc", False),
        ("feo.svc", "*.feo.svc", False),
        ("localhost:8000", "localhost", True),
        ("LocalHost.", "localhost", True),
        ("127.0.0.1:8000", "localhost", True),
        ("10.1.2.3", "localhost", True),
        ("[::1]:8000", "localhost", True),
        ("ressources", "ressources,*.feo.svc", True),
        ("ressources.feo.svc:8000", "ressources, *.feo.svc", True),
        ("tableau.academie.example", "ressources,tableau.academie.example", True),
    ],
)
async def test_a_page_is_served_only_under_a_listed_name_or_an_address(host, allowed, served):
    response = await answer("/", host, allowed)
    assert (response.status_code != 400) == served, (host, response.status_code, response.text)
    if not served:
        assert response.status_code == 400 and "HTTP_ALLOWED_HOSTS" in response.json()["detail"]
        assert response.headers["x-content-type-options"] == "nosniff"  # the service's own headers too
        assert host.partition(":")[0] not in response.text  # the name is not echoed


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/health", "/metrics"])
async def test_the_probes_answer_whatever_host_they_name(path):
    """kubelet and Prometheus name the pod by its address; another name says nothing of the schools."""
    assert (await answer(path, "pod.attacker.example")).status_code != 400


def test_the_names_are_host_names_without_port_or_scheme():
    refused = ("localhost:8000", "http://ressources", "a b", "", "ressources,", "*.", "*", "-x.svc", "*.fr", "*.local")
    for wrong in (*refused, "tableau.académie.fr", "[::1]"):
        with pytest.raises(ValidationError):
            RessourcesSettings.of(NOWHERE).model_validate({**NOWHERE.model_dump(), "http_allowed_hosts": wrong})
    for right in ("ressources,*.feo.svc", "xn--acadmie-dya.fr", "tableau.academie.example"):
        assert RessourcesSettings.of(NOWHERE).model_validate({**NOWHERE.model_dump(), "http_allowed_hosts": right})
    assert host_name("[2001:db8::1]:8000") == "2001:db8::1" and host_name("2001:db8::1") == "2001:db8::1"


async def test_refusals_are_said_once_in_a_while_not_once_each(monkeypatch):
    """A scan sends a name a request: one line every 10 s, counting the others, whatever names
    came before (the first 64 names, said once each, let a scan silence a real misconfiguration)."""
    from services.ressources import hotes

    said: list[dict] = []
    monkeypatch.setattr(hotes, "log", type("Log", (), {"warning": staticmethod(lambda e, **kw: said.append(kw))}))
    settings = RessourcesSettings.of(NOWHERE)
    api = create_api(build_app(SPEC, settings), settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://ignored") as client:
        for n in range(100):
            assert (await client.get("/", headers={"Host": f"scan-{n}.example"})).status_code == 400
    assert [(kw["host"], kw["autres_requetes"]) for kw in said] == [("scan-0.example", 0)]
