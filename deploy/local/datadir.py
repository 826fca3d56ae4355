"""Where a local platform keeps Kafka's and PostgreSQL's data, and who is using it.

The root is `$FEO_DATA_DIR`, else `$XDG_DATA_HOME/former-equiper-outiller`, else
`~/.local/share/former-equiper-outiller`; `./dev up` keeps its data in ROOT/platform across
runs, `./dev demo` in ROOT/demo, emptied at each of its starts. A data directory holds
`kafka/` and `postgres/` side by side, so that they are kept, and emptied, together.

A running platform holds an exclusive lock (flock) on DIR/platform.lock, released by the
kernel however the process ends; the file tells who holds it (PID, ports), so that another
platform can say who is in its way rather than start beside it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO


class Refused(Exception):
    """The platform cannot start as asked; the message says why and what to do, in one line."""


def data_root() -> Path:
    if explicit := os.environ.get("FEO_DATA_DIR"):
        return Path(explicit).expanduser().resolve()
    base = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return Path(base).expanduser().resolve() / "former-equiper-outiller"


@dataclass(frozen=True)
class Holder:
    """A platform running on a data directory, as its lock file describes it."""

    pid: int
    data_dir: Path
    ports: dict[str, int]  # what -> port, e.g. {"Kafka": 9092}

    def __str__(self) -> str:
        return f"the platform of PID {self.pid} (data in {self.data_dir})"


class DataDir:
    def __init__(self, path: Path):
        self.path = path.resolve()
        self._lock: IO[str] | None = None

    @property
    def kafka(self) -> Path:
        return self.path / "kafka"

    @property
    def postgres(self) -> Path:
        return self.path / "postgres"

    @property
    def lock_file(self) -> Path:
        return self.path / "platform.lock"

    def lock(self, ports: dict[str, int]) -> None:
        """Take the directory for this process, recording its PID and `ports`; Refused if a
        platform already runs on it."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.lock_file.open("a+")
        if not _taken(lock):
            lock.close()
            holder = holder_of(self.path)
            who = f"the platform of PID {holder.pid}" if holder else "another platform"
            raise Refused(
                f"{self.path} is in use by {who}: two platforms cannot share their storage; "
                "stop that one first, or give this one another directory with --data-dir"
            ) from None
        lock.truncate(0)
        lock.write(json.dumps({"pid": os.getpid(), "ports": ports}))
        lock.flush()
        self._lock = lock

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.truncate(0)  # a platform no longer runs here
            self._lock.close()  # releases the flock
            self._lock = None

    def wipe(self) -> None:
        """Empty Kafka's and PostgreSQL's storage (nothing else in the directory is touched)."""
        assert self._lock is not None, "wipe only a directory this process holds"
        for path in (self.kafka, self.postgres):
            shutil.rmtree(path, ignore_errors=True)


def holder_of(data_dir: Path) -> Holder | None:
    """The platform that runs on `data_dir`, per its lock file (None if none runs there). Its
    lock held, not its PID alive: a platform killed (SIGKILL, a reboot) leaves its PID in the file,
    which another process may have since."""
    try:
        with (data_dir / "platform.lock").open() as lock:
            if not _held(lock):
                return None
            info = json.loads(lock.read() or "null")
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(pid := info.get("pid"), int):
        return None
    return Holder(pid, data_dir, info.get("ports", {}))


def running_platforms(root: Path) -> list[Holder]:
    """Platforms running on data directories under `root` (the default ones among them)."""
    found = (holder_of(lock.parent) for lock in sorted(root.glob("*/platform.lock")))
    return [h for h in found if h is not None and h.pid != os.getpid()]


def running_platform() -> Holder | None:
    """The platform a local tool talks to when none is named: `./dev up`'s if it runs, else
    another under the data root (the demo's), else None."""
    running = sorted(running_platforms(data_root()), key=lambda h: h.data_dir.name != "platform")
    return running[0] if running else None


def _taken(lock: IO[str], patience: float = 0.5) -> bool:
    """This open file's exclusive lock taken; False if another process holds it. A tool looking
    who runs here (`_held`) holds a shared one for an instant: it is waited for, a platform is not."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)


def _held(lock: IO[str]) -> bool:
    """Whether a process holds the exclusive lock of this open file (DataDir.lock)."""
    try:
        fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(lock, fcntl.LOCK_UN)
    return False
