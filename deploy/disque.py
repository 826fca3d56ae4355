"""Files that must be on the disk when a tool says it is done (a backup, GLPI's state)."""

import os
from pathlib import Path


def durable(path: Path) -> None:
    """`path` (a file, or a directory for the names in it) forced to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
