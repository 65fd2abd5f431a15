"""What a newcomer sees first: --version, --help, and errors that keep their text."""

from __future__ import annotations

from pathlib import Path

import pytest

from async_agent_storage import __version__

from .conftest import invoke, run_aas

COMMANDS = [
    ["status"],
    ["migrate"],
    ["sessions"],
    ["sessions", "ls"],
    ["sessions", "show"],
    ["sessions", "rm"],
    ["export"],
    ["import"],
    ["import", "agno"],
]


def test_version() -> None:
    assert invoke(["--version"]).stdout == f"async-agent-storage {__version__}\n"
    installed = run_aas(["--version"])
    assert installed.returncode == 0
    assert installed.stdout == f"async-agent-storage {__version__}\n"


def test_the_main_help_names_every_command_and_the_url() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in ("status", "migrate", "sessions", "export", "import"):
        assert f"\n  {command} " in result.stdout
    assert "AAS_URL" in result.stdout
    assert "aas export --format chat -o examples.jsonl\n" in result.stdout  # not re-wrapped
    assert "Usage: aas [OPTIONS] COMMAND" in invoke([]).output
    assert invoke(["-h"]).stdout == result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_each_command_explains_itself(command: list[str]) -> None:
    result = invoke([*command, "--help"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: aas {' '.join(command)} ")
    summary = result.stdout.split("\n\n")[1].strip()
    assert len(summary) > 20
    assert summary.endswith(".")


def test_help_text_keeps_its_brackets() -> None:
    export = invoke(["export", "--help"]).stdout
    assert '{"messages": [...]}' in export
    assert 'session_data["session_state"]' in export
    agno = invoke(["import", "agno", "--help"]).stdout
    assert 'metadata["imported_from_agno"]' in agno


def test_the_install_hint_is_printed_whole(tmp_path: Path) -> None:
    """The hint names the extra in brackets, which rich markup would swallow."""
    fake = tmp_path / "pymongo"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named pymongo')\n")
    result = run_aas(["status", "--url", "mongodb://127.0.0.1:1/db"], PYTHONPATH=str(tmp_path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(
        "error: mongodb:// needs the 'mongo' extra: pip install 'async-agent-storage[mongo]'"
    )
    assert result.stderr.count("\n") == 1


def test_one_line_errors_even_when_long(tmp_path: Path) -> None:
    long_name = "d" * 150
    result = invoke(["status", "--url", f"sqlite:///{tmp_path / long_name / '[red]x[/red].db'}"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "[red]x[/red].db" in result.stderr
