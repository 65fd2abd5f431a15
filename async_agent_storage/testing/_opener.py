"""Run by the migration kit's multi-process tests: wait for a start signal, open the store (with
``auto_upgrade_schema=True``), append, and print a JSON report.

    python -m async_agent_storage.testing._opener '{"url": ..., "table": ..., "options": {...},
                                                    "start": FILE}' WORKER APPENDS
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from .. import open_store


async def _main(spec: dict[str, Any], worker: int, appends: int) -> None:
    options = {**spec["options"], "auto_upgrade_schema": True}
    async with open_store(spec["url"], table_name=spec["table"], **options) as store:
        for i in range(appends):
            await store.append_runs(
                "shared", [{"worker": worker, "i": i}], user_id="u", session_data={"w": worker}
            )
        await store.append_runs(f"own-{worker}", [{"worker": worker}], user_id="u")
        print(json.dumps({"worker": worker, "version": await store.schema_version()}))


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    while not os.path.exists(spec["start"]):  # every process starts at the same moment
        time.sleep(0.001)
    asyncio.run(_main(spec, int(sys.argv[2]), int(sys.argv[3])))
