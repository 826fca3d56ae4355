"""The local broker alone, in the foreground, for poking at it by hand.

python -m deploy.local.kafka --data-dir DIR [--port PORT]   # until Ctrl-C
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from deploy.local.console import show
from deploy.local.kafka import KAFKA_VERSION, KafkaRuntimeError, LocalKafka


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.kafka", description="Run the local Kafka broker in the foreground until Ctrl-C."
    )
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="broker data, server.properties and kafka.log (reused if present)"
    )
    parser.add_argument("--port", type=int, default=None, help="client port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args()
    # SIGTERM and SIGHUP (the terminal closed) take the same path as Ctrl-C, so the broker is
    # never left behind.
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, signal.default_int_handler)
    kafka = LocalKafka(args.data_dir, args.port)
    try:
        kafka.start()
        show(f"Kafka {KAFKA_VERSION} ready on {kafka.bootstrap_servers} (log: {kafka.log_file}); Ctrl-C to stop\n")
        code = kafka.wait()
        sys.exit(f"Kafka exited on its own with code {code}; see {kafka.log_file}")
    except KeyboardInterrupt:
        pass
    except KafkaRuntimeError as error:
        sys.exit(f"error: {error}")
    finally:
        kafka.stop()


if __name__ == "__main__":
    main()
