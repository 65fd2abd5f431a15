"""The package as it ships: its license, the testing kit's extra, and a build that leaves the
source tree as it found it."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The Apache License 2.0 as its authors publish it (LICENSE-2.0.txt).
APACHE_2_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def test_the_license_file_is_the_one_pyproject_names() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert hashlib.md5((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_MD5


def test_the_testing_kit_names_its_extra_when_missing() -> None:
    code = "import sys; sys.modules['hypothesis'] = None; import async_agent_storage.testing"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "ImportError: async_agent_storage.testing needs the 'testing' extra (pytest, hypothesis): "
        "pip install 'async-agent-storage[testing]'"
    )


def source_tree(into: Path) -> Path:
    """The project's files (what git tracks, as they are now) copied to `into`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


def files(tree: Path) -> list[str]:
    return sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))


@pytest.mark.slow
def test_a_wheel_build_leaves_the_source_tree_as_it_was(tmp_path: Path) -> None:
    tree = source_tree(tmp_path / "tree")
    before = files(tree)
    out = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(tree)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    assert files(tree) == before  # no build/, no *.egg-info
    (wheel,) = out.glob("async_agent_storage-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert "async_agent_storage/py.typed" in names
    assert "async_agent_storage/cli.py" in names
    assert "async_agent_storage/_cli/agno.py" in names
    # The dashboard's templates and stylesheet ship with it.
    for shipped in ("templates/base.html", "templates/session.html", "static/style.css"):
        assert f"async_agent_storage/_dashboard/{shipped}" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.split("/")[0] in ("tests", "benchmarks", "examples")]
    assert "aas = async_agent_storage.cli:main" in scripts
    assert "async-agent-storage = async_agent_storage.cli:main" in scripts
