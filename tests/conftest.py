"""One real Kafka broker and one real PostgreSQL server per test session, shared; each test
gets its own topics (unique prefix) with their ACLs, and its own database, so tests never see
each other.

The broker is secured like every local one (SASL/SCRAM over TLS, ACLs): the session exports
admin's access (KAFKA_*) into the environment, so every client the tests and the tools build
from it connects as the super user; a test wanting another principal asks
`kafka.access_as(name)`."""

import asyncio
import logging
import shutil
import uuid
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
async def database_url(postgres, unique) -> str:
    return await postgres.create_database(f"test_{unique}")


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
    await _deleted(kafka.bootstrap_servers, prefix)


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
    at its end, as `topic_prefix`'s are (about 300 partitions a session were left open)."""
    prefix = f"p{unique}."
    yield prefix
    await _deleted(kafka.bootstrap_servers, prefix)


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
