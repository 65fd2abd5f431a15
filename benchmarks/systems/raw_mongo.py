"""The MongoDB baseline: PyMongo's async client (pool of 20) and hand-written queries, one document
per session with its runs inline. A turn is `find_one` then `replace_one(upsert=True)`."""

from __future__ import annotations

import time
from typing import Any

from ..workload import Picker, SeedSession, WorkloadSpec, next_state, sessions
from .base import POOL_SIZE, Dataset, NotAvailable, SeedInfo, System
from .places import MongoPlace

DB_NAME = "aas_bench"
PREFIX = "aas_raw"
BULK_PREFIX = "aas_bulkraw"


def _doc(seed: SeedSession, now: int) -> dict[str, Any]:
    return {
        "_id": seed.session_id,
        "session_type": "agent",
        "user_id": seed.user_id,
        "agent_id": seed.agent_id,
        "session_data": seed.session_data,
        "agent_data": seed.agent_data,
        "metadata": seed.metadata,
        "runs": seed.runs,
        "created_at": now,
        "updated_at": now,
    }


class RawMongo(System):
    kind = "raw"

    def __init__(self, url: str) -> None:
        super().__init__("raw pymongo", "mongo")
        self.url = url
        self.place = MongoPlace(url, DB_NAME, PREFIX)
        self.bulk_place = MongoPlace(url, DB_NAME, BULK_PREFIX)
        self.client: Any = None
        self.coll: Any = None

    def _client(self) -> Any:
        from pymongo import AsyncMongoClient

        return AsyncMongoClient(self.url, maxPoolSize=POOL_SIZE, serverSelectionTimeoutMS=5000)

    async def check(self) -> None:
        try:
            client = self._client()
        except ImportError as exc:
            raise NotAvailable(f"pymongo's async client is not installed ({exc})") from exc
        try:
            await client.admin.command("ping")
        except Exception as exc:
            raise NotAvailable(f"cannot reach {self.url}: {exc}") from exc
        finally:
            await client.close()

    def info(self) -> dict[str, Any]:
        import pymongo

        return {"driver": f"pymongo {pymongo.version}", "max_pool_size": POOL_SIZE}

    async def _write(self, coll: Any, docs: list[dict[str, Any]]) -> None:
        from pymongo import ReplaceOne

        await coll.bulk_write([ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs])

    async def seed(self, dataset: Dataset) -> SeedInfo:
        await self.place.reset()
        client = self._client()
        t0 = time.perf_counter()
        count = runs = 0
        try:
            coll = client[DB_NAME][f"{PREFIX}_sessions"]
            await coll.create_index([("user_id", 1), ("updated_at", -1)])
            batch: list[dict[str, Any]] = []
            now = time.time_ns() // 1000
            for seed in sessions(dataset.spec):
                batch.append(_doc(seed, now))
                count += 1
                runs += len(seed.runs)
                if len(batch) >= 200:
                    await self._write(coll, batch)
                    batch = []
            if batch:
                await self._write(coll, batch)
        finally:
            await client.close()
        info = SeedInfo(count, runs, time.perf_counter() - t0, await self.place.size())
        await self.place.snapshot(dataset.name)
        return info

    async def start(self, dataset: Dataset) -> None:
        await self.place.restore(dataset.name)
        self.client = self._client()
        self.coll = self.client[DB_NAME][f"{PREFIX}_sessions"]

    async def stop(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()

    async def turn(self, picker: Picker, spec: WorkloadSpec) -> None:
        ref = picker.session()
        doc = await self.coll.find_one({"_id": ref.session_id})
        if doc is None or doc["user_id"] != ref.user_id:
            raise LookupError(f"session {ref.session_id} not found")
        runs = doc["runs"]
        _context = runs[-spec.last_runs :]  # what the model would see
        runs.append(picker.new_run(ref))
        doc["session_data"] = next_state(doc["session_data"], picker.rng)
        doc["updated_at"] = time.time_ns() // 1000
        await self.coll.replace_one({"_id": ref.session_id}, doc, upsert=True)

    async def list_recent(self, picker: Picker, spec: WorkloadSpec) -> None:
        cursor = self.coll.find({"user_id": picker.user()}).sort("updated_at", -1)
        docs = await cursor.limit(spec.list_limit).to_list()
        if not docs:
            raise LookupError("no session listed")

    async def bulk_load(self, seeds: list[SeedSession], batch: int) -> float:
        await self.bulk_place.reset()
        client = self._client()
        try:
            coll = client[DB_NAME][f"{BULK_PREFIX}_sessions"]
            await coll.create_index([("user_id", 1), ("updated_at", -1)])
            t0 = time.perf_counter()
            for i in range(0, len(seeds), batch):
                now = time.time_ns() // 1000
                await self._write(coll, [_doc(s, now) for s in seeds[i : i + batch]])
            return time.perf_counter() - t0
        finally:
            await client.close()
            await self.bulk_place.reset()

    async def cleanup(self) -> None:
        await self.place.drop()
        await self.bulk_place.drop()
