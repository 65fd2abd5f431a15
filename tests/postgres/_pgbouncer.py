"""PgBouncer for the tests: found on this machine, or installed from the distribution's packages
(Debian's ``pgbouncer``) when the tests run as root with apt-get, then started on a free loopback
port in front of a PostgreSQL server, in transaction pooling mode.

`find_or_install()` returns the binary, or the reason there is none (the tests then report NOT
RUN with it); `PgBouncer(binary, server_url).start()` runs one in a temporary directory (as the
``postgres`` OS user when the tests run as root: PgBouncer refuses to run as root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from ._server import free_port

INSTALL_TIMEOUT = 180.0  # seconds apt-get may take (the dpkg lock included)


def find_or_install() -> tuple[Path | None, str]:
    """(the pgbouncer binary, "") or (None, why there is none)."""
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )
    if found:
        return Path(found), ""
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return (
            None,
            "pgbouncer is not installed, and apt-get as root is not available to install it",
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = [apt, "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=60", "pgbouncer"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env
        )
    except subprocess.TimeoutExpired:
        return None, f"`apt-get install pgbouncer` did not finish within {INSTALL_TIMEOUT:.0f} s"
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    if done.returncode != 0 or found is None:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
        return None, f"`apt-get install pgbouncer` failed ({done.returncode}): {tail}"
    return Path(found), ""


def version(binary: Path) -> tuple[int, ...]:
    """PgBouncer's version, e.g. (1, 18, 0)."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10)
    words = out.stdout.split()
    return tuple(int(part) for part in words[words.index("PgBouncer") + 1].split("."))


class PgBouncer:
    """One PgBouncer in transaction pooling mode in front of `server_url`'s server; `url` is
    `server_url` with PgBouncer's address (same user, password and database)."""

    def __init__(self, binary: Path, server_url: str, *, pool_size: int = 10) -> None:
        self.binary = binary
        self._server = urlsplit(server_url)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="aas-pgbouncer-"))
        self.log = self.root / "pgbouncer.log"
        self.pool_size = pool_size
        self._process: subprocess.Popen[str] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:  # PgBouncer drops root for this user itself
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["-u", "postgres"]

    @property
    def url(self) -> str:
        netloc = self._server.netloc.rpartition("@")
        credentials = netloc[0] + "@" if netloc[1] else ""
        return urlunsplit(self._server._replace(netloc=f"{credentials}127.0.0.1:{self.port}"))

    def _config(self) -> str:
        user = unquote(self._server.username or "postgres")
        password = unquote(self._server.password or "")
        target = f"host={self._server.hostname or '127.0.0.1'} port={self._server.port or 5432}"
        if password:
            target += f" password={password}"
        (self.root / "users.txt").write_text(f'"{user}" ""\n')
        return "\n".join(
            [
                "[databases]",
                f"* = {target}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {self.root / 'users.txt'}",
                "pool_mode = transaction",
                f"default_pool_size = {self.pool_size}",
                "max_client_conn = 1000",
                "server_login_retry = 1",
                "ignore_startup_parameters = extra_float_digits",
                f"logfile = {self.log}",
                f"pidfile = {self.root / 'pgbouncer.pid'}",
                "",
            ]
        )

    def start(self, timeout: float = 20.0) -> None:
        config = self.root / "pgbouncer.ini"
        config.write_text(self._config())
        if self._as:
            for path in self.root.iterdir():
                shutil.chown(path, "postgres")
        self._process = subprocess.Popen(
            [str(self.binary), "-q", *self._as, str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read() if self._process.stderr else ""
                log = self.log.read_text()[-1500:] if self.log.exists() else ""
                raise RuntimeError(f"pgbouncer exited ({self._process.returncode}): {err}{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgbouncer did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()  # PgBouncer's immediate shutdown
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process is not None and process.stderr is not None:
            process.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)
