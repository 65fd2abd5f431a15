"""The peers, each driven the way its own framework drives its storage, in the peers' interpreter.

Run by the suite as ``.venv-peers/bin/python -m benchmarks.peers.runner '<job as JSON>'`` with the
repository on PYTHONPATH (it imports only `benchmarks.workload`, `benchmarks.loadgen` and
`benchmarks.pgsnap`, which need nothing but the standard library and asyncpg). It prints one JSON
object per line: ``{"system": ...}``, ``{"starting": ...}``, ``{"cell": ...}`` or
``{"message": ...}``.

- **Agno 3.x** (`AsyncSqliteDb`, `AsyncPostgresDb` on an engine made by Agno's own
  `create_async_postgres_engine`, psycopg, pool of 20): a turn is what `Agent.arun` does with
  its database, in its order: ``get_session`` (the whole history: `aread_or_create_session`
  passes no `runs_limit`), then `apersist_run_in_session`: ``session.upsert_run``,
  ``upsert_session`` (the session row), ``upsert_run`` (the new run's row).
- **LangGraph** (`AsyncPostgresSaver` on a psycopg `AsyncConnectionPool` of 20, with the settings
  its documentation gives: autocommit, prepare_threshold=0, dict_row): a turn is one super-step
  of a graph with a `messages` channel: ``aget_tuple`` (the latest checkpoint), ``aput_writes``
  (the node's writes), ``aput`` (the new checkpoint holding the whole message list, as the saver
  stores a channel's value at each new version). A real ``graph.ainvoke`` also checkpoints its
  input step, so this is the lighter half of what LangGraph does per request.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from benchmarks import pgsnap
from benchmarks.loadgen import CellResult, run_cell
from benchmarks.workload import Picker, SeedSession, WorkloadSpec, next_state, sessions

POOL_SIZE = 20
AGNO_SCHEMA = "aas_bench_agno"
LANGGRAPH_SCHEMA = "aas_bench_langgraph"


def emit(**item: Any) -> None:
    print(json.dumps(item, default=str), flush=True)


def psycopg_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if scheme in ("postgres", "postgresql") else url


def plain_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"postgresql://{rest}" if scheme.startswith("postgres") else url


async def _pg(url: str) -> Any:
    import asyncpg

    return await asyncpg.connect(plain_url(url))


_SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _remove_sqlite(path: Path) -> None:
    for suffix in _SQLITE_SUFFIXES:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _files_size(path: Path) -> int:
    return sum(
        os.path.getsize(f"{path}{s}") for s in _SQLITE_SUFFIXES if os.path.exists(f"{path}{s}")
    )


# --- Agno -------------------------------------------------------------------------------------


def _agno_run(run: dict[str, Any], session_id: str) -> Any:
    from agno.run.agent import RunOutput

    data = dict(run)
    data["session_id"] = session_id
    data["input"] = {"input_content": run["input"]}
    return RunOutput.from_dict(data)


class Agno:
    """Agno 3.x's async storage, SQLite or PostgreSQL."""

    scenarios = frozenset({"turn", "list", "history"})

    def __init__(self, backend: str, url: str | None, workdir: Path) -> None:
        self.backend = backend
        self.url = url
        self.workdir = workdir
        self.name = "agno AsyncPostgresDb" if backend == "postgres" else "agno AsyncSqliteDb"
        self.path = workdir / "agno.db"
        self.db: Any = None

    def info(self) -> dict[str, Any]:
        import importlib.metadata as md

        info: dict[str, Any] = {"agno": md.version("agno"), "sqlalchemy": md.version("sqlalchemy")}
        if self.backend == "postgres":
            info.update(driver=f"psycopg {md.version('psycopg')}", pool_size=POOL_SIZE)
        return info

    def _open(self) -> Any:
        if self.backend == "postgres":
            from agno.db.postgres import AsyncPostgresDb
            from agno.db.postgres.engine import create_async_postgres_engine

            assert self.url is not None
            engine = create_async_postgres_engine(
                psycopg_url(self.url), pool_size=POOL_SIZE, max_overflow=0
            )
            return AsyncPostgresDb(
                db_engine=engine,
                db_schema=AGNO_SCHEMA,
                session_table="agno_sessions",
                runs_table="agno_runs",
            )
        from agno.db.sqlite import AsyncSqliteDb

        return AsyncSqliteDb(
            db_file=str(self.path), session_table="agno_sessions", runs_table="agno_runs"
        )

    async def reset(self) -> None:
        if self.backend == "postgres":
            conn = await _pg(self.url or "")
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {AGNO_SCHEMA} CASCADE")
            finally:
                await conn.close()
        else:
            _remove_sqlite(self.path)

    async def seed(self, tag: str, spec: WorkloadSpec) -> dict[str, Any]:
        from agno.db.utils import build_single_run_row
        from agno.session import AgentSession
        from sqlalchemy import insert

        await self.reset()
        db = self._open()
        t0 = time.perf_counter()
        count = runs = 0
        gate = asyncio.Semaphore(POOL_SIZE)

        async def one(seed: SeedSession) -> None:
            # The session row through Agno's own upsert; the runs' rows in one bulk INSERT of
            # the rows Agno's upsert_run would write (seeding is not measured).
            agno_runs = [_agno_run(r, seed.session_id) for r in seed.runs]
            session = AgentSession(
                session_id=seed.session_id,
                agent_id=seed.agent_id,
                user_id=seed.user_id,
                session_data=seed.session_data,
                agent_data=seed.agent_data,
                metadata=seed.metadata,
                created_at=seed.created_at,
                runs=agno_runs,
            )
            rows = [
                build_single_run_row(r, seed.session_id, seed.user_id, i)
                for i, r in enumerate(agno_runs)
            ]
            async with gate:
                await db.upsert_session(session)
                table = await db._get_table(table_type="runs", create_table_if_not_found=True)
                async with db.async_session_factory() as sess, sess.begin():
                    await sess.execute(insert(table), rows)

        try:
            batch: list[SeedSession] = []
            for seed in sessions(spec):
                batch.append(seed)
                count += 1
                runs += len(seed.runs)
                if len(batch) >= 100:
                    await asyncio.gather(*(one(s) for s in batch))
                    batch = []
            await asyncio.gather(*(one(s) for s in batch))
        finally:
            await db.close()
        seconds = time.perf_counter() - t0
        size = await self._size()
        await self._snapshot(tag)
        return {
            "sessions": count,
            "runs": runs,
            "seconds": round(seconds, 2),
            "bytes_stored": size,
            "bytes_per_session": None if size is None else size / max(1, count),
        }

    async def _size(self) -> int | None:
        if self.backend == "postgres":
            conn = await _pg(self.url or "")
            try:
                return int(await pgsnap.size(conn, AGNO_SCHEMA, ""))
            finally:
                await conn.close()
        return _files_size(self.path)

    async def _snapshot(self, tag: str) -> None:
        if self.backend == "postgres":
            conn = await _pg(self.url or "")
            try:
                await pgsnap.snapshot(conn, AGNO_SCHEMA, "", f"agno_{tag}")
            finally:
                await conn.close()
        else:
            shutil.copyfile(self.path, self.workdir / f"agno.{tag}.snapshot")

    async def start(self, tag: str) -> None:
        if self.backend == "postgres":
            conn = await _pg(self.url or "")
            try:
                await pgsnap.restore(conn, AGNO_SCHEMA, "", f"agno_{tag}")
            finally:
                await conn.close()
        else:
            _remove_sqlite(self.path)
            shutil.copyfile(self.workdir / f"agno.{tag}.snapshot", self.path)
        self.db = self._open()

    async def stop(self) -> None:
        if self.db is not None:
            db, self.db = self.db, None
            await db.close()

    async def turn(self, picker: Picker, spec: WorkloadSpec) -> None:
        from agno.db.base import SessionType
        from agno.session._utils import resolve_run_index

        db = self.db
        ref = picker.session()
        # aread_or_create_session -> aread_session: the whole history (no runs_limit).
        session = await db.get_session(
            session_id=ref.session_id, session_type=SessionType.AGENT, user_id=ref.user_id
        )
        if session is None:
            raise LookupError(f"session {ref.session_id} not found")
        _context = (session.runs or [])[-spec.last_runs :]  # what the model would see
        run = _agno_run(picker.new_run(ref), ref.session_id)
        state = next_state(session.session_data or {}, picker.rng)
        # apersist_run_in_session: add the run, set the state, save the session, save the run.
        session.upsert_run(run=run)
        run_index = resolve_run_index(session, run)
        session.session_data = state
        if await db.upsert_session(session) is None:
            raise RuntimeError(
                "agno upsert_session returned None (it logs errors and returns None)"
            )
        await db.upsert_run(
            run=run, session_id=ref.session_id, user_id=ref.user_id, run_index=run_index
        )

    async def list_recent(self, picker: Picker, spec: WorkloadSpec) -> None:
        from agno.db.base import SessionType

        found = await self.db.get_sessions(
            session_type=SessionType.AGENT,
            user_id=picker.user(),
            limit=spec.list_limit,
            sort_by="updated_at",
            sort_order="desc",
            include_runs=False,
        )
        if not found:
            raise LookupError("no session listed")

    async def cleanup(self) -> None:
        await self.reset()
        if self.backend == "postgres":
            conn = await _pg(self.url or "")
            try:
                await pgsnap.drop(conn, AGNO_SCHEMA, "", snapshots=True)
            finally:
                await conn.close()
        else:
            for snap in self.workdir.glob("agno.*.snapshot"):
                snap.unlink()


