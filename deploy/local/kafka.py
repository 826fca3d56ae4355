"""A real, single-node Apache Kafka broker for the demo and the test suite.

This machine reaches Maven Central but not apache.org and has no Docker, so the
broker runs straight from the Kafka jars published on Maven Central: they are
fetched once with Maven into a cache outside the repository and every later
start uses them as they are.

    python -m deploy.local.kafka --data-dir DIR   # foreground broker until Ctrl-C
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Coroutine, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from deploy.local.ports import free_ports

KAFKA_VERSION = "4.4.0"
# Kafka 4 logs through SLF4J 2 but declares slf4j-api 1.7.36, which cannot load
# the log4j2 binding: slf4j-api is pinned explicitly to override it.
LOG4J_VERSION = "2.25.5"
SLF4J_VERSION = "2.0.17"
# Pinned so that every Maven installation resolves the same plugin.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

STOP_GRACE_SECONDS = 20
LOG_TAIL_LINES = 40

_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.former-equiper-outiller</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId>
      <version>{SLF4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""

# The broker's own logging is cut to warnings: its INFO output is megabytes of
# noise for a demo, while errors (bad config, port in use) still reach kafka.log.
_LOG4J2_PROPERTIES = """status = warn
shutdownHook = disable
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
"""


class KafkaRuntimeError(RuntimeError):
    """The local broker could not be fetched, formatted or started."""


def cache_root() -> Path:
    """Where downloads shared by every checkout live (never inside the repository)."""
    if explicit := os.environ.get("FEO_CACHE_DIR"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "former-equiper-outiller"


def _require(tool: str, why: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise KafkaRuntimeError(f"`{tool}` was not found on PATH; {why}")
    return path


def ensure_kafka_jars() -> Path:
    """Return the directory holding the Kafka jars, fetching them on first use.

    Maven writes into a temporary directory that is renamed into place only once
    complete, so an interrupted download is never mistaken for a finished one.
    """
    lib = cache_root() / f"kafka-{KAFKA_VERSION}" / "lib"
    if lib.is_dir():
        return lib
    mvn = _require("mvn", "it is needed once, to fetch the Kafka jars from Maven Central "
                   "(e.g. apt-get install maven)")
    lib.parent.mkdir(parents=True, exist_ok=True)
    print(f"fetching Kafka {KAFKA_VERSION} jars from Maven Central (first run only)...",
          file=sys.stderr, flush=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=lib.parent))
    try:
        (staging / "pom.xml").write_text(_POM)
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(staging / "pom.xml"),
             f"{DEPENDENCY_PLUGIN}:copy-dependencies",
             f"-DoutputDirectory={staging / 'lib'}", "-DincludeScope=runtime"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()
            raise KafkaRuntimeError(
                f"mvn failed (exit {result.returncode}) fetching Kafka {KAFKA_VERSION} jars; "
                f"last lines:\n" + "\n".join(output[-LOG_TAIL_LINES:]))
        try:
            (staging / "lib").rename(lib)
        except OSError:
            if not lib.is_dir():  # not a concurrent fetch that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return lib


def _kafka_uuid() -> str:
    """A cluster id in Kafka's format (URL-safe base64 of 16 random bytes).

    Made here rather than by `StorageTool random-uuid` to save one JVM start;
    like Kafka, ids starting with '-' are avoided because the CLI parses them
    as options.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


_T = TypeVar("_T")


def _run_on_own_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run `coro` to completion on a fresh event loop in a worker thread.

    `LocalKafka.start` is synchronous yet is called from inside running loops
    (async fixtures, the demo) where `asyncio.run` is refused. The caller does
    not wait for the thread when interrupted (Ctrl-C), so it can stop the
    broker at once; the coroutine then ends by itself.
    """
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(asyncio.run, coro).result()
    finally:
        pool.shutdown(wait=False)


async def _port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def _metadata_available(bootstrap: str) -> bool:
    """True once a client gets metadata listing a broker (it is then unfenced)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await admin.start()
        return bool((await admin.describe_cluster())["brokers"])
    except (KafkaError, OSError, asyncio.TimeoutError):
        return False
    finally:
        await admin.close()


