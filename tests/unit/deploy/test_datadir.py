"""Who runs on a data directory: the holder of its lock (deploy/local/datadir.py), not whichever
process has the PID its lock file names."""

import fcntl
import json
import subprocess
import threading
from pathlib import Path

from deploy.local.datadir import DataDir, holder_of, running_platforms
from helpers import platform_on


def test_a_platform_killed_leaves_its_pid_which_another_process_has_since(tmp_path: Path) -> None:
    """Its lock file names a PID alive (here a `sleep` stands for the process that got the PID
    after a reboot), but nothing holds the lock: no platform runs there."""
    stale = tmp_path / "demo"
    stale.mkdir()
    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            (stale / "platform.lock").write_text(json.dumps({"pid": other.pid, "ports": {"Kafka": 9092}}))
            assert holder_of(stale) is None
            assert running_platforms(tmp_path) == []
        finally:
            other.kill()


def test_the_process_holding_the_lock_is_the_platform_there(tmp_path: Path) -> None:
    data = tmp_path / "platform"
    with platform_on(data, kafka_port=19092) as pid:
        holder = holder_of(data)
        assert holder is not None and (holder.pid, holder.ports) == (pid, {"Kafka": 19092})
        assert [h.pid for h in running_platforms(tmp_path)] == [pid]
    assert holder_of(data) is None, "killed: its lock released by the kernel, its PID still in the file"


def test_a_tool_looking_who_runs_there_does_not_make_a_start_refused(tmp_path: Path) -> None:
    """A tool's look (a shared lock for an instant) at the moment a platform starts there: the
    start waits for it rather than say the directory is in use."""
    tmp_path.joinpath("platform.lock").touch()
    with tmp_path.joinpath("platform.lock").open() as looking:
        fcntl.flock(looking, fcntl.LOCK_SH)
        released = threading.Timer(0.1, fcntl.flock, (looking, fcntl.LOCK_UN))
        released.start()
        try:
            DataDir(tmp_path).lock({})
        finally:
            released.join()
