"""Random bytes at every parameter of every endpoint of the served read API: never a 5xx, and
every error answers in French; a 422 names the parameter it refuses and states its rule.

Hypothesis drives a synchronous httpx client from a worker thread, while the API is served by
uvicorn on this test's event loop, against the real PostgreSQL (and Kafka, for the consumer)."""

import asyncio
import random
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from test_read_api import serve_api

QUERY = {
    "/alertes": (
        "code_academie",
        "code_departement",
        "responsable_type",
        "responsable_code",
        "kind",
        "state",
        "limit",
        "offset",
    ),
    "/alertes/flux": ("code_academie", "code_departement", "kind"),
}
PATH = {"/etablissements/": "uai", "/ressources/": "resource_id"}
TARGETS = [("query", path, name) for path, names in QUERY.items() for name in names] + [
    ("path", path, name) for path, name in PATH.items()
]

# What a client can put in a URL: any text (NUL, controls, lone surrogates, sent as the bytes
# "surrogatepass" gives them), any bytes (invalid UTF-8 included), integers far beyond int64,
# long strings. Everything is percent-encoded, so every byte reaches the server.
ANY_CHARACTER = st.characters(exclude_categories=())  # surrogates included
VALUES = st.one_of(
    st.text(ANY_CHARACTER, max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
    st.integers(min_value=-(10**40), max_value=10**40).map(lambda n: str(n).encode()),
    st.sampled_from([b"0", b"14", b"035", b"02A", b"0350042F", b"open", b"equipement-incompatible"]),
    st.text(ANY_CHARACTER, min_size=200, max_size=600).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.integers(min_value=257, max_value=4000).map(lambda n: b"x" * n),
)
# A header value h11 lets a client send: visible bytes and inner spaces.
HEADER_VALUES = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40).map(lambda n: str(n).encode()),
    st.binary(min_size=1, max_size=60).map(lambda b: bytes(x for x in b if x > 0x20 and x != 0x7F)).filter(bool),
)


def _url(where: str, path: str, name: str, value: bytes) -> str:
    encoded = quote(value, safe="")
    if where == "path":
        return path + encoded
    return f"{path}?{name}={encoded}"


# What pydantic and Starlette say in English: none of it may reach a client.
ENGLISH = ("Input should", "Field required", "String should", "Value error", "Unable to parse", "valid integer")
ENGLISH += ("should have", "greater than", "less than", "Not Found", "Method Not Allowed", "Internal Server Error")


def _check(response: httpx.Response, where: str, name: str, value: bytes) -> None:
    assert response.status_code < 500, (where, name, value, response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert not any(phrase in response.text for phrase in ENGLISH), (name, value, response.text[:500])
    if response.status_code == 422:
        detail = response.json()["detail"]
        [refused] = [d for d in detail if d["loc"][0] == where and d["loc"][-1] == name]
        assert refused["msg"].startswith(f"{name} : "), (name, value, refused)
        assert refused["msg"].startswith(f"{name} : doit être ") or refused["type"] == "value_error", refused
    elif where == "path" and response.status_code == 404:
        # an unknown UAI or resource, or a path with another `/` in it: no such route
        assert response.json()["detail"].startswith((f"{name} : ", "aucun point d'accès")), (value, response.text)
    else:  # accepted: a 2xx
        assert response.status_code < 300, (where, name, value, response.status_code, response.text[:500])


@pytest.fixture
def libraries_draw_apart(monkeypatch):
    """The service's Kafka client draws from the random module's shared generator all the time
    (aiokafka's fetcher shuffles its partitions at every fetch), on the event loop, while
    hypothesis draws examples in the test's thread: hypothesis then sees its generator moved
    under it and warns of a strategy using `random` (HypothesisDeprecationWarning, one run in a
    few). Here those modules draw from one of their own."""
    import aiokafka.client
    import aiokafka.conn
    import aiokafka.consumer.fetcher
    import aiokafka.partitioner

    for module in (aiokafka.client, aiokafka.conn, aiokafka.consumer.fetcher, aiokafka.partitioner):
        monkeypatch.setattr(module, "random", random.Random())


@pytest.mark.usefixtures("libraries_draw_apart")
async def test_random_bytes_at_every_parameter_never_get_a_5xx(settings):
    fast = settings.model_copy(update={"sse_keepalive_seconds": 0.2, "sse_max_clients": 1000})
    async with serve_api(fast) as (async_client, _):
        base = str(async_client.base_url)

        def fuzz() -> None:
            with httpx.Client(base_url=base, timeout=10) as client:

                def request(url: str, headers: dict | None = None) -> httpx.Response:
                    # The stream answers 200 and goes on: its status and headers are enough.
                    with client.stream("GET", url, headers=headers) as response:
                        if response.status_code != 200 or not url.startswith("/alertes/flux"):
                            response.read()
                        return response

                @hypothesis_settings(
                    max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
                )
                @given(target=st.sampled_from(TARGETS), value=VALUES)
                @example(target=("query", "/alertes", "offset"), value=str(2**63).encode())
                @example(target=("query", "/alertes", "offset"), value=str(10**40).encode())
                @example(target=("query", "/alertes", "responsable_code"), value=b"0\x0035")
                @example(target=("query", "/alertes", "responsable_code"), value=b"\xff\xfe")
                @example(target=("path", "/etablissements/", "uai"), value=b"0350042\x00")
                @example(target=("path", "/etablissements/", "uai"), value=b"0/")
                @example(target=("path", "/ressources/", "resource_id"), value=b"ark:/1/\x00")
                @example(target=("path", "/ressources/", "resource_id"), value=b"\xed\xa0\x80")  # a lone surrogate
                @example(target=("query", "/alertes/flux", "kind"), value=b"\x00")
                def every_parameter(target, value):
                    where, path, name = target
                    _check(request(_url(where, path, name, value)), where, name, value)

                @hypothesis_settings(
                    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
                )
                @given(value=HEADER_VALUES)
                @example(value=str(2**63).encode())
                @example(value=b"-1")
                def last_event_id(value):
                    _check(request("/alertes/flux", {"Last-Event-ID": value}), "header", "Last-Event-ID", value)

                every_parameter()
                last_event_id()

        await asyncio.to_thread(fuzz)
