"""`./dev credentials NAME --data-dir DIR`: a principal's KAFKA_*= settings for the platform
running on a data directory of one's own (`./dev up --data-dir DIR`), which the default search
under the data root does not find."""

import pytest

from deploy import kafka_client
from deploy.local.kafka.credentials import Credentials
from helpers import platform_on


def test_the_platform_on_a_named_data_directory_is_found(tmp_path, capsys):
    data = tmp_path / "elsewhere"
    (data / "kafka").mkdir(parents=True)
    credentials = Credentials.create(data / "kafka", ("admin", "ministere"))
    with platform_on(data, kafka_port=19192):
        assert kafka_client.main(["credentials", "ministere", "--data-dir", str(data)]) == 0
    printed = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert printed["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:19192"
    assert (printed["KAFKA_USERNAME"], printed["KAFKA_PASSWORD"]) == ("ministere", credentials.password("ministere"))


def test_a_data_directory_no_platform_runs_on_is_said_in_one_line(tmp_path):
    with pytest.raises(SystemExit) as refused:
        kafka_client.main(["credentials", "admin", "--data-dir", str(tmp_path)])
    assert str(refused.value) == f"no local platform runs on {tmp_path}"
