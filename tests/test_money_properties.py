"""Property tests (hypothesis) for pricing and settlement rounding, through the real code on a
real database (a SQLite file per example, copied from one migrated with the simulator's
catalog).

A `RuleBasedStateMachine` creates customers with random markups (basis points), sets fixed
prices and markup rules (with and without the operator's consent to sell below cost), tops
up, prices and places random orders of every shape (quantities, drip-feed runs, comment
lines, subscription posts) through `validate_add` and `commit_intent`, and settles them with
random final statuses, remains and upstream charges through `app.sync` (whose
`settlement_refund` decides the refund) and `app.ledger`. After every rule:

- no micro-unit lost or created: each balance = its top-ups - sum(charge - refund), and
  `ledger.verify` is clean;
- every refund is within [0, charge];
- a customer's rate is the one DESIGN.md's precedence gives, never below the upstream rate
  unless an operator consented;
- charge = ceil(rate x units / 1000): drip-feed units = quantity x runs, subscriptions hold
  max x posts, Package-like types pay the flat rate;
- settlement: Completed keeps all, Canceled refunds all, Partial refunds
  floor(charge x remains / quantity) (monotonic in remains), and where no usable remains
  are reported the customer keeps the fraction the upstream keeps of its own charge
  (monotonic, never more than the charge).

The async code runs on one event loop the machine keeps for its whole run.
"""

import asyncio
import itertools
import shutil
import uuid
from fractions import Fraction
from math import ceil, floor
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from app import ledger
from app.catalog import clear_price, priced_service, set_price, sync_catalog
from app.contract import (
    CANCELED,
    COMPLETED,
    NOT_ENOUGH_FUNDS,
    PACKAGE_TYPES,
    PARTIAL,
    ContractError,
    settle_by,
)
from app.customers import create_customer
from app.db import Database
from app.errors import NotFound, OperatorError
from app.family import rules_for
from app.models import Customer, Order
from app.orders.placing import NotEnoughFunds, commit_intent, commit_outcome
from app.orders.validation import validate_add
from app.simulator import SimConfig, create_simulator_app
from app.simulator.catalog import SERVICES
from app.sync import PassResult, _apply, _Claimed, settlement_refund
from app.upstream import Refused, UpstreamClient, UpstreamOrderStatus

DEFAULT_BP = 1000  # the default markup these tests price with (10 %)
# One service of every pricing shape: per-1000 (cheap and dear), drip-feed, flat packages,
# line-counted comments and usernames, subscriptions.
SERVICE_IDS = (5, 10, 17, 33, 102, 130, 120, 142, 190, 192)
FLAT = PACKAGE_TYPES | {"Subscriptions"}
# Rules go down to -200 %: a markup of -100 % or less must be refused even with the operator's
# consent to sell below cost (until 552e5ac it gave a rate of zero or less, and an order that
# paid the customer: this machine found it, tests/simulation/test_regressions.py).
MARKUP_FLOOR = -20_000
CUSTOMER_MARKUPS = st.one_of(st.none(), st.integers(-3000, 30_000), st.sampled_from([0, 1, 3333]))


@pytest.fixture(scope="module")
def catalog_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file holding the simulator's catalog (as `services sync` leaves it)."""
    path = tmp_path_factory.mktemp("money-properties") / "template.db"

    async def build() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        await db.migrate()
        simulator = create_simulator_app(SimConfig(key="k", dialect="standard", seed=1))
        upstream = UpstreamClient(
            "http://upstream.test/api/v2",
            "k",
            connect_timeout=5,
            read_timeout=5,
            double_decode=False,
            transport=httpx.ASGITransport(app=simulator),
        )
        try:
            assert (await sync_catalog(db, upstream)).ok
        finally:
            await upstream.aclose()
            await db.dispose()

    asyncio.run(build())
    return path


def markup(rate: int, bp: int) -> int:
    """A rate raised by `bp` basis points, rounded up to the micro-unit (DESIGN.md, Money)."""
    return ceil(Fraction(rate * (10_000 + bp), 10_000))


def per_thousand(rate: int, units: int) -> int:
    return ceil(Fraction(rate * units, 1000))


