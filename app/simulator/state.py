"""The simulator's state: its balance, orders and their lifecycle, refills, faults, call counts.

Everything is driven lazily by the injected clock (no background task): an order's status is a
function of how many ticks have passed since it was created, and refunds are applied when an
order is first seen past its final tick (`settle_due` runs at the start of every request).
All mutations are synchronous, so two requests on the event loop never interleave inside one.
"""

import heapq
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

from app.simulator.amounts import charge, padded
from app.simulator.catalog import CATALOG, Service, edited
from app.simulator.overrides import Overrides
from app.simulator.words import (
    ACTIVE,
    CANCELED,
    COMPLETED,
    CUSTOM_COMMENTS,
    FLAT_RATE_TYPES,
    IN_PROGRESS,
    PACKAGE,
    PARTIAL,
    PENDING,
    SUBSCRIPTIONS,
)

Dialect = Literal["smartpanel", "standard"]
Kind = Literal["plain", "dripfeed", "subscription"]
FAULT_KINDS = ("error5xx", "html", "garbage", "drop", "timeout_after_accept", "reject")

# How long a "never comes" reply sleeps: far beyond any client timeout, yet finite.
HANG_SECONDS = 3600.0

SMARTPANEL_INTERVALS = frozenset({0, 5, 10, 15, 30, 60, 90})
STANDARD_DELAYS = frozenset({0, 5, 10, 15, 30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 360,
                             420, 480, 540, 600})

# SmartPanel's link column is varchar(191) with strict SQL mode off: longer links are cut.
SMARTPANEL_LINK_LENGTH = 191
# Internal statuses SmartPanel shows its API users as Pending (its provider refused, or the
# order waits for one): set by the link marker sim:error, and the order then never moves.
SMARTPANEL_HIDDEN_STATUSES = ("error", "fail", "awaiting")

# Standard family: types whose quantity is the number of lines of one parameter.
LINE_FIELDS = {
    "Custom Comments": "comments",
    "Custom Comments Package": "comments",
    "Comment Replies": "comments",
    "Mentions Custom List": "usernames",
}
# Parameters the standard dialect insists on (SmartPanel's stock code ignores them).
EXTRA_REQUIRED = {
    "Mentions": ("usernames",),
    "Mentions with Hashtags": ("usernames", "hashtags"),
    "Mentions Hashtag": ("hashtag",),
    "Mentions User Followers": ("username",),
    "Mentions Media Likers": ("media",),
    "Comment Likes": ("username",),
    "Comment Replies": ("username",),
    "Poll": ("answer_number",),
    "Invites from Groups": ("groups",),
    "SEO": ("keywords",),
}


@dataclass
class SimConfig:
    key: str = "sim-key"
    balance_micros: int = 1_000_000_000  # the simulator's own balance (1000.00)
    dialect: Dialect = "smartpanel"
    tick_seconds: float = 1.0  # time between two lifecycle steps of an order
    latency_ms: int = 0
    # Time between computing an answer and sending it: a reply that arrives late says what was
    # true when it was computed (a slow link back, a busy panel's output buffer).
    reply_delay_ms: int = 0
    faults: dict[str, float] = field(default_factory=dict)  # KIND -> rate in [0, 1]
    seed: int | None = None
    currency: str = "USD"


class SimError(Exception):
    """A business refusal; `code` is dialect-neutral, the app turns it into the dialect's text."""

    def __init__(self, code: str, arg: int | str | None = None) -> None:
        super().__init__(code, arg)
        self.code = code
        self.arg = arg


# Refusal codes (app.py holds each dialect's wording).
E_KEY = "key"
E_ACTION = "action"
E_SERVICE_MISSING = "service_missing"
E_SERVICE = "service"
E_LINK = "link"
E_QUANTITY_MISSING = "quantity_missing"
E_MIN = "min"
E_MAX = "max"
E_DRIPFEED = "dripfeed"
E_INTERVAL_REQUIRED = "interval_required"
E_RUNS_REQUIRED = "runs_required"
E_INTERVAL = "interval"
E_PROCESSING = "processing"  # SmartPanel's catch-all "There was an error processing …"
E_MISSING = "missing"  # arg: parameter name
E_INVALID = "invalid"  # arg: parameter name
E_FUNDS = "funds"
E_ORDER = "order"
E_REFILL = "refill"
E_NOT_REFILLABLE = "not_refillable"
E_NOT_CANCELABLE = "not_cancelable"


