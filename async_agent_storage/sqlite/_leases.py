"""Session leases on SQLite: the `{table}_leases` table (migration 6), and the calls that take,
renew and release a lease, run on the writer's thread like every write.

Atomicity: each call runs inside the writer's transaction, under SQLite's write lock (one writer
for the whole file, every process included), so taking a lease, writing its token on the session
(`lease_token`) and every fenced write are serialized: a fenced write either commits before the
lease is taken (and the new holder, whose turn starts after `lease()` returns, reads it) or sees
the new token and is refused. Time is this machine's clock in microseconds (SQLite is one
machine's database).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Final

from .._leases import Busy, Grant
from .._rules import OwnerRule, Stored, decide
from .._time import from_us, now_us

__all__ = ["LeaseSQL", "release", "renew", "take"]

# Free when absent, expired or released (expires_at <= now): then its token goes up by one.
_TAKE: Final = """
    INSERT INTO "{t}_leases" AS l (session_id, holder, token, expires_at) VALUES (?1, ?2, 1, ?4)
    ON CONFLICT (session_id) DO UPDATE SET
        holder = excluded.holder, token = l.token + 1, expires_at = excluded.expires_at
    WHERE l.expires_at <= ?3
    RETURNING token, expires_at
"""
_HOLDER: Final = 'SELECT holder, expires_at FROM "{t}_leases" WHERE session_id = ?'
# An expired session is absent here too: anyone may lease its id (the write that follows
# creates the session anew).
_OWNER: Final = """
    SELECT user_id, version FROM "{t}"
    WHERE session_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)
"""
_MARK: Final = """
    UPDATE "{t}" SET lease_token = max(coalesce(lease_token, 0), ?2) WHERE session_id = ?1
"""
_RENEW: Final = """
    UPDATE "{t}_leases" SET expires_at = ?4 WHERE session_id = ?1 AND holder = ?2 AND token = ?3
    RETURNING expires_at
"""
# Released: expired now, its token kept for the next holder's token + 1.
_RELEASE: Final = """
    UPDATE "{t}_leases" SET expires_at = min(expires_at, ?4)
    WHERE session_id = ?1 AND holder = ?2 AND token = ?3
"""


@dataclass(frozen=True, slots=True)
class LeaseSQL:
    take: str
    holder: str
    owner: str
    mark: str
    renew: str
    release: str

    @classmethod
    def for_table(cls, table: str) -> LeaseSQL:
        return cls(
            *(
                template.format(t=table)
                for template in (_TAKE, _HOLDER, _OWNER, _MARK, _RENEW, _RELEASE)
            )
        )


def _ttl_us(ttl: float) -> int:
    return round(ttl * 1_000_000)


def _busy(sql: LeaseSQL, session_id: str, db: sqlite3.Connection) -> Busy:
    row = db.execute(sql.holder, (session_id,)).fetchone()
    return Busy("", from_us(now_us())) if row is None else Busy(row[0], from_us(row[1]))


def take(
    sql: LeaseSQL,
    label: str,
    session_id: str,
    user_id: str | None,
    holder: str,
    ttl: float,
    db: sqlite3.Connection,
) -> Grant | Busy:
    now = now_us()
    owner = db.execute(sql.owner, (session_id, now)).fetchone()
    if owner is not None:
        stored = Stored(owner[0], owner[1])
        decide(label, session_id, stored, user_id=user_id, if_version=None, rule=OwnerRule.IF_GIVEN)
    row = db.execute(sql.take, (session_id, holder, now, now + _ttl_us(ttl))).fetchone()
    if row is None:
        return _busy(sql, session_id, db)
    token, expires = row
    db.execute(sql.mark, (session_id, token))
    return Grant(token, from_us(expires))


def renew(
    sql: LeaseSQL, session_id: str, holder: str, token: int, ttl: float, db: sqlite3.Connection
) -> Grant | Busy:
    expires = now_us() + _ttl_us(ttl)
    row = db.execute(sql.renew, (session_id, holder, token, expires)).fetchone()
    return _busy(sql, session_id, db) if row is None else Grant(token, from_us(row[0]))


def release(
    sql: LeaseSQL, session_id: str, holder: str, token: int, db: sqlite3.Connection
) -> None:
    db.execute(sql.release, (session_id, holder, token, now_us()))
