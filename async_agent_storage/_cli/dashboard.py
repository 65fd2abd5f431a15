"""`aas dashboard`: serve the read-only dashboard (`async_agent_storage._dashboard`) over a store.

Needs the ``dashboard`` extra (Starlette, Jinja2, uvicorn). Binds 127.0.0.1 unless told
otherwise; with ``--token`` (or ``--new-token``) every request must show the token.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import signal
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Final
from urllib.parse import quote

import typer

from async_agent_storage import SessionStore

from .common import (
    DEFAULT_TABLE,
    CliError,
    TableOption,
    UrlOption,
    console,
    opened_store,
    print_note,
    run,
    text,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette

TOKEN_ENV: Final = "AAS_DASHBOARD_TOKEN"

HELP: Final = """Serve a read-only web dashboard of the store: an overview (sessions, runs, active
sessions, turns per agent over time), the sessions with filters, and each session's state and
conversation.

It binds 127.0.0.1 (this machine only) unless --host says otherwise, has no endpoint that
writes, and escapes every value it shows. With --token (or AAS_DASHBOARD_TOKEN), or
--new-token, every request must carry the token: open the link it prints once (it sets a
cookie), or send "Authorization: Bearer TOKEN". Stop it with Ctrl+C.
"""


def _app(store: SessionStore, token: str | None) -> Starlette:
    try:
        from .._dashboard import create_app
    except ImportError as exc:
        raise CliError(
            "aas dashboard needs the 'dashboard' extra: "
            f"pip install 'async-agent-storage[dashboard]' ({exc})"
        ) from exc
    return create_app(store, token=token)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the store is opened (a port in use fails first, and
    nothing else can take the port meanwhile)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)  # connections made once the link is printed wait for the server
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


async def _serve(url: str | None, table: str, sock: socket.socket, token: str | None) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # Ctrl+C or SIGTERM: stop serving, then close the store and exit 0 (uvicorn's own
            # handler raises the signal again afterwards).
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    async with opened_store(url, table) as store:
        app = _app(store, token)
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, server_header=False, lifespan="off"
        )
        server = Server(config)
        host, port = sock.getsockname()[:2]
        where = f"[{host}]" if ":" in host else host
        link = f"http://{where}:{port}/"
        if token is not None:
            link += "?token=" + quote(token, safe="")
        console.print(text(f"Dashboard of {store_label(store)}: {link}"), soft_wrap=True)
        await server.serve(sockets=[sock])


def store_label(store: object) -> str:
    return str(getattr(store, "label", type(store).__name__))


def dashboard(
    url: UrlOption = None,
    table: TableOption = DEFAULT_TABLE,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            metavar="ADDRESS",
            help="The address to listen on. Anything but a loopback address exposes the "
            "store's sessions to the network: use a token.",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option("--port", "-p", metavar="N", min=0, max=65535, help="0: any free port."),
    ] = 8787,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            envvar=TOKEN_ENV,
            show_envvar=True,
            help="Require this access token on every request.",
        ),
    ] = None,
    new_token: Annotated[
        bool,
        typer.Option(
            "--new-token", help="Require a new random access token (in the link printed)."
        ),
    ] = False,
) -> None:
    """Serve the dashboard until interrupted."""
    if new_token:
        if token is not None:
            raise CliError("pass --token or --new-token, not both")
        token = secrets.token_urlsafe(24)
    if token is not None and (not token or len(token) < 8):
        raise CliError("the access token must be at least 8 characters long")
    if not _is_loopback(host) and token is None:
        print_note(
            f"warning: listening on {host} without a token: anyone who can reach this "
            "address can read every session (pass --new-token)"
        )
    sock = _bind(host, port)
    try:
        run(_serve(url, table, sock, token))
    finally:
        sock.close()
