"""`./dev up` and `./dev demo`: the whole platform on this machine.

    python -m deploy.local up            Kafka, PostgreSQL and the four services, until stopped
    python -m deploy.local up --fresh    ... from empty storage
    python -m deploy.local demo          the same from empty storage, then a scenario and its alerts
    python -m deploy.local demo --once   ... and stop once the scenario is over (CI, scripts)

Data: `up` keeps Kafka's and PostgreSQL's data across runs in ROOT/platform; `demo` uses
ROOT/demo, emptied when it starts (its scenario expects an empty platform) and kept after it
ends. ROOT is $FEO_DATA_DIR, else $XDG_DATA_HOME/former-equiper-outiller, else
~/.local/share/former-equiper-outiller. With DATABASE_URL, the database it names (created if
missing) replaces the embedded PostgreSQL; it must go with the Kafka kept in the data directory.

Ports: Kafka 9092, the embedded PostgreSQL 5432, the services' HTTP 8000 (ressources, its read
API), 8001 (formation), 8002 (equipement), 8003 (the passerelle, HTTP ingestion). A port in use
is refused, never replaced by another.

Ctrl-C, SIGTERM and SIGHUP (the terminal closed) stop everything, whatever became of the output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from deploy.local.console import say
from deploy.local.datadir import DataDir, Refused, data_root
from deploy.local.demo import play
from deploy.local.kafka import KafkaRuntimeError
from deploy.local.platform import Platform, Ports
from deploy.local.postgres import PostgresRuntimeError
from deploy.topology import Retention
from services.common.runtime.secrets import redact

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stop(KeyboardInterrupt):
    """A request to stop: SIGINT (Ctrl-C), SIGTERM or SIGHUP (the terminal closed)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopOnSignals:
    """Each stop signal raises Stop in the main thread, wherever it is, once: a signal that
    comes while the platform stops is only noted, so the stop runs to its end."""

    def __init__(self) -> None:
        self.stopping = False
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            say(f"{signal.Signals(signum).name}: already stopping")
            return
        self.stopping = True
        raise Stop(signum)


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (1-65535)")
    return int(value)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("up", "demo"))
    parser.add_argument("--once", action="store_true", help="demo: stop when the scenario is over")
    parser.add_argument("--fresh", action="store_true", help="up: empty Kafka's and PostgreSQL's storage first")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"where Kafka's and PostgreSQL's data live (default: {data_root()}/platform; the demo's: .../demo)",
    )
    parser.add_argument("--no-services", action="store_true", help="up: Kafka and PostgreSQL only")
    parser.add_argument(
        "--brokers",
        type=int,
        choices=(1, 3),
        default=1,
        help="up: Kafka nodes; 3: a cluster, every topic on three with two in sync for a write (--fresh "
        "to switch an existing data dir from one to the other)",
    )
    defaults = Ports()
    for name, env, what in (
        ("kafka", "KAFKA_PORT", "Kafka's port"),
        ("postgres", "POSTGRES_PORT", "the embedded PostgreSQL's port"),
        ("http", "HTTP_PORT", "ressources' HTTP port, formation, equipement and the passerelle on the next three"),
    ):
        default = getattr(defaults, name)
        parser.add_argument(
            f"--{name}-port", type=_port, default=os.environ.get(env, str(default)), help=f"{what} (${env}, {default})"
        )
    args = parser.parse_args(argv)
    if args.command == "up" and args.once:
        parser.error("--once is for demo: up runs until stopped")
    if args.command == "demo" and args.no_services:
        parser.error("--no-services is for up: the demo needs the services")
    return args


def settings_problems(environ: dict[str, str]) -> list[str]:
    """What the services would refuse in this environment, checked before anything starts
    (one line per problem naming the variable). The runtime gives them Kafka's access itself."""
    from deploy.acl import dashboards_problems
    from services.common.messaging.connection import VARIABLES
    from services.common.runtime.settings import check_environment
    from services.specs import specs

    given = {name: value for name, value in environ.items() if name not in VARIABLES.values()}
    problems = check_environment(given, [spec.settings for spec in specs()], kafka="none") + Retention.problems(environ)
    return problems + dashboards_problems(environ)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    from services.common.runtime.settings import ignored
    from services.specs import misspelled_settings

    for found in misspelled_settings(os.environ, tools=True):  # first: it may be why a setting is refused
        say(f"warning: {ignored(*found)}")
    if problems := settings_problems(dict(os.environ)):
        for problem in problems:
            say(f"error: {problem}")
        return 2
    demo = args.command == "demo"
    data = DataDir(args.data_dir or data_root() / ("demo" if demo else "platform"))
    platform = Platform(
        data,
        Ports(args.kafka_port, args.postgres_port, args.http_port),
        fresh=args.fresh or demo,
        services=not args.no_services,
        brokers=args.brokers,
        # The demo's story is in its own lines; the services' per-event logs would bury it
        # (LOG_LEVEL=INFO ./dev demo shows them).
        log_level="WARNING" if demo else "INFO",
    )
    signals = StopOnSignals()
    running = False  # up, and the demo's scenario over: a signal is then the normal end
    try:
        platform.start()
        if demo:
            asyncio.run(play(platform))
        running = True
        if not (demo and args.once):
            say("running; Ctrl-C stops everything")
            while True:
                time.sleep(3600)
        return 0
    except Stop as stop:
        return 0 if running else 128 + stop.signum
    except Refused as refused:
        say(f"error: {refused}")
        return 2
    except (KafkaRuntimeError, PostgresRuntimeError, RuntimeError, TimeoutError) as error:
        say(f"error: {error}")
        return 1
    except (OSError, subprocess.CalledProcessError) as error:  # a directory not writable, the disk full
        say(f"error: {redact(str(error)) or type(error).__name__}")
        return 1
    finally:
        signals.stopping = True
        platform.stop()


if __name__ == "__main__":
    sys.exit(main())
