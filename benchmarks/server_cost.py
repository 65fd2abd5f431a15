"""What the PostgreSQL cost tools (`patch_cost`, `body_cost`) share: their command line."""

from __future__ import annotations

import argparse


def arguments(
    module: str, doc: str | None, *, table: str, sessions: int, rounds: int, calls: str
) -> argparse.Namespace:
    """``URL [--table] [--sessions] [--rounds] [--calls]`` for ``python -m benchmarks.<module>``
    (`calls`: what one call of a round is, for the help)."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{module}", description=doc)
    p.add_argument("url", help="a PostgreSQL URL")
    p.add_argument("--table", default=table)
    p.add_argument("--sessions", type=int, default=sessions)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--calls", type=int, default=300, help=calls)
    return p.parse_args()
