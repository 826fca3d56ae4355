"""Children that do not outlive the process that started them, even when it is killed (Linux).

Between fork and exec, each child asks the kernel for a signal when its parent ends (prctl
PR_SET_PDEATHSIG). The signal is the child's own stop request, so a server still shuts down
cleanly: Kafka flushes its logs, PostgreSQL does a fast shutdown. A `./dev up` killed with
SIGKILL (or by the OOM killer) thus leaves no Kafka, PostgreSQL or service behind. Elsewhere
than Linux there is no such request and this does nothing.

The kernel's parent is the thread that started the child: start children from a thread that
lives as long as they should (the main thread; the supervisor's thread for restarts).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(stop_signal: signal.Signals) -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess.Popen that sends `stop_signal` to the child when this process ends."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(stop_signal))
        if os.getppid() != parent:  # the parent ended before the request: no signal will come
            os._exit(1)

    return preexec
