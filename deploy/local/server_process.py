"""One local server run as a child process: started, awaited, stopped, never left behind.

Kafka and PostgreSQL differ in how they are configured and in how they tell they are ready;
the rest is the same and lives here. The child gets a session of its own, so a Ctrl-C in the
terminal reaches only the caller, who decides when to stop it; its output is appended to a log
file whose last lines explain a failed start; a start that fails (the child exits, the
deadline passes, Ctrl-C) stops the child before the error goes up; `stop()` escalates to
SIGKILL for the whole process group, so no child of the server outlives it either; and the
server is sent its stop signal should the caller end without stopping it (`children.py`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy.local.children import die_with_parent

STOP_GRACE_SECONDS = 20
LOG_TAIL_LINES = 40


def require_tool(tool: str, why: str, error: type[Exception]) -> str:
    """The path of `tool` on PATH, or `error` saying why it is needed."""
    path = shutil.which(tool)
    if path is None:
        raise error(f"`{tool}` was not found on PATH; {why}")
    return path


def run_tool(argv: list[str], failure: str, error: type[Exception], **popen: Any) -> None:
    """Run a one-off command (format, initdb) to completion; `error` with its output if it fails."""
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, **popen)
    if result.returncode != 0:
        raise error(f"{failure} (exit {result.returncode}):\n{(result.stdout + result.stderr).strip()}")


class ServerProcess:
    """A server named `name` (for messages), its output in `log_file`.

    `stop_signal` asks the server to stop (SIGTERM; PostgreSQL's fast shutdown is SIGINT);
    `log_noise` are prefixes of log lines left out of the tail shown in errors.
    """

    def __init__(
        self,
        name: str,
        log_file: Path,
        error: type[Exception],
        *,
        stop_signal: signal.Signals = signal.SIGTERM,
        log_noise: tuple[str, ...] = (),
    ):
        self.name = name
        self.log_file = log_file
        self.error = error
        self.stop_signal = stop_signal
        self.log_noise = log_noise
        self._process: subprocess.Popen[bytes] | None = None
        self._ready: tuple[Callable[[], bool], str, float, float] = (lambda: True, "", 0.0, 0.0)

    @property
    def pid(self) -> int | None:
        """The server's pid; None before start() and after stop()."""
        return self._process.pid if self._process else None

    def start(
        self,
        argv: list[str],
        *,
        ready: Callable[[], bool],
        not_ready: str,
        timeout: float,
        poll_seconds: float,
        wait: bool = True,
        **popen: Any,
    ) -> None:
        """Start `argv` and return once `ready()` is true, polled every `poll_seconds`
        (`wait=False`: at once, `wait_ready` waits; several servers then start together).

        `not_ready` completes "<name> ... in time" when `timeout` passes first.
        """
        if self._process is not None:
            raise self.error(f"{self.name} is already started")
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(self.stop_signal),
                **popen,
            )
        self._ready = (ready, not_ready, time.monotonic() + timeout, poll_seconds)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Return once the server started by `start` answers (stopped, and raised, if it does not)."""
        try:
            self._wait_until_ready(*self._ready)
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL to its process group, at once (a crash); it can be started again."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """`stop_signal`, then SIGKILL to its whole process group after `grace` seconds."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(self.stop_signal)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            # Not reaped yet, so the group is still the server's own, children included.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except BaseException:  # interrupted meanwhile (Ctrl-C): no server left behind, stuck or not
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            raise

    def wait(self) -> int:
        """Block until the server exits by itself; return its exit code."""
        if self._process is None:
            raise self.error(f"{self.name} is not started")
        return self._process.wait()

    def log_tail(self) -> str:
        lines = [
            line
            for line in self.log_file.read_text(errors="replace").splitlines()
            if not line.lstrip().startswith(self.log_noise)
        ]
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty)"

    def _wait_until_ready(
        self, ready: Callable[[], bool], not_ready: str, deadline: float, poll_seconds: float
    ) -> None:
        assert self._process is not None
        while True:
            if (code := self._process.poll()) is not None:
                raise self._failure(f"exited with code {code} while starting")
            if ready():
                return
            if time.monotonic() > deadline:
                raise self._failure(f"{not_ready} in time")
            time.sleep(poll_seconds)

    def _failure(self, what: str) -> Exception:
        return self.error(f"{self.name} {what}; last lines of {self.log_file}:\n{self.log_tail()}")