class MoneyMachine(RuleBasedStateMachine):
    template: Path
    workdir: Path

    customers = Bundle("customers")
    sending = Bundle("sending")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        path = self.workdir / f"{uuid.uuid4().hex}.db"
        shutil.copyfile(self.template, path)
        self.path = path
        self.db = Database(f"sqlite+aiosqlite:///{path}")
        self.markups: dict[int, int | None] = {}
        self.funds: dict[int, int] = {}
        # (service, customer or None) -> (fixed_rate, markup_bp, below_cost_ok)
        self.rules: dict[tuple[int, int | None], tuple[int | None, int | None, bool]] = {}
        self.orders: dict[int, dict[str, int | str]] = {}
        self.names = itertools.count(1)
        self.upstream_ids = itertools.count(500_000, 7)

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.db.dispose())
        self.loop.close()
        self.path.unlink(missing_ok=True)

    # -- the oracle for a customer's rate (DESIGN.md, Money: most specific rule first) --

    def expected_rate(self, service_id: int, customer_id: int) -> int | None:
        cost = SERVICES[service_id].rate_micros
        mine = self.rules.get((service_id, customer_id))
        everyone = self.rules.get((service_id, None))
        chosen: tuple[int, bool] | None = None
        if mine is not None:
            fixed, bp, ok = mine
            chosen = (fixed, ok) if fixed is not None else (markup(cost, bp or 0), ok)
        elif self.markups[customer_id] is not None:
            chosen = (markup(cost, self.markups[customer_id] or 0), False)
        elif everyone is not None:
            fixed, bp, ok = everyone
            chosen = (fixed, ok) if fixed is not None else (markup(cost, bp or 0), ok)
        else:
            chosen = (markup(cost, DEFAULT_BP), False)
        rate, consent = chosen
        if rate <= 0:
            return None  # nothing is sold for free, whatever a rule says
        if rate < cost and not consent:
            return None  # suspended: below cost without the operator's word
        return rate

    # -- rules --

    @initialize(target=customers, markup_bp=CUSTOMER_MARKUPS, funds=st.integers(0, 10**9))
    def first_customer(self, markup_bp: int | None, funds: int) -> int:
        customer = self.add_customer(markup_bp)
        if funds:
            self.topup(customer, funds)
        return customer

    @rule(target=customers, markup_bp=CUSTOMER_MARKUPS)
    def add_customer(self, markup_bp: int | None) -> int:
        cid, _ = self.run(
            create_customer(self.db, f"customer-{next(self.names)}", "standard", markup_bp)
        )
        self.markups[cid] = markup_bp
        self.funds[cid] = 0
        return cid

    @rule(customer=customers, amount=st.integers(1, 10**10))
    def topup(self, customer: int, amount: int) -> None:
        self.run(ledger.topup(self.db, customer, amount))
        self.funds[customer] += amount

    @rule(
        service=st.sampled_from(SERVICE_IDS),
        customer=st.one_of(st.none(), customers),
        fixed_permille=st.one_of(st.none(), st.integers(1, 3000)),
        markup_bp=st.one_of(
            st.sampled_from([-1, MARKUP_FLOOR, -5000, 0, 1234]), st.integers(MARKUP_FLOOR, 30_000)
        ),
        consent=st.booleans(),
    )
    def price_rule(
        self,
        service: int,
        customer: int | None,
        fixed_permille: int | None,
        markup_bp: int,
        consent: bool,
    ) -> None:
        cost = SERVICES[service].rate_micros
        fixed = None if fixed_permille is None else max(1, cost * fixed_permille // 1000)
        below = fixed < cost if fixed is not None else markup_bp < 0
        gives_away = fixed is None and markup_bp <= -10_000
        try:
            self.run(
                set_price(
                    self.db,
                    service,
                    customer_id=customer,
                    fixed_rate=fixed,
                    markup_bp=None if fixed is not None else markup_bp,
                    below_cost_ok=consent,
                )
            )
        except OperatorError:
            assert gives_away or (below and not consent), "a price at or above cost was refused"
            return
        assert not gives_away, f"a markup of {markup_bp} bp (free or worse) was taken"
        assert consent or not below, "a price below cost was taken without consent"
        self.rules[(service, customer)] = (fixed, None if fixed is not None else markup_bp, consent)

    @rule(service=st.sampled_from(SERVICE_IDS), customer=st.one_of(st.none(), customers))
    def clear_rule(self, service: int, customer: int | None) -> None:
        try:
            self.run(clear_price(self.db, service, customer))
        except NotFound:
            assert (service, customer) not in self.rules
            return
        del self.rules[(service, customer)]

    @rule(
        target=sending,
        customer=customers,
        service=st.sampled_from(SERVICE_IDS),
        scale=st.integers(0, 10_000),
        runs=st.one_of(st.none(), st.integers(1, 50)),
        posts=st.integers(1, 60),
        ruled=st.integers(0, 2**16),
    )
    def place(
        self, customer: int, service: int, scale: int, runs: int | None, posts: int, ruled: int
    ) -> int | None:
        if self.rules and ruled % 2:
            # Half the time, order what a price rule covers (for whom it covers it).
            service, whom = sorted(self.rules, key=str)[ruled // 2 % len(self.rules)]
            if whom is not None:
                customer = whom
        svc = SERVICES[service]
        priced = self.run(
            priced_service(self.db, service, customer, self.markups[customer], DEFAULT_BP)
        )
        rate = self.expected_rate(service, customer)
        if priced is None:
            assert rate is None, f"service {service} suspended for a rate {rate} >= cost"
            return None
        assert priced.rate == rate, (priced.rate, rate)
        assert priced.rate >= svc.rate_micros or self.consented(service, customer), (
            f"rate {priced.rate} below cost {svc.rate_micros} without consent"
        )
        span = min(svc.max, max(svc.min, svc.min * 50)) - svc.min
        amount = svc.min + (span * scale // 10_000)
        params: dict[str, str] = {"service": str(service), "link": "https://example.com/p"}
        if svc.type == "Subscriptions":
            params = {
                "service": str(service),
                "username": "someone",
                "min": str(svc.min),
                "max": str(amount),
                "delay": "0",
                "posts": str(posts),
            }
            units = amount * posts
        elif svc.type in ("Custom Comments", "Custom Comments Package"):
            lines = max(svc.min, min(svc.max, 1 + scale % 40))
            params["comments"] = "\n".join(f"c{i}" for i in range(lines))
            units = 1 if svc.type in PACKAGE_TYPES else lines
        elif svc.type == "Mentions Custom List":
            lines = max(svc.min, min(svc.max, scale % 60))
            params["usernames"] = "\n".join(f"u{i}" for i in range(lines))
            units = lines
        elif svc.type == "Package":
            units = 1
        else:
            params["quantity"] = str(amount)
            units = amount
            if runs is not None and svc.dripfeed:
                params.update(runs=str(runs), interval="5")
                units = amount * runs
        try:
            request = validate_add(params, priced, rules_for("standard", double_decode=False))
        except ContractError as exc:
            assert exc.message == NOT_ENOUGH_FUNDS, exc.message  # beyond any balance
            return None
        flat = svc.type in PACKAGE_TYPES
        assert request.quantity == units
        assert request.charge == (priced.rate if flat else per_thousand(priced.rate, units))
        assert request.cost == (svc.rate_micros if flat else per_thousand(svc.rate_micros, units))
        if not self.consented(service, customer):
            assert request.charge >= request.cost
        balance = self.balance(customer)
        try:
            order_id = self.run(commit_intent(self.db, customer, request, None))
        except NotEnoughFunds:
            assert balance < request.charge, (balance, request.charge)
            return None
        assert balance >= request.charge
        self.orders[order_id] = {
            "customer": customer,
            "type": svc.type,
            "charge": request.charge,
            "cost": request.cost,
            "quantity": request.quantity,
            "refunded": 0,
        }
        return order_id

    def consented(self, service: int, customer: int) -> bool:
        return any(
            rule is not None and rule[2]
            for rule in (self.rules.get((service, customer)), self.rules.get((service, None)))
        )

    @rule(order=consumes(sending))
    def refused_upstream(self, order: int | None) -> None:
        if order is None:
            return
        self.run(commit_outcome(self.db, order, Refused("Incorrect service ID", "error_reply")))
        self.orders[order]["refunded"] = self.orders[order]["charge"]

    @rule(
        order=consumes(sending),
        status=st.sampled_from([COMPLETED, PARTIAL, PARTIAL, CANCELED]),
        remains_permille=st.one_of(st.none(), st.integers(-100, 1100)),
        kept_permille=st.one_of(st.none(), st.integers(-100, 1300)),
        drip_parent=st.booleans(),
    )
    def settle(
        self,
        order: int | None,
        status: str,
        remains_permille: int | None,
        kept_permille: int | None,
        drip_parent: bool,
    ) -> None:
        if order is None:
            return
        info = self.orders[order]
        charge, cost, quantity = (int(info["charge"]), int(info["cost"]), int(info["quantity"]))
        remains = None if remains_permille is None else quantity * remains_permille // 1000
        upstream_charge = None if kept_permille is None else max(0, cost * kept_permille // 1000)
        heard = UpstreamOrderStatus(
            status=status,
            raw_status=status,
            charge_micros=upstream_charge,
            remains=None if remains is None else max(remains, 0),
            child_orders=[1, 2] if drip_parent else None,
        )
        upstream_id = next(self.upstream_ids)
        self.run(commit_outcome(self.db, order, upstream_id))
        claimed = _Claimed(
            order,
            int(info["customer"]),
            upstream_id,
            settle_by(str(info["type"])),
            quantity,
            charge,
            cost,
            None,
        )
        refund = settlement_refund(claimed, status, heard)
        # DESIGN.md, "Status and settlement", computed here independently.
        flat = info["type"] in FLAT
        if status == COMPLETED:
            expected = 0
        elif status == CANCELED:
            expected = charge
        elif heard.remains is not None and not flat and not drip_parent:
            expected = floor(Fraction(charge * min(max(heard.remains, 0), quantity), quantity))
            # monotonic in remains: one more unit undelivered never refunds less
            more = settlement_refund(
                claimed, status, UpstreamOrderStatus(status=status, remains=heard.remains + 1)
            )
            assert more >= refund
        elif upstream_charge is None:
            expected = None  # nothing to go by: held for the operator, not settled
        elif cost <= 0:
            expected = 0
        else:
            kept = min(upstream_charge, cost)
            expected = charge - ceil(Fraction(charge * kept, cost))
            # the more the upstream keeps, the less comes back
            less = settlement_refund(
                claimed,
                status,
                UpstreamOrderStatus(
                    status=status,
                    charge_micros=upstream_charge + 1,
                    child_orders=heard.child_orders,
                ),
            )
            assert less <= refund
        assert refund == expected, (status, heard, info, refund, expected)
        assert refund is None or 0 <= refund <= charge
        self.run(_apply(self.db, claimed, heard, PassResult()))
        stored = self.stored_refund(order)
        assert stored == (refund or 0), (stored, refund)
        info["refunded"] = refund or 0

    # -- invariants --

    def balance(self, customer: int) -> int:
        async def read() -> int:
            async with self.db.read() as conn:
                return await conn.scalar(select(Customer.balance).where(Customer.id == customer))

        return self.run(read())

    def stored_refund(self, order: int) -> int:
        async def read() -> int:
            async with self.db.read() as conn:
                return await conn.scalar(select(Order.refunded).where(Order.id == order))

        return self.run(read())

    @invariant()
    def no_micro_unit_lost_or_created(self) -> None:
        assert self.run(ledger.verify(self.db)) == []
        kept: dict[int, int] = dict.fromkeys(self.funds, 0)
        for info in self.orders.values():
            assert 0 <= int(info["refunded"]) <= int(info["charge"])
            kept[int(info["customer"])] += int(info["charge"]) - int(info["refunded"])
        for customer, funds in self.funds.items():
            balance = self.balance(customer)
            assert balance >= 0
            assert balance == funds - kept[customer], (customer, balance, funds, kept[customer])


def test_money_state_machine(catalog_template: Path, tmp_path: Path) -> None:
    MoneyMachine.template = catalog_template
    MoneyMachine.workdir = tmp_path
    run_state_machine_as_test(
        MoneyMachine,
        settings=settings(
            max_examples=60,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )
