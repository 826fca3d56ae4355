"""The README's examples, run as written: every ```bash block of the sections a partner, a
dashboard developer and an operator follow, in order, against `./dev up` started as the README
says (on free ports and a scratch data directory, given to the examples the documented way:
KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, and the URLs' ports), each block's output checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import still_running
from local_runtime import ROOT, Runtime, runtime_ports, scratch_dir

SECTIONS = ("Publishing as a partner", "Subscribing as a dashboard", "The read API for dashboards")


def readme_blocks() -> list[str]:
    """The ```bash blocks of SECTIONS, in the README's order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = []
    for section in re.split(r"^## ", text, flags=re.M):
        title = section.splitlines()[0] if section else ""
        if title in SECTIONS:
            blocks += re.findall(r"^```bash\n(.*?)^```$", section, flags=re.M | re.S)
    return blocks


def _lines_json(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _dlq_reason(out: str) -> bool:
    records = _lines_json(out)
    return any(
        r["key"] == "0350042F"
        and ["dlq-reason", "hors-competence"] in r["headers"]
        and any(h[0] == "dlq-message" and h[1] for h in r["headers"])
        and r["value"]["id"] == "inv-2026-09-01-0002"
        for r in records
    )


def _etablissement(out: str) -> bool:
    page = json.loads(out)
    return "iPadOS 12.5 < 15" in out and "tablettes-6e" in out and "manuel-svt-c4" in json.dumps(page)


# What each block must print, found by a piece of its text; a block that only writes must exit 0
# and say where its records went. A block that reads what the platform derives is run again
# until it shows it (the platform works in its own time), within a deadline.
CHECKS: dict[str, Callable[[str], bool]] = {
    "deploy.referentiel load": lambda out: "loaded 997" in out or re.search(r"loaded \d{3}", out) is not None,
    "kafka produce": lambda out: " partition " in out and " offset " in out,
    "curl -s http://127.0.0.1:8000/etablissements/0350003N": _etablissement,
    "consume equipement.declarations.v1.dlq": lambda out: (
        _dlq_reason(out)
        and re.search(r"hors-competence .*source=/collectivites/departements/035 .*id=inv-2026-09-01-0002", out)
        is not None
    ),
    "from kafka import KafkaConsumer": lambda out: (
        re.search(r"alerte-levee\.v1 equipement-incompatible 0350003N .*iPadOS 12\.5 < 15", out, re.M) is not None
    ),
    "/alertes?code_departement=035": lambda out: (
        '"kind":"equipement-incompatible"' in out.replace(" ", "") and "event: alerte-levee" in out
    ),
}
READS = ("curl", "consume", "from kafka import", "dead-letters")


def _check_for(block: str) -> Callable[[str], bool]:
    found = [check for piece, check in CHECKS.items() if piece in block]
    assert found, f"no check for this README block (add one to CHECKS):\n{block}"
    return found[0]


@pytest.fixture(scope="module")
def platform():
    with scratch_dir() as data:
        ports = runtime_ports()
        run = Runtime("up", "--data-dir", str(data), *ports, env={})
        try:
            run.wait_for("services healthy")
            kafka, postgres, http = (int(ports[i]) for i in (1, 3, 5))
            yield {"kafka": kafka, "postgres": postgres, "http": http}
        finally:
            children = [p.pid for p in run.descendants()]
            run.process.send_signal(2)
            assert run.wait(60) == 0, run.output[-3000:]
            assert not still_running(children)


def test_readme_examples_work_as_written(platform):
    blocks = readme_blocks()
    assert len(blocks) >= 6, "the README's partner, dashboard and API examples"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{platform['kafka']}",
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{platform['postgres']}/former_equiper_outiller",
    }
    env.pop("TOPIC_PREFIX", None)
    for block in blocks:
        script = block.replace("127.0.0.1:9092", env["KAFKA_BOOTSTRAP_SERVERS"]).replace(
            "127.0.0.1:8000", f"127.0.0.1:{platform['http']}"
        )
        check = _check_for(block)
        deadline = time.monotonic() + (90 if any(r in block for r in READS) else 0)
        while True:
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            output = done.stdout + done.stderr
            # curl --max-time ends a live stream with 28: the example's way to stop following.
            ok = done.returncode == 0 or (done.returncode == 28 and "--max-time" in block)
            if ok and check(output):
                break
            assert time.monotonic() < deadline, f"README block failed (exit {done.returncode}):\n{block}\n---\n{output}"
            time.sleep(1)


def test_every_section_still_has_its_examples():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f"\n## {section}\n" in text, f"README section {section!r} is checked by this test"
    assert Path(ROOT / "../shared/data/annuaire-education-ille-et-vilaine-2023.csv").exists()
