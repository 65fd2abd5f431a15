"""What encrypted payloads cost on the append turn, as a ratio to the same turn on a plain
store: `store sealed` (a store with `encryption=`, its data encrypted first) against `store
append`, in interleaved rounds of one run (the machine's load changes between runs; within one
run both systems see it alike).

    .venv/bin/python -m benchmarks.encryption_cost                  # SQLite, 3 rounds
    .venv/bin/python -m benchmarks.encryption_cost --backend postgres \\
        --url postgresql://postgres@127.0.0.1:5432/test --rounds 3 --concurrency 1,16

The turn is the same on both: read the last runs, append one run with a state patch. On the
encrypted store the patch is merged by the store (a read more per turn: the database cannot
merge into ciphertext), every payload read is decrypted and every payload written encrypted.
Prints, per concurrency, the median over the rounds of the ratio (plain turns/s over encrypted
turns/s: how much longer an encrypted turn takes) with its spread (min-max), and the same for
p50 latency.
"""

from __future__ import annotations

from collections.abc import Sequence

from .lease_cost import SEALED
from .lease_cost import main as _main


def main(argv: Sequence[str] | None = None) -> int:
    return _main(argv, SEALED)


if __name__ == "__main__":
    raise SystemExit(main())
