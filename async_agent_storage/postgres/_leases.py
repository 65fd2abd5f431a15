"""Session leases on PostgreSQL: the `{table}_leases` table and the `{table}_take_lease` function
(migration 5), and the calls that take, renew and release a lease, one statement each.

Atomicity. Taking a lease is one call of the function, so one transaction: it checks the owner,
upserts the lease row (free when absent, expired or released: token + 1), then writes the token
on the session row (`lease_token`). A fenced write of an existing session is one UPDATE whose
condition includes ``coalesce(lease_token, 0) <= fence``: if it locks the row first, the lease's
UPDATE waits for it to commit, so the new holder (whose turn starts after `lease()` returns)
reads its write; if the lease locks it first, the write waits, re-checks its condition on the
new row version and is refused. A fenced write that creates the session holds the lease row FOR
SHARE until it commits (`_writes`), so the function's upsert waits for it and its UPDATE, a new
statement with a new snapshot, then sees the created row. Expiry is the server's clock
(``clock_timestamp()``).
"""

from __future__ import annotations

from typing import Any, Final

from .._leases import Busy, Grant
from .._rules import not_owner
from ._pool import Connection
from ._sql import SQL

__all__ = ["LeaseSQL", "release", "renew", "take"]

_TAKE: Final = "SELECT o_outcome, o_token, o_holder, o_expires FROM {take_lease}($1, $2, $3, $4)"
_RENEW: Final = """
UPDATE {leases} SET expires_at = clock_timestamp() + $4::float8 * interval '1 second'
WHERE session_id = $1 AND holder = $2 AND token = $3
RETURNING expires_at
"""
_HOLDER: Final = "SELECT holder, expires_at FROM {leases} WHERE session_id = $1"
# Released: expired now, its token kept for the next holder's token + 1.
_RELEASE: Final = """
UPDATE {leases} SET expires_at = least(expires_at, clock_timestamp())
WHERE session_id = $1 AND holder = $2 AND token = $3
"""
_NOW: Final = "SELECT clock_timestamp()"


class LeaseSQL:
    """The lease statements of one store."""

    def __init__(self, sql: SQL) -> None:
        names = {"take_lease": sql.take_lease, "leases": sql.leases_table}
        self.take = _TAKE.format(**names)
        self.renew = _RENEW.format(**names)
        self.holder = _HOLDER.format(**names)
        self.release = _RELEASE.format(**names)


async def _busy(connection: Connection, sql: LeaseSQL, session_id: str) -> Busy:
    row = await connection.fetchrow(sql.holder, session_id)
    if row is None:  # no lease row (dropped meanwhile)
        return Busy("", await connection.fetchval(_NOW))
    return Busy(row[0], row[1])


async def take(
    connection: Connection,
    sql: LeaseSQL,
    label: str,
    session_id: str,
    user_id: str | None,
    holder: str,
    ttl: float,
) -> Grant | Busy:
    row: Any = await connection.fetchrow(sql.take, session_id, user_id, holder, ttl)
    outcome = row[0] if row is not None else "busy"
    if outcome == "granted":
        return Grant(row[1], row[3])
    if outcome == "not_owner":
        raise not_owner(label, session_id, user_id)
    if row is None:
        return await _busy(connection, sql, session_id)
    return Busy(row[2], row[3])


async def renew(
    connection: Connection, sql: LeaseSQL, session_id: str, holder: str, token: int, ttl: float
) -> Grant | Busy:
    expires = await connection.fetchval(sql.renew, session_id, holder, token, ttl)
    return await _busy(connection, sql, session_id) if expires is None else Grant(token, expires)


async def release(
    connection: Connection, sql: LeaseSQL, session_id: str, holder: str, token: int
) -> None:
    await connection.execute(sql.release, session_id, holder, token)
