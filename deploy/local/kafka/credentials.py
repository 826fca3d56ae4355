"""The SCRAM credentials of a local broker's principals, in its data directory.

Each principal (CONTRACTS.md, Identity) gets a random password when the broker's storage is
formatted; `credentials.json` (mode 0600) beside the storage keeps them, for the runtime (the
services' processes, its own tools as `admin`) and for whoever connects by hand:

    ./dev credentials ministere        # its KAFKA_*= lines, for the running local platform
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.common.messaging.connection import KafkaAccess

ADMIN = "admin"
"""The super user: brokers between themselves, the runtime, operators' tools, the tests."""
PARTNERS = ("ministere", "gar")
SCRAM_ITERATIONS = 8192
FILE_NAME = "credentials.json"


def principals() -> tuple[str, ...]:
    """admin, each platform service (from its spec, so a new service gets one), the partners,
    each dashboard (KAFKA_DASHBOARDS: one that appears later gets its password at the next start)."""
    from deploy.acl import dashboards
    from services.specs import specs

    return (ADMIN, *(spec.name for spec in specs()), *PARTNERS, *dashboards())


@dataclass(frozen=True)
class Credentials:
    path: Path
    passwords: Mapping[str, str] = field(repr=False)

    @classmethod
    def create(cls, directory: Path, names: tuple[str, ...]) -> Credentials:
        """New random passwords for `names`, written to `directory/credentials.json` (0600)."""
        credentials = cls(directory / FILE_NAME, {name: secrets.token_urlsafe(24) for name in names})
        credentials.save()
        return credentials

    @classmethod
    def load(cls, directory: Path) -> Credentials | None:
        path = directory / FILE_NAME
        try:
            return cls(path, json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    def save(self) -> None:
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(dict(self.passwords), out, indent=1)
        staging.replace(self.path)

    def with_new(self, names: tuple[str, ...]) -> Credentials:
        """These credentials plus a random password for each of `names` they lack."""
        added = {name: secrets.token_urlsafe(24) for name in names if name not in self.passwords}
        return Credentials(self.path, {**self.passwords, **added})

    def without(self, names: Collection[str]) -> Credentials:
        """These credentials but those of `names`."""
        return Credentials(self.path, {name: pw for name, pw in self.passwords.items() if name not in names})

    def password(self, name: str) -> str:
        try:
            return self.passwords[name]
        except KeyError:
            known = ", ".join(self.passwords)
            raise KeyError(f"no Kafka principal {name!r} in {self.path} (known: {known})") from None

    def access(self, name: str, base: KafkaAccess) -> KafkaAccess:
        """`base` (address, protocol, CA) as principal `name`."""
        return base.as_principal(name, self.password(name))

    def environ(self, name: str) -> dict[str, str]:
        """KAFKA_USERNAME and KAFKA_PASSWORD of principal `name`, for a child process."""
        return {"KAFKA_USERNAME": name, "KAFKA_PASSWORD": self.password(name)}

    def scram_arguments(self, *names: str) -> list[str]:
        """StorageTool's `--add-scram` options creating the users `names`, with salted passwords
        only (the passwords themselves never appear on a command line)."""
        out = []
        for name in names:
            password = self.password(name)
            salt = secrets.token_bytes(24)
            salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, SCRAM_ITERATIONS)
            out += [
                "--add-scram",
                f"SCRAM-SHA-512=[name={name},iterations={SCRAM_ITERATIONS},"
                f'salt="{base64.b64encode(salt).decode()}",saltedpassword="{base64.b64encode(salted).decode()}"]',
            ]
        return out


def running_platform_kafka(data_dir: Path | None = None) -> tuple[Path, int]:
    """The Kafka data directory and client port of the local platform running on this machine
    (on `data_dir` when given, as `./dev up --data-dir` started it; else `./dev up`'s, else the
    demo's); SystemExit in one line when none runs."""
    from deploy.local.datadir import data_root, holder_of, running_platform

    if data_dir is not None:
        if (holder := holder_of(data_dir)) is None:
            raise SystemExit(f"no local platform runs on {data_dir}")
    elif (holder := running_platform()) is None:
        raise SystemExit(
            f"no local platform runs (none holds a data directory under {data_root()}): ./dev up first, "
            "or name the one it was started with (--data-dir)"
        )
    return holder.data_dir / "kafka", holder.ports["Kafka"]


def broker_access(kafka_dir: Path, port: int, name: str = ADMIN) -> KafkaAccess:
    """How principal `name` reaches the local broker whose data is in `kafka_dir`, listening on
    `port` (e.g. a platform that `python -m deploy.local` runs in a test); KeyError when that
    broker has no such principal, FileNotFoundError when it has no credentials."""
    from deploy.local.kafka.tls import tls_dir

    credentials = Credentials.load(kafka_dir)
    if credentials is None:
        raise FileNotFoundError(f"no {FILE_NAME} in {kafka_dir}: that broker's storage predates credentials")
    return credentials.access(name, KafkaAccess(f"127.0.0.1:{port}", "SASL_SSL", ca_file=str(tls_dir() / "ca.pem")))


def local_access(name: str, data_dir: Path | None = None) -> KafkaAccess:
    """How principal `name` reaches the running local platform's broker (the one on `data_dir`
    when given); SystemExit in one line if it cannot."""
    try:
        return broker_access(*running_platform_kafka(data_dir), name)
    except (KeyError, FileNotFoundError) as error:
        raise SystemExit(error.args[0]) from None
