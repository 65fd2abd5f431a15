"""Session leases on MongoDB: the `{name}_leases` collection (migration 4), one document per
session ever leased ``{_id: session_id, holder, token, expires}`` (``expires`` a BSON date on the
server's clock, ``$$NOW``), and the session document's ``lease_token``.

**Taking a lease** is two single-document updates, in this order: (1) the lease document
(`take_pipeline`, one ``find_one_and_update``: free when absent, expired or released, then token
+ 1), (2) ``$max`` of the token into the session document's ``lease_token``. Every fenced write
is one update of the session document whose filter holds ``lease_token <= fence``. Between (1)
and (2) the previous holder's fenced writes still pass: that is safe, because the new holder's
turn starts only after `lease()` returns, after (2): those writes are ordered before its first
read, so it sees them. From (2) on, a write fenced with an older token misses its filter and
`_rules.decide` refuses it. (1) before (2) also means a crash in between fences no one who is
not already fenced: at worst the old holder writes on until the lease's next taker.

**A fenced write that creates its session** (no session document yet) reads the lease document
first, refuses an older fence, and creates the document with that lease's token as its
``lease_token``. Without multi-document transactions a lease taken between that read and the
insert misses the document in its step (2); the writer then finds the newer lease when it reads
the lease document again after its insert (`after_create`) and raises the document's
``lease_token`` to it, so later stale writes are refused. What that narrow window (a holder
stalled past its ttl exactly while creating the session, and a new holder reading the session
as absent in the meantime) can still let through is that one creating write.

A session document without ``lease_token`` (written before leases, or created again by an
unfenced write) misses every fenced filter once: the writer then reads the lease document and
writes its token there (`fence_state`), which is idempotent and only ever raises the token.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from .._leases import Busy, Grant, aware
from .._rules import RETRY, OwnerRule, Stored, decide, fenced
from .._time import now_us
from . import _queries as q
from ._queries import Collections

__all__ = ["after_create", "check_create", "fence_state", "release", "renew", "take"]


def _ttl_ms(ttl: float) -> int:
    return max(1, round(ttl * 1000))


def take_pipeline(holder: str, ttl_ms: int) -> list[dict[str, Any]]:
    """Take the lease when it is absent, expired or released (``expires <= $$NOW``); otherwise
    leave it as it is. (A pipeline: MongoDB refuses ``$expr`` in the filter of an upsert.)"""
    free = {
        "$or": [
            {"$eq": [{"$ifNull": ["$holder", None]}, None]},
            {"$lte": ["$expires", "$$NOW"]},
        ]
    }
    return [
        {
            "$set": {
                "holder": {"$cond": [free, holder, "$holder"]},
                "token": {"$cond": [free, {"$add": [{"$ifNull": ["$token", 0]}, 1]}, "$token"]},
                "expires": {"$cond": [free, {"$add": ["$$NOW", ttl_ms]}, "$expires"]},
            }
        }
    ]


async def _busy(parts: Collections, session_id: str) -> Busy:
    doc = await parts.leases.find_one({"_id": session_id})
    if doc is None:
        return Busy("", datetime.now(UTC))
    return Busy(str(doc["holder"]), aware(doc["expires"]))


async def take(
    parts: Collections,
    label: str,
    session_id: str,
    user_id: str | None,
    holder: str,
    ttl: float,
) -> Grant | Busy:
    if user_id is not None:  # the owner first: another user learns nothing of the lease
        doc = await parts.sessions.find_one(  # an expired session is absent: anyone's
            q.live_filter({"_id": session_id}, now_us()), {"user_id": 1, "version": 1}
        )
        if doc is not None:
            stored = Stored(doc.get("user_id"), int(doc["version"]))
            decide(label, session_id, stored, user_id=user_id, if_version=None,
                   rule=OwnerRule.IF_GIVEN)  # fmt: skip
    lease: dict[str, Any] | None = None
    for _ in range(RETRY.attempts):
        try:
            lease = await parts.leases.find_one_and_update(
                {"_id": session_id},
                take_pipeline(holder, _ttl_ms(ttl)),
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            break
        except DuplicateKeyError:  # created by another taker at the same moment: look again
            continue
    if lease is None:
        raise RETRY.exhausted(label, session_id)
    if lease.get("holder") != holder:
        return Busy(str(lease["holder"]), aware(lease["expires"]))
    token = int(lease["token"])
    await parts.sessions.update_one({"_id": session_id}, {"$max": {"lease_token": token}})
    return Grant(token, aware(lease["expires"]))


async def renew(
    parts: Collections, session_id: str, holder: str, token: int, ttl: float
) -> Grant | Busy:
    doc = await parts.leases.find_one_and_update(
        {"_id": session_id, "holder": holder, "token": token},
        [{"$set": {"expires": {"$add": ["$$NOW", _ttl_ms(ttl)]}}}],
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:
        return await _busy(parts, session_id)
    return Grant(token, aware(doc["expires"]))


async def release(parts: Collections, session_id: str, holder: str, token: int) -> None:
    """Expire it now; its token stays for the next holder's token + 1."""
    await parts.leases.update_one(
        {"_id": session_id, "holder": holder, "token": token},
        [{"$set": {"expires": {"$min": ["$expires", "$$NOW"]}}}],
    )


async def lease_token(parts: Collections, session_id: str) -> int:
    """The token of the session's lease document (0: never leased)."""
    doc = await parts.leases.find_one({"_id": session_id}, {"token": 1})
    return 0 if doc is None else int(doc["token"])


async def fence_state(parts: Collections, session_id: str, stored: int | None) -> int:
    """The session's latest lease token, for a fenced write that missed: the larger of the
    document's (`stored`; None when it has none) and the lease document's, written into the
    session document when it held less (so that its fenced filters hold from now on)."""
    latest = await lease_token(parts, session_id)
    if stored is None or stored < latest:
        await parts.sessions.update_one({"_id": session_id}, {"$max": {"lease_token": latest}})
    return max(stored or 0, latest)


async def check_create(parts: Collections, label: str, session_id: str, fence: int) -> int:
    """A fenced write about to create its session: the lease's token (the new document's
    ``lease_token``), or `SessionFencedError` when it is newer than the fence."""
    latest = await lease_token(parts, session_id)
    if latest > fence:
        raise fenced(label, session_id, fence, latest)
    return latest


async def after_create(parts: Collections, session_id: str, created_with: int) -> None:
    """After a fenced write created its session: a lease taken since `check_create` (its step
    (2) found no document) is written into the document now."""
    latest = await lease_token(parts, session_id)
    if latest > created_with:
        await parts.sessions.update_one({"_id": session_id}, {"$max": {"lease_token": latest}})
