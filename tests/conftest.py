"""One real Kafka broker and one real PostgreSQL server per test session, shared; each test
gets its own topics (unique prefix) with their ACLs, and its own database, so tests never see
each other.

The broker is secured like every local one (SASL/SCRAM over TLS, ACLs): the session exports
admin's access (KAFKA_*) into the environment, so every client the tests and the tools build
from it connects as the super user; a test wanting another principal asks
`kafka.access_as(name)`."""

import asyncio
import gc
import logging
import shutil
import uuid
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
from hypothesis import settings

from helpers import TEST_PARTITIONS
from services.common.runtime.logs import COORDINATOR

# Property tests: no deadline per example (a GC pause or a busy machine is not a failure), and
# no example database (what one run found does not change what the next tests).
settings.register_profile("feo", deadline=None, database=None)
settings.load_profile("feo")

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the open data files are expected in {SHARED_DATA} (../shared/data beside the repository)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    from deploy.local.kafka import LocalKafka

    broker = LocalKafka(tmp_path_factory.mktemp("kafka"), certificates=True)
    broker.start()
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in broker.access.environ().items():
            patch.setenv(variable, value)
        yield broker
    broker.stop()


@pytest.fixture(scope="session")
def identite(tmp_path_factory):
    """The session's local identity provider: its JWKS file for the passerelle, its tokens for
    the partners posting to it."""
    from deploy.identite import IdentiteLocale

    provider = IdentiteLocale(tmp_path_factory.mktemp("identite") / "cles")
    provider.ensure()
    return provider


@pytest.fixture(scope="session")
def postgres():
    from helpers import own_postgres

    with own_postgres("feo-test-postgres-") as server:
        yield server


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def database_url(postgres, unique) -> AsyncIterator[str]:
    name = f"test_{unique}"
    yield await postgres.create_database(name)
    await _dropped(postgres, name)


async def _dropped(postgres, name: str) -> None:
    """The test's database dropped once it is over: about 500 a session were left, 5 to 10 MB
    each, in the embedded server's directory or on the server DATABASE_URL names. FORCE ends the
    connections a test may have left (best effort, as the topics' deletion below)."""
    import asyncpg

    try:
        conn = await asyncpg.connect(postgres.external_url or postgres.url(), timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
    except Exception as exc:
        logging.getLogger(__name__).warning("database %s not dropped: %r", name, exc)


@pytest.fixture
async def topic_prefix(kafka, unique):
    from deploy import acl
    from deploy.topic_admin import create_topics
    from deploy.topology import platform_topics

    prefix = f"t{unique}."
    # Fewer partitions than a deployment's: each test makes its own topics on the session's broker.
    await create_topics(kafka.bootstrap_servers, platform_topics(prefix, partitions=TEST_PARTITIONS))
    acl.apply(kafka.access, prefix)
    yield prefix
    await _prefix_cleared(kafka, prefix)


async def _prefix_cleared(kafka, prefix: str) -> None:
    await _deleted(kafka.bootstrap_servers, prefix)
    await asyncio.to_thread(_acls_deleted, kafka.access, prefix)


def _acls_deleted(access, prefix: str) -> None:
    """The test's ACLs deleted once it is over: 33 a test, which every later `acl.apply` read
    back while it waited for its own (about 18,000 by a session's end). Best effort, as above."""
    from kafka.admin import KafkaAdminClient

    from deploy import acl

    try:
        admin = KafkaAdminClient(**access.kafka_python(), client_id="feo-test-acl")
        try:  # by their resources' names: whatever KAFKA_DASHBOARDS says once the test's patches are undone
            if mine := acl.held_under(admin, prefix):
                admin.delete_acls([acl.exact_filter(a) for a in mine])
        finally:
            admin.close()
    except Exception as exc:
        logging.getLogger(__name__).warning("ACLs of %s not deleted: %r", prefix, exc)


async def _deleted(bootstrap: str, prefix: str) -> None:
    """The test's topics deleted once it is over: the broker holds a file open for each partition
    it has, and the suite's tests made about 20,000, past this machine's limit of open files
    (20,000, which even root may not raise here): the broker stopped on "Too many open files"
    near the suite's end. Best effort: a broker a test left unreachable fails no test here."""
    from aiokafka.admin import AIOKafkaAdminClient

    from services.common.messaging.connection import kafka_options

    admin = AIOKafkaAdminClient(**kafka_options(bootstrap))
    try:
        async with asyncio.timeout(15):
            await admin.start()
            if mine := [t for t in await admin.list_topics() if t.startswith(prefix)]:
                await admin.delete_topics(mine)
    except Exception as exc:
        logging.getLogger(__name__).warning("topics of %s not deleted: %r", prefix, exc)
    finally:
        await admin.close()


@pytest.fixture
async def own_prefix(kafka, unique):
    """A prefix for the topics a test makes itself (not `topic_prefix`'s set): deleted with them
    and the platform's ACLs on them at its end, as `topic_prefix`'s are (about 300 partitions a
    session were left open)."""
    prefix = f"p{unique}."
    yield prefix
    await _prefix_cleared(kafka, prefix)


@pytest.fixture(autouse=True)
def gc_restored(request):
    """A service started in the test's process (lifecycle.run) freezes the heap and raises the
    collector's thresholds for the process: put back after each test, else every such service's
    objects stayed uncollectable for the session, and the later tests ran under its thresholds.
    Then the garbage is collected: a Kafka producer or consumer the test left unclosed in a
    reference cycle fails it here (one was collected during a later test, whose exact stderr
    then held asyncio's "Unclosed AIOKafkaProducer"; frozen, never). One dropped outside any
    cycle is collected at once, during the test: asyncio's ERROR line then, no failure."""
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()
    if request.node.nodeid.startswith("tests/unit/"):
        return  # no Kafka client there: 2,500 tests spared a collection (80-110 ms each late in a session)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    # Producers and consumers only: a connection aiokafka leaves when a client's start is cancelled
    # mid-bootstrap (its own limit) is no test's to close.
    clients = ("Unclosed AIOKafkaProducer", "Unclosed AIOKafkaConsumer")
    if unclosed := [str(w.message) for w in said if str(w.message).startswith(clients)]:
        pytest.fail(f"{len(unclosed)} Kafka client(s) left unclosed by this test: {unclosed[0]}")


@pytest.fixture
def settings(kafka, database_url, topic_prefix):
    from services.common.runtime.settings import ServiceSettings

    return ServiceSettings(
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        database_url=database_url,
        topic_prefix=topic_prefix,
        outbox_poll_ms=200,
        log_format="console",
    )


@pytest.fixture(autouse=True)
def logging_restored():
    """configure_logging changes process-wide state (a service run in the test's process, or a
    test of the logs themselves): put it back for the other tests."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    library = logging.getLogger("faststream")
    library_state = (list(library.handlers), library.propagate, library.level)
    coordinator_filters = list(logging.getLogger(COORDINATOR).filters)
    yield
    structlog.configure(**saved)
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)
    library.handlers[:], library.propagate = library_state[:2]
    library.setLevel(library_state[2])
    logging.getLogger(COORDINATOR).filters[:] = coordinator_filters
    logging.captureWarnings(False)


@pytest.fixture
async def browser():
    """Debian's Chromium (which ./dev installs when it can; no browser can be downloaded here),
    headless, driven by Playwright: the dashboard page's browser tests."""
    from playwright.async_api import async_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("no chromium on PATH: install Debian's package (apt-get install chromium)")
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=chromium, headless=True)
        yield launched
        await launched.close()
