"""The README's run command, as a newcomer runs it: the demo shows an alert raised and
resolved, then stops everything it started."""

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _platform_processes() -> set[int]:
    """Kafka and PostgreSQL of a demo run (their data lives in feo-run-*), and services run by
    this checkout's interpreter (another checkout's test run may have its own at the same time)."""
    return {
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if (cmdline := p.info["cmdline"] or [])
        and any(
            "feo-run-" in part or (part.startswith("services.") and cmdline[0] == sys.executable) for part in cmdline
        )
    }


def test_demo_raises_and_resolves_an_alert_and_leaves_no_process_behind():
    before = _platform_processes()
    result = subprocess.run(
        [sys.executable, "-m", "deploy.local", "demo", "--once"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LOG_FORMAT": "json"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    raised, resolved = output.split("alerts raised on", 1)[1].split("alerts resolved", 1)
    for kind in (
        "equipement-incompatible",
        "equipement-partiel",
        "connectivite-insuffisante",
        "ent-indisponible",
        "formation-insuffisante",
    ):
        count = re.search(rf"^\s+{kind}\s+(\d+)$", raised, re.M)
        assert count and int(count.group(1)) > 0, f"no {kind} raised:\n{raised[:2000]}"
    assert re.search(r"^\s+equipement-partiel\s+[1-9]\d*$", resolved, re.M), resolved[:2000]
    assert "/alertes/flux" in output and '"total":' in output
    leftovers = _platform_processes() - before
    assert leftovers == set(), f"processes left behind: {[psutil.Process(p).cmdline() for p in leftovers]}"
