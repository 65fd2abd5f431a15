"""Waiting for the worker processes of the multi-process tests."""

from __future__ import annotations

import subprocess

__all__ = ["outcomes"]


def outcomes(processes: list[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str, str]]:
    """Each process's (exit status, stdout, stderr), in order. Whatever happens while waiting (a
    timeout, an interrupt), no process is left running or holding a pipe open."""
    found: list[tuple[int, str, str]] = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=timeout)
            found.append((process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()
    return found
