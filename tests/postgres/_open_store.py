"""Run by the multi-process tests: wait for a start signal, open the store, write, report."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from async_agent_storage import PostgresStore


def wait_for(start_file: str) -> None:
    while not os.path.exists(start_file):  # start all processes at the same moment
        time.sleep(0.001)


async def main(url: str, schema: str, table: str, worker: int, appends: int) -> None:
    store = PostgresStore(table, url, schema=schema, auto_upgrade_schema=True, pool_max_size=2)
    async with store:
        for i in range(appends):
            await store.append_runs(
                "shared", [{"worker": worker, "i": i}], user_id="u", session_data={"w": worker}
            )
        await store.append_runs(f"own-{worker}", [{"worker": worker}], user_id="u")
        print(json.dumps({"worker": worker, "version": await store.schema_version()}))


if __name__ == "__main__":
    url, schema, table, start, worker, appends = sys.argv[1:7]
    wait_for(start)
    asyncio.run(main(url, schema, table, int(worker), int(appends)))
