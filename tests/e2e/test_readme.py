"""The README's examples, run as written: every ```bash block of the sections a partner, a
dashboard developer and an operator follow, in order, against `./dev up` started as the README
says (on free ports and a scratch data directory, given to the examples the documented way:
FEO_DATA_DIR, where `./dev credentials` and `./dev token` find the running platform,
DATABASE_URL, and the URLs' ports), each block's output checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from deploy.local.ports import port_free
from helpers import still_running
from local_runtime import ROOT, Runtime, runtime_ports, scratch_dir

SECTIONS = ("Publishing as a partner", "Subscribing as a dashboard", "The read API for dashboards")
README_PORTS = {"ressources": 8000, "passerelle": 8003}  # ./dev up's: ressources on HTTP_PORT, passerelle +3


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


def _answer(out: str, status: int) -> list[dict] | None:
    """The passerelle's per-event results if curl's output (its body, then `-w '\\nHTTP %{http_code}'`)
    says `status`, else None."""
    answer = re.search(r"^(\{.*\})\nHTTP (\d{3})$", out, re.M)
    if answer is None or answer[2] != str(status):
        return None
    return json.loads(answer[1])["resultats"]


def _accepted(out: str) -> bool:
    return _answer(out, 202) == [{"index": 0, "id": "inv-2026-09-01-0001", "statut": "accepted"}]


def _hors_competence(out: str) -> bool:
    results = _answer(out, 207)
    return (
        results is not None
        and [(r["id"], r["statut"], r["code"]) for r in results]
        == [("inv-2026-09-01-0002", "refused", "hors-competence")]
        and "0350042F" in results[0]["message"]
    )


def _written(count: int) -> Callable[[str], bool]:
    return lambda out: len(re.findall(r"^ressources\.catalogue\.v1 partition \d+ offset \d+$", out, re.M)) == count


def _dlq_reason(out: str) -> bool:
    return (
        any(
            r["key"] == "0750655E"
            and ["dlq-reason", "uai-inconnu"] in r["headers"]
            and any(h[0] == "dlq-message" and h[1] for h in r["headers"])
            and r["value"]["id"] == "abo-0750655E-manuel-svt-c4"
            for r in _lines_json(out)
        )
        and re.search(r"uai-inconnu .*source=/gar .*id=abo-0750655E-manuel-svt-c4", out) is not None
    )


def _etablissement(out: str) -> bool:
    page = json.loads(out)
    return "iPadOS 12.5 < 15" in out and "tablettes-6e" in out and "manuel-svt-c4" in json.dumps(page)


# What each block must print, found by a piece of its text; a block that only writes must exit 0
# and say where its records went. A block that reads what the platform derives, or posts to the
# passerelle (whose copy of the référentiel follows Kafka), is run again until it shows it (the
# platform works in its own time), within a deadline.
CHECKS: dict[str, Callable[[str], bool]] = {
    "deploy.referentiel load": lambda out: re.search(r"loaded \d{3}", out) is not None,
    '"lot_id": "tablettes-6e"': _accepted,
    '"lot_id": "tablettes-2nde"': _hors_competence,
    "--key manuel-svt-c4": _written(2),
    "--key 0750655E": _written(1),
    "curl -s http://127.0.0.1:8000/etablissements/0350003N": _etablissement,
    "consume ressources.catalogue.v1.dlq": _dlq_reason,
    '"alertes.etat.v1"': lambda out: (
        re.search(r"alerte-levee\.v1 equipement-incompatible 0350003N .*iPadOS 12\.5 < 15", out) is not None
        and re.search(r"^[1-9]\d* open alerts$", out, re.M) is not None
    ),
    '"alertes.compatibilite.v1"': lambda out: (
        re.search(r"^\S+alerte-levee\.v1 equipement-incompatible 0350003N/manuel-svt-c4 \S+$", out, re.M) is not None
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
    with scratch_dir() as root:
        ports = runtime_ports()
        while not port_free(int(ports[5]) + 3):  # the passerelle's
            ports = runtime_ports()
        run = Runtime("up", *ports, env={"FEO_DATA_DIR": str(root)})  # its data in ROOT/platform, as ./dev up's
        try:
            run.wait_for("services healthy")
            postgres, http = int(ports[3]), int(ports[5])
            yield {"root": root, "postgres": postgres, "ressources": http, "passerelle": http + 3}
        finally:
            children = [p.pid for p in run.descendants()]
            run.process.send_signal(2)
            assert run.wait(60) == 0, run.output[-3000:]
            assert not still_running(children)


def test_readme_examples_work_as_written(platform):
    blocks = readme_blocks()
    assert len(blocks) >= 10, "the README's partner, dashboard and API examples"
    # Only what the README tells a reader to have: no credentials of the test session's broker.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_") and k not in ("TOPIC_PREFIX",)}
    env["FEO_DATA_DIR"] = str(platform["root"])
    env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{platform['postgres']}/former_equiper_outiller"
    for block in blocks:
        script = block
        for service, port in README_PORTS.items():
            script = script.replace(f"127.0.0.1:{port}", f"127.0.0.1:{platform[service]}")
        unmapped = set(re.findall(r"127\.0\.0\.1:(\d+)", script)) - {str(platform[s]) for s in README_PORTS}
        assert not unmapped, f"README block names a port this test does not map to its platform's: {unmapped}"
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
