"""MongoDB schema migrations. Append only: a released migration never changes (its checksum is
recorded), a new schema change is a new entry at the end.

Each step is a MongoDB command document as JSON (``create``, ``createIndexes``); ``{table}`` is the
store's collection name. Every step is idempotent (an existing collection or an identical index is
left as it is), which is what makes a migration safe to run again after a crash between its
steps: MongoDB has no transaction around index builds.
"""

from __future__ import annotations

import orjson

from ..migrations import Migration


def _step(command: dict[str, object]) -> str:
    return orjson.dumps(command).decode()


def _index(name: str, key: dict[str, int], **options: object) -> dict[str, object]:
    return {"name": name, "key": key, **options}


def _recent_by(field: str) -> dict[str, object]:
    return _index(
        f"{field.removesuffix('_id')}_recent",
        {field: 1, "updated_at": -1, "_id": -1},
        partialFilterExpression={field: {"$type": "string"}},
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        name="create sessions and runs collections",
        steps=(
            _step({"create": "{table}"}),
            _step({"create": "{table}_runs"}),
            # A user's sessions, most recent first: the hot listing.
            _step(
                {
                    "createIndexes": "{table}",
                    "indexes": [
                        _index("user_recent", {"user_id": 1, "updated_at": -1, "_id": -1}),
                    ],
                }
            ),
            # Runs are read by (session, incarnation, seq) ranges; the key makes each seq unique.
            _step(
                {
                    "createIndexes": "{table}_runs",
                    "indexes": [
                        _index("session_seq", {"session_id": 1, "gen": 1, "seq": 1}, unique=True),
                    ],
                }
            ),
        ),
    ),
    Migration(
        version=2,
        name="index recency and entity ids",
        steps=(
            _step(
                {
                    "createIndexes": "{table}",
                    "indexes": [
                        _index("recent", {"updated_at": -1, "_id": -1}),
                        _recent_by("agent_id"),
                        _recent_by("team_id"),
                        _recent_by("workflow_id"),
                    ],
                }
            ),
        ),
    ),
)
