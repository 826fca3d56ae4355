"""The README's run command, as a newcomer runs it: the demo's partners go through
authentication (declarations posted to the passerelle with tokens), it shows an alert raised
and resolved, then stops everything it started, keeping its data for a look."""

import re

import pytest

from helpers import still_running
from local_runtime import Runtime, runtime_ports, scratch_dir

pytestmark = pytest.mark.e2e


def test_demo_raises_and_resolves_an_alert_and_leaves_no_process_behind():
    with scratch_dir() as tmp:
        data = tmp / "demo"
        (data / "kafka").mkdir(parents=True)
        (data / "kafka" / "left-by-an-earlier-demo").touch()
        demo = Runtime("demo", "--once", "--data-dir", str(data), *runtime_ports(), env={"FEO_DATA_DIR": str(tmp)})
        try:
            demo.wait_for("platform up in")
            started = [p.pid for p in demo.descendants()]
            assert demo.wait(300) == 0, demo.output[-3000:]
        finally:
            demo.stop()
        output = demo.output

        assert f"starting from empty storage in {data}" in output
        # Declarations over HTTP with tokens (a refusal would have ended the demo non-zero).
        posted = re.search(r"each with its token: (\d+) declarations .* posted to the passerelle", output)
        assert posted and int(posted.group(1)) > 0, output[-3000:]
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
        # README: the services' logs are quiet during the demo (WARNING and above only, and none).
        loud = [line for line in output.splitlines() if re.search(r'"level": "(warning|error|critical)"', line)]
        assert loud == [], "\n".join(loud[:10])

        assert len(started) >= 6, output  # Kafka, PostgreSQL and its workers, four services
        assert still_running(started) == []
        assert not (data / "kafka" / "left-by-an-earlier-demo").exists()
        assert (data / "kafka" / "kafka-logs" / "meta.properties").exists()
        assert (data / "postgres" / "pgdata" / "PG_VERSION").exists()
