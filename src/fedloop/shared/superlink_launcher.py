"""`flower-superlink` with a SQLite busy timeout long enough for adapters of hundreds of MB.

Flower's SuperLink keeps its state and its object store in one SQLite file and
gives each connection a 5 s busy timeout (`flwr.supercore.constant.SQLITE_PRAGMAS`).
Storing or deleting the objects of a 7B model's r=64 adapter (646 MB) holds the
write lock longer than that on a busy 2-core HQ, and the request that waits
fails with "database is locked": a 500 that ends the run
(scripts/bench_hq_transfer.py reproduced it). fedloop starts the SuperLink as
`python -m fedloop.shared.superlink_launcher <flower-superlink arguments>`.
"""

from __future__ import annotations

import sys

BUSY_TIMEOUT_MS = 120_000


def main() -> None:
    """Raise the SuperLink's SQLite busy timeout to BUSY_TIMEOUT_MS, then run Flower's `flower-superlink`."""
    from flwr.supercore import sql_mixin
    from flwr.superlink.cli import flower_superlink

    pragmas = [
        (name, str(BUSY_TIMEOUT_MS) if name == "busy_timeout" else value) for name, value in sql_mixin.SQLITE_PRAGMAS
    ]
    sql_mixin.SQLITE_PRAGMAS = tuple(pragmas)  # type: ignore[assignment]  # Flower types it as its own 7 pairs
    sys.argv[0] = "flower-superlink"
    flower_superlink()


if __name__ == "__main__":
    main()
