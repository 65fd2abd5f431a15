"""What is particular to the PostgreSQL driver: the lossless jsonb encoding and what stays
queryable, one statement per hot call, flat reads of long histories, pools passed in, URLs and
configuration errors."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from async_agent_storage import (
    ConfigurationError,
    PostgresStore,
    Session,
    SessionOwnershipError,
    StorageUnavailableError,
    open_store,
)
from async_agent_storage.postgres import _writes as pg_writes
from async_agent_storage.postgres._jsonb import MARK, from_db, to_db
from async_agent_storage.postgres.store import normalize_url
from async_agent_storage.testing import json_values, typed

from . import conftest
from ._server import free_port
from .conftest import StoreMaker

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(make_store: StoreMaker) -> AsyncIterator[PostgresStore]:
    async with make_store(pool_min_size=2, pool_max_size=2) as store:
        yield store


# --- the jsonb encoding -------------------------------------------------------------------------


TRICKY: dict[str, Any] = {
    "nul": "a\x00b",
    "mark": MARK + "not an escape",
    "mark_inside": "x" + MARK + "y",
    "\x00key": 1,
    MARK + "key": 2,
    "negative_zero": -0.0,
    "huge": 1e300,
    "max": 1.7976931348623157e308,
    "tiny": 5e-324,
    "e16": 1e16,
    "negative_e20": -1.5e20,
    "small": 1.5e-7,
    "one": 1.0,
    "big_int": 2**70,
    "escaped_text": "\\u0000 is not NUL",
    "plus": "e+5 and -0.0 in a string",
}


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=json_values(max_leaves=20))
async def test_any_value_survives_jsonb_exactly(admin: asyncpg.Connection, value: Any) -> None:
    from async_agent_storage import _codec as codec

    stored = await admin.fetchval("SELECT $1::text::jsonb::text", to_db(codec.dumps(value)))
    back = from_db(stored)
    assert back == value
    assert typed(back) == typed(value)  # the same types too: 1e16 stays a float, -0.0 negative


async def test_values_jsonb_would_change_are_stored_losslessly(
    store: PostgresStore, admin: asyncpg.Connection
) -> None:
    stored = await store.upsert(Session(session_id="tricky", session_data=TRICKY))
    read = await store.read("tricky")
    assert read is not None
    assert read.session_data == TRICKY == stored.session_data
    for key, value in TRICKY.items():
        assert type(read.session_data[key]) is type(value), key
    assert str(read.session_data["negative_zero"]) == "-0.0"
    # What the database holds: numbers stay numbers, only NUL strings and -0.0 are escaped.
    table = store._statements().table
    row = await admin.fetchrow(
        f"""SELECT jsonb_typeof(session_data->'huge'), (session_data->>'e16')::float8,
                   session_data->>'nul', session_data->>'negative_zero',
                   session_data->>'plus'
            FROM {table} WHERE session_id = 'tricky'"""
    )
    assert row[0] == "number"
    assert row[1] == 1e16
    assert row[2] == MARK + "sa" + MARK + "0b"
    assert row[3] == MARK + "n-0.0"
    assert row[4] == "e+5 and -0.0 in a string"


async def test_ordinary_values_are_queryable_with_json_operators(
    store: PostgresStore, admin: asyncpg.Connection
) -> None:
    await store.upsert(
        Session(
            session_id="q",
            user_id="u",
            session_data={"session_state": {"city": "Paris", "score": 0.5, "n": 3}},
            metadata={"tags": ["a", "b"], "priority": 2},
            runs=[{"run_id": "r1", "model": "gpt", "tokens": 120}],
        )
    )
    table = store._statements().table
    runs = store._statements().runs_table
    found = await admin.fetchval(
        f"""SELECT session_id FROM {table}
            WHERE session_data->'session_state'->>'city' = 'Paris'
              AND (session_data->'session_state'->>'score')::float8 = 0.5
              AND metadata @> '{{"tags": ["b"]}}' AND (metadata->>'priority')::int = 2"""
    )
    assert found == "q"
    # Run bodies are text since migration 7: queried through a cast.
    tokens = await admin.fetchval(
        f"SELECT sum((body::jsonb->>'tokens')::int) FROM {runs} WHERE body::jsonb->>'model' = 'gpt'"
    )
    assert tokens == 120


def test_plain_documents_are_passed_through_untouched() -> None:
    data = b'{"a":"text with \\n and \\"quotes\\"","n":12,"f":0.25,"l":[true,null]}'
    assert to_db(data) == data.decode()
    assert from_db(data.decode()) == json.loads(data)


def test_strings_starting_with_the_mark_but_not_written_by_the_driver_are_kept() -> None:
    assert from_db(json.dumps([MARK + "x", MARK])) == [MARK + "x", MARK]


# --- one statement per call, flat in history length ----------------------------------------------


async def test_hot_calls_send_one_statement_each(store: PostgresStore) -> None:
    sent: list[str] = []
    assert store._pool is not None
    for holder in store._pool.pool._holders:  # every connection of the pool (min = max = 2)
        assert holder._con is not None
        holder._con.add_query_logger(lambda record: sent.append(record.query))
    session = await store.append_runs("one", [{"i": 0}], user_id="u")  # prepares statements
    tail = await store.read("one", user_id="u", last_runs=1)
    assert tail is not None
    await store.upsert(tail)
    await store.delete_session("gone")
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "read": lambda: store.read("one", user_id="u", last_runs=1),
        "append_runs": lambda: store.append_runs("one", [{"i": 1}], user_id="u"),
        "upsert": lambda: store.upsert(tail),
        "delete_session": lambda: store.delete_session("gone"),
    }
    for name, call in calls.items():
        for _ in range(3):  # on both connections
            (await _logged(sent)).clear()
            await call()
            assert len(await _logged(sent)) == 1, (name, sent)  # no reset query on release either
    assert session.version == 1


async def _logged(sent: list[Any]) -> list[Any]:
    """`sent` once asyncpg has delivered the records of the statements sent so far: it hands
    them to the loggers with `call_soon`, after the call that sent them may have returned."""
    await asyncio.sleep(0)
    return sent


def _log_statements(store: PostgresStore) -> list[Any]:
    """The statements the store's pool sends from now on (asyncpg's query records)."""
    sent: list[Any] = []
    assert store._pool is not None
    for holder in store._pool.pool._holders:
        assert holder._con is not None
        holder._con.add_query_logger(sent.append)
    return sent


async def test_an_upsert_sends_only_the_runs_changed_since_the_read(
    store: PostgresStore, make_store: StoreMaker
) -> None:
    """Runs read by this store and left as they were are not sent again while the row is the
    version read; when another writer came in between, the whole write is sent, and it is the
    caller's that is stored, as without the shortcut."""
    await store.append_runs("s", [{"i": i, "text": "x" * 100} for i in range(3)], user_id="u")
    read = await store.read("s", user_id="u")
    assert read is not None
    sql = store._statements()
    sent = _log_statements(store)
    read.runs.append({"i": 3})
    read.runs[2]["i"] = 20  # changed: sent, with what follows it
    written = await store.upsert(read)
    assert [r.query for r in await _logged(sent)] == [sql.update_skipping]
    assert [orjson.loads(b) for b in sent[0].args[14]] == [{"i": 20, "text": "x" * 100}, {"i": 3}]
    written.runs.append({"i": 4})  # the returned session carries the row version it wrote
    (await _logged(sent)).clear()
    latest = await store.upsert(written)
    assert [r.query for r in await _logged(sent)] == [sql.update_skipping]
    assert [orjson.loads(b) for b in sent[0].args[14]] == [{"i": 4}]
    (await _logged(sent)).clear()
    await store.upsert(read)  # an older copy: no attempt, the whole write in one statement
    assert [r.query for r in await _logged(sent)] == [sql.upsert]
    again = await store.read("s", user_id="u")
    assert again is not None
    assert [r["i"] for r in again.runs] == [0, 1, 20, 3]
    assert latest.version == 3
    # Another store object writes between this one's read and its upsert: one statement that
    # misses, then the whole write; the caller's runs are stored (the last writer wins).
    mine = await store.read("s", user_id="u")
    assert mine is not None
    async with make_store() as other:
        theirs = await other.read("s", user_id="u")
        assert theirs is not None
        theirs.runs[0]["i"] = -1
        await other.upsert(theirs)
    mine.runs.append({"i": 5})
    (await _logged(sent)).clear()
    await store.upsert(mine)
    assert [r.query for r in await _logged(sent)] == [sql.update_skipping, sql.upsert]
    final = await store.read("s", user_id="u")
    assert final is not None
    assert [r["i"] for r in final.runs] == [0, 1, 20, 3, 5]


