"""Bugs the simulation (and the money property test) found, kept as regression tests.

Each seeded test replays a recorded run exactly (`python bench/simulate.py --seed S --steps N
--db sqlite --strict [--weight KIND=N]` prints the same step log) with no bug tolerated. An
open bug is marked xfail(strict=True) until its root cause is fixed; then remove its marker
here and its id from `harness.KNOWN_BUGS`, so that every CI run checks it again. A fixed
bug's test asserts that its run still contains the scenario, and passes.
"""

import shutil
from pathlib import Path

from app import ledger
from app.catalog import set_price
from app.db import Database
from app.errors import OperatorError

from .harness import KNOWN_BUGS, WEIGHTS, Options, Report, SimulationFailure, run_simulation

# The recorded runs: seed, steps, and the step weights changed from harness.WEIGHTS (if any).
SEED_IDEMPOTENCY, STEPS_IDEMPOTENCY = 2, 60  # --weight concurrent_adds=40
SEED_SUBSCRIPTION, STEPS_SUBSCRIPTION = 6, 300
SEED_STALL, STEPS_STALL = 2, 2  # --weight stalled_send=10
SEED_FALSE_ALARM, STEPS_FALSE_ALARM = 2, 4


async def replay(
    template: Path, tmp_path: Path, seed: int, steps: int, expect: str = "", **weights: int
) -> Report:
    """The recorded run, on a fresh SQLite copy. An open bug's run (`expect` given) checks
    every bug and must fail the way it was recorded (`expect` in the message): any other
    failure is news. A fixed bug's run tolerates the bugs still open (KNOWN_BUGS)."""
    path = tmp_path / f"seed-{seed}.db"
    shutil.copyfile(template, path)
    try:
        return await run_simulation(
            Options(
                seed=seed,
                steps=steps,
                database_url=f"sqlite+aiosqlite:///{path}",
                tolerate=frozenset() if expect else KNOWN_BUGS,
                weights={**WEIGHTS, **weights},
                faults=frozenset(),  # recorded before the wider fault classes
            )
        )
    except SimulationFailure as failure:
        assert expect and expect in str(failure), f"failed otherwise than recorded:\n{failure}"
        raise