# --- LangGraph --------------------------------------------------------------------------------


def _messages(run: dict[str, Any]) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    out: list[Any] = []
    for m in run["messages"]:
        if m["role"] == "user":
            out.append(HumanMessage(content=m["content"]))
        elif m["role"] == "tool":
            out.append(ToolMessage(content=m["content"], tool_call_id=m["tool_call_id"]))
        else:
            calls = [
                {
                    "name": c["function"]["name"],
                    "args": json.loads(c["function"]["arguments"]),
                    "id": c["id"],
                }
                for c in m.get("tool_calls") or []
            ]
            out.append(AIMessage(content=m["content"] or "", tool_calls=calls))
    return out


class LangGraph:
    """LangGraph's `AsyncPostgresSaver`: the checkpointer of a graph with a messages channel."""

    scenarios = frozenset({"turn", "history"})
    name = "langgraph AsyncPostgresSaver"

    def __init__(self, url: str) -> None:
        self.url = plain_url(url)
        self.pool: Any = None
        self.saver: Any = None

    def info(self) -> dict[str, Any]:
        import importlib.metadata as md

        return {
            "langgraph-checkpoint-postgres": md.version("langgraph-checkpoint-postgres"),
            "driver": f"psycopg {md.version('psycopg')}",
            "pool_size": POOL_SIZE,
        }

    async def _open(self, *, setup: bool = False) -> None:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        self.pool = AsyncConnectionPool(
            self.url,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            open=False,
            kwargs={
                "autocommit": True,
                "prepare_threshold": 0,
                "row_factory": dict_row,
                "options": f"-c search_path={LANGGRAPH_SCHEMA}",
            },
        )
        await self.pool.open(wait=True)
        self.saver = AsyncPostgresSaver(self.pool)
        if setup:
            await self.saver.setup()

    async def stop(self) -> None:
        if self.pool is not None:
            pool, self.pool, self.saver = self.pool, None, None
            await pool.close()

    async def seed(self, tag: str, spec: WorkloadSpec) -> dict[str, Any]:
        from langgraph.checkpoint.base import empty_checkpoint

        conn = await _pg(self.url)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {LANGGRAPH_SCHEMA} CASCADE")
            await conn.execute(f"CREATE SCHEMA {LANGGRAPH_SCHEMA}")
        finally:
            await conn.close()
        await self._open(setup=True)
        t0 = time.perf_counter()
        count = runs = 0
        gate = asyncio.Semaphore(POOL_SIZE)

        async def one(seed: SeedSession) -> None:
            messages: list[Any] = []
            for run in seed.runs:
                messages += _messages(run)
            checkpoint = empty_checkpoint()
            version = self.saver.get_next_version(None, None)
            checkpoint["channel_values"] = {"messages": messages, "state": seed.session_data}
            checkpoint["channel_versions"] = {"messages": version, "state": version}
            config = {"configurable": {"thread_id": seed.session_id, "checkpoint_ns": ""}}
            metadata = {"source": "loop", "step": len(seed.runs), "user_id": seed.user_id}
            async with gate:
                await self.saver.aput(
                    config, checkpoint, metadata, {"messages": version, "state": version}
                )

        try:
            batch: list[SeedSession] = []
            for seed in sessions(spec):
                batch.append(seed)
                count += 1
                runs += len(seed.runs)
                if len(batch) >= 100:
                    await asyncio.gather(*(one(s) for s in batch))
                    batch = []
            await asyncio.gather(*(one(s) for s in batch))
        finally:
            await self.stop()
        seconds = time.perf_counter() - t0
        conn = await _pg(self.url)
        try:
            size = int(await pgsnap.size(conn, LANGGRAPH_SCHEMA, ""))
            await pgsnap.snapshot(conn, LANGGRAPH_SCHEMA, "", f"lg_{tag}")
        finally:
            await conn.close()
        return {
            "sessions": count,
            "runs": runs,
            "seconds": round(seconds, 2),
            "bytes_stored": size,
            "bytes_per_session": size / max(1, count),
        }

    async def start(self, tag: str) -> None:
        conn = await _pg(self.url)
        try:
            await pgsnap.restore(conn, LANGGRAPH_SCHEMA, "", f"lg_{tag}")
        finally:
            await conn.close()
        await self._open()

    async def turn(self, picker: Picker, spec: WorkloadSpec) -> None:
        from langgraph.checkpoint.base import copy_checkpoint
        from langgraph.checkpoint.base.id import uuid6

        saver = self.saver
        ref = picker.session()
        config = {"configurable": {"thread_id": ref.session_id, "checkpoint_ns": ""}}
        current = await saver.aget_tuple(config)
        if current is None:
            raise LookupError(f"thread {ref.session_id} not found")
        values = current.checkpoint["channel_values"]
        history = values.get("messages") or []
        _context = history[-3 * spec.last_runs :]  # what the model would see
        new_messages = _messages(picker.new_run(ref))
        state = next_state(values.get("state") or {}, picker.rng)
        step = int((current.metadata or {}).get("step", 0)) + 1
        # The node's writes, then the checkpoint with the channels they updated.
        await saver.aput_writes(
            current.config,
            [("messages", new_messages), ("state", state)],
            str(uuid.uuid4()),
        )
        checkpoint = copy_checkpoint(current.checkpoint)
        checkpoint["id"] = str(uuid6(clock_seq=step))
        checkpoint["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        versions = dict(checkpoint["channel_versions"])
        new_versions = {
            "messages": saver.get_next_version(versions.get("messages"), None),
            "state": saver.get_next_version(versions.get("state"), None),
        }
        checkpoint["channel_versions"] = {**versions, **new_versions}
        checkpoint["channel_values"] = {"messages": history + new_messages, "state": state}
        await saver.aput(
            current.config,
            checkpoint,
            {"source": "loop", "step": step, "user_id": ref.user_id},
            new_versions,
        )

    async def list_recent(self, picker: Picker, spec: WorkloadSpec) -> None:
        raise NotImplementedError

    async def cleanup(self) -> None:
        conn = await _pg(self.url)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {LANGGRAPH_SCHEMA} CASCADE")
            await pgsnap.drop(conn, LANGGRAPH_SCHEMA, "", snapshots=True)
        finally:
            await conn.close()


# --- the job ----------------------------------------------------------------------------------


async def _cell(
    system: Any,
    job: dict[str, Any],
    scenario: str,
    concurrency: int,
    tag: str,
    spec: WorkloadSpec,
    param: int | None,
) -> None:
    result = CellResult(job["backend"], scenario, system.name, "peer", concurrency, param)
    label = f"{job['backend']} {scenario}{'' if param is None else f' {param} runs'}"
    emit(starting=f"{label} x{concurrency} {system.name}")
    try:
        await system.start(tag)
    except Exception as exc:
        result.errors = 1
        result.error_samples = [f"start: {type(exc).__name__}: {exc}"[:300]]
        emit(cell=result.to_dict())
        return
    try:
        pickers = [Picker(spec, i, salt=concurrency) for i in range(concurrency)]
        if scenario == "list":

            def op(i: int) -> Any:
                return system.list_recent(pickers[i], spec)
        else:

            def op(i: int) -> Any:
                return system.turn(pickers[i], spec)

        await run_cell(
            op,
            concurrency=concurrency,
            warmup=job["warmup"],
            duration=job["duration"],
            result=result,
        )
    finally:
        try:
            await system.stop()
        except Exception as exc:
            result.errors += 1
            result.error_samples.append(f"stop: {exc}"[:300])
    emit(cell=result.to_dict())


async def main(job: dict[str, Any]) -> None:
    backend = job["backend"]
    workdir = Path(job["workdir"])
    spec = WorkloadSpec.from_dict(job["spec"])
    history = [(int(n), WorkloadSpec.from_dict(s)) for n, s in job["history"]]
    systems: list[Any] = [Agno(backend, job.get("url"), workdir)]
    if backend == "postgres":
        systems.append(LangGraph(job["url"]))
    ready = []
    for system in systems:
        report: dict[str, Any] = {
            "backend": backend,
            "name": system.name,
            "kind": "peer",
            "available": True,
            "reason": "",
        }
        try:
            report["info"] = system.info()
            emit(message=f"{backend}: seeding {system.name}")
            report["seed"] = await system.seed("main", spec)
            if "history" in job["scenarios"]:
                for length, hspec in history:
                    h = await system.seed(f"h{length}", hspec)
                    report["seed"][f"h{length}_bytes_per_session"] = h["bytes_per_session"]
            ready.append(system)
        except Exception as exc:
            report["available"] = False
            report["reason"] = f"not available: {type(exc).__name__}: {exc}"[:400]
            print(traceback.format_exc(), file=sys.stderr)
        emit(system=report)
    for scenario in job["scenarios"]:
        if scenario in ("turn", "list"):
            for concurrency in job["concurrency"]:
                for system in ready:
                    if scenario in system.scenarios:
                        await _cell(system, job, scenario, concurrency, "main", spec, None)
        elif scenario == "history":
            for length, hspec in history:
                for system in ready:
                    await _cell(
                        system,
                        job,
                        scenario,
                        job["history_concurrency"],
                        f"h{length}",
                        hspec,
                        length,
                    )
    for system in ready:
        try:
            await system.cleanup()
        except Exception as exc:
            emit(message=f"{system.name}: cleanup failed: {exc}")


if __name__ == "__main__":
    import logging

    logging.disable(logging.CRITICAL)  # Agno logs every error it swallows; the cells count them
    the_job = json.loads(sys.argv[1])
    Path(the_job["workdir"]).mkdir(parents=True, exist_ok=True)
    asyncio.run(main(the_job))