async def test_reading_the_tail_of_a_long_history_touches_only_the_tail(
    store: PostgresStore, admin: asyncpg.Connection
) -> None:
    for i in range(0, 2000, 500):
        await store.append_runs("long", [{"i": j} for j in range(i, i + 500)])
    await store.append_runs("short", [{"i": 0}])
    sql = store._statements()
    await admin.execute(f"ANALYZE {sql.table}; ANALYZE {sql.runs_table}")
    plan = await admin.fetchval(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + sql.read, "long", None, 5, column=0
    )
    nodes = []

    def walk(node: dict[str, Any]) -> None:
        nodes.append(node)
        for child in node.get("Plans", []):
            walk(child)

    walk(json.loads(plan)[0]["Plan"])
    runs_scans = [n for n in nodes if n.get("Relation Name") == f"{store.table_name}_runs"]
    assert len(runs_scans) == 1
    scan = runs_scans[0]
    assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), scan["Node Type"]
    assert scan["Actual Rows"] == 5
    assert scan.get("Rows Removed by Filter", 0) == 0
    read = await store.read("long", last_runs=5)
    assert read is not None
    assert [r["i"] for r in read.runs] == list(range(1995, 2000))


async def test_leftover_runs_past_the_end_are_never_read_and_get_overwritten(
    store: PostgresStore, admin: asyncpg.Connection
) -> None:
    # What a delete racing an append can leave behind: runs at seq >= run_count.
    await store.append_runs("s", [{"i": 0}, {"i": 1}])
    runs = store._statements().runs_table
    await admin.execute(
        f"INSERT INTO {runs} VALUES ('s', 2, 'stale', '{{\"stale\": true}}'), "
        "('s', 7, 'stale7', '{\"stale\": true}')"
    )
    read = await store.read("s")
    assert read is not None
    assert [r["i"] for r in read.runs] == [0, 1]
    listed = await store.get_all_sessions(include_runs=True)
    assert [r["i"] for r in listed[0].runs] == [0, 1]
    await store.append_runs("s", [{"i": 2}, {"i": 3}])
    read = await store.read("s", last_runs=3)
    assert read is not None
    assert [r["i"] for r in read.runs] == [1, 2, 3]
    assert await store.delete_session("s")
    assert await admin.fetchval(f"SELECT count(*) FROM {runs} WHERE session_id = 's'") == 0


