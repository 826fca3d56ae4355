"""`./dev up`'s supervisor (ServiceProcesses(supervise=True)) with a tiny fake service: a real
process that fails its first runs, then serves /health until told to exit."""

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deploy.local.processes import ServiceProcesses

FAKE = textwrap.dedent("""
    import http.server, os, sys, threading, time
    from pathlib import Path
    state = Path(sys.argv[1])
    runs = state / "runs"
    n = int(runs.read_text()) + 1 if runs.exists() else 1
    (state / "runs.tmp").write_text(str(n))
    os.replace(state / "runs.tmp", runs)  # the test reads it meanwhile
    if n <= int(os.environ.get("FAKE_FAILS", "0")):
        sys.exit(1)
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", int(os.environ["HTTP_PORT"])), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    die = state / "die"
    while not die.exists():
        time.sleep(0.02)
    die.unlink()
    sys.exit(2)
""")


class Fake:
    def __init__(self, tmp_path: Path, **options):
        self.state = tmp_path
        script = tmp_path / "fake_service.py"
        script.write_text(FAKE)
        self.said: list[str] = []
        self.procs = ServiceProcesses(
            {"FAKE_FAILS": str(options.pop("fails", 0))},
            log_dir=tmp_path,
            names=("svc",),
            command=lambda name: [sys.executable, str(script), str(tmp_path)],
            announce=self.said.append,
            **options,
        )

    @property
    def runs(self) -> int:
        path = self.state / "runs"
        return int(path.read_text()) if path.exists() else 0

    def make_it_exit(self) -> None:
        (self.state / "die").touch()

    def wait(self, condition, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"{what}; announced: {self.said}"
            time.sleep(0.05)

    def passes(self, n: int) -> None:
        """Until the supervisor looked at the services `n` more times."""
        target = self.procs.supervision_passes + n
        self.wait(lambda: self.procs.supervision_passes >= target, f"{n} supervision passes")


@pytest.fixture
def fake(tmp_path):
    made = []

    def make(**options) -> Fake:
        made.append(Fake(tmp_path, **options))
        return made[-1]

    yield make
    for f in made:
        pids = f.procs.pids()
        f.procs.stop()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def test_a_service_that_exits_is_restarted_with_a_doubling_delay_up_to_the_cap(fake):
    f = fake(supervise=True, backoff=(0.1, 0.3), fails=4)
    f.procs.start()
    f.procs.wait_healthy(timeout=30)
    assert f.runs == 5
    f.wait(lambda: len(f.said) == 5, "the healthy line")
    assert f.said == [
        "svc exited with code 1; restarting in 0.1 s (attempt 1)",
        "svc exited with code 1; restarting in 0.2 s (attempt 2)",
        "svc exited with code 1; restarting in 0.3 s (attempt 3)",
        "svc exited with code 1; restarting in 0.3 s (attempt 4)",
        "svc healthy again (attempt 4)",
    ]


def test_the_delay_starts_over_once_the_service_has_been_healthy_for_a_while(fake):
    # Healthy for 8 s resets: a stall of the test between a restart and the next exit is not one
    # (audit helper-189 #13: 3 s).
    f = fake(supervise=True, backoff=(0.1, 10), healthy_reset=8)
    f.procs.start()
    f.procs.wait_healthy()
    f.make_it_exit()
    f.wait(lambda: f.runs == 2 and f.procs.health("svc"), "the first restart")
    f.make_it_exit()  # healthy for less than 8 s: the delay doubles
    f.wait(lambda: f.runs == 3 and f.procs.health("svc"), "the second restart")
    f.wait(lambda: f.procs.attempts("svc") == 0, "the reset after 8 s healthy", timeout=30)
    f.make_it_exit()
    f.wait(lambda: f.runs == 4 and f.procs.health("svc"), "the third restart")
    assert [line for line in f.said if "exited" in line] == [
        "svc exited with code 2; restarting in 0.1 s (attempt 1)",
        "svc exited with code 2; restarting in 0.2 s (attempt 2)",
        "svc exited with code 2; restarting in 0.1 s (attempt 1)",
    ]


def test_a_deliberate_kill_is_not_undone_and_stop_restarts_nothing(fake):
    f = fake(supervise=True, backoff=(0.1, 0.1))
    f.procs.start()
    f.procs.wait_healthy()
    f.procs.kill("svc")
    f.passes(3)
    assert f.runs == 1 and f.said == [] and f.procs.pids() == []
    f.procs.restart("svc")
    f.procs.wait_healthy()
    assert f.runs == 2
    f.procs.stop()
    assert f.said == [] and f.procs.pids() == []


def test_without_supervision_an_exit_stays_an_exit(fake):
    f = fake(fails=1)
    f.procs.start()
    with pytest.raises(RuntimeError, match="exited with code 1"):
        f.procs.wait_healthy(timeout=20)
    assert f.runs == 1 and f.said == []
