"""Where a system keeps its data, and how a seeded dataset is snapshotted and restored.

SQLite: a file per system; a snapshot is a copy of the file. PostgreSQL: the tables whose names
start with the system's prefix (see `pgsnap`). MongoDB: the collections with that prefix, copied
document by document (slow but works on any server).
"""

from __future__ import annotations

import abc
import os
import shutil
from pathlib import Path
from typing import Any

from .. import pgsnap

SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


class Place(abc.ABC):
    @abc.abstractmethod
    async def reset(self) -> None:
        """Remove the live data (not the snapshots), before seeding."""

    @abc.abstractmethod
    async def snapshot(self, tag: str) -> None: ...

    @abc.abstractmethod
    async def restore(self, tag: str) -> None: ...

    @abc.abstractmethod
    async def size(self) -> int | None:
        """Bytes stored (indexes included), or None when the server does not say."""

    @abc.abstractmethod
    async def drop(self) -> None:
        """Remove the live data and every snapshot."""


class SqlitePlace(Place):
    def __init__(self, workdir: Path, key: str) -> None:
        self.workdir = workdir
        self.path = workdir / f"{key}.db"
        self.key = key

    @property
    def url(self) -> str:
        return "sqlite:///" + str(self.path.resolve())

    def _snap(self, tag: str) -> Path:
        return self.workdir / f"{self.key}.{tag}.snapshot"

    def _remove_live(self) -> None:
        for suffix in SQLITE_SUFFIXES:
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    async def reset(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._remove_live()

    async def snapshot(self, tag: str) -> None:
        # The system closed its connections: the WAL was checkpointed into the file.
        shutil.copyfile(self.path, self._snap(tag))

    async def restore(self, tag: str) -> None:
        self._remove_live()
        shutil.copyfile(self._snap(tag), self.path)

    async def size(self) -> int | None:
        return _files_size(self.path)

    async def drop(self) -> None:
        self._remove_live()
        for snap in self.workdir.glob(f"{self.key}.*.snapshot"):
            snap.unlink()


class PostgresPlace(Place):
    """Tables named `prefix`* in `schema` (default: the connection's current schema, so a URL
    with ``?search_path=...`` keeps a run's tables apart)."""

    def __init__(self, url: str, prefix: str, schema: str | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.schema = schema or "public"
        self._resolved = schema is not None

    async def _conn(self) -> Any:
        import asyncpg

        conn = await asyncpg.connect(self.url)
        if not self._resolved:
            self.schema = await conn.fetchval("SELECT current_schema()")
            self._resolved = True
        return conn

    async def reset(self) -> None:
        conn = await self._conn()
        try:
            await pgsnap.drop(conn, self.schema, self.prefix)
        finally:
            await conn.close()

    async def snapshot(self, tag: str) -> None:
        conn = await self._conn()
        try:
            await pgsnap.snapshot(conn, self.schema, self.prefix, tag)
        finally:
            await conn.close()

    async def restore(self, tag: str) -> None:
        conn = await self._conn()
        try:
            await pgsnap.restore(conn, self.schema, self.prefix, tag)
        finally:
            await conn.close()

    async def size(self) -> int | None:
        conn = await self._conn()
        try:
            return await pgsnap.size(conn, self.schema, self.prefix)
        finally:
            await conn.close()

    async def drop(self) -> None:
        conn = await self._conn()
        try:
            await pgsnap.drop(conn, self.schema, self.prefix, snapshots=True)
        finally:
            await conn.close()


class MongoPlace(Place):
    def __init__(self, url: str, db_name: str, prefix: str) -> None:
        self.url = url
        self.db_name = db_name
        self.prefix = prefix

    def _client(self) -> Any:
        from pymongo import AsyncMongoClient

        return AsyncMongoClient(self.url, serverSelectionTimeoutMS=5000)

    async def _live(self, db: Any) -> list[str]:
        names = await db.list_collection_names()
        return sorted(n for n in names if n.startswith(self.prefix) and "migration" not in n)

    async def reset(self) -> None:
        client = self._client()
        try:
            db = client[self.db_name]
            for name in await db.list_collection_names():
                if name.startswith(self.prefix):
                    await db.drop_collection(name)
        finally:
            await client.close()

    async def snapshot(self, tag: str) -> None:
        client = self._client()
        try:
            db = client[self.db_name]
            for name in await self._live(db):
                snap = db[f"snap__{tag}__{name}"]
                await snap.drop()
                await _copy(db[name], snap)
        finally:
            await client.close()

    async def restore(self, tag: str) -> None:
        client = self._client()
        try:
            db = client[self.db_name]
            for name in await self._live(db):
                await db[name].delete_many({})
                await _copy(db[f"snap__{tag}__{name}"], db[name])
        finally:
            await client.close()

    async def size(self) -> int | None:
        client = self._client()
        try:
            db = client[self.db_name]
            total = 0
            for name in await self._live(db):
                stats = await db.command("collStats", name)
                total += int(stats.get("storageSize", 0)) + int(stats.get("totalIndexSize", 0))
            return total or None
        except Exception:  # not every MongoDB-compatible server has collStats
            return None
        finally:
            await client.close()

    async def drop(self) -> None:
        client = self._client()
        try:
            db = client[self.db_name]
            for name in await db.list_collection_names():
                if name.startswith(self.prefix) or (
                    name.startswith("snap__") and name.split("__", 2)[-1].startswith(self.prefix)
                ):
                    await db.drop_collection(name)
        finally:
            await client.close()


def _files_size(path: Path) -> int:
    """Bytes of a SQLite database with its WAL and shared-memory files."""
    return sum(
        os.path.getsize(f"{path}{s}") for s in SQLITE_SUFFIXES if os.path.exists(f"{path}{s}")
    )


async def _copy(source: Any, target: Any, batch: int = 500) -> None:
    docs: list[Any] = []
    async for doc in source.find({}):
        docs.append(doc)
        if len(docs) >= batch:
            await target.insert_many(docs, ordered=False)
            docs = []
    if docs:
        await target.insert_many(docs, ordered=False)
