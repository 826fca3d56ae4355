"""`./dev`, the one entry point: its usage names every command it has, and a command it does not
have is an error (exit 2), not a usage printed as if all went well."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DEV = Path(__file__).resolve().parents[2] / "dev"


def _dev(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DEV), *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args", [(), ("help",), ("-h",), ("--help",)], ids=["none", "help", "-h", "--help"])
def test_the_usage_names_every_command(args):
    result = _dev(*args)
    assert (result.returncode, result.stderr) == (0, "")
    commands = re.findall(r"^  ([a-z-]+)\)", DEV.read_text(), re.M)
    assert {"demo", "up", "test", "shell", "lint"} <= set(commands)
    usage = result.stdout
    assert usage.startswith("usage: ./dev COMMAND")
    for command in commands:
        assert re.search(rf"^  {command}\s", usage, re.M), f"{command} is missing from the usage:\n{usage}"
    for option in ("--once", "--fresh"):
        assert option in usage


def test_an_unknown_command_is_an_error_with_the_usage():
    result = _dev("dmeo")
    assert result.returncode == 2
    assert result.stdout == ""
    first, *usage = result.stderr.splitlines()
    assert first == "./dev: unknown command 'dmeo'"
    assert usage[0].startswith("usage: ./dev COMMAND")


def test_bad_settings_are_refused_before_anything_starts():
    env = {
        **os.environ,
        "BATCH_MAX_RECORDS": "abc",
        "LOG_FORMAT": "xml",
        "DATABASE_URL": "mysql://u:secret@h/db",
        "ALERTS_RETENTION_DAYS": "-1",
        "KAFKA_DASHBOARDS": "pilotage,pilotage-14",
        "INBOX_RETENTION_DAY": "7",  # misspelled: ignored, said first (it may be why another is refused)
    }
    result = subprocess.run(
        [str(DEV), "up", "--data-dir", "/nonexistent/never-created"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 6, result.stderr  # one per problem, nothing started (no Kafka, no PostgreSQL line)
    assert lines[0] == "==> warning: INBOX_RETENTION_DAY: not a setting, ignored (did you mean INBOX_RETENTION_DAYS?)"
    assert any(line.startswith("==> error: BATCH_MAX_RECORDS: ") for line in lines)
    assert any(line.startswith("==> error: LOG_FORMAT: ") for line in lines)
    assert any(line.startswith("==> error: DATABASE_URL: ") for line in lines)
    assert any(line.startswith("==> error: ALERTS_RETENTION_DAYS: ") for line in lines)
    assert any(line.startswith("==> error: KAFKA_DASHBOARDS: 'pilotage' begins 'pilotage-14'") for line in lines)
    assert "secret" not in result.stderr
    assert not Path("/nonexistent/never-created").exists()


@pytest.mark.parametrize("command", [("dead-letters", "list"), ("outbox", "list")], ids=lambda c: c[0])
def test_a_bad_database_url_is_one_line_without_its_password(command):
    env = {**os.environ, "DATABASE_URL": "postgresql+asyncpg://u:s3cr3t@h/db"}
    result = subprocess.run([str(DEV), *command], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"./dev {command[0]}: DATABASE_URL: " + result.stderr.split("DATABASE_URL: ")[1].strip()
    ]
    assert "s3cr3t" not in result.stderr + result.stdout


def _checkout(tmp_path: Path) -> Path:
    """A checkout of `dev` alone, with a project of no dependencies: what ensure_venv installs."""
    (tmp_path / "dev").write_bytes(DEV.read_bytes())
    (tmp_path / "dev").chmod(0o755)
    (tmp_path / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "essai"\nversion = "0"\nrequires-python = ">=3.11,<3.12"\n'
        "[project.optional-dependencies]\ntest = []\n[tool.setuptools]\npackages = []\n"
    )
    return tmp_path / "dev"


def test_a_half_made_venv_is_made_again(tmp_path):
    """`python3.11 -m venv` fails after making .venv/bin/python when Debian's python3.11-venv is
    missing (or Ctrl-C stops ensurepip): every later ./dev then failed on the missing pip."""
    dev = _checkout(tmp_path)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / ".venv")], check=True)
    result = subprocess.run(
        [str(dev), "shell", "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "==> .venv is incomplete or of another Python: making it again" in result.stderr
    assert result.stdout.strip() == str(tmp_path / ".venv") and (tmp_path / ".venv/bin/pip").exists()


def test_another_python_than_3_11_is_refused_naming_what_to_do(tmp_path):
    dev = _checkout(tmp_path)
    other = tmp_path / "python3.13"
    other.write_text('#!/bin/sh\n[ "$1" = -V ] && echo "Python 3.13.5" && exit 0\nexit 1\n')
    other.chmod(0o755)
    result = subprocess.run(
        [str(dev), "shell", "-c", "pass"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHON": str(other)},
    )
    assert result.returncode == 2
    assert "needs Python 3.11" in result.stderr and "Python 3.13.5" in result.stderr and "PYTHON=" in result.stderr
    assert not (tmp_path / ".venv").exists()
