"""The seeded simulation's long mode (tests/simulation/harness.py), and the replay of a seed.

    .venv/bin/python bench/simulate.py --steps 100000 --seed 7 --db sqlite
    .venv/bin/python bench/simulate.py --seed S --steps N --db postgresql   # replay a failure

Each run starts from a fresh migrated database: a SQLite file in a temporary directory, or a
database of its own on the PostgreSQL server (SMMGW_TEST_POSTGRES_URL, default the local one),
dropped afterwards. The whole-database checks (ledger verify, every order, every upstream
order) run every `--full-check-every` steps (default: every step up to 500 orders, then
every 100 steps up to 20,000 orders, then every 1,000); the per-step checks (every order
the step could touch, every new upstream order, every balance) run after every step. Exit
status 1 on a failure, with the seed, the step and the step log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import asyncpg  # noqa: E402
from simulation.harness import (  # noqa: E402
    FAULT_CLASSES,
    KNOWN_BUGS,
    WEIGHTS,
    Options,
    SimulationFailure,
    run_simulation,
)

from app.db import Database  # noqa: E402

POSTGRES_ADMIN_URL = os.environ.get(
    "SMMGW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _migrated(url: str) -> None:
    db = Database(url)
    try:
        await db.migrate()
    finally:
        await db.dispose()


async def main(args: argparse.Namespace) -> int:
    pg_name = None
    with tempfile.TemporaryDirectory(prefix="smmgw-sim-", ignore_cleanup_errors=True) as tmp:
        if args.db == "sqlite":
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'gateway.db'}"
        else:
            pg_name = f"smmgw_sim_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            await _admin(f'CREATE DATABASE "{pg_name}"')
            base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
            url = f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{pg_name}"
        try:
            await _migrated(url)
            options = Options(
                seed=args.seed,
                steps=args.steps,
                database_url=url,
                dialect=args.dialect,
                full_check_every=args.full_check_every or 1,
                adaptive_full_check=args.full_check_every is None,
                progress=lambda line: print(line, flush=True),
                progress_every=args.progress_every,
                tolerate=frozenset() if args.strict else KNOWN_BUGS,
                weights=weights(args.weight),
                faults=fault_classes(args.faults),
            )
            try:
                report = await run_simulation(options)
            except SimulationFailure as failure:
                print(failure, file=sys.stderr)
                if args.log:
                    write_log(args.log, failure.log)
                return 1
        finally:
            if pg_name is not None:
                await _admin(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    summary = {
        "seed": report.seed,
        "steps": report.steps,
        "db": report.db,
        "dialect": report.dialect,
        "faults": sorted(options.faults),
        "orders": report.orders,
        "upstream_orders": report.upstream_orders,
        "orders_by_provider_state": report.by_provider,
        "crashes": report.crashes,
        "hung_replies": report.hangs,
        "full_checks": report.full_checks,
        "wall_seconds": round(report.wall_seconds, 1),
        "cpu_seconds": round(report.cpu_seconds, 1),
        "steps_per_second": round(report.steps / report.wall_seconds, 1),
        "tolerated_known_bugs": dict(report.tolerated),
        "digest": report.digest,
        "step_kinds": dict(report.kinds.most_common()),
        "outcomes": dict(report.outcomes.most_common(25)),
        "provider_outcomes": {  # the `providers` class (tests/simulation/providers.py)
            k: n for k, n in sorted(report.outcomes.items()) if k.startswith("providers:")
        },
    }
    print(json.dumps(summary, indent=2))
    if args.log:
        write_log(args.log, report.log)
    return 0


def write_log(path: str, lines: list[str]) -> None:
    Path(path).write_text("\n".join(lines) + "\n")


def weights(changes: list[str]) -> dict[str, int]:
    table = dict(WEIGHTS)
    for change in changes:
        kind, _, value = change.partition("=")
        if kind not in table or not value.isdigit():
            raise SystemExit(f"--weight {change!r}: KIND=N with KIND one of {', '.join(table)}")
        table[kind] = int(value)
    return table


def fault_classes(text: str) -> frozenset[str]:
    """--faults all | none | CLASS,CLASS,... (the wider classes of tests/simulation/wide.py)."""
    if text == "all":
        return frozenset(FAULT_CLASSES)
    chosen = frozenset(c for c in text.split(",") if c and c != "none")
    unknown = chosen - set(FAULT_CLASSES)
    if unknown:
        raise SystemExit(f"--faults: unknown {sorted(unknown)}; known: {', '.join(FAULT_CLASSES)}")
    return chosen


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--dialect",
        choices=("standard", "smartpanel"),
        default=None,
        help="the simulator's dialect (default: by the seed, even = standard)",
    )
    parser.add_argument(
        "--full-check-every",
        type=int,
        default=None,
        help="run the whole-database checks every N steps (default: adaptive)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail on known bugs too (harness.KNOWN_BUGS) instead of counting them",
    )
    parser.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="KIND=N",
        help="change one step kind's weight (replays of runs that changed them)",
    )
    parser.add_argument(
        "--faults",
        default="all",
        help="the wider fault classes on: all, none, or a comma list of "
        + ", ".join(FAULT_CLASSES),
    )
    parser.add_argument("--progress-every", type=int, default=1000)
    parser.add_argument("--log", help="write the whole step log to this file")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