class LocalKafka:
    """One KRaft node (broker and controller) on 127.0.0.1, data in `data_dir`.

    The data directory may be reused across starts: it is formatted only once.
    The JVM runs in its own process group so that a Ctrl-C in the terminal
    reaches only the caller, who decides when to `stop()`.
    """

    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = Path(data_dir).resolve()
        ports = free_ports(2)
        self.port = port or ports[0]
        self.controller_port = ports[1] if ports[1] != self.port else ports[0]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "kafka.log"

    @property
    def pid(self) -> int | None:
        """The broker JVM's pid; None before start() and after stop()."""
        return self._process.pid if self._process else None

    def start(self, timeout: float = 60) -> None:
        """Start the broker and return once a client can fetch its metadata."""
        if self._process is not None:
            raise KafkaRuntimeError("this LocalKafka is already started")
        java = _require("java", f"Kafka {KAFKA_VERSION} needs a Java 17+ runtime "
                        "(e.g. apt-get install openjdk-17-jre-headless)")
        classpath = str(ensure_kafka_jars() / "*")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        properties = self._write_config()
        log_config = self.data_dir / "log4j2.properties"
        log_config.write_text(_LOG4J2_PROPERTIES)
        jvm = [java, "-Xmx512m", f"-Dlog4j2.configurationFile={log_config}", "-cp", classpath]
        if not (self.data_dir / "kafka-logs" / "meta.properties").exists():
            self._format(jvm, properties)
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(properties)],
                cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            _run_on_own_loop(self._wait_until_ready(self._process, time.monotonic() + timeout))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after STOP_GRACE_SECONDS."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def wait(self) -> int:
        """Block until the broker exits on its own; return its exit code."""
        if self._process is None:
            raise KafkaRuntimeError("this LocalKafka is not started")
        return self._process.wait()

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _write_config(self) -> Path:
        """Write server.properties; rewritten each start since ports may change."""
        path = self.data_dir / "server.properties"
        path.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={self.data_dir / 'kafka-logs'}",
            "num.partitions=3",
            "auto.create.topics.enable=false",
            "group.initial.rebalance.delay.ms=0",
            # A single node cannot hold the default three replicas of internal topics.
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "",
        ]))
        return path

    def _format(self, jvm: list[str], properties: Path) -> None:
        result = subprocess.run(
            [*jvm, "kafka.tools.StorageTool", "format", "-t", _kafka_uuid(),
             "-c", str(properties)],
            cwd=self.data_dir, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise KafkaRuntimeError(
                f"formatting the Kafka storage in {self.data_dir} failed "
                f"(exit {result.returncode}):\n{(result.stdout + result.stderr).strip()}")

    async def _wait_until_ready(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        # The plain TCP check comes first because aiokafka logs every refused
        # connection as an error, which would flood the terminal during start.
        while not (await _port_open(self.port)
                   and await _metadata_available(self.bootstrap_servers)):
            if (code := process.poll()) is not None:
                raise KafkaRuntimeError(
                    f"Kafka exited with code {code} while starting; "
                    f"last lines of {self.log_file}:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise KafkaRuntimeError(
                    f"Kafka did not serve metadata on {self.bootstrap_servers} in time; "
                    f"last lines of {self.log_file}:\n{self._log_tail()}")
            await asyncio.sleep(0.2)

    def _log_tail(self) -> str:
        """The end of kafka.log without Java stack frames, which would otherwise
        push the "Caused by:" lines that explain a failure out of the tail."""
        lines = [line for line in self.log_file.read_text(errors="replace").splitlines()
                 if not line.lstrip().startswith(("at ", "... "))]
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty)"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.kafka",
        description="Run the local Kafka broker in the foreground until Ctrl-C.")
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="broker data, server.properties and kafka.log (reused if present)")
    parser.add_argument("--port", type=int, default=None,
                        help="client port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args()
    # SIGTERM takes the same path as Ctrl-C so the broker is never left behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    kafka = LocalKafka(args.data_dir, args.port)
    try:
        kafka.start()
        print(f"Kafka {KAFKA_VERSION} ready on {kafka.bootstrap_servers} "
              f"(log: {kafka.log_file}); Ctrl-C to stop", flush=True)
        code = kafka.wait()
        sys.exit(f"Kafka exited on its own with code {code}; see {kafka.log_file}")
    except KeyboardInterrupt:
        pass
    except KafkaRuntimeError as error:
        sys.exit(f"error: {error}")
    finally:
        kafka.stop()


if __name__ == "__main__":
    main()
