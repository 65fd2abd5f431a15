"""The seed scenario: two separate processes, the second answers with the first one's question."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "examples" / "continue_session.py"


def run_example(db_file: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--db-file", str(db_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_the_second_process_remembers_the_first_ones_question(tmp_path: Path) -> None:
    db_file = tmp_path / "nested" / "data.db"
    first = run_example(db_file)
    assert "User: What is the capital of France?" in first
    assert "Agent: Paris" in first
    second = run_example(db_file)
    assert "User: What was my last question?" in second
    assert 'Agent: Your last question was: "What is the capital of France?"' in second
    assert "holds 2 runs" in second
    third = run_example(db_file)
    assert 'Your last question was: "What was my last question?"' in third
