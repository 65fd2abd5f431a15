"""The systems under test, per backend: the store (three turn variants: append, upsert, and
append under a lease) and the raw driver. The peers run in their own virtual environment (see
`benchmarks.peers`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import (
    BULK,
    COLD_START,
    HISTORY,
    LIST,
    LIST_RUNS,
    LOAD_SCENARIOS,
    POOL_SIZE,
    SCENARIOS,
    TURN,
    Dataset,
    NotAvailable,
    SeedInfo,
    System,
)
from .places import MongoPlace, Place, PostgresPlace, SqlitePlace
from .store import Route, StoreData, StoreSystem

BACKENDS = ("sqlite", "postgres", "mongo")
MONGO_DB = "aas_bench"

__all__ = [
    "BACKENDS",
    "BULK",
    "COLD_START",
    "HISTORY",
    "LIST",
    "LIST_RUNS",
    "LOAD_SCENARIOS",
    "POOL_SIZE",
    "SCENARIOS",
    "TURN",
    "Dataset",
    "NotAvailable",
    "SeedInfo",
    "System",
    "build",
]


def _store_data(backend: str, url: str, workdir: Path) -> StoreData:
    options: dict[str, Any]
    if backend == "sqlite":
        place = SqlitePlace(workdir, "store")
        bulk = SqlitePlace(workdir, "store-bulk")

        def cold_sqlite(index: int) -> tuple[str, str, Place]:
            cold = SqlitePlace(workdir, f"cold-{index:03d}")
            return cold.url, "agent_sessions", cold

        return StoreData(
            backend,
            place,
            place.url,
            "agent_sessions",
            {},
            bulk_place=bulk,
            bulk_url=bulk.url,
            bulk_table="agent_sessions",
            cold=cold_sqlite,
        )
    if backend == "postgres":
        options = {"pool_min_size": POOL_SIZE, "pool_max_size": POOL_SIZE}

        def cold_pg(index: int) -> tuple[str, str, Place]:
            return url, f"aas_cold{index:03d}", PostgresPlace(url, f"aas_cold{index:03d}")

        return StoreData(
            backend,
            PostgresPlace(url, "aas_store"),
            url,
            "aas_store",
            options,
            bulk_place=PostgresPlace(url, "aas_bulkstore"),
            bulk_url=url,
            bulk_table="aas_bulkstore",
            cold=cold_pg,
        )
    options = {"pool_max_size": POOL_SIZE, "db_name": MONGO_DB}

    def cold_mongo(index: int) -> tuple[str, str, Place]:
        name = f"aas_cold{index:03d}"
        return url, name, MongoPlace(url, MONGO_DB, name)

    return StoreData(
        backend,
        MongoPlace(url, MONGO_DB, "aas_store"),
        url,
        "aas_store",
        options,
        bulk_place=MongoPlace(url, MONGO_DB, "aas_bulkstore"),
        bulk_url=url,
        bulk_table="aas_bulkstore",
        cold=cold_mongo,
    )


def build(
    backend: str,
    url: str | None,
    workdir: Path,
    *,
    replica_url: str | None = None,
    pgbouncer_url: str | None = None,
) -> list[System]:
    """The in-process systems of one backend: store append, store leased, store sealed, store
    upsert, the raw driver; on
    PostgreSQL also store append reading from a replica, and through PgBouncer, when given."""
    if backend == "sqlite":
        from .raw_sqlite import RawSqlite

        data = _store_data(backend, "", workdir)
        return [*_stores(data), RawSqlite(workdir)]
    if url is None:
        raise ValueError(f"--backend {backend} needs --url")
    data = _store_data(backend, url, workdir)
    raw: System
    if backend == "postgres":
        from .raw_postgres import RawPostgres

        raw = RawPostgres(url)
    else:
        from .raw_mongo import RawMongo

        raw = RawMongo(url)
    systems: list[System] = [*_stores(data), raw]
    if backend == "postgres" and replica_url:
        route = Route("+replica", None, {"replica_urls": [replica_url]})
        systems.insert(1, StoreSystem(data, "append", route))
    if backend == "postgres" and pgbouncer_url:
        route = Route("via pgbouncer", pgbouncer_url, {"pooler": "transaction"})
        systems.insert(1, StoreSystem(data, "append", route))
    return systems


def _stores(data: StoreData) -> list[System]:
    return [
        StoreSystem(data, "append"),
        StoreSystem(data, "leased"),
        StoreSystem(data, "sealed"),
        StoreSystem(data, "upsert"),
    ]
