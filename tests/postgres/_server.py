"""Find a PostgreSQL server for the tests, or start a throwaway one.

In order: ``AAS_TEST_POSTGRES_URL`` when set; the local server at 127.0.0.1:5432 (user postgres,
database test) when it answers; otherwise a cluster made with the PostgreSQL binaries found on
this machine (initdb in a temporary directory, a free port), stopped and removed after the tests.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import asyncpg

ENV_URL = "AAS_TEST_POSTGRES_URL"
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/test"


def answers(url: str, timeout: float = 3.0) -> bool:
    """True when a server accepts a connection at `url`."""

    async def probe() -> bool:
        try:
            connection = await asyncpg.connect(url, timeout=timeout)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        await connection.close()
        return True

    return asyncio.run(probe())


def find_binaries() -> Path | None:
    """The bin directory of the newest PostgreSQL found (initdb, pg_ctl, postgres)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    for found in (shutil.which("initdb"), shutil.which("pg_ctl")):
        if found:
            candidates.append(str(Path(found).resolve().parent))
    for candidate in candidates:
        path = Path(candidate)
        if all((path / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return path
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cluster:
    """A throwaway PostgreSQL cluster in a temporary directory. initdb refuses to run as root,
    so as root the cluster belongs to (and runs as) the ``postgres`` OS user. `settings` are
    server settings given on the command line (over the defaults below)."""

    def __init__(self, bindir: Path, settings: dict[str, str] | None = None) -> None:
        self.bindir = bindir
        self.settings = dict(settings or {})
        self.root = Path(tempfile.mkdtemp(prefix="aas-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "initdb refuses to run as root and there is no 'postgres' OS user to run it "
                    "as; create one, run the tests as another user, or set AAS_TEST_POSTGRES_URL"
                ) from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [*self._as, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()}\n{log}"
            )

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        self.resume()

    def resume(self) -> None:
        settings = {"synchronous_commit": "off", **self.settings}
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=200 "
            + " ".join(f"-c {name}='{value}'" for name, value in settings.items())
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def pause(self, mode: str = "fast") -> None:
        """Shut the server down (fast: connected sessions are terminated; immediate: as a
        crash, without a shutdown checkpoint)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    @classmethod
    def standby_of(cls, primary: Cluster, settings: dict[str, str] | None = None) -> Cluster:
        """A streaming replica of `primary` (``pg_basebackup -R``), started on a port of its
        own, in hot standby (it answers reads)."""
        standby = cls(primary.bindir, {"synchronous_standby_names": "", **(settings or {})})
        standby._run(
            str(primary.bindir / "pg_basebackup"),
            "-D",
            str(standby.data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
        )
        standby.resume()
        return standby

    def promote(self) -> None:
        """Make a standby the primary (returns when it accepts writes)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "promote")

    def stop(self) -> None:
        try:
            self.pause()
        except RuntimeError:
            pass  # not running: nothing to stop
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