async def test_overlapping_batches_do_not_deadlock(store: PostgresStore) -> None:
    ids = [f"b{i:02d}" for i in range(40)]

    async def batch(seed: int) -> None:
        order = ids[:]
        random.Random(seed).shuffle(order)
        await store.upsert_many(
            [Session(session_id=sid, session_data={"by": seed}) for sid in order]
        )

    await asyncio.gather(*(batch(seed) for seed in range(8)))
    sessions = await store.get_all_sessions()
    assert len(sessions) == 40
    assert all(s.version == 8 for s in sessions)
    assert len({s.updated_at for s in sessions}) <= 8


def _count_copies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The outcome of each COPY the store's batches try ("copied" or the error's name): the
    driver's own `_copy_new`, run as it is, counted."""
    outcomes: list[str] = []
    copy_new = pg_writes._copy_new

    async def counted(*args: Any) -> Any:
        try:
            rows = await copy_new(*args)
        except Exception as exc:
            outcomes.append(type(exc).__name__)
            raise
        outcomes.append("copied")
        return rows

    monkeypatch.setattr(pg_writes, "_copy_new", counted)
    return outcomes


def _batch(prefix: str) -> list[Session]:
    return [
        Session(
            session_id=f"{prefix}{i}",
            user_id="u",
            agent_id="a" if i % 2 else None,
            session_data={"i": i, "nul": "a\x00b", "zero": -0.0, "big": 1e300},
            metadata={"tag": i} if i else None,
            runs=[{"run_id": f"r{j}", "j": j} for j in range(i)] + [{"plain": i}],
        )
        for i in range(5)
    ]


