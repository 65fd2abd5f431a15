"""Start and stop mongoeco's wire-protocol server in a subprocess, for the tests.

mongoeco needs Python >= 3.13, so it lives in its own virtual environment (``make test`` creates
``.venv-mongoeco``; ``AAS_MONGOECO_PYTHON`` may name another interpreter that has it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SCRIPT = HERE / "mongoeco_server.py"


def mongoeco_python() -> tuple[str | None, str]:
    """(the interpreter that has mongoeco, or None, and why not)."""
    named = os.environ.get("AAS_MONGOECO_PYTHON")
    candidate = Path(named) if named else ROOT / ".venv-mongoeco" / "bin" / "python"
    if not candidate.exists():
        return None, (
            f"no Python >= 3.13 with mongoeco at {candidate} (`make test` creates it when a "
            "Python 3.13 is installed; or set AAS_TEST_MONGO_URL to a MongoDB server)"
        )
    check = subprocess.run(
        [str(candidate), "-c", "import mongoeco.wire"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        return None, f"{candidate} cannot import mongoeco.wire: {check.stderr.strip()[-300:]}"
    return str(candidate), ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_answering(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        client: MongoClient[dict[str, object]] = MongoClient(url, serverSelectionTimeoutMS=500)
        try:
            client.admin.command("ping")
            return
        except PyMongoError as exc:
            last = exc
        finally:
            client.close()
        time.sleep(0.1)
    raise RuntimeError(f"the MongoDB server at {url} did not answer within {timeout:g}s: {last}")


class MongoecoServer:
    """One mongoeco server process on a fixed loopback port; `stop()` and `start()` again to
    simulate a server restart (with `sqlite`, the data survives it)."""

    def __init__(self, python: str, *, port: int | None = None, sqlite: Path | None = None) -> None:
        self.python = python
        self.port = port or free_port()
        self.sqlite = sqlite
        self.url = f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
        self._process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 60.0) -> None:
        command = [self.python, str(SCRIPT), "--port", str(self.port)]
        if self.sqlite is not None:
            command += ["--sqlite", str(self.sqlite)]
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=sys.stderr, text=True, stdin=subprocess.DEVNULL
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"mongoeco server did not start: {line!r}")
        wait_until_answering(self.url, timeout)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def kill(self) -> None:
        """Stop at once, as a crash would (SIGKILL)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def collect_leaked_sockets() -> None:
    """Finalize sockets PyMongo leaked, inside the test that made it leak them.

    PyMongo's asyncio client does not close the socket of a connection attempt whose task is
    cancelled (PYTHON-5867): closing a client while its monitor is connecting to a server that is
    down leaves one, which the garbage collector later reports as a ResourceWarning. The store
    cannot reach the client's monitor; tests that close a client while the server is down call
    this (and ignore that warning) so the report stays with them.
    """
    import gc

    gc.collect()
