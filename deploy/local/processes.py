"""The services as real processes (`python -m services.<name>`), as in production.

Used by `./dev up`, `./dev demo` and the end-to-end tests. Each process gets its settings
from the environment, its HTTP port from `ports` (free ones by default) and, given the
broker's `credentials`, its own Kafka principal (KAFKA_USERNAME and KAFKA_PASSWORD: the
service's name and its password); its log lines are
either shown prefixed by its name or written to a file. `stop()` leaves no process behind:
SIGTERM, then SIGKILL after a grace period; a service also gets SIGTERM should this process end
without stopping it (`children.py`).

With `supervise=True` (`./dev up` and `./dev demo`) a service that exits by itself is started
again, like a process supervisor would: after a delay that doubles from `backoff[0]` up to
`backoff[1]` seconds, reset once the service has been healthy for `healthy_reset` seconds,
each restart announced (`==> equipement exited with code 1; restarting in 4 s (attempt 3)`).
`kill(name)` is deliberate and never undone; `stop()` ends supervision first. Tests that
kill and restart a service themselves leave supervision off (the default).
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from deploy.local.children import die_with_parent
from deploy.local.console import say, show
from deploy.local.kafka.credentials import Credentials
from deploy.local.ports import free_ports

SERVICES = ("formation", "equipement", "ressources", "passerelle")
STOP_GRACE_SECONDS = 15
RESTART_BACKOFF = (1.0, 30.0)
HEALTHY_RESET_SECONDS = 30.0
SUPERVISION_PERIOD = 0.2
HEALTH_CHECK_PERIOD = 1.0


def service_command(name: str) -> list[str]:
    return [sys.executable, "-m", f"services.{name}"]


@dataclass
class _Restarts:
    attempts: int = 0
    due: float | None = None  # when the pending restart starts (monotonic), None when running
    healthy_since: float | None = None
    announced_healthy: bool = True


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exited with code {code}"


class ServiceProcesses:
    def __init__(
        self,
        env: dict[str, str],
        *,
        log_dir: Path | None = None,
        names: tuple[str, ...] = SERVICES,
        ports: dict[str, int] | None = None,
        supervise: bool = False,
        backoff: tuple[float, float] = RESTART_BACKOFF,
        healthy_reset: float = HEALTHY_RESET_SECONDS,
        command: Callable[[str], list[str]] = service_command,
        announce: Callable[[str], None] = say,
        credentials: Credentials | None = None,
        instance: str | None = None,
    ):
        self.names = names
        self._instance = instance  # each service's CONSUMER_INSTANCE_ID: `{name}-{instance}`
        self.ports = ports or dict(zip(names, free_ports(len(names)), strict=True))
        self._env = env
        self._log_dir = log_dir
        self._procs: dict[str, subprocess.Popen] = {}
        self._supervise = supervise
        self._backoff = backoff
        self._healthy_reset = healthy_reset
        self._command = command
        self._announce = announce
        self._credentials = credentials
        self._restarts: dict[str, _Restarts] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.supervision_passes = 0
        """How many times the supervisor looked at every service (tests wait on it)."""

    def start(self) -> None:
        with self._lock:
            for name in self.names:
                self._spawn(name)
        if self._supervise and self._supervisor is None:
            self._stopping.clear()
            self._supervisor = threading.Thread(target=self._supervise_loop, name="supervisor", daemon=True)
            self._supervisor.start()

    def _spawn(self, name: str) -> None:
        env = {**os.environ, **self._env, "HTTP_PORT": str(self.ports[name]), "PYTHONUNBUFFERED": "1"}
        if self._credentials is not None:
            env |= self._credentials.environ(name)
        if self._instance is not None:
            env["CONSUMER_INSTANCE_ID"] = f"{name}-{self._instance}"
        out: BinaryIO | int = (
            (self._log_dir / f"{name}.log").open("ab") if self._log_dir is not None else subprocess.PIPE
        )
        try:
            proc = subprocess.Popen(
                self._command(name),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        finally:
            if not isinstance(out, int):
                out.close()  # the child has its own descriptor
        self._procs[name] = proc
        if out is subprocess.PIPE:
            width = max(len(n) for n in (*SERVICES, *self.ports))
            threading.Thread(target=_pump, args=(name, proc, width), daemon=True).start()

    def health(self, name: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            # Not an HTTP answer (a service still starting, or another program on the port):
            # not healthy yet, rather than an exception that ended `./dev up` (BadStatusLine).
            return False

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until every service answers /health with 200. Without supervision a service that
        exits fails the wait at once; with it, the wait goes on through its restarts."""
        deadline = time.monotonic() + timeout
        pending = set(self.names)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                proc = self._procs.get(name)
                if proc is None:
                    continue  # a restart is due
                if proc.poll() is not None and not self._supervise:
                    raise RuntimeError(f"service {name} exited with code {proc.returncode}{self._tail(name)}")
                if self.health(name):
                    pending.discard(name)
            time.sleep(0.2)
        if pending:
            raise RuntimeError(f"services not healthy after {timeout}s: {', '.join(sorted(pending))}")

    def process(self, name: str) -> subprocess.Popen:
        """The service's current process (KeyError while a restart is due)."""
        return self._procs[name]

    def wait_exit(self, name: str, timeout: float) -> int:
        """The exit code of the service's process once it ends by itself (TimeoutExpired if not)."""
        return self._procs[name].wait(timeout)

    def attempts(self, name: str) -> int:
        """Restarts since the service was last healthy for `healthy_reset` seconds."""
        with self._lock:
            return self._restarts.get(name, _Restarts()).attempts

    def kill(self, name: str) -> None:
        """SIGKILL one service: what a crash looks like to the platform. Never restarted by the
        supervisor: the caller decides (`restart`)."""
        with self._lock:
            proc = self._procs.pop(name, None)
            pending = self._restarts.pop(name, None)
        if proc is None:
            if pending is None:
                raise KeyError(name)
            return  # it had exited, and its restart is now cancelled
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def restart(self, name: str) -> None:
        with self._lock:
            self._restarts.pop(name, None)
            self._spawn(name)

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        with self._lock:
            procs, self._procs = self._procs, {}
            self._restarts.clear()
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for proc in procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values()]

    def _supervise_loop(self) -> None:
        last_health_check = 0.0
        while not self._stopping.wait(SUPERVISION_PERIOD):
            now = time.monotonic()
            with self._lock:
                self._restart_exited(now)
            if now - last_health_check >= HEALTH_CHECK_PERIOD:
                last_health_check = now
                self._note_health()
            self.supervision_passes += 1

    def _restart_exited(self, now: float) -> None:
        for name, proc in list(self._procs.items()):
            if (code := proc.poll()) is None:
                continue
            state = self._restarts.setdefault(name, _Restarts())
            state.attempts += 1
            delay = min(self._backoff[1], self._backoff[0] * 2 ** (state.attempts - 1))
            state.due, state.healthy_since, state.announced_healthy = now + delay, None, False
            del self._procs[name]
            self._announce(f"{name} {_how(code)}; restarting in {delay:g} s (attempt {state.attempts})")
        for name, state in self._restarts.items():
            if state.due is not None and state.due <= now and name not in self._procs:
                state.due = None
                self._spawn(name)

    def _note_health(self) -> None:
        """Resets the backoff of a service healthy for `healthy_reset` seconds; says when a
        restarted service is healthy again. HTTP calls outside the lock: kill() must not wait."""
        with self._lock:
            watched = [n for n, s in self._restarts.items() if s.due is None and s.attempts and n in self._procs]
        for name in watched:
            healthy = self.health(name)
            now = time.monotonic()
            with self._lock:
                state = self._restarts.get(name)
                if state is None or state.due is not None:
                    continue  # killed, or exited again, meanwhile
                if not healthy:
                    state.healthy_since = None
                    continue
                if not state.announced_healthy:
                    state.announced_healthy = True
                    self._announce(f"{name} healthy again (attempt {state.attempts})")
                state.healthy_since = state.healthy_since or now
                if now - state.healthy_since >= self._healthy_reset:
                    state.attempts = 0

    def _tail(self, name: str) -> str:
        if self._log_dir is None:
            return ""
        lines = (self._log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-30:]
        return ":\n" + "\n".join(lines)


def _pump(name: str, proc: subprocess.Popen, width: int) -> None:
    """Every line of the service to stdout, to its end: a service whose output is no longer
    read would block on its next log line, and with it its shutdown."""
    assert proc.stdout is not None, "started with stdout=PIPE"
    for line in iter(proc.stdout.readline, b""):
        show(f"{name:>{width}} | {line.decode(errors='replace')}")