async def test_a_batch_of_new_sessions_is_copied_as_the_statement_writes_it(
    make_store: StoreMaker, admin: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of new sessions goes in by COPY; the rows are those the batch statement writes
    (the transaction's time everywhere, version 1, the expiry from the store's ttl), and the
    sessions returned are the ones stored."""
    copies = _count_copies(monkeypatch)
    store = make_store(ttl=3600)
    async with store:
        copied = await store.upsert_many(_batch("c"))
        assert copies == ["copied"]
        monkeypatch.setattr(pg_writes, "COPY_FROM", 10**9)
        stated = await store.upsert_many(_batch("s"))
        assert copies == ["copied"]
        sql = store._statements()
        columns = (
            "session_type, user_id, agent_id, team_id, workflow_id, session_data::text, "
            "agent_data::text, team_data::text, workflow_data::text, metadata::text, "
            "summary::text, version, run_count, lease_token, expires_at - created_at, "
            "created_at = updated_at"
        )
        for prefix, returned in (("c", copied), ("s", stated)):
            assert [s.session_id for s in returned] == [f"{prefix}{i}" for i in range(5)]
        for i in range(5):
            rows = [
                await admin.fetchrow(
                    f"SELECT {columns} FROM {sql.table} WHERE session_id = $1", f"{p}{i}"
                )
                for p in "cs"
            ]
            assert rows[0] == rows[1]
            assert rows[0]["version"] == 1
            assert rows[0]["?column?"] is True
            runs = [
                await admin.fetch(
                    f"SELECT seq, run_id, body, r.created_at = s.created_at AS same_time "
                    f"FROM {sql.runs_table} r JOIN {sql.table} s USING (session_id) "
                    "WHERE session_id = $1 ORDER BY seq",
                    f"{p}{i}",
                )
                for p in "cs"
            ]
            assert [(r["seq"], r["body"]) for r in runs[0]] == [
                (r["seq"], r["body"]) for r in runs[1]
            ]
            # The ids given are stored; the last run has none and gets a new one on each path.
            assert [r["run_id"] for r in runs[0][:-1]] == [f"r{j}" for j in range(i)]
            assert [r["run_id"] for r in runs[1][:-1]] == [f"r{j}" for j in range(i)]
            assert all(r["same_time"] for r in runs[0] + runs[1])
            stored = await store.read(f"c{i}", user_id="u")
            assert stored is not None
            assert stored == copied[i]
            assert stored.runs == _batch("c")[i].runs
            assert stored.session_data == _batch("c")[i].session_data
        assert (await store.activity()).runs == 2 * sum(i + 1 for i in range(5))


async def test_a_copied_batch_meeting_leftover_runs_is_written_by_the_statement(
    store: PostgresStore, admin: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs a racing delete left behind for a session that no longer exists: COPY cannot
    overwrite them, so the batch is rolled back and written again by the statement."""
    copies = _count_copies(monkeypatch)
    runs = store._statements().runs_table
    await admin.execute(f"INSERT INTO {runs} VALUES ('n1', 0, 'stale', '{{}}', now())")
    written = await store.upsert_many(
        [Session(session_id=f"n{i}", runs=[{"run_id": "r", "i": i}]) for i in range(4)]
    )
    assert copies == ["_CopyRefused"]
    assert [s.version for s in written] == [1, 1, 1, 1]
    for i in range(4):
        read = await store.read(f"n{i}")
        assert read is not None
        assert read.runs == [{"run_id": "r", "i": i}]
    assert await admin.fetchval(f"SELECT count(*) FROM {runs}") == 4


async def test_a_session_created_by_another_user_during_a_copy_is_refused_and_nothing_kept(
    store: PostgresStore, pg_url: str, admin: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another client creates one of the batch's sessions, as another user, after the batch
    found none of them: the COPY waits for it, is refused, and the batch written again by the
    statement meets the other owner. Nothing of the batch is kept."""
    copies = _count_copies(monkeypatch)
    sql = store._statements()
    other = await asyncpg.connect(pg_url)
    try:
        await other.execute("BEGIN")
        await other.execute(
            f"INSERT INTO {sql.table} (session_id, session_type, user_id, session_data, "
            "created_at, updated_at, version, run_count) "
            "VALUES ('m2', 'agent', 'other', '{}', now(), now(), 1, 0)"
        )
        batch = asyncio.create_task(
            store.upsert_many(
                [Session(session_id=f"m{i}", user_id="u", runs=[{"i": i}]) for i in range(4)]
            )
        )
        for _ in range(100):  # until the store's COPY waits for the other transaction
            waiting = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'COPY%'"
            )
            if waiting:
                break
            await asyncio.sleep(0.02)
        assert waiting == 1
        await other.execute("COMMIT")
        with pytest.raises(SessionOwnershipError):
            await batch
    finally:
        await other.close()
    assert copies == ["_CopyRefused"]
    ids = await admin.fetch(f"SELECT session_id, user_id FROM {sql.table} ORDER BY 1")
    assert [tuple(r) for r in ids] == [("m2", "other")]
    assert await admin.fetchval(f"SELECT count(*) FROM {sql.runs_table}") == 0


# --- pools, URLs, configuration ------------------------------------------------------------------


async def test_a_pool_passed_in_is_used_and_left_open(make_store: StoreMaker, pg_url: str) -> None:
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=3)
    try:
        store = make_store(db_url=None, pool=pool)
        assert store.pool_max_size == 3
        async with store:
            await asyncio.gather(*(store.append_runs(f"p{i}", [{"i": i}]) for i in range(20)))
            assert len(await store.get_all_session_ids()) == 20
        assert not pool._closed
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_a_pool_passed_in_keeps_its_own_json_codec(
    make_store: StoreMaker, pg_url: str
) -> None:
    async def init(connection: asyncpg.Connection) -> None:
        await connection.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )

    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=2, init=init)
    try:
        async with make_store(db_url=None, pool=pool) as store:
            await store.upsert(Session(session_id="c", session_data={"k": [1, "two"]}))
            read = await store.read("c")
            assert read is not None
            assert read.session_data == {"k": [1, "two"]}
            assert await pool.fetchval("SELECT '{\"x\": 1}'::jsonb") == {"x": 1}
    finally:
        await pool.close()


async def test_no_statement_cache_works_with_the_stores_own_pool(make_store: StoreMaker) -> None:
    async with make_store(statement_cache_size=0) as store:
        await store.append_runs("nc", [{"i": 0}], user_id="u")
        await store.upsert(Session(session_id="nc2", user_id="u"))
        read = await store.read("nc", user_id="u", last_runs=1)
        assert read is not None
        assert await store.get_all_session_ids(user_id="u") == ["nc2", "nc"]
        assert await store.delete_session("nc")


async def test_the_schema_is_created_when_missing_and_search_path_is_the_default(
    pg_url: str,
) -> None:
    schema = f"aas_new_{uuid.uuid4().hex[:8]}"
    table = conftest.table_name()
    try:
        async with PostgresStore(table, pg_url, schema=schema) as store:
            await store.append_runs("s", [{"i": 0}])
            assert store._statements().schema == schema
        async with PostgresStore(table, pg_url) as default:
            assert default._statements().schema == "public"
            assert await default.read("s") is None
            assert "public" in default.label
    finally:
        await conftest.execute(pg_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conftest.drop_tables(pg_url, "public", table)


@pytest.mark.parametrize(
    "scheme", ["postgresql", "postgres", "postgresql+psycopg", "postgresql+asyncpg"]
)
async def test_open_store_accepts_every_postgres_scheme(
    scheme: str, pg_url: str, pg_schema: str
) -> None:
    url = scheme + "://" + pg_url.partition("://")[2]
    table = conftest.table_name()
    store = open_store(url, table_name=table, schema=pg_schema)
    assert isinstance(store, PostgresStore)
    assert store.db_url is not None
    assert store.db_url.startswith(scheme.split("+")[0] + "://")
    try:
        async with store:
            await store.append_runs("s", [{"via": scheme}])
    finally:
        await conftest.drop_tables(pg_url, pg_schema, table)


def test_urls_are_normalized() -> None:
    assert normalize_url("postgresql+psycopg://u:p@h:5/d") == "postgresql://u:p@h:5/d"
    assert normalize_url("POSTGRESQL+ASYNCPG://h/d?sslmode=disable") == (
        "postgresql://h/d?sslmode=disable"
    )
    assert normalize_url("postgres://h/d") == "postgres://h/d"
    for bad in ("mysql://h/d", "postgresql", "", "sqlite:///x.db"):
        with pytest.raises(ConfigurationError):
            normalize_url(bad)


@pytest.mark.parametrize(
    "options",
    [
        {"table_name": 'x"; DROP TABLE y; --'},
        {"table_name": "x" * 49},
        {"table_name": "1table"},
        {"schema": 'public"; DROP TABLE y; --'},
        {"schema": "a.b"},
        {"db_url": "mysql://localhost/db"},
        {"db_url": None},
        {"pool": "not a pool"},
        {"pool_max_size": 0},
        {"pool_min_size": 5, "pool_max_size": 2},
        {"acquire_timeout": 0},
        {"acquire_timeout": float("nan")},
        {"command_timeout": -1},
        {"statement_cache_size": -1},
        {"max_session_bytes": 10},
    ],
)
def test_bad_configuration_is_refused_at_construction(options: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"table_name": "ok", "db_url": "postgresql://h/d", **options}
    with pytest.raises(ConfigurationError):
        PostgresStore(**arguments)


async def test_injection_in_names_never_reaches_sql(pg_url: str) -> None:
    with pytest.raises(ConfigurationError, match="not a valid name"):
        open_store(pg_url, table_name='x"; DROP TABLE y; --')
    with pytest.raises(ConfigurationError, match="not a valid name"):
        PostgresStore("ok", pg_url, schema="x; DROP SCHEMA public CASCADE")


async def test_a_refused_connection_is_unavailable(pg_schema: str) -> None:
    store = PostgresStore("t", f"postgresql://postgres@127.0.0.1:{free_port()}/x", schema=pg_schema)
    with pytest.raises(StorageUnavailableError) as info:
        await store.open()
    assert f"127.0.0.1:{store.db_url.rsplit(':', 1)[1].split('/')[0]}" in str(info.value)  # type: ignore[union-attr]
    assert not isinstance(info.value.__cause__, StorageUnavailableError)
    with pytest.raises(StorageUnavailableError):
        await store.schema_version()


async def test_bad_credentials_or_database_are_configuration_errors(pg_url: str) -> None:
    missing_db = pg_url.rsplit("/", 1)[0] + "/no_such_database_" + uuid.uuid4().hex[:6]
    with pytest.raises(ConfigurationError, match="check db_url"):
        await PostgresStore("t", missing_db).open()
    scheme, _, rest = pg_url.partition("://")
    unknown_role = f"{scheme}://no_such_role_x@{rest.rpartition('@')[2]}"
    with pytest.raises(ConfigurationError):
        await PostgresStore("t", unknown_role).open()


async def test_calls_before_open_and_after_close_are_store_closed(make_store: StoreMaker) -> None:
    store = make_store()
    with pytest.raises(Exception, match="not open yet") as info:
        await store.read("x")
    assert type(info.value).__name__ == "StoreClosedError"
    async with store:
        pass
    with pytest.raises(Exception, match="was closed"):
        await store.append_runs("x", [])
    with pytest.raises(Exception, match="closed"):
        await store.schema_version()


async def test_open_is_idempotent_and_safe_to_race(make_store: StoreMaker) -> None:
    store = make_store()
    await asyncio.gather(*(store.open() for _ in range(5)))
    await store.open()
    await store.append_runs("s", [{"i": 0}])
    await store.close()
    await store.close()


async def test_a_store_left_open_warns(make_store: StoreMaker) -> None:
    store = make_store()
    await store.open()
    with pytest.warns(ResourceWarning, match="never closed"):
        store.__del__()
    await store.close()


async def test_messages_name_the_store_table_and_server(store: PostgresStore) -> None:
    label = store.label
    assert label.startswith("postgresql 127.0.0.1") or "postgresql " in label
    assert f".{store.table_name}" in label
    assert "@" not in label  # never the credentials
