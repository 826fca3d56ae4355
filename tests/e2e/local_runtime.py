"""`python -m deploy.local` as a real process for the tests of `./dev up` and `./dev demo`: on
free ports and in a temporary data directory, never on the defaults a developer's own platform
uses; its output read as it comes (through a pipe, or a terminal the test can close)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import shutil
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from deploy.local.ports import free_port, port_free

ROOT = Path(__file__).resolve().parents[2]


def runtime_ports() -> list[str]:
    """Options giving a run free ports: Kafka, PostgreSQL, and four in a row for the services."""
    while True:
        http = free_port()
        if http < 65532 and all(port_free(http + n) for n in (1, 2, 3)):
            break
    return ["--kafka-port", str(free_port()), "--postgres-port", str(free_port()), "--http-port", str(http)]


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary directory for a run's data. Not under pytest's basetemp: each pytest session
    resets its parent to mode 0700, locking the embedded PostgreSQL's system user out of it."""
    path = Path(tempfile.mkdtemp(prefix="feo-test-runtime-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def runtime_env(env: dict[str, str]) -> dict[str, str]:
    """This environment with `env`, and DATABASE_URL and KAFKA_* only if `env` gives them (else
    the run would use the servers of the test session instead of its own)."""
    inherited = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("KAFKA_")}
    return {**inherited, "LOG_FORMAT": "json", **env}


class Runtime:
    """One run of `python -m deploy.local ARGS`, stdout and stderr together, read as they come:
    through a pipe, or a terminal (`terminal=True`) that is then the run's controlling one."""

    def __init__(self, *args: str, env: dict[str, str], terminal: bool = False):
        command = [sys.executable, "-m", "deploy.local", *args]
        full_env = runtime_env(env)
        self._output: list[bytes] = []
        self._closing = threading.Event()
        if terminal:
            self._fd, child_end = pty.openpty()
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=full_env,
                stdin=child_end,
                stdout=child_end,
                stderr=child_end,
                start_new_session=True,
                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
            )
            os.close(child_end)
        else:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            assert self.process.stdout is not None
            self._fd = self.process.stdout.fileno()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            if not select.select([self._fd], [], [], 0.1)[0]:
                continue
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:  # EIO: the run's side of the terminal is closed
                return
            if not chunk:
                return
            self._output.append(chunk)

    @property
    def output(self) -> str:
        return b"".join(self._output).decode(errors="replace")

    def wait_for(self, text: str, timeout: float = 180) -> None:
        """Until `text` is in the output; fails at once if the run ends first."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.process.poll() is None, f"exited with {self.process.returncode} before {text!r}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.output[-3000:]}"
            time.sleep(0.1)

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def close_output(self) -> None:
        """Close our end: a pipe then breaks (EPIPE), a terminal hangs up (SIGHUP, then EIO)."""
        self._closing.set()
        self._reader.join()  # not reading any more: the close is then the last reference
        if self.process.stdout is not None:
            self.process.stdout.close()
        else:
            os.close(self._fd)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"still running {timeout} s later:\n{self.output[-3000:]}") from None

    def stop(self) -> None:
        """What a test leaves running: SIGKILL, the platform's children then stop by themselves."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
