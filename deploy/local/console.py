"""What the local runtime prints, whatever became of its terminal or pipe.

`./dev demo | tee demo.log` then Ctrl-C ends tee as well, and closing the terminal hangs it up:
a write then fails (EPIPE, or EIO on a hung-up terminal). Let through, that error would skip
the rest of the shutdown and leave Kafka, PostgreSQL and the services running. Here the first
failed write points the stream's descriptor at /dev/null: the runtime goes on, silently, and
the interpreter's last flush at exit succeeds as well.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO


def say(message: str) -> None:
    """One line of the runtime's own (`==> message`), on stderr."""
    write(sys.stderr, f"==> {message}\n")


def show(text: str) -> None:
    """Text on stdout: the demo's results, the services' log lines."""
    write(sys.stdout, text)


def write(stream: TextIO, text: str) -> None:
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):  # EPIPE, EIO; ValueError: the stream was closed
        _to_devnull(stream)


def _to_devnull(stream: TextIO) -> None:
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return  # not backed by a descriptor (a test's capture): nothing to redirect
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
