"""The three services as real processes (`python -m services.<name>`), as in production.

Used by `./dev up`, `./dev demo` and the end-to-end tests. Each process gets its settings
from the environment; its log lines are either shown prefixed by its name or written to a
file. `stop()` leaves no process behind: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from deploy.local.ports import free_ports

SERVICES = ("formation", "equipement", "ressources")
STOP_GRACE_SECONDS = 15


class ServiceProcesses:
    def __init__(self, env: dict[str, str], *, log_dir: Path | None = None, names: tuple[str, ...] = SERVICES):
        self.names = names
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self._env = env
        self._log_dir = log_dir
        self._procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        for name in self.names:
            env = {**os.environ, **self._env, "HTTP_PORT": str(self.ports[name]), "PYTHONUNBUFFERED": "1"}
            if self._log_dir is not None:
                out = (self._log_dir / f"{name}.log").open("ab")
            else:
                out = subprocess.PIPE
            proc = subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            self._procs[name] = proc
            if out is subprocess.PIPE:
                threading.Thread(target=_pump, args=(name, proc), daemon=True).start()

    def health(self, name: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.names)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                if self._procs[name].poll() is not None:
                    raise RuntimeError(f"service {name} exited with code {self._procs[name].returncode}{self._tail(name)}")
                if self.health(name):
                    pending.discard(name)
            time.sleep(0.2)
        if pending:
            raise RuntimeError(f"services not healthy after {timeout}s: {', '.join(sorted(pending))}")

    def kill(self, name: str) -> None:
        """SIGKILL one service: what a crash looks like to the platform."""
        proc = self._procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def restart(self, name: str) -> None:
        names, self.names = self.names, (name,)
        try:
            self.start()
        finally:
            self.names = names

    def stop(self) -> None:
        procs, self._procs = self._procs, {}
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

    def _tail(self, name: str) -> str:
        if self._log_dir is None:
            return ""
        lines = (self._log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-30:]
        return ":\n" + "\n".join(lines)


def _pump(name: str, proc: subprocess.Popen) -> None:
    width = max(len(n) for n in SERVICES)
    for line in iter(proc.stdout.readline, b""):
        sys.stdout.write(f"{name:>{width}} | {line.decode(errors='replace')}")
        sys.stdout.flush()
