"""Serve the MongoDB wire protocol with mongoeco, for the tests (run by Python >= 3.13).

    python mongoeco_server.py --port 27999 [--sqlite PATH]

Prints ``READY <uri>`` once it listens, then serves until SIGTERM or SIGINT. Keeps data in memory,
or with ``--sqlite`` in a file that survives a restart. Imports nothing from the project: it runs
in its own virtual environment (``make test`` creates ``.venv-mongoeco``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal


async def serve(port: int, sqlite: str | None) -> None:
    from mongoeco.wire import AsyncMongoEcoProxyServer  # type: ignore[import-not-found]

    engine = None
    if sqlite is not None:
        from mongoeco.engines import SQLiteEngine  # type: ignore[import-not-found]

        engine = SQLiteEngine(sqlite)
    server = AsyncMongoEcoProxyServer(engine=engine, host="127.0.0.1", port=port)
    address = await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {address.uri}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sqlite", default=None)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.sqlite))


if __name__ == "__main__":
    main()
