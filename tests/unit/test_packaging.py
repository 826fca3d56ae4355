"""What `pip install .` (the container image's install, README Deployment) puts in the package:
every file the services and tools read at run time. The tests run from the source tree, so a
file the package leaves out (a new kind of data file) passes every other test and is missing
from an image (audit s64 deploy F3). A folder without `__init__.py` (migrations/, tableau/) is
a namespace package: `packages.find` takes those in pyproject.toml unless told not to."""

import fnmatch
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_RUN = ("deploy/k8s/*",)  # manifests applied with kubectl from a checkout, never read by a process


def test_every_file_the_processes_read_is_in_the_package() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = setuptools["packages"]["find"]["include"]
    assert setuptools["packages"]["find"].get("namespaces", True), "folders without __init__.py left out"
    patterns = setuptools["package-data"]["*"]
    tracked = subprocess.run(
        ["git", "ls-files", "contracts", "services", "deploy"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(tracked) > 100
    left_out = []
    for name in tracked:
        if any(fnmatch.fnmatch(name, p) for p in NOT_RUN):
            continue
        in_a_package = any(fnmatch.fnmatch(str(Path(name).parent).replace("/", "."), p) for p in packages)
        data = name.endswith(".py") or any(fnmatch.fnmatch(Path(name).name, p) for p in patterns)
        if not (in_a_package and data):
            left_out.append(name)
    assert not left_out, f"not in the package pip installs: {left_out}"
