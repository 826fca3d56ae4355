"""The Kafka broker's jars, fetched once from Maven Central into a cache outside the repository.

This machine reaches Maven Central but not apache.org and has no Docker, so the broker runs
straight from the jars published there; every start after the first uses them as they are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from deploy.local.console import say
from deploy.local.server_process import LOG_TAIL_LINES, require_tool

KAFKA_VERSION = "4.4.0"
# Kafka 4 logs through SLF4J 2 but declares slf4j-api 1.7.36, which cannot load
# the log4j2 binding: slf4j-api is pinned explicitly to override it.
LOG4J_VERSION = "2.25.5"
SLF4J_VERSION = "2.0.17"
# Pinned so that every Maven installation resolves the same plugin.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

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


class KafkaRuntimeError(RuntimeError):
    """The local broker could not be fetched, formatted or started."""


def cache_root() -> Path:
    """Where downloads shared by every checkout live (never inside the repository)."""
    if explicit := os.environ.get("FEO_CACHE_DIR"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "former-equiper-outiller"


def ensure_kafka_jars() -> Path:
    """Return the directory holding the Kafka jars, fetching them on first use.

    Maven writes into a temporary directory that is renamed into place only once
    complete, so an interrupted download is never mistaken for a finished one.
    """
    lib = cache_root() / f"kafka-{KAFKA_VERSION}" / "lib"
    if lib.is_dir():
        return lib
    mvn = require_tool(
        "mvn",
        "it is needed once, to fetch the Kafka jars from Maven Central (e.g. apt-get install maven)",
        KafkaRuntimeError,
    )
    lib.parent.mkdir(parents=True, exist_ok=True)
    say(f"fetching Kafka {KAFKA_VERSION} jars from Maven Central (first run only)...")
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=lib.parent))
    try:
        _copy_dependencies(mvn, staging)
        try:
            (staging / "lib").rename(lib)
        except OSError:
            if not lib.is_dir():  # not a concurrent fetch that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return lib


def _copy_dependencies(mvn: str, staging: Path) -> None:
    """Have Maven resolve _POM and copy its runtime jars into `staging/lib`."""
    (staging / "pom.xml").write_text(_POM)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(staging / "pom.xml"),
            f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={staging / 'lib'}",
            "-DincludeScope=runtime",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise KafkaRuntimeError(
            f"mvn failed (exit {result.returncode}) fetching Kafka {KAFKA_VERSION} jars; "
            f"last lines:\n" + "\n".join(output[-LOG_TAIL_LINES:])
        )