def php_int(raw: str) -> int:
    """PHP's (int) cast: leading whitespace, optional sign, leading digits; anything else 0."""
    match = re.match(r"\s*([+-]?\d+)", raw)
    return int(match.group(1)) if match else 0


def smartpanel_comments(text: str) -> list[str]:
    """SmartPanel's own split: newlines become " | ", then it splits on " | ", so a literal
    " | " inside a comment splits it too, and blank lines count."""
    return text.replace("\r\n", "\n").replace("\n", " | ").split(" | ")


def count_lines(text: str) -> int:
    """The standard family's count: non-blank lines."""
    return sum(1 for line in re.split(r"\r?\n", text) if line.strip())


def runs_never_start(link: str) -> bool:
    """Link marker sim:norun: a drip-feed order whose runs never start; it ends Partial with
    an empty run list and the panel refunds all of it."""
    return "sim:norun" in link


def split_charge(total: int, parts: int) -> list[int]:
    """`total` micro-units in `parts` shares that add up exactly."""
    return [total * (k + 1) // parts - total * k // parts for k in range(parts)]


@dataclass(eq=False)
class Order:
    id: int
    service: Service
    params: dict[str, str]
    kind: Kind
    quantity: int  # units: total for drip-feed parents, per post for subscription children
    charge: int  # micro-units this record still holds (composite parents: the undelivered part)
    created: float
    due_at: float  # when it reaches its final status
    fate: str  # Completed | Partial | Canceled
    start_count: int
    over: int = 0  # over-delivered units, shown as "+N" by SmartPanel
    parent: int | None = None
    children: list["Order"] = field(default_factory=list)
    runs: int = 0
    posts: str | None = None
    expiry: date | None = None
    hang: bool = False  # link marker sim:timeout: accepted, then the reply never comes
    settled: bool = False
    remains_final: int = 0
    initial_charge: int = 0
    stored: dict[str, str] = field(default_factory=dict)  # what the panel kept of the params
    stuck: str | None = None  # an internal status that never moves on (SmartPanel: "error")


@dataclass(frozen=True)
class OrderView:
    """An order as seen at one instant, dialect-neutral."""

    id: int
    kind: Kind
    status: str
    charge: int
    start_count: int | None
    remains: int
    over: int
    runs: int
    posts: str | None
    expiry_active: bool
    children: tuple[int, ...]


@dataclass(eq=False)
class Refill:
    id: int
    order_id: int
    created: float


class Simulator:
    def __init__(self, config: SimConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.balance = config.balance_micros
        self.orders: dict[int, Order] = {}
        self.refills: dict[int, Refill] = {}
        self.calls: Counter[str] = Counter()
        self.faults: dict[str, float] = {}
        self.hang_seconds = HANG_SECONDS
        seed = config.seed
        # Separate streams: turning a fault on must not change which orders fail.
        self._rng = random.Random(f"{seed}:orders") if seed is not None else random.Random()
        self._fault_rng = random.Random(f"{seed}:faults") if seed is not None else random.Random()
        # Far from the gateway's own small ids, and different from run to run (unless seeded).
        self._next_id = 100_000 + self._rng.randrange(1_000, 90_000)
        self._next_refill = 5_000 + self._rng.randrange(100, 900)
        self._due: list[tuple[float, int]] = []
        self.catalog: dict[int, Service] = {s.id: s for s in CATALOG}
        self.sessions = 0  # SmartPanel makes a session row for every call without its cookie
        self.overrides = Overrides()  # /_sim/overrides: per-item answers of a misbehaving panel
        self.set_faults(config.faults)

    # ----- clock -----------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock()

    def _at(self, created: float, steps: int) -> float:
        return created + steps * max(self.config.tick_seconds, 0.0)

    # ----- faults and stats --------------------------------------------------------------------

    def set_faults(self, faults: Mapping[str, object]) -> None:
        """Replace the fault table; refuse unknown kinds and rates outside [0, 1]."""
        table: dict[str, float] = {}
        for kind, rate in faults.items():
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
            if isinstance(rate, bool) or not isinstance(rate, int | float | str):
                raise ValueError(f"fault rate for {kind} must be a number")
            value = float(rate)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault rate for {kind} must be within [0, 1]")
            if value > 0:
                table[kind] = value
        self.faults = table

    def draw_fault(self) -> str | None:
        """At most one fault per request; with rates summing to ≤ 1 each fires at its rate."""
        if not self.faults:
            return None
        draw = self._fault_rng.random()
        cumulative = 0.0
        for kind in FAULT_KINDS:
            cumulative += self.faults.get(kind, 0.0)
            if draw < cumulative:
                return kind
        return None

    def count(self, action: str) -> None:
        self.calls[action or "none"] += 1

    def stats(self) -> dict[str, object]:
        return {"calls": dict(self.calls), "total": sum(self.calls.values()),
                "sessions": self.sessions}

    # ----- ids -----------------------------------------------------------------------------------

    def _new_id(self) -> int:
        # Other customers of a real panel order too: ids grow with small gaps.
        order_id = self._next_id
        self._next_id += self._rng.randint(1, 3)
        return order_id

    def find(self, raw: str) -> Order | None:
        raw = raw.strip()
        return self.orders.get(int(raw)) if raw.isdigit() else None

    # ----- add ------------------------------------------------------------------------------------

    def find_service(self, raw: str) -> Service | None:
        """The service a request parameter names ("5", " 5"), listed or not, or None."""
        raw = raw.strip()
        return self.catalog.get(int(raw)) if raw.isascii() and raw.isdigit() else None

    def listed_services(self) -> list[Service]:
        return [s for s in self.catalog.values() if s.listed]

    def edit_catalog(self, changes: Mapping[str, object]) -> None:
        """{"<id>": {field: value, …} | null}: add or change services, or delist them (null).
        All or nothing: one bad entry changes no service. Live orders keep what they were
        placed under, as on a real panel."""
        catalog = dict(self.catalog)
        for raw_id, fields in changes.items():
            if not raw_id.isascii() or not raw_id.isdigit():
                raise ValueError(f"service ids are whole numbers: {raw_id!r}")
            service_id = int(raw_id)
            if fields is None:
                catalog.pop(service_id, None)
            elif isinstance(fields, dict):
                catalog[service_id] = edited(service_id, fields, catalog.get(service_id))
            else:
                raise ValueError(f"service {raw_id}: give an object of fields, or null")
        self.catalog = catalog

    def add(self, params: Mapping[str, str], dialect: Dialect) -> Order:
        """Validate, charge and record one order, or raise SimError without changing anything."""
        raw_service = params.get("service", "")
        if not raw_service.strip():
            raise SimError(E_SERVICE_MISSING)
        service = self.find_service(raw_service)
        if service is None:
            raise SimError(E_SERVICE)
        if dialect == "smartpanel":
            return self._add_smartpanel(service, params)
        if service.type == SUBSCRIPTIONS:
            return self._add_subscription(service, params)
        return self._add_standard(service, params)

    def _add_smartpanel(self, service: Service, params: Mapping[str, str]) -> Order:
        """SmartPanel 4.0's `add`, as its code does it: `custom_comments` has a branch of its
        own; every other type (packages, the list types and subscriptions included) goes through
        the default branch, which needs `link` and `quantity`, checks a drip-feed order's total
        against the bounds and stores a plain order."""
        link = params.get("link", "")
        if link == "":
            raise SimError(E_LINK)
        stored = {"link": link[:SMARTPANEL_LINK_LENGTH]}
        runs: int | None = None
        if service.type == CUSTOM_COMMENTS:
            text = params.get("comments", "")
            if text.strip() == "":
                raise SimError(E_MISSING, "comments")
            comments = smartpanel_comments(text)
            quantity = len(comments)
            stored["comments"] = json.dumps(comments)
        else:
            runs = self._dripfeed_runs(service, params, "smartpanel")
            if params.get("quantity", "").strip() == "":
                raise SimError(E_QUANTITY_MISSING)
            quantity = php_int(params["quantity"])
        stored["quantity"] = str(quantity)
        total = quantity * (runs or 1)
        if quantity <= 0 or total < service.min or (runs is not None and runs < 1):
            raise SimError(E_MIN, service.min)
        if total > service.max:
            raise SimError(E_MAX, service.max)
        return self._create(service, params, stored, quantity, runs)

    def _add_standard(self, service: Service, params: Mapping[str, str]) -> Order:
        """The standard family: each type's own parameters, bounds on each run's quantity."""
        link = params.get("link", "")
        runs: int | None = None
        if service.type in LINE_FIELDS:
            name = LINE_FIELDS[service.type]
            text = params.get(name, "")
            if not text.strip():
                raise SimError(E_MISSING, name)
            quantity = count_lines(text)
        elif service.type == PACKAGE:
            quantity = 1  # a package is one unit whatever `quantity` says
        else:
            runs = self._dripfeed_runs(service, params, "standard")
            if params.get("quantity", "").strip() == "":
                raise SimError(E_QUANTITY_MISSING)
            quantity = php_int(params["quantity"])
        if link.strip() == "":
            raise SimError(E_LINK)
        for name in EXTRA_REQUIRED.get(service.type, ()):
            if not params.get(name, "").strip():
                raise SimError(E_MISSING, name)
        if service.type != PACKAGE:
            if quantity <= 0 or quantity < service.min or (runs is not None and runs < 1):
                raise SimError(E_MIN, service.min)
            if quantity > service.max:
                raise SimError(E_MAX, service.max)
        return self._create(service, params, dict(params), quantity, runs)

    def _create(self, service: Service, params: Mapping[str, str], stored: dict[str, str],
                quantity: int, runs: int | None) -> Order:
        units = quantity * (runs or 1)
        amount = (service.rate_micros if service.type in FLAT_RATE_TYPES
                  else charge(service.rate_micros, units))
        link = params.get("link", "")
        fate, hang = self._fate(link)
        self._debit(amount)
        now = self.now()
        if runs is not None:
            order = self._create_dripfeed(service, params, quantity, runs, amount, fate, hang, now)
        else:
            order = self._new_order(service, dict(params), "plain", units, amount, now, fate)
            order.hang = hang
            if "sim:error" in link:  # the panel's provider refused: shown Pending, for good
                order.stuck = SMARTPANEL_HIDDEN_STATUSES[0]
            self._record(order)
        order.stored = stored
        return order

    def _dripfeed_runs(self, service: Service, params: Mapping[str, str],
                       dialect: Dialect) -> int | None:
        """None for a plain order; the runs of a drip-feed one, in SmartPanel's order of checks."""
        runs_raw = params.get("runs", "").strip()
        interval_raw = params.get("interval", "").strip()
        if runs_raw == "" and interval_raw == "":
            return None
        if not service.dripfeed:
            raise SimError(E_DRIPFEED)
        if interval_raw == "":
            raise SimError(E_INTERVAL_REQUIRED)
        if runs_raw == "":
            raise SimError(E_RUNS_REQUIRED)
        interval = php_int(interval_raw)
        if dialect == "smartpanel" and interval not in SMARTPANEL_INTERVALS:
            raise SimError(E_INTERVAL)
        if dialect == "standard" and (not interval_raw.isdigit() or interval < 0):
            raise SimError(E_INVALID, "interval")
        return php_int(runs_raw)  # below 1: refused later as a quantity below the minimum

    def _add_subscription(self, service: Service, params: Mapping[str, str]) -> Order:
        """The standard family's subscriptions (SmartPanel has none): charged up front for
        `max` units per post, `posts` posts (default 1); `old_posts` is not charged."""
        username = params.get("username", "")
        if not username.strip():
            raise SimError(E_MISSING, "username")
        for name in ("min", "max", "delay"):
            if params.get(name, "").strip() == "":
                raise SimError(E_MISSING, name)
        low, high = php_int(params["min"]), php_int(params["max"])
        if low < service.min:
            raise SimError(E_MIN, service.min)
        if high > service.max:
            raise SimError(E_MAX, service.max)
        if high < low:
            raise SimError(E_INVALID, "max")
        if php_int(params["delay"]) not in STANDARD_DELAYS:
            raise SimError(E_INVALID, "delay")
        posts_raw = params.get("posts", "").strip()
        posts = php_int(posts_raw) if posts_raw else 1
        if posts < 1:
            raise SimError(E_INVALID, "posts")
        expiry: date | None = None
        if params.get("expiry", "").strip():
            try:
                expiry = datetime.strptime(params["expiry"].strip(), "%d/%m/%Y").date()
            except ValueError:
                raise SimError(E_INVALID, "expiry") from None

        amount = charge(service.rate_micros, high * posts)
        fate, hang = self._fate(f"{username} {params.get('link', '')}")  # markers: either
        self._debit(amount)
        now = self.now()
        parent = self._new_order(service, dict(params), "subscription", high * posts, amount,
                                 now, fate)
        parent.hang, parent.expiry, parent.posts = hang, expiry, posts_raw or None
        shares = split_charge(amount, posts)
        delivered = {COMPLETED: posts, PARTIAL: posts // 2}.get(fate, 0)
        for k in range(delivered):  # one child order per new post, one tick apart
            child = self._new_order(service, {}, "plain", high, shares[k],
                                    self._at(now, k + 1), COMPLETED)
            self._adopt(parent, child)
        parent.charge = amount - sum(shares[:delivered])  # held for posts that never come
        parent.due_at = max([c.due_at for c in parent.children], default=self._at(now, 2))
        return self._record(parent)

    def _create_dripfeed(self, service: Service, params: Mapping[str, str], quantity: int,
                         runs: int, charge: int, fate: str, hang: bool, now: float) -> Order:
        parent = self._new_order(service, dict(params), "dripfeed", quantity * runs, 0, now, fate)
        parent.hang, parent.runs, parent.initial_charge = hang, runs, charge
        if runs_never_start(params.get("link", "")):
            parent.charge, parent.fate = charge, PARTIAL  # held, then all of it refunded
            return self._record(parent)
        for k, share in enumerate(split_charge(charge, runs)):  # run k starts k ticks later
            child = self._new_order(service, {}, "plain", quantity, share, self._at(now, k), fate)
            self._adopt(parent, child)
        parent.due_at = max(c.due_at for c in parent.children)
        return self._record(parent)

    def withholds_figures(self, order: Order) -> bool:
        """Link marker sim:late-figures: a final status first comes without `charge` and
        `remains` (the panel computes them later), for two ticks past the final one."""
        return ("sim:late-figures" in order.params.get("link", "")
                and self.now() < self._at(order.due_at, 2))

    def _fate(self, marked: str) -> tuple[str, bool]:
        """Random by seed, unless the link names one; drawn always so markers don't shift it."""
        draw = self._rng.random()
        fate = (COMPLETED if draw < 0.80 else
                PARTIAL if draw < 0.92 else CANCELED)
        if "sim:reject" in marked:
            raise SimError(E_SERVICE)  # the panel's usual refusal of an order it won't take
        if "sim:cancel" in marked:
            fate = CANCELED
        elif "sim:partial" in marked:
            fate = PARTIAL
        elif "sim:complete" in marked:
            fate = COMPLETED
        return fate, "sim:timeout" in marked

    def _debit(self, charge: int) -> None:
        if charge > self.balance or self.balance <= 0:
            raise SimError(E_FUNDS)
        self.balance -= charge

    def _new_order(self, service: Service, params: dict[str, str], kind: Kind, quantity: int,
                   charge: int, created: float, fate: str) -> Order:
        over = 0
        if fate == COMPLETED and kind == "plain" and self._rng.random() < 0.25:
            over = max(1, quantity * self._rng.randint(1, 5) // 100)
        order = Order(
            id=self._new_id(), service=service, params=params, kind=kind,
            quantity=quantity, charge=charge, created=created,
            due_at=self._at(created, 2), fate=fate,
            start_count=self._rng.randint(0, 50_000), over=over, initial_charge=charge,
        )
        return order

    def _adopt(self, parent: Order, child: Order) -> None:
        child.parent = parent.id
        parent.children.append(child)
        self.orders[child.id] = child
        heapq.heappush(self._due, (child.due_at, child.id))

    def _record(self, order: Order) -> Order:
        self.orders[order.id] = order
        heapq.heappush(self._due, (order.due_at, order.id))
        return order

    # ----- lifecycle ----------------------------------------------------------------------------

    def settle_due(self) -> None:
        """Apply the refunds of every order that has reached its final tick."""
        now = self.now()
        while self._due and self._due[0][0] <= now:
            _, order_id = heapq.heappop(self._due)
            if self.orders[order_id].stuck is None:
                self._settle(self.orders[order_id])

    def _settle(self, order: Order) -> None:
        if order.settled:
            return
        for child in order.children:
            self._settle(child)
        if order.kind == "plain":
            order.remains_final, refund = self._final_remains_and_refund(order)
        else:
            order.remains_final, refund = 0, order.charge  # what no child took
        order.charge -= refund
        self.balance += refund
        order.settled = True

    def _final_remains_and_refund(self, order: Order) -> tuple[int, int]:
        if order.fate == CANCELED:
            return order.quantity, order.charge
        if order.fate == PARTIAL:
            if order.service.type in FLAT_RATE_TYPES:
                return 0, order.charge // 2
            remains = order.quantity // 2
            return remains, order.charge * remains // order.quantity
        return 0, 0

    def cancel_now(self, order: Order) -> None:
        """A granted cancel (standard dialect): Canceled at once, everything refunded."""
        order.fate, order.over = CANCELED, 0
        self._settle(order)

    def view(self, order: Order) -> OrderView:
        now = self.now()
        if not order.settled and order.stuck is None and now >= order.due_at:
            self._settle(order)
        started = now >= self._at(order.created, 1)
        visible = tuple(c.id for c in order.children if c.created <= now)
        held = order.charge + sum(c.charge for c in order.children)
        if order.stuck is not None:
            status = order.stuck
        elif order.settled:
            status = order.fate
        elif order.kind == "dripfeed":
            status = IN_PROGRESS  # SmartPanel starts drip-feed parents in progress
        elif not started:
            status = PENDING
        else:
            status = ACTIVE if order.kind == "subscription" else IN_PROGRESS
        if order.kind == "plain":
            start_count = order.start_count if started or order.settled else None
            remains = (order.remains_final if order.settled
                       else order.quantity if started else 0)
        else:
            first = order.children[0] if order.children else None
            start_count = self.view(first).start_count if first and first.created <= now else None
            remains = sum(c.remains_final if c.settled else c.quantity for c in order.children)
            if order.kind == "subscription":
                remains = 0
        expiry_active = order.expiry is not None and order.expiry >= date.today()
        return OrderView(
            id=order.id, kind=order.kind, status=status, charge=held,
            start_count=start_count, remains=remains,
            over=order.over if status == COMPLETED else 0,
            runs=order.runs, posts=order.posts, expiry_active=expiry_active, children=visible,
        )

    # ----- refills and cancels (standard dialect) ------------------------------------------------

    def refill(self, raw_id: str) -> Refill:
        order = self.find(raw_id)
        if order is None:
            raise SimError(E_ORDER)
        view = self.view(order)
        if (not order.service.refill or order.kind != "plain"
                or view.status not in (COMPLETED, PARTIAL)):
            raise SimError(E_NOT_REFILLABLE)
        refill = Refill(id=self._next_refill, order_id=order.id, created=self.now())
        self._next_refill += self._rng.randint(1, 2)
        self.refills[refill.id] = refill
        return refill

    def refill_status(self, raw_id: str) -> str:
        raw_id = raw_id.strip()
        refill = self.refills.get(int(raw_id)) if raw_id.isdigit() else None
        if refill is None:
            raise SimError(E_REFILL)
        now = self.now()
        if now >= self._at(refill.created, 2):
            return COMPLETED
        return IN_PROGRESS if now >= self._at(refill.created, 1) else PENDING

    def cancel(self, raw_id: str) -> None:
        order = self.find(raw_id)
        if order is None:
            raise SimError(E_ORDER)
        if order.kind != "plain" or not order.service.cancel or self.view(order).status in (
                COMPLETED, PARTIAL, CANCELED):
            raise SimError(E_NOT_CANCELABLE)
        self.cancel_now(order)

    # ----- inspection --------------------------------------------------------------------------

    def listing(self) -> list[dict[str, object]]:
        """Top-level orders, each once, with the parameters exactly as received."""
        rows: list[dict[str, object]] = []
        for order in self.orders.values():
            if order.parent is not None:
                continue
            view = self.view(order)
            rows.append({
                "id": order.id,
                "service": order.service.id,
                "type": order.service.type,
                "kind": order.kind,
                "params": order.params,
                "stored": order.stored,
                "quantity": order.quantity,
                "charge": padded(view.charge, 4),
                "charge_micros": view.charge,
                "initial_charge_micros": order.initial_charge,
                "status": view.status,
                "created": order.created,
                "children": [c.id for c in order.children],
            })
        return rows
