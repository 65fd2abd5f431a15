"""Open a MongoStore with auto_upgrade_schema=True at a given moment and report what it applied.

    python -m tests.mongo._open_store URL DB COLLECTION START_AT

Run by several processes at once by the concurrent-migration test; START_AT (a Unix time) lines
them up so they really do start together.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from async_agent_storage.mongo import MongoStore


async def main(url: str, db_name: str, collection: str, start_at: float) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("async_agent_storage")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    store = MongoStore(
        collection, url, db_name, auto_upgrade_schema=True, server_selection_timeout=30
    )
    async with store:
        print(f"VERSION {await store.schema_version()}", flush=True)


if __name__ == "__main__":
    url, db_name, collection, start_at = sys.argv[1:5]
    asyncio.run(main(url, db_name, collection, float(start_at)))