async def test_racing_retries_with_one_idempotency_key_get_one_answer(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """Was BUG idempotency-race (fixed in ef707fc): app/orders/placing.py _replay() answered
    Placement(row.id) for an order still `sending`, so of two racing adds with one
    Idempotency-Key the loser was told {'order': N} at once while the winner, refused
    upstream, was rejected, refunded and answered an error (first seen: seed 1 step 310,
    seed 4 step 372 with the default weights). This run has a racing pair whose first try
    the upstream refuses; both must get the same answer."""
    report = await replay(
        sqlite_template, tmp_path, SEED_IDEMPOTENCY, STEPS_IDEMPOTENCY, concurrent_adds=40
    )
    refused = sum(
        n
        for kind, n in report.outcomes.items()
        if kind.startswith("key-race:error:") and "funds" not in kind
    )
    assert refused >= 1, f"the recorded scenario did not happen: {report.outcomes}"


async def test_a_partial_subscription_with_no_post_delivered_is_refunded(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """Was BUG partial-subscription-without-runs (fixed in f2cbcb7): app/sync.py summed the
    runs' charges only for a Partial parent that listed some, so a subscription ending
    Partial with none of its posts delivered (`orders: []`; the upstream keeps 0) was settled
    with no refund (first seen: seed 5 step 25, on a SmartPanel simulator that then still took
    subscriptions; only the standard family does now, hence this seed). This run settles such
    orders; each must be refunded in full."""
    report = await replay(sqlite_template, tmp_path, SEED_SUBSCRIPTION, STEPS_SUBSCRIPTION)
    settled = report.outcomes["settled:partial-subscription-without-runs"]
    assert settled >= 1, f"the recorded scenario did not happen: {report.outcomes}"


async def test_a_stalled_process_never_sends_an_order_the_operator_refunded(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """Was BUG stalled-send, a free order (fixed in 552e5ac): a process that stalled between
    commit_intent and the upstream add for longer than sending_grace_seconds saw its order
    turned `unknown` by another worker's sync pass and resolved --not-placed (refunded) by an
    operator who found nothing upstream; it then woke, sent the add, the upstream placed it
    and commit_outcome() answered {'order': N} for a refunded order (first seen: seed 2 step
    2 with stalled_send=10). Phase 2 (send_and_commit) now refuses to send an order that is
    no longer `sending` or too old."""
    report = await replay(sqlite_template, tmp_path, SEED_STALL, STEPS_STALL, stalled_send=10)
    assert report.outcomes["stalled-send:not"] >= 1, report.outcomes


async def test_no_price_rule_makes_an_order_pay_the_customer(db: Database, harness) -> None:  # type: ignore[no-untyped-def]
    """Was BUG negative-rate (fixed in 552e5ac): set_price() took a markup of -100 % or less
    with below_cost_ok, giving a rate of 0 or below, an order whose `charge` entry paid the
    customer, and ledger.verify() errors ('charge entries with the wrong sign'). Found by
    tests/test_money_properties.py with MARKUP_FLOOR = -20_000 and 400 examples; shrunk:
    a consented -200 % rule on service 5, then an order of it (charge -510000)."""
    for markup_bp in (-10_000, -15_000):
        try:
            await set_price(db, 10, markup_bp=markup_bp, below_cost_ok=True)
        except OperatorError:
            continue  # refused: nothing can be priced at zero or less
        customer = await harness.customer(markup_bp=None)
        reply = await harness.call(
            customer.key, "add", service=10, link="https://example.com/free", quantity=1000
        )
        if "order" in reply:
            order = await harness.order(reply["order"])
            assert order.charge > 0, f"markup {markup_bp} bp: charge {order.charge}"
        assert await ledger.verify(db) == []


async def test_a_drip_feed_with_interval_zero_is_taken(db: Database, harness) -> None:  # type: ignore[no-untyped-def]
    """Was BUG interval-0 (fixed in 552e5ac): validation refused interval=0 ('Parameter
    interval must be a positive whole number') though CONTRACT.md lists 0 among SmartPanel's
    drip-feed intervals; seen in the simulation's outcomes."""
    customer = await harness.customer()
    reply = await harness.call(
        customer.key,
        "add",
        service=5,
        link="https://example.com/drip",
        quantity=500,
        runs=2,
        interval=0,
    )
    assert "order" in reply, reply


async def test_a_late_reply_for_an_order_the_operator_placed_raises_no_alarm(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """Was BUG false-critical-after-resolve (fixed in e5f41b6): commit_outcome() logged
    CRITICAL 'order N was refunded, but the upstream placed it as U: cancel it there'
    whenever _mark() moved no row, also for a late reply about an order an operator had
    meanwhile resolved as placed as that very U: a false alarm telling the operator to cancel
    a good order (first seen: seed 2 step 4). Every CRITICAL line must be true."""
    report = await replay(sqlite_template, tmp_path, SEED_FALSE_ALARM, STEPS_FALSE_ALARM)
    assert report.outcomes["late-outcome:operator-placed-first"] >= 1, report.outcomes


# --- issue 10: the wider fault classes (tests/simulation/wide.py), each run with its class
# alone and no bug tolerated. Each failed on the code before its fix (noted per test).


async def wide_replay(
    template: Path, tmp_path: Path, seed: int, steps: int, *faults: str
) -> Report:
    path = tmp_path / f"wide-{seed}.db"
    shutil.copyfile(template, path)
    return await run_simulation(
        Options(
            seed=seed,
            steps=steps,
            database_url=f"sqlite+aiosqlite:///{path}",
            tolerate=frozenset(),
            faults=frozenset(faults),
        )
    )


async def test_a_poison_number_neither_settles_its_order_nor_stops_the_pass(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """Was item 5 (fixed on main by B's bounded upstream numbers): one status answering
    charge Infinity settled its order Completed (seed 1 step 93, this class alone), remains
    1e400 one Partial with a full refund, and a charge of 99999999999999999999 raised
    OverflowError out of sync_pass (seed 2, all classes)."""
    for seed in (1, 2):
        report = await wide_replay(sqlite_template, tmp_path, seed, 150, "poison")
        assert report.outcomes["poison:order"] >= 1, report.outcomes


async def test_an_unknown_status_word_never_settles_and_is_shown_in_progress(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """Was item 8: an upstream order answered `Rejected` (or another word of neither family)
    was shown to the customer raw (seed 5 step 83, this class alone)."""
    report = await wide_replay(sqlite_template, tmp_path, 5, 150, "statuses")
    assert report.outcomes["poison:status-word"] >= 1, report.outcomes


async def test_a_charge_heard_under_an_unknown_status_word_is_not_the_first_charge(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """Was first-charge-lost (app/sync.py _apply): a status word the gateway does not know was
    taken as live, so the charge it came with was kept as the upstream's first charge, though
    the order may be final upstream already. Seed 6 (standard): o17 is canceled upstream at
    step 24 (it keeps 0), answers `Suspended` from step 26, and the gateway kept 0 as its first
    charge (the upstream first charged 116800); seed 7 step 1307 of the full run, the same.
    For an order that ends Partial by charge ratio the refund was kept/first = 1: nothing."""
    report = await wide_replay(sqlite_template, tmp_path, 6, 150, "statuses")
    assert report.outcomes["poison:status-word"] >= 1, report.outcomes


async def test_catalog_changes_and_charges_unlike_the_listed_rate_settle_by_the_snapshot(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """Items 2 and 3: services re-typed, re-priced and delisted under live orders, and an
    upstream charging another rate than it lists; every refund is DESIGN.md's formula from the
    type at intent and the upstream's own first charge."""
    report = await wide_replay(sqlite_template, tmp_path, 2, 150, "catalog", "charge")
    assert report.outcomes["charge:differs"] >= 1, report.outcomes
    assert report.kinds["catalog_change"] >= 1, report.kinds


async def test_a_second_instance_settles_while_the_first_ones_reply_is_late(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """Item 6: instance 1's status call outlasts its lease; instance 2 claims the batch and
    settles; then instance 1's stale non-final answer arrives. A settled order never changes."""
    report = await wide_replay(sqlite_template, tmp_path, 6, 200, "lease")
    assert report.outcomes["lease-race:settled-under-a-late-reply"] >= 1, report.outcomes


async def test_database_faults_at_phase_boundaries(db: Database, database_url: str) -> None:
    """Was item 1 (PostgreSQL): pg_terminate_backend of the gateway's connections after the
    upstream accepted an add answered HTTP 500 and left the order `sending` (this run: seed 1
    step 101), and after a status call raised InterfaceError out of sync_pass (seed 1 step 82,
    all classes). On SQLite: another connection holds the write lock across the boundary."""
    report = await run_simulation(
        Options(
            seed=1,
            steps=150,
            database_url=database_url,
            tolerate=frozenset(),
            faults=frozenset({"db"}),
        )
    )
    assert report.outcomes["db-fault:after add"] >= 1, report.outcomes
