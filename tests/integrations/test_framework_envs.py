"""Run each framework's tests with the interpreter of that framework's own virtualenv.

The frameworks pin conflicting dependencies, so none is installed in `.venv`: `make test` builds
`.venv-<extra>` for each (see the Makefile) and this test runs `tests/integrations/<dir>` there.
An environment that is missing or could not be built is reported NOT RUN with its reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import NOT_RUN

ROOT = Path(__file__).resolve().parents[2]

# extra -> the test directory under tests/integrations
FRAMEWORKS = {"openai-agents": "openai_agents", "agno": "agno", "adk": "adk"}


@pytest.mark.parametrize("extra", sorted(FRAMEWORKS))
def test_framework_suite(extra: str) -> None:
    venv = ROOT / f".venv-{extra}"
    python = venv / "bin" / "python"
    if Path(sys.prefix).resolve() == venv.resolve():
        pytest.fail(f"run tests/integrations/{FRAMEWORKS[extra]} directly in .venv-{extra}")
    not_built = venv / "NOT_BUILT"
    if not_built.exists() or not (venv / ".installed").exists() or not python.exists():
        reason = (
            not_built.read_text().strip()
            if not_built.exists()
            else f".venv-{extra} is not built (make integrations builds it)"
        )
        NOT_RUN[f"{extra} integration"] = reason
        pytest.skip(reason)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            f"tests/integrations/{FRAMEWORKS[extra]}",
            "-q",
            "-rfEs",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    for line in output.splitlines():
        found = re.match(r"NOT RUN: (.*?) tests: (.*)", line)
        if found:
            NOT_RUN[f"{extra} integration: {found[1]}"] = found[2]
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    print(f"{extra}: {summary[-1] if summary else 'no summary'}")
    assert done.returncode == 0, f".venv-{extra}: pytest failed:\n{output[-6000:]}"
