"""The seeded simulation of the money path: a VOPR for smm-gateway.

One event loop drives the real gateway in-process (customers through its contract endpoint over
`httpx.ASGITransport`, operators through the domain functions) against the real simulator
(in-process too, its clock a `SimClock` the harness advances), for N steps drawn from
`random.Random(seed)`, injecting upstream faults and crashes at every phase boundary, and
checking the invariants of DESIGN.md ("Money", "Ledger", "Placing an order", "Status and
settlement") after every step. A failure raises `SimulationFailure` naming the seed, the step
and the step log; `python bench/simulate.py --seed S --steps N --db sqlite|postgresql` replays it.

Determinism: every choice comes from the seed; the simulator's own randomness from its seed;
time is virtual for both sides (`virtual_time` points the gateway's `utcnow` at the same
clock the simulator reads). Nothing branches on the wall clock:

- an upstream reply that "never comes" (`sim:timeout`, `timeout_after_accept`) is turned into
  an immediate `httpx.ReadTimeout` the moment the simulator starts waiting for the client to
  hang up (`Wire`), instead of waiting for a real read timeout;
- concurrent `add`s are really concurrent up to the upstream call (debits race on one
  balance), then a `Gate` holds them until every one has either reached the upstream or been
  answered, and releases them to the simulator one at a time in order of our order id.
  Their requests are identical but for the unique link, so a run is the same up to which
  link got which order id; the step log names orders by rank (`o17`), never by database id
  (PostgreSQL sequences leave timing-dependent gaps after a rolled-back debit).

A crash is `Crash`, a BaseException no handler of the gateway catches: raised inside the
upstream transport (before or after the simulator acted), or simulated by calling the phase
functions and dropping the process. Either way the harness then disposes the Gateway (its
Database and UpstreamClient) and starts a fresh one on the same database URL, advances the
clock past `sending_grace_seconds` and runs the recovery the real start-up runs (a sync pass).

With the fault class `providers` (tests/simulation/providers.py) a second simulator is provider
`b`; the Wire routes each call by host, so an upstream order is named (provider, id) throughout.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import logging
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

import app.models
from app import ledger
from app.catalog import clear_price, priced_service, set_price, sync_catalog
from app.contract import CANCELED, COMPLETED, FINAL_STATUSES, PACKAGE_TYPES, PARTIAL, ContractError
from app.customers import create_customer, update_customer
from app.db import Database
from app.errors import NotFound, OperatorError
from app.main import create_app, sending_grace_seconds
from app.models import Customer, Order
from app.orders.placing import (
    PLACED,
    REJECTED,
    SENDING,
    STATES,
    UNKNOWN,
    NotEnoughFunds,
    commit_intent,
    commit_outcome,
    send_and_commit,
)
from app.orders.queries import resolve
from app.orders.validation import OrderRequest, validate_add
from app.providers import ProviderClients
from app.settings import Settings, load_settings
from app.simulator import FAULT_KINDS, SimConfig, create_simulator_app
from app.simulator.catalog import CATALOG, SERVICES
from app.simulator.catalog import Service as SimService
from app.sync import PassResult, sync_pass
from app.upstream import Ambiguous, Refused, UpstreamClient

from .providers import (
    A_HOST,
    B_HOST,
    DEFINITE,
    PROVIDER_STEPS,
    PROVIDER_WEIGHTS,
    A,
    B,
    ProviderSteps,
    connect_refused,
    host_of,
    second_simulator,
)
from .wide import CLASS_STEPS, FAULT_CLASSES, WIDE_WEIGHTS, Hook, WideSteps, catalog_sync_checked

SIM_KEY = "vopr-simulator-key"
SECRET_KEY = "vopr-secret-key-for-provider-keys-0123456789"
TICK = 1.0  # the simulator's time between two lifecycle steps of an order
# Generous on purpose: thanks to `Wire` a reply that never comes costs no wall time at all
# (it becomes a ReadTimeout at once), so the real timeouts are only a safety net that must
# never fire on a live in-process call, however loaded the machine (a gated concurrent add
# waits for its siblings inside the call): that would make the run depend on the wall clock.
# They cost nothing either: the grace they imply is waited out on the virtual clock.
READ_TIMEOUT = 10.0
CONNECT_TIMEOUT = 1.0
EPOCH = datetime(2030, 1, 1, tzinfo=UTC)
MICROS = 10**6

# Link markers (the simulator's chosen fates); "" leaves the fate to the simulator's seed.
MARKERS = ("", "", "", "sim:complete", "sim:partial", "sim:cancel", "sim:reject", "sim:timeout")
TOKEN = re.compile(r"T\d+x\d+")
CANCELABLE = tuple(s.id for s in CATALOG if s.cancel)  # in the standard dialect

# Step kinds and their weights. `bench/simulate.py` and the tests use these as they are.
WEIGHTS: dict[str, int] = {
    "topup": 5,
    "add": 30,
    "add_invalid": 6,
    "status": 10,
    "sync": 14,
    "refill": 4,
    "cancel": 4,
    "resolve": 8,
    "concurrent_adds": 4,
    "faults": 5,
    "idempotent_retry": 3,
    "crash_before_upstream": 2,
    "crash_after_upstream": 2,
    "crash_in_add_request": 2,
    "crash_mid_sync": 2,
    "late_outcome": 2,
    "pricing": 2,
    "catalog_sync": 1,
    "restart": 1,
    # A stall longer than the grace between the phases, while an operator resolves the order
    # (a free order until 552e5ac; tests/simulation/test_regressions.py).
    "stalled_send": 1,
    # The wider classes of issue 10 (tests/simulation/wide.py), each off with its class.
    **WIDE_WEIGHTS,
    # A second provider, out of funds, down, killed mid-add (tests/simulation/providers.py).
    **PROVIDER_WEIGHTS,
}
# The fault class of each step kind that has one (off: the kind weighs 0).
STEP_CLASSES = {**CLASS_STEPS, **PROVIDER_STEPS}

# Bugs a run may meet and count instead of failing on, while their fix is pending (a run that
# tolerates one counts it in Report.tolerated). Add an id here with its xfail regression test
# in test_regressions.py; remove it when the fix lands, so that every run checks it again.
# Fixed: idempotency-race (ef707fc), partial-subscription-without-runs (f2cbcb7); stalled-send,
# negative-rate and interval-0 (552e5ac); false-critical-after-resolve.
# Fixed (issue 10, found by the wider classes of tests/simulation/wide.py on the old code, named
# by the bug ids their checks carry): poison-settled, poison-stops-sync, poison-catalog,
# unknown-status-settled, unknown-status-shown, db-fault-fatal, db-fault-500, first-charge-lost.
KNOWN_BUGS: frozenset[str] = frozenset()


class SimulationFailure(AssertionError):
    """An invariant broke (or a step raised): the message names the seed, step and step log."""

    def __init__(self, message: str, log: list[str] | None = None):
        super().__init__(message)
        self.log = log or []  # the whole step log, for `bench/simulate.py --log`


class Crash(BaseException):
    """The gateway process dies right here. A BaseException, so that no `except Exception`
    in the gateway turns it into an outcome: it unwinds everything, as SIGKILL would."""


class _Hung(Exception):
    """The simulator started waiting for the client to hang up: its reply never comes."""


# --- time -----------------------------------------------------------------------------------


class SimClock:
    """Time that moves only when the harness says so, shared by the simulator and gateway."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def utcnow(self) -> datetime:
        return EPOCH + timedelta(seconds=self.now)


@contextmanager
def virtual_time(clock: SimClock) -> Iterator[None]:
    """Point every `app.*` module's `utcnow` at the clock, and back afterwards.

    The gateway reads time only through `app.models.utcnow` (imported by name into its
    modules); column defaults keep the wall clock, but no decision reads them."""
    original = app.models.utcnow
    patched = []
    for name, module in list(sys.modules.items()):
        if (name == "app" or name.startswith("app.")) and getattr(
            module, "utcnow", None
        ) is original:
            module.utcnow = clock.utcnow  # type: ignore[attr-defined]
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            module.utcnow = original  # type: ignore[attr-defined]


# --- the upstream's wire, as the gateway sees it --------------------------------------------


def _form(body: bytes) -> dict[str, str]:
    form = {k: v[0] for k, v in parse_qs(body.decode("latin-1"), keep_blank_values=True).items()}
    out = {}
    for key, value in form.items():
        for _ in range(2):  # SmartPanel's double encoding, undone
            if "%" not in value:
                break
            value = unquote(value)
        out[key] = value
    return out


class Gate:
    """Holds concurrent `add`s at the upstream until every request of the group has either
    arrived there or been answered, then lets the harness release them one at a time
    (`release`). Requests are named by their link's token: two that share one (a retry racing
    its own first try with one Idempotency-Key) count once, since the second one waits for
    the first one's outcome and answers only after its release. A request a provider refused
    definitely may arrive again at the next provider: it is held again, and its release goes
    on until it either arrives there or its requests have answered (so that the providers see
    the group in one order, whatever the timing)."""

    def __init__(self, tokens: set[str]) -> None:
        self.tokens = tokens
        self.arrivals: dict[str, asyncio.Queue[tuple[asyncio.Event, asyncio.Event]]] = {}
        self.current: dict[str, asyncio.Event] = {}  # the round at the upstream: processed
        self.verdicts: dict[str, str] = {}  # each token's last outcome at the wire
        self.answered: set[str] = set()
        self.all_in = asyncio.Event()

    @property
    def arrived(self) -> set[str]:
        return set(self.arrivals)

    def _check(self) -> None:
        if self.tokens <= set(self.arrivals) | self.answered:
            self.all_in.set()

    async def hold(self, token: str) -> None:
        if self.verdicts.get(token, "refused") not in DEFINITE:
            return  # it went on after an outcome that was no refusal: the checks report it
        release, processed = asyncio.Event(), asyncio.Event()
        self.arrivals.setdefault(token, asyncio.Queue()).put_nowait((release, processed))
        self.current[token] = processed
        self._check()
        await release.wait()

    def answer(self, token: str) -> None:
        self.answered.add(token)
        self._check()

    def done(self, token: str, verdict: str) -> None:
        self.verdicts[token] = verdict
        if token in self.current:
            self.current.pop(token).set()

    async def release(self, token: str, answered: asyncio.Future[Any]) -> int:
        """Let one token's request on; `answered`: done once its requests have answered.
        Returns how many providers it was let on to."""
        queue = self.arrivals[token]
        item = queue.get_nowait()
        rounds = 0
        while True:
            release, processed = item
            release.set()
            rounds += 1
            await processed.wait()
            if self.verdicts.get(token) not in DEFINITE:
                return rounds
            # Refused: it answers now, or arrives at the next provider first.
            arrival = asyncio.ensure_future(queue.get())
            await asyncio.wait({arrival, answered}, return_when=asyncio.FIRST_COMPLETED)
            if not arrival.done():
                arrival.cancel()
                return rounds
            item = arrival.result()


class Wire:
    """ASGI app between the gateway's upstream clients and the simulators (one per provider,
    by host): arms crashes at a chosen call, turns a reply that never comes into an immediate
    read timeout, gates concurrent adds, refuses the connection to a provider that is down,
    and keeps every `add`'s trail (which provider, what outcome) per request."""

    def __init__(self, sim_app: FastAPI, others: dict[str, FastAPI] | None = None) -> None:
        self.sim_app = sim_app
        self.apps = {A_HOST: sim_app, **(others or {})}
        self.calls: Counter[str] = Counter()
        self.crash: tuple[str, str, int] | None = None  # (action, "before"|"after", nth call)
        self.crash_counter = 0
        self.crashed = False
        self.gate: Gate | None = None
        self.hook: Hook | None = None  # a database fault or another instance, at one call
        self.hangs = 0
        self.down: set[str] = set()  # hosts that refuse the connection
        self.kill_after_add: str | None = None  # this host dies once it has taken an add
        self.trails: dict[str, list[tuple[str, str]]] = {}  # token -> [(host, verdict)]
        self.touched: set[str] = set()  # tokens whose trail grew since the last check
        self.killed = 0  # adds a provider died in the middle of

    def arm(self, action: str, when: str, nth: int) -> None:
        self.crash, self.crash_counter, self.crashed = (action, when, nth), 0, False

    def disarm(self) -> None:
        self.crash = None

    def record(self, token: str | None, host: str, verdict: str) -> None:
        if token is not None:
            self.trails.setdefault(token, []).append((host, verdict))
            self.touched.add(token)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.sim_app(scope, receive, send)
            return
        host = host_of(scope)
        sim_app = self.apps[host]
        body = bytearray()
        while True:
            message = await receive()
            body.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        form = _form(bytes(body))
        action = form.get("action", "")
        token = _token_of(form)
        if host in self.down:  # before anything else: the request never leaves
            if action == "add":
                self.record(token, host, "down")
            raise connect_refused(host)
        self.calls[action] += 1
        when = None
        if self.crash is not None and self.crash[0] == action:
            self.crash_counter += 1
            if self.crash_counter == self.crash[2]:
                when, self.crash, self.crashed = self.crash[1], None, True
        gate = self.gate if action == "add" else None
        verdict = "ambiguous"
        reply = _Reply(send)
        try:
            if gate is not None and token:
                await gate.hold(token)
            if when == "before":
                raise Crash(f"the gateway died sending {action}")
            await self.run_hook(action, "before")
            delivered = False

            async def replay() -> dict[str, Any]:
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                raise _Hung  # only a reply that waits for the client to go away asks again

            kill = action == "add" and self.kill_after_add == host
            try:
                await sim_app(scope, replay, reply.send if not kill else reply.keep)
            except _Hung:
                self.hangs += 1
                if when == "after":
                    raise Crash(f"the gateway died waiting for {action}") from None
                raise httpx.ReadTimeout("simulated: the upstream's reply never came") from None
            except Exception as exc:
                if when == "after":
                    raise Crash(f"the gateway died reading {action}") from exc
                raise
            if when == "after":
                raise Crash(f"the gateway died before reading the reply to {action}")
            if kill:  # it took the order (or refused it), then died before its reply left
                self.kill_after_add = None
                self.down.add(host)
                self.killed += 1
                raise httpx.RemoteProtocolError("simulated: the provider died mid-reply")
            verdict = reply.verdict()
            await self.run_hook(action, "after")
        finally:
            if action == "add":
                self.record(token, host, verdict)
            if gate is not None and token:
                gate.done(token, verdict)

    async def run_hook(self, action: str, when: str) -> None:
        hook = self.hook
        if hook is not None and hook.due(action, when):
            self.hook = None  # one shot: what it runs may call the upstream again
            await hook.run()


class _Reply:
    """What a simulator answered, as the Wire passes it on (or keeps it: a reply lost)."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self.status = 0
        self.body = bytearray()

    async def keep(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body.extend(message.get("body", b""))

    async def send(self, message: dict[str, Any]) -> None:
        await self.keep(message)
        await self._send(message)

    def verdict(self) -> str:
        """accepted (an order id), refused (an {"error"} or a 4xx) or ambiguous."""
        if 400 <= self.status < 500:
            return "refused"
        if self.status != 200:
            return "ambiguous"
        try:
            data = json.loads(bytes(self.body))
        except ValueError:
            return "ambiguous"
        if isinstance(data, dict) and "order" in data:
            return "accepted"
        if isinstance(data, dict) and "error" in data:
            return "refused"
        return "ambiguous"


def _token_of(params: dict[str, Any]) -> str | None:
    found = TOKEN.search(f"{params.get('link', '')} {params.get('username', '')}")
    return found.group(0) if found else None


def is_crash(exc: BaseException) -> bool:
    if isinstance(exc, Crash):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda e: isinstance(e, Crash)) is not None
    return False


class Alarms(logging.Handler):
    """The gateway's CRITICAL log lines during a run: each must be true."""

    def __init__(self) -> None:
        super().__init__(logging.CRITICAL)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


REFUNDED_BUT_PLACED = re.compile(r"order (\d+) was refunded, but the upstream placed it as (\d+)")


# --- one gateway process --------------------------------------------------------------------


class Node:
    """One running gateway: the app with its lifespan entered, and a customer's HTTP client."""

    def __init__(self, app: FastAPI, lifespan: Any, client: httpx.AsyncClient) -> None:
        self.app = app
        self.lifespan = lifespan
        self.client = client

    @classmethod
    async def start(cls, settings: Settings, wire: Wire) -> Node:
        transport = httpx.ASGITransport(app=wire)
        app = create_app(settings, upstream_transport=transport, background=False)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway.sim", timeout=None
        )
        return cls(app, lifespan, client)

    @property
    def db(self) -> Database:
        return self.app.state.gateway.db

    @property
    def upstream(self) -> UpstreamClient:
        return self.app.state.gateway.upstream

    @property
    def providers(self) -> ProviderClients:
        return self.app.state.gateway.providers

    async def stop(self) -> None:
        await self.client.aclose()
        await self.lifespan.__aexit__(None, None, None)


def gateway_settings(database_url: str, dialect: str) -> Settings:
    standard = dialect == "standard"
    return load_settings(
        database_url=database_url,
        upstream_url=f"http://upstream.sim/api/{'v2' if standard else 'v1'}",
        upstream_key=SIM_KEY,
        upstream_double_decode=not standard,
        upstream_timeout_seconds=READ_TIMEOUT,
        upstream_connect_timeout_seconds=CONNECT_TIMEOUT,
        rate_limit_per_second=0,
        default_markup_percent=Decimal(10),
        sync_in_process=False,
        log_level="CRITICAL",
        log_format="text",
        admin_token="",
        redis_url="",
        secret_key=SECRET_KEY,  # provider b's key is stored encrypted with it
    )


# --- what the harness knows -----------------------------------------------------------------


@dataclass
class Cust:
    id: int
    key: str
    dialect: str
    markup_bp: int | None


@dataclass
class Rec:
    """One gateway order as last read."""

    id: int
    customer_id: int
    service_id: int
    state: str
    status: str
    charge: int
    cost: int
    refunded: int
    quantity: int
    upstream_order_id: int | None
    settled: bool
    announced: bool
    token: str | None
    first_charge: int | None  # the upstream's first charge as the gateway kept it
    provider_id: int = A

    @property
    def kept(self) -> int:
        return self.charge - self.refunded

    @property
    def live(self) -> bool:
        return self.state in (SENDING, UNKNOWN) or (self.state == PLACED and not self.settled)


_COLUMNS = (
    Order.id,
    Order.customer_id,
    Order.service_id,
    Order.state,
    Order.status,
    Order.charge,
    Order.cost,
    Order.refunded,
    Order.quantity,
    Order.upstream_order_id,
    Order.settled_at,
    Order.announced,
    Order.params,
    Order.upstream_first_charge,
    Order.provider_id,
)


def _rec(row: Any) -> Rec:
    (oid, cid, sid, state, status, charge, cost, refunded, qty, up, settled, ann, params, first) = (
        row[:14]
    )
    return Rec(
        oid,
        cid,
        sid,
        state,
        status,
        charge,
        cost,
        refunded,
        qty,
        up,
        settled is not None,
        bool(ann),
        _token_of(json.loads(params)),
        first,
        row[14],
    )


@dataclass
class Options:
    seed: int
    steps: int
    database_url: str
    dialect: str | None = None  # None: by the seed (even: standard, odd: smartpanel)
    full_check_every: int = 1  # the whole-database checks; the per-step ones run every step
    # Long runs: every step up to 500 orders, every 100 steps up to 20,000, then every 1,000
    # (a whole-database check costs O(orders); the per-step checks stay O(live orders)).
    adaptive_full_check: bool = False
    tolerate: frozenset[str] = KNOWN_BUGS
    # The wider fault classes (tests/simulation/wide.py) switched on; replays of runs recorded
    # before them pass frozenset() (their steps weigh 0 and draw nothing from the seed).
    faults: frozenset[str] = frozenset(FAULT_CLASSES)
    weights: dict[str, int] = field(default_factory=lambda: dict(WEIGHTS))
    progress: Callable[[str], None] | None = None
    progress_every: int = 1000

    @property
    def db_kind(self) -> str:
        return "sqlite" if self.database_url.startswith("sqlite") else "postgresql"


@dataclass
class Report:
    seed: int
    steps: int
    db: str
    dialect: str
    kinds: Counter[str]
    outcomes: Counter[str]
    tolerated: Counter[str]
    orders: int
    upstream_orders: int
    crashes: int
    hangs: int
    full_checks: int
    wall_seconds: float
    cpu_seconds: float
    digest: str
    log: list[str]
    by_provider: dict[str, int] = field(default_factory=dict)  # "provider:state" -> orders


# --- the simulation -------------------------------------------------------------------------


class Simulation(WideSteps, ProviderSteps):
    TICK = TICK

    def __init__(self, options: Options) -> None:
        self.opts = options
        self.rng = random.Random(options.seed)
        self.dialect = options.dialect or ("standard", "smartpanel")[options.seed % 2]
        self.clock = SimClock()
        self.sim_app = create_simulator_app(
            SimConfig(
                key=SIM_KEY,
                balance_micros=10**15,
                dialect=self.dialect,  # type: ignore[arg-type]
                tick_seconds=TICK,
                seed=options.seed,
            ),
            clock=self.clock,
        )
        self.sim = self.sim_app.state.sim
        apps = {A: self.sim_app}
        self.dialects = {A: self.dialect}
        if "providers" in options.faults:
            apps[B] = second_simulator(options.seed, self.clock)
            self.dialects[B] = "standard"
        self.sims = {pid: sim_app.state.sim for pid, sim_app in apps.items()}
        self.wire = Wire(self.sim_app, {B_HOST: apps[B]} if B in apps else None)
        self.sim_clients = {
            pid: httpx.AsyncClient(
                transport=httpx.ASGITransport(app=sim_app),
                base_url=f"http://{A_HOST if pid == A else B_HOST}",
            )
            for pid, sim_app in apps.items()
        }
        self.sim_client = self.sim_clients[A]
        self.settings = gateway_settings(options.database_url, self.dialect)
        self.grace = sending_grace_seconds(self.settings)
        self.node: Node | None = None
        self.step = 0
        self.current = "setup"
        self.log: list[str] = []
        self.kinds: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.tolerated: Counter[str] = Counter()
        self.crashes = 0
        self.full_checks = 0
        # customers and their money
        self.customers: list[Cust] = []
        self.funds: Counter[int] = Counter()  # top-ups + adjustments
        # the gateway's orders as last read
        self.recs: dict[int, Rec] = {}
        self.ids: list[int] = []  # sorted (ids only grow)
        self.by_customer: dict[int, list[int]] = {}
        self.live: set[int] = set()
        self.kept: Counter[int] = Counter()  # per customer: sum of charge - refunded
        self.gw_by_token: dict[str, int] = {}
        self.gw_by_upstream: dict[tuple[int, int], int] = {}  # (provider, upstream id) -> ours
        # the simulators' orders, as scanned: a link -> (provider, upstream id)
        self.sim_by_token: dict[str, tuple[int, int]] = {}
        self.sim_scanned: Counter[int] = Counter()
        self.below_cost_ok: dict[tuple[int, int | None], bool] = {}
        self.alarms = Alarms()
        self.wide_init()
        self.providers_init()
        kinds = list(options.weights)
        self._kinds = kinds
        self._weights = [
            0 if STEP_CLASSES.get(k, "") not in options.faults | {""} else options.weights[k]
            for k in kinds
        ]

    # -- plumbing --

    @property
    def db(self) -> Database:
        assert self.node is not None
        return self.node.db

    @property
    def upstream(self) -> UpstreamClient:
        assert self.node is not None
        return self.node.upstream

    @property
    def clients(self) -> ProviderClients:
        """Every provider's client, as the running gateway holds them."""
        assert self.node is not None
        return self.node.providers

    def note(self, text: str) -> None:
        self.log.append(f"{self.step:>6} {text}")

    def rank(self, order_id: int | None) -> str:
        if order_id is None:
            return "-"
        index = bisect.bisect_left(self.ids, order_id)
        if index < len(self.ids) and self.ids[index] == order_id:
            return f"o{index + 1}"
        return "o?"

    def fail(self, problem: str, bug: str | None = None) -> None:
        if bug is not None and bug in self.opts.tolerate:
            self.tolerated[bug] += 1
            return
        raise SimulationFailure(self.describe(problem), self.log)

    def describe(self, problem: str) -> str:
        o = self.opts
        tail = "\n".join(self.log[-60:])
        return (
            f"simulation failed: seed={o.seed} step={self.step} of {o.steps} db={o.db_kind}"
            f" dialect={self.dialect} (during {self.current})\n{problem}\n"
            f"replay: python bench/simulate.py --seed {o.seed} --steps {self.step}"
            f" --db {o.db_kind}"
            + (f" --dialect {o.dialect}" if o.dialect else "")
            + ("" if o.tolerate == KNOWN_BUGS else " --strict")
            + "".join(f" --weight {k}={n}" for k, n in o.weights.items() if WEIGHTS.get(k) != n)
            + (
                ""
                if o.faults == frozenset(FAULT_CLASSES)
                else f" --faults '{','.join(sorted(o.faults))}'"
            )
            + f"\nlast steps:\n{tail}"
        )

    async def http(
        self, key: str, action: str, headers: dict[str, str] | None = None, **params: object
    ) -> Any:
        assert self.node is not None
        data = {"key": key, "action": action} | {k: str(v) for k, v in params.items()}
        response = await self.node.client.post("/api/v2", data=data, headers=headers)
        if response.status_code != 200:
            self.fail(
                f"{action} answered HTTP {response.status_code}: {response.text[:300]}",
                bug="db-fault-500" if self.in_db_fault else None,
            )
            self.answered_500 = True
            return {"error": f"HTTP {response.status_code}"}
        return response.json()

    # -- the run --

    async def run(self) -> Report:
        started, cpu = time.perf_counter(), time.process_time()
        gateway_log = logging.getLogger("smm_gateway")
        gateway_log.addHandler(self.alarms)
        try:
            return await self._run(started, cpu)
        finally:
            gateway_log.removeHandler(self.alarms)

    async def _run(self, started: float, cpu: float) -> Report:
        with virtual_time(self.clock):
            try:
                await self.setup()
                for step in range(1, self.opts.steps + 1):
                    self.step = step
                    kind = self.rng.choices(self._kinds, self._weights)[0]
                    self.kinds[kind] += 1
                    self.current = kind
                    await getattr(self, f"step_{kind}")()
                    await self.check_step()
                    if step % self.full_check_every() == 0:
                        await self.check_full()
                        self.full_checks += 1
                    if self.opts.progress and step % self.opts.progress_every == 0:
                        self.opts.progress(self.progress_line(started, cpu))
                self.step, self.current = self.opts.steps + 1, "drain"
                await self.drain()
                await self.check_step()
                await self.check_full()
                digest = await self.digest()
            except SimulationFailure:
                raise
            except Exception as exc:
                raise SimulationFailure(
                    self.describe(f"step raised {type(exc).__name__}: {exc}"), self.log
                ) from exc
            finally:
                await self.teardown()
        return Report(
            seed=self.opts.seed,
            steps=self.opts.steps,
            db=self.opts.db_kind,
            dialect=self.dialect,
            kinds=self.kinds,
            outcomes=self.outcomes,
            tolerated=self.tolerated,
            orders=len(self.recs),
            upstream_orders=len(self.sim_by_token),
            crashes=self.crashes,
            hangs=self.wire.hangs,
            full_checks=self.full_checks,
            wall_seconds=time.perf_counter() - started,
            cpu_seconds=time.process_time() - cpu,
            digest=digest,
            log=self.log,
            by_provider=dict(sorted(self.provider_counts().items())),
        )

    def full_check_every(self) -> int:
        if not self.opts.adaptive_full_check:
            return self.opts.full_check_every
        orders = len(self.recs)
        return 1 if orders <= 500 else 100 if orders <= 20_000 else 1_000

    def progress_line(self, started: float, cpu: float) -> str:
        wall = time.perf_counter() - started
        return (
            f"step {self.step}: {len(self.recs)} orders, {len(self.sim_by_token)} upstream,"
            f" {len(self.live)} live, {self.crashes} crashes, {self.full_checks} full checks,"
            f" {wall:.0f} s wall,"
            f" {time.process_time() - cpu:.0f} s cpu, {self.step / wall:.1f} steps/s"
        )

    async def setup(self) -> None:
        self.node = await Node.start(self.settings, self.wire)
        result = await sync_catalog(self.db, self.upstream)
        if not result.ok:
            raise SimulationFailure(self.describe(f"catalog sync failed at start: {result}"))
        if self.two_providers:
            await self.add_second_provider()
        for _ in range(3):
            await self.new_customer()
        self.note(f"setup: dialect {self.dialect}, {len(self.customers)} customers")

    async def teardown(self) -> None:
        await self.stop_second()
        if self.node is not None:
            try:
                await self.node.stop()
            finally:
                self.node = None
        for client in self.sim_clients.values():
            await client.aclose()

    async def new_customer(self) -> Cust:
        dialect = self.rng.choice(("standard", "smartpanel"))
        markup = self.rng.choice((None, 0, 1, 1234, 2500, 10000))
        name = f"customer-{len(self.customers) + 1}"
        cid, key = await create_customer(self.db, name, dialect, markup)
        cust = Cust(cid, key, dialect, markup)
        self.customers.append(cust)
        self.by_customer[cid] = []
        await self.topup(cust, self.rng.choice((2, 10, 50)) * MICROS + self.rng.randrange(MICROS))
        return cust

    async def topup(self, cust: Cust, amount: int) -> None:
        await ledger.topup(self.db, cust.id, amount, memo="simulation")
        self.funds[cust.id] += amount

    # -- requests --

    def token(self, k: int = 0) -> str:
        return f"T{self.step}x{k}"

    def pick_service(self) -> SimService:
        return self.rng.choice(CATALOG)

    def valid_params(self, svc: SimService, token: str, marker: str) -> dict[str, str]:
        rng = self.rng
        params = {"service": str(svc.id)}
        if svc.type == "Subscriptions":
            low = svc.min
            params.update(
                username=f"u-{token}-{marker}",
                min=str(low),
                max=str(rng.randint(low, min(svc.max, low * 2))),
                delay=str(rng.choice((0, 5, 10, 15, 30, 60, 90))),
                posts=str(rng.randint(1, 3)),
            )
            if rng.random() < 0.2:
                params["old_posts"] = str(rng.randint(0, 2))
            if rng.random() < 0.2:
                params["expiry"] = "31/12/2031"
            return params
        params["link"] = f"https://sim.example/{token}/{marker}".rstrip("/") + self.charge_marker()
        lines = {
            "Custom Comments": "comments",
            "Custom Comments Package": "comments",
            "Comment Replies": "comments",
            "Mentions Custom List": "usernames",
        }.get(svc.type)
        if lines is not None:
            count = rng.randint(svc.min, min(svc.max, svc.min + 4))
            params[lines] = "\n".join(f"line {i} of {token}" for i in range(count))
        elif svc.type not in PACKAGE_TYPES:
            params["quantity"] = str(rng.randint(svc.min, min(svc.max, svc.min * 3)))
        for name in {
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
        }.get(svc.type, ()):
            params[name] = f"{name}-value"
        if svc.dripfeed and rng.random() < 0.3:
            params["runs"] = str(rng.randint(2, 4))
            params["interval"] = str(rng.choice((0, 5, 15, 30, 60)))
        return params

    def invalid_params(self, token: str) -> tuple[str, dict[str, str]]:
        """A request some layer must refuse (or, for a few, the upstream refuses later)."""
        rng = self.rng
        svc = self.pick_service()
        params = self.valid_params(svc, token, rng.choice(MARKERS))
        case = rng.choice(
            (
                "unknown service",
                "quantity below min",
                "quantity above max",
                "quantity text",
                "no link",
                "link with space",
                "missing text",
                "dripfeed not supported",
                "bad interval",
                "tag-like text",
                "too expensive",
                "min over max",
                "bad delay",
            )
        )
        if case == "unknown service":
            params["service"] = str(rng.choice((99999, 0, 7)))
        elif case == "quantity below min" and "quantity" in params:
            params["quantity"] = str(max(0, svc.min - 1))
        elif case == "quantity above max" and "quantity" in params:
            params["quantity"] = str(svc.max + 1)
        elif case == "quantity text" and "quantity" in params:
            params["quantity"] = rng.choice(("12abc", "-5", "1e3", " ", "1.5"))
        elif case == "no link" and "link" in params:
            del params["link"]
        elif case == "link with space" and "link" in params:
            params["link"] = params["link"].replace("/T", "/ T")
        elif case == "missing text":
            for name in (
                "comments",
                "usernames",
                "hashtags",
                "hashtag",
                "username",
                "media",
                "answer_number",
                "groups",
                "keywords",
            ):
                if (name in params and name != "username") or (
                    name == "username" and svc.type != "Subscriptions" and name in params
                ):
                    params[name] = ""
                    break
        elif case == "dripfeed not supported" and "quantity" in params:
            params.update(runs="2", interval="5")
        elif case == "bad interval" and "runs" in params:
            params["interval"] = "7"  # the gateway takes it; SmartPanel refuses it
        elif case == "tag-like text":
            for name in ("comments", "usernames", "username", "keywords", "groups"):
                if name in params:
                    params[name] = params[name] + " <3 <b>"
                    break
        elif case == "too expensive" and "quantity" in params:
            params["quantity"] = str(svc.max)
        elif case == "min over max" and svc.type == "Subscriptions":
            params["min"], params["max"] = str(svc.max), str(svc.min)
        elif case == "bad delay" and svc.type == "Subscriptions":
            params["delay"] = "7"
        else:
            case = "valid after all"
        return case, params

    def describe_reply(self, reply: Any) -> str:
        if isinstance(reply, dict) and "order" in reply:
            return f"order {self.rank_new(reply['order'])}"
        if isinstance(reply, dict) and "error" in reply:
            return f"error {reply['error']!r}"
        return f"reply {reply!r}"[:200]

    def rank_new(self, order_id: int) -> str:
        """A rank for an order that may not be in the model yet (created in this step)."""
        known = self.rank(order_id)
        if known != "o?":
            return known
        return f"o{len(self.ids) + 1}+"

    def outcome(self, reply: Any) -> str:
        if isinstance(reply, dict) and "order" in reply:
            return "order"
        if isinstance(reply, dict) and "error" in reply:
            return f"error:{reply['error']}"[:60]
        return "other"

    async def priced_request(self, cust: Cust) -> tuple[str, OrderRequest] | None:
        """A valid order for the phase functions, as `add` would build it; None if the
        service is suspended for this customer."""
        svc = self.pick_service()
        token = self.token()
        params = self.valid_params(svc, token, self.rng.choice(MARKERS))
        priced = await priced_service(
            self.db, svc.id, cust.id, cust.markup_bp, self.settings.default_markup_bp
        )
        if priced is None:
            self.note(f"  service {svc.id} suspended for customer {cust.id}")
            return None
        try:
            request = validate_add(params, priced, self.upstream.rules)
        except ContractError as exc:
            self.note(f"  refused at validation: {exc.message}")
            return None
        return token, request

    # -- steps --

    async def step_topup(self) -> None:
        roll = self.rng.random()
        if roll < 0.05 and len(self.customers) < 8:
            cust = await self.new_customer()
            self.note(f"topup: new customer {cust.id} ({cust.dialect}, markup {cust.markup_bp})")
            return
        cust = self.rng.choice(self.customers)
        if roll < 0.15:
            balance = await self.balance(cust.id)
            amount = -self.rng.randint(1, max(1, balance // 2)) if balance > 1 else 1
            try:
                await ledger.adjust(self.db, cust.id, amount, memo="simulation")
                self.funds[cust.id] += amount
                self.note(f"adjust: customer {cust.id} by {amount}")
            except OperatorError as exc:
                self.note(f"adjust: customer {cust.id} by {amount} refused ({exc})")
            return
        amount = self.rng.choice((1, 3, 10, 40)) * MICROS + self.rng.randrange(MICROS)
        await self.topup(cust, amount)
        self.note(f"topup: customer {cust.id} +{amount}")

    async def step_add(self) -> None:
        cust = self.rng.choice(self.customers)
        svc = self.pick_service()
        marker = self.rng.choice(MARKERS)
        params = self.valid_params(svc, self.token(), marker)
        reply = await self.http(cust.key, "add", **params)
        self.outcomes[f"add:{self.outcome(reply)}"] += 1
        self.note(
            f"add: customer {cust.id} service {svc.id} ({svc.type}) {marker or 'seeded fate'}"
            f" {'drip-feed ' if 'runs' in params else ''}-> {self.describe_reply(reply)}"
        )
        await self.check_reply(cust, self.token(), reply)

    async def step_add_invalid(self) -> None:
        cust = self.rng.choice(self.customers)
        case, params = self.invalid_params(self.token())
        reply = await self.http(cust.key, "add", **params)
        self.outcomes[f"invalid:{self.outcome(reply)}"] += 1
        self.note(f"add ({case}): customer {cust.id} -> {self.describe_reply(reply)}")
        await self.check_reply(cust, self.token(), reply)

    async def check_reply(self, cust: Cust, token: str, reply: Any) -> None:
        """What `add` answered agrees with the order it made (if any)."""
        if not isinstance(reply, dict):
            self.fail(f"add answered {reply!r}")
            return
        if str(reply.get("error", "")).startswith("HTTP "):
            return  # a tolerated known bug (an HTTP 500 for a placed order): counted already
        async with self.db.read() as conn:
            rows = [
                _rec(r)
                for r in await conn.execute(
                    select(*_COLUMNS).where(Order.customer_id == cust.id, Order.id > self.max_id)
                )
            ]
        mine = [r for r in rows if r.token == token]
        if "order" in reply:
            match = [r for r in mine if r.id == reply["order"]]
            if not match:
                self.fail(f"add answered order {reply['order']} but no such order has {token}")
            elif match[0].state not in (PLACED, UNKNOWN):
                self.fail(f"add answered order {reply['order']} which is {match[0].state}")
        elif any(r.state != REJECTED for r in mine):
            self.fail(f"add answered {reply!r} but left {[(r.id, r.state) for r in mine]}")

    async def step_status(self) -> None:
        cust = self.rng.choice(self.customers)
        own = self.by_customer[cust.id]
        ids = [str(self.rng.choice(own)) for _ in range(self.rng.randint(1, 4))] if own else []
        if self.ids and self.rng.random() < 0.3:
            ids.append(str(self.rng.choice(self.ids)))
        if self.rng.random() < 0.1:
            ids.append(self.rng.choice(("abc", "0", "99999999")))
        ids = list(dict.fromkeys(ids)) or ["1"]
        many = len(ids) > 1 or self.rng.random() < 0.3
        if many:
            reply = await self.http(cust.key, "status", orders=",".join(ids))
            items = reply if isinstance(reply, dict) else {}
        else:
            reply = await self.http(cust.key, "status", order=ids[0])
            items = {ids[0]: reply}
        seen = []
        for raw in ids:
            item = items.get(raw)
            oid = int(raw) if raw.isdigit() else None
            rec = self.recs.get(oid) if oid is not None else None
            visible = (
                rec is not None
                and rec.customer_id == cust.id
                and (rec.state in (SENDING, PLACED, UNKNOWN) or rec.announced)
            )
            if visible:
                assert rec is not None
                if not isinstance(item, dict) or "status" not in item:
                    self.fail(f"status of {self.rank(oid)} (visible to its owner) is {item!r}")
                    continue
                charge = Decimal(item["charge"]) * MICROS
                if charge != rec.kept or item["status"] != rec.status:
                    self.fail(
                        f"status of {self.rank(oid)} says {item['status']} {item['charge']};"
                        f" the order is {rec.status} {rec.kept} micros"
                    )
                seen.append(f"{self.rank(oid)}={item['status']}")
            else:
                error = item if isinstance(item, str) else (item or {}).get("error")
                if error != "Incorrect order ID":
                    self.fail(f"status of {raw} (not this customer's) answered {item!r}")
                seen.append(f"{raw if rec is None else self.rank(oid)}=not theirs")
        self.note(f"status: customer {cust.id} {'multi' if many else 'single'}: {' '.join(seen)}")

    async def step_sync(self) -> None:
        ticks = self.rng.choice((0, 0.5, 1, 1, 2, 3, 5))
        self.clock.advance(ticks * TICK)
        batch = self.rng.choice((100, 100, 100, 10, 3))
        result = await self.sync_pass(batch_size=batch)
        self.note(
            f"sync: +{ticks} ticks, batch {batch}: polled {result.polled} in"
            f" {result.upstream_calls} calls, settled {result.settled},"
            f" failed batches {result.failed_batches}, anomalies {len(result.anomalies)}"
        )
        poisoned = [str(u) for u in self.poisoned]  # counted and skipped, as they should be
        anomalies = [a for a in result.anomalies if not any(u in a for u in poisoned)]
        if anomalies:
            self.fail(f"sync reported anomalies: {anomalies}")

    def own_orders(self, cust: Cust, want: Callable[[Rec], bool], most: int = 3) -> list[int]:
        """A few of the customer's orders, mostly (when there are any) recent ones that
        `want` picks, so that refills and cancels are granted often enough to matter."""
        own = self.by_customer[cust.id]
        if not own:
            return []
        fit = [i for i in own[-200:] if want(self.recs[i])]
        source = fit if fit and self.rng.random() < 0.8 else own
        return list(
            dict.fromkeys(self.rng.choice(source) for _ in range(self.rng.randint(1, most)))
        )

    async def step_refill(self) -> None:
        cust = self.rng.choice(self.customers)
        ids = self.own_orders(
            cust,
            lambda r: (
                r.state == PLACED
                and r.status in (COMPLETED, PARTIAL)
                and SERVICES[r.service_id].refill
            ),
        )
        if not ids:
            self.note(f"refill: customer {cust.id} has no orders")
            return
        if len(ids) == 1 and self.rng.random() < 0.5:
            reply = await self.http(cust.key, "refill", order=ids[0])
        else:
            reply = await self.http(cust.key, "refill", orders=",".join(map(str, ids)))
        refills = []
        for item in reply if isinstance(reply, list) else [reply]:
            value = item.get("refill") if isinstance(item, dict) else None
            if isinstance(value, int | str) and str(value).isdigit():
                refills.append(str(value))
        ranks = [self.rank(i) for i in ids]
        self.outcomes["refill:granted"] += len(refills)
        self.outcomes["refill:refused"] += len(ids) - len(refills)
        self.note(f"refill: customer {cust.id} {ranks} -> {len(refills)} refills")
        if refills:
            status = await self.http(cust.key, "refill_status", refills=",".join(refills))
            self.note(f"  refill_status -> {str(status)[:120]}")

    async def step_cancel(self) -> None:
        cust = self.rng.choice(self.customers)
        ids = self.own_orders(
            cust, lambda r: r.state == PLACED and not r.settled and SERVICES[r.service_id].cancel
        )
        fresh = None
        if self.dialect == "standard" and self.rng.random() < 0.5:
            # Orders finish in a few ticks: order one and cancel it before the clock moves.
            svc = SERVICES[self.rng.choice(CANCELABLE)]
            marker = self.rng.choice(("", "sim:complete", "sim:partial"))
            reply = await self.http(cust.key, "add", **self.valid_params(svc, self.token(), marker))
            self.note(
                f"add to cancel: customer {cust.id} service {svc.id} -> "
                f"{self.describe_reply(reply)}"
            )
            await self.check_reply(cust, self.token(), reply)
            if "order" in reply:
                fresh = reply["order"]
                ids = [fresh, *ids]
        if not ids:
            self.note(f"cancel: customer {cust.id} has no orders")
            return
        reply = await self.http(cust.key, "cancel", orders=",".join(map(str, ids)))
        said = []
        for item in reply if isinstance(reply, list) else []:
            value = item.get("cancel") if isinstance(item, dict) else None
            said.append("ok" if value == 1 else "no")
            self.outcomes["cancel:granted" if value == 1 else "cancel:refused"] += 1
        ranks = [self.rank_new(i) if i == fresh else self.rank(i) for i in ids]
        self.note(f"cancel: customer {cust.id} {ranks} -> {said}")

    async def upstream_order_for(self, token: str | None, provider: int = A) -> int | None:
        """What an operator finds at the order's provider for it: that simulator's
        `/_sim/orders` searched by its link (the in-process index once the listing is large).
        A link held by another provider than the order's is a failure."""
        if token is None:
            return None
        self.scan_sim()
        held = self.sim_by_token.get(token)
        if held is not None and held[0] != provider:
            self.fail(f"{token} is at provider {held[0]}, its order is on provider {provider}")
        if len(self.sims[provider].orders) <= 2000:
            listing = (await self.sim_clients[provider].get("/_sim/orders")).json()
            found = [row["id"] for row in listing if _token_of(row["params"]) == token]
            if len(found) > 1:
                self.fail(f"the upstream holds {len(found)} orders for {token}: {found}")
            return found[0] if found else None
        return held[1] if held is not None else None

    async def operator_resolves(self, order_id: int, token: str | None) -> str:
        rec = self.recs.get(order_id)
        if rec is None:  # made in this very step: read it
            async with self.db.read() as conn:
                row = (await conn.execute(select(*_COLUMNS).where(Order.id == order_id))).one()
            rec = _rec(row)
        upstream_id = await self.upstream_order_for(token, rec.provider_id)
        try:
            if upstream_id is None:
                await resolve(self.db, order_id, not_placed=True)
                return "not placed (refunded)"
            await resolve(self.db, order_id, upstream_order_id=upstream_id)
            return f"placed as upstream {upstream_id}"
        except OperatorError as exc:
            self.fail(f"operator could not resolve {self.rank(order_id)}: {exc}")
            return f"refused: {exc}"

    async def step_resolve(self) -> None:
        """An operator works through a few of the unknown orders (`orders list --state
        unknown`), each by what the upstream holds for its link."""
        unknown = sorted(i for i in self.live if self.recs[i].state == UNKNOWN)
        if not unknown:
            self.note("resolve: nothing unknown")
            return
        for oid in self.rng.sample(unknown, min(len(unknown), self.rng.randint(1, 4))):
            verdict = await self.operator_resolves(oid, self.recs[oid].token)
            self.outcomes[f"resolve:{verdict.split(' ')[0]}"] += 1
            self.note(f"resolve: {self.rank(oid)} {verdict}")

    async def step_faults(self) -> None:
        if self.rng.random() < 0.4:
            table: dict[str, float] = {}
        else:
            kinds = self.rng.sample(FAULT_KINDS, self.rng.randint(1, 3))
            table = {k: self.rng.choice((0.05, 0.1, 0.2, 0.3)) for k in kinds}
        provider = A
        if self.two_providers and self.rng.random() < 0.4:
            provider = B  # faults per provider: b's ambiguous answers leave orders unknown there
        response = await self.sim_clients[provider].post("/_sim/faults", json=table)
        assert response.status_code == 200, response.text
        self.note(f"faults{'' if provider == A else ' at b'}: {table or 'off'}")

    async def step_idempotent_retry(self) -> None:
        cust = self.rng.choice(self.customers)
        svc = self.pick_service()
        params = self.valid_params(svc, self.token(), self.rng.choice(MARKERS))
        headers = {"Idempotency-Key": f"key-{self.step}"}
        first = await self.http(cust.key, "add", headers=headers, **params)
        if self.rng.random() < 0.7:
            again = await self.http(cust.key, "add", headers=headers, **params)
            self.note(
                f"idempotent add: customer {cust.id} service {svc.id} ->"
                f" {self.describe_reply(first)}, retry -> {self.describe_reply(again)}"
            )
            if again != first:
                self.fail(
                    f"a retry with the same Idempotency-Key answered {again}, not {first}",
                    bug="idempotency",
                )
        else:
            other = self.valid_params(svc, self.token(1), "sim:complete")
            again = await self.http(cust.key, "add", headers=headers, **other)
            self.note(
                f"idempotent add: customer {cust.id} service {svc.id} ->"
                f" {self.describe_reply(first)}, other params -> {self.describe_reply(again)}"
            )
            if "order" in first and "order" in again:
                self.fail(f"other parameters under a used Idempotency-Key answered {again}")
        await self.check_reply(cust, self.token(), first)

    async def step_concurrent_adds(self) -> None:
        """Several identical adds (but for the link) from one customer at once: the debits
        race on one balance; the upstream sees them in order of our order id."""
        cust = self.rng.choice(self.customers)
        svc = self.pick_service()
        marker = self.rng.choice(MARKERS)
        count = self.rng.randint(2, 6)
        base = self.valid_params(svc, "TOKEN", marker)
        requests: list[tuple[str, dict[str, str], dict[str, str] | None]] = []
        for k in range(count):
            params = {n: v.replace("TOKEN", self.token(k)) for n, v in base.items()}
            requests.append((self.token(k), params, None))
        if self.rng.random() < 0.3:  # a bot's retry racing its own first try
            token, params, _ = requests[0]
            key = {"Idempotency-Key": f"race-{self.step}"}
            requests[0] = (token, params, key)
            requests.append((token, params, key))
        gate = Gate({token for token, _, _ in requests})
        self.wire.gate = gate
        before = self.max_id

        async def one(token: str, params: dict[str, str], headers: dict[str, str] | None) -> Any:
            try:
                return await self.http(cust.key, "add", headers=headers, **params)
            finally:
                if token not in gate.arrived:
                    gate.answer(token)

        tasks = [asyncio.create_task(one(*r)) for r in requests]
        try:
            async with asyncio.timeout(120):
                await gate.all_in.wait()
                async with self.db.read() as conn:
                    rows = await conn.execute(
                        select(Order.id, Order.params).where(Order.id > before).order_by(Order.id)
                    )
                    order = [_token_of(json.loads(p)) for _, p in rows]
                for token in order:
                    if token in gate.arrived:
                        mine = [t for t, r in zip(tasks, requests, strict=True) if r[0] == token]
                        answered = asyncio.ensure_future(asyncio.wait(mine))
                        if await gate.release(token, answered) > 1:
                            self.outcomes["providers:concurrent-add-held-again"] += 1
                replies = await asyncio.gather(*tasks)
        except TimeoutError:
            self.fail("concurrent adds deadlocked (nothing moved for 120 s)")
            return
        finally:
            self.wire.gate = None
            for task in tasks:
                task.cancel()
        kinds = sorted(self.outcome(r) for r in replies)
        for kind in kinds:
            self.outcomes[f"concurrent:{kind}"] += 1
        self.note(
            f"concurrent adds: customer {cust.id} service {svc.id} {marker or 'seeded fate'}"
            f" x{len(requests)}{' (one retried with its key)' if requests[0][2] else ''}"
            f" -> {Counter(kinds)}"
        )
        if requests[0][2]:
            self.outcomes[f"key-race:{self.outcome(replies[0])}"] += 1
        if requests[0][2] and replies[0] != replies[-1]:
            self.fail(
                f"two racing requests with one Idempotency-Key answered {replies[0]} and"
                f" {replies[-1]}",
                bug="idempotency-race",
            )

    async def sync_pass(self, batch_size: int = 100) -> Any:
        """One status-sync pass as the running gateway's loop makes it (app.main: the grace
        of `sending`, and a lease as long as that grace)."""
        try:
            return await self._sync_pass(batch_size)
        except Exception as exc:
            if not self.poisoned:
                raise
            self.fail(
                f"one poison status stopped the sync pass: {type(exc).__name__}: {exc}",
                bug="poison-stops-sync",
            )
            return PassResult()

    async def _sync_pass(self, batch_size: int) -> Any:
        return await sync_pass(
            self.db,
            self.clients,
            sending_grace_seconds=self.grace,
            batch_size=batch_size,
            lease_seconds=self.grace,
        )

    async def crash_restart(self, why: str) -> None:
        """The process is gone: dispose everything it held, start a fresh one."""
        self.crashes += 1
        assert self.node is not None
        await self.node.stop()
        self.node = await Node.start(self.settings, self.wire)
        self.note(f"  crash ({why}); restarted")

    async def recover(self) -> None:
        """What the restarted process does once the grace has passed: a sync pass (which
        first turns stale `sending` orders into `unknown`)."""
        self.clock.advance(self.grace + TICK)
        result = await self.sync_pass()
        stale = await self.count_state(SENDING)
        self.note(f"  +grace, recovery pass: polled {result.polled}, settled {result.settled}")
        if stale:
            self.fail(f"{stale} orders still sending after a restart and the grace")

    async def step_crash_before_upstream(self) -> None:
        cust = self.rng.choice(self.customers)
        made = await self.priced_request(cust)
        if made is None:
            return
        token, request = made
        try:
            await commit_intent(self.db, cust.id, request, None)
        except NotEnoughFunds:
            self.note(f"crash before upstream: customer {cust.id} {token}: not enough funds")
            return
        self.note(f"crash before upstream: customer {cust.id} {token} committed, not sent")
        await self.crash_restart("between commit_intent and the upstream add")
        await self.recover()

    async def step_crash_after_upstream(self) -> None:
        cust = self.rng.choice(self.customers)
        made = await self.priced_request(cust)
        if made is None:
            return
        token, request = made
        try:
            await commit_intent(self.db, cust.id, request, None)
        except NotEnoughFunds:
            self.note(f"crash after upstream: customer {cust.id} {token}: not enough funds")
            return
        outcome = await self.upstream.add(request.upstream_params)
        self.note(f"crash after upstream: customer {cust.id} {token} sent: {describe(outcome)}")
        await self.crash_restart("between the upstream add and commit_outcome")
        await self.recover()

    async def step_crash_in_add_request(self) -> None:
        cust = self.rng.choice(self.customers)
        svc = self.pick_service()
        params = self.valid_params(svc, self.token(), self.rng.choice(MARKERS))
        when = self.rng.choice(("before", "after"))
        self.wire.arm("add", when, 1)
        try:
            reply = await self.http(cust.key, "add", **params)
        except BaseException as exc:
            if not is_crash(exc):
                raise
            self.note(f"add with a crash {when} the upstream got it: customer {cust.id} {svc.id}")
            await self.crash_restart(f"in the add request, {when} the upstream")
            await self.recover()
            return
        finally:
            self.wire.disarm()
        self.note(
            f"add with a crash armed ({when}) never reached upstream: {self.describe_reply(reply)}"
        )
        await self.check_reply(cust, self.token(), reply)

    async def step_crash_mid_sync(self) -> None:
        when = self.rng.choice(("before", "after"))
        nth = self.rng.randint(1, 3)
        batch = self.rng.randint(1, 5)
        self.clock.advance(self.rng.choice((1, 2, 3)) * TICK)
        self.wire.arm("status", when, nth)
        try:
            result = await self.sync_pass(batch_size=batch)
        except BaseException as exc:
            if not is_crash(exc):
                raise
            self.note(f"sync with a crash at status call {nth} ({when}), batch {batch}")
            await self.crash_restart(f"mid-sync, {when} status call {nth}")
            if self.rng.random() < 0.5:
                # The restarted loop's first pass, at once: the dead pass's leases still hold.
                early = await self.sync_pass()
                self.note(f"  pass within the lease: polled {early.polled}")
            await self.recover()
            return
        finally:
            self.wire.disarm()
        self.note(
            f"sync with a crash armed at status call {nth}: ended first, polled {result.polled}"
        )

    async def step_late_outcome(self) -> None:
        """The add's answer arrives after the recovery gave up on it (a stalled process):
        the late truth must still win, or at least never lose money."""
        cust = self.rng.choice(self.customers)
        made = await self.priced_request(cust)
        if made is None:
            return
        token, request = made
        try:
            order_id = await commit_intent(self.db, cust.id, request, None)
        except NotEnoughFunds:
            self.note(f"late outcome: customer {cust.id} {token}: not enough funds")
            return
        outcome = await self.upstream.add(request.upstream_params)
        self.clock.advance(self.grace + TICK)
        await self.sync_pass()
        verdict = "-"
        if self.rng.random() < 0.5:
            verdict = await self.operator_resolves(order_id, token)
        placement = await commit_outcome(self.db, order_id, outcome)
        if isinstance(outcome, int) and verdict.startswith("placed"):
            self.outcomes["late-outcome:operator-placed-first"] += 1
        self.note(
            f"late outcome: customer {cust.id} {token}: {describe(outcome)} after the recovery;"
            f" operator: {verdict}; answer {placement}"
        )

    async def step_stalled_send(self) -> None:
        """The process stalls between commit_intent and the upstream call for longer than the
        grace (a GC or VM pause, SIGSTOP). Meanwhile another worker's sync pass turns the order
        `unknown`, and an operator, finding nothing upstream, resolves it not placed (refund).
        Then the process wakes up and carries on: the upstream add, then commit_outcome."""
        cust = self.rng.choice(self.customers)
        made = await self.priced_request(cust)
        if made is None:
            return
        token, request = made
        try:
            order_id = await commit_intent(self.db, cust.id, request, None)
        except NotEnoughFunds:
            self.note(f"stalled send: customer {cust.id} {token}: not enough funds")
            return
        self.clock.advance(self.grace + TICK)
        await self.sync_pass()
        verdict = await self.operator_resolves(order_id, token)
        # The process wakes and carries on with phase 2 as the gateway runs it.
        placement = await send_and_commit(self.db, self.upstream, order_id, request)
        self.outcomes[f"stalled-send:{verdict.split(' ')[0]}"] += 1
        self.note(
            f"stalled send: customer {cust.id} {token} stalled past the grace; operator:"
            f" {verdict}; then: answer {placement}"
        )

    async def step_pricing(self) -> None:
        svc = self.pick_service()
        roll = self.rng.random()
        if roll < 0.3:
            cust = self.rng.choice(self.customers)
            markup = self.rng.choice((None, 0, 500, 1234, 2500, -500))
            await update_customer(self.db, cust.id, markup_bp=markup)
            cust.markup_bp = markup
            self.note(f"pricing: customer {cust.id} markup {markup}")
            return
        who = self.rng.choice((None, self.rng.choice(self.customers).id))
        if roll < 0.45:
            try:
                await clear_price(self.db, svc.id, who)
                self.below_cost_ok.pop((svc.id, who), None)
                self.note(f"pricing: cleared rule for service {svc.id} customer {who}")
            except NotFound:
                self.note(f"pricing: no rule for service {svc.id} customer {who}")
            return
        cost = svc.rate_micros
        allow = self.rng.random() < 0.5
        if roll < 0.75:
            fixed = max(1, cost * self.rng.choice((50, 100, 130, 200)) // 100)
            rule: dict[str, Any] = {"fixed_rate": fixed}
        else:
            rule = {"markup_bp": self.rng.choice((-2000, 0, 700, 3000))}
        try:
            await set_price(self.db, svc.id, customer_id=who, below_cost_ok=allow, **rule)
            self.below_cost_ok[(svc.id, who)] = allow
            self.note(f"pricing: service {svc.id} customer {who} {rule} below cost ok {allow}")
        except OperatorError as exc:
            self.note(f"pricing: service {svc.id} customer {who} {rule} refused ({exc})")

    async def step_catalog_sync(self) -> None:
        await catalog_sync_checked(self)

    async def step_restart(self) -> None:
        assert self.node is not None
        await self.node.stop()
        self.node = await Node.start(self.settings, self.wire)
        self.note("restart (clean)")

    # -- the end: let everything finish, then everything must be final --

    async def drain(self) -> None:
        await self.sim_client.post("/_sim/faults", json={})
        await self.providers_all_well()
        await self.heal_all()
        self.note("drain: faults off; resolve every unknown order, sync until all is final")
        for _ in range(30):
            await self.check_step()
            for oid in sorted(i for i in self.live if self.recs[i].state == UNKNOWN):
                await self.operator_resolves(oid, self.recs[oid].token)
            self.clock.advance(max(5 * TICK, self.grace))
            await self.sync_pass()
            await self.check_step()
            if not self.live:
                return
        left = sorted(self.live)[:20]
        self.fail(
            "liveness: orders never became final: "
            + ", ".join(f"{self.rank(i)} {self.recs[i].state}/{self.recs[i].status}" for i in left)
        )

    # -- invariants --

    @property
    def max_id(self) -> int:
        return self.ids[-1] if self.ids else 0

    async def balance(self, customer_id: int) -> int:
        async with self.db.read() as conn:
            return await conn.scalar(select(Customer.balance).where(Customer.id == customer_id))

    async def count_state(self, state: str) -> int:
        async with self.db.read() as conn:
            return await conn.scalar(
                select(func.count()).select_from(Order).where(Order.state == state)
            )

    def scan_sim(self) -> list[tuple[int, int]]:
        """New top-level orders the simulators hold since the last scan, as (provider, id);
        each must belong to exactly one link we sent, and no link may reach one twice, at
        one provider or at two."""
        new = []
        for provider, sim in self.sims.items():
            orders = sim.orders
            if len(orders) == self.sim_scanned[provider]:
                continue
            for order in list(orders.values())[self.sim_scanned[provider] :]:
                if order.parent is not None:
                    continue
                token = _token_of(order.params)
                if token is None:
                    self.fail(f"the upstream holds order {order.id} we cannot name: {order.params}")
                    continue
                if token in self.sim_by_token:
                    self.fail(
                        f"the upstream got {token} twice: orders {self.sim_by_token[token]} and"
                        f" {(provider, order.id)} (provider, id): a retried add bought twice, or"
                        " a failover after an outcome that was no refusal"
                    )
                self.sim_by_token[token] = (provider, order.id)
                new.append((provider, order.id))
            self.sim_scanned[provider] = len(orders)
        return new

    def expected_refund(self, rec: Rec) -> int | None:
        """DESIGN.md's settlement of a final order, from what the simulator itself holds."""
        sim = self.sims[rec.provider_id]
        sim_order = sim.orders.get(rec.upstream_order_id)
        if sim_order is None:
            return None
        view = sim.view(sim_order)
        if view.status == COMPLETED:
            return 0
        if view.status == CANCELED:
            return rec.charge
        service_type = sim_order.service.type
        flat = service_type in PACKAGE_TYPES or service_type == "Subscriptions"
        # SmartPanel reports no remains for drip-feed parents and subscriptions.
        reports_remains = self.dialects[rec.provider_id] == "standard" or sim_order.kind == "plain"
        if view.status == PARTIAL and reports_remains and not flat:
            remains = min(max(view.remains, 0), rec.quantity)
            return rec.charge * remains // rec.quantity
        # The base: the upstream's first charge as heard while live, else our estimate.
        base = rec.first_charge if rec.first_charge else rec.cost
        if base <= 0:
            return 0
        kept = min(view.charge, base)  # the upstream keeps this much of its own charge
        return rec.charge - -(-rec.charge * kept // base)

    def check_order(self, rec: Rec, before: Rec | None) -> None:
        where = f"order {self.rank(rec.id)} (id {rec.id}, {rec.token})"
        if rec.state not in STATES:
            self.fail(f"{where} is in state {rec.state!r}")
        if not 0 <= rec.refunded <= rec.charge:
            self.fail(f"{where}: refunded {rec.refunded} outside [0, charge {rec.charge}]")
        if before is not None:
            if (before.charge, before.customer_id, before.token) != (
                rec.charge,
                rec.customer_id,
                rec.token,
            ):
                self.fail(f"{where}: its charge, customer or link changed: {before} -> {rec}")
            legal = {
                SENDING: (SENDING, PLACED, UNKNOWN, REJECTED),
                UNKNOWN: (UNKNOWN, PLACED, REJECTED),
                PLACED: (PLACED,),
                REJECTED: (REJECTED,),
            }
            if rec.state not in legal.get(before.state, ()):
                self.fail(f"{where}: went from {before.state} to {rec.state}")
            if before.settled and (before.refunded, before.status) != (rec.refunded, rec.status):
                self.fail(f"{where}: settled again: {before} -> {rec}")
            if before.upstream_order_id is not None and (
                rec.upstream_order_id != before.upstream_order_id
            ):
                self.fail(
                    f"{where}: upstream id {before.upstream_order_id} -> {rec.upstream_order_id}"
                )
            if before.state != SENDING and before.provider_id != rec.provider_id:
                self.fail(f"{where}: moved from provider {before.provider_id} to {rec.provider_id}")
        if rec.state == SENDING:
            self.fail(f"{where} is still sending after its step ended")
        self.check_wide_order(rec, before, where)
        held = self.sim_by_token.get(rec.token) if rec.token else None  # (provider, id)
        upstream = held[1] if held is not None else None
        if rec.state in (PLACED, UNKNOWN, SENDING) and rec.provider_id not in self.sims:
            self.fail(f"{where} is {rec.state} on provider {rec.provider_id}, which we never added")
        if held is not None and held[0] != rec.provider_id and rec.state != REJECTED:
            self.fail(
                f"{where} is {rec.state} on provider {rec.provider_id}, but provider {held[0]}"
                f" holds its link as {held[1]}"
            )
        if rec.state == PLACED:
            if rec.upstream_order_id is None:
                self.fail(f"{where} is placed without an upstream id")
            elif held != (rec.provider_id, rec.upstream_order_id):
                self.fail(
                    f"{where} is placed as upstream {rec.upstream_order_id} on provider"
                    f" {rec.provider_id}, but the upstream's order for its link is {held}"
                    " (provider, id)"
                )
            mark = (rec.provider_id, rec.upstream_order_id or 0)
            owner = self.gw_by_upstream.setdefault(mark, rec.id)
            if owner != rec.id:
                self.fail(f"{where} and {self.rank(owner)} both claim upstream {mark}")
        elif rec.upstream_order_id is not None:
            self.fail(f"{where} is {rec.state} with upstream id {rec.upstream_order_id}")
        if rec.state in (SENDING, UNKNOWN) and rec.refunded:
            self.fail(f"{where} is {rec.state} yet refunded {rec.refunded}")
        if rec.state == REJECTED:
            if rec.refunded != rec.charge:
                self.fail(f"{where} is rejected but refunded {rec.refunded} of {rec.charge}")
            if upstream is not None:
                self.fail(
                    f"{where} is rejected and refunded, yet the upstream holds it as"
                    f" {upstream}: a free order"
                )
        if rec.state == PLACED:
            final = rec.status in FINAL_STATUSES
            if final != rec.settled:
                self.fail(f"{where} is {rec.status} but settled={rec.settled}")
            if not rec.settled and rec.refunded:
                self.fail(f"{where} refunded {rec.refunded} before it was final")
            if rec.settled:
                sim = self.sims[rec.provider_id]
                sim_status = sim.view(sim.orders[rec.upstream_order_id]).status
                if sim_status != rec.status:
                    self.fail(f"{where} settled as {rec.status}; the upstream says {sim_status}")
                expected = self.expected_refund(rec)
                sim_order = sim.orders[rec.upstream_order_id]
                bug = None
                if (
                    sim_order.kind == "subscription"
                    and not sim_order.children
                    and rec.status == PARTIAL
                ):
                    bug = "partial-subscription-without-runs"
                    if before is None or not before.settled:
                        self.outcomes["settled:partial-subscription-without-runs"] += 1
                if rec.id in self.settled_poisoned:
                    bug = "poison-settled"
                if expected != rec.refunded:
                    self.fail(
                        f"{where} ({sim_order.service.type}, provider {rec.provider_id},"
                        f" {rec.status}) refunded {rec.refunded}; DESIGN.md's settlement gives"
                        f" {expected} (charge {rec.charge}, cost {rec.cost}, quantity"
                        f" {rec.quantity}, upstream view"
                        f" {sim.view(sim_order)})",
                        bug=bug,
                    )

    def check_new_order(self, rec: Rec) -> None:
        if rec.token is None:
            self.fail(f"order id {rec.id} carries no link we sent")
            return
        if rec.token in self.gw_by_token and self.gw_by_token[rec.token] != rec.id:
            self.fail(
                f"two orders for one request {rec.token}: {self.rank(self.gw_by_token[rec.token])}"
                f" and id {rec.id}"
            )
        self.gw_by_token[rec.token] = rec.id
        if rec.charge < rec.cost and not (
            self.below_cost_ok.get((rec.service_id, rec.customer_id))
            or self.below_cost_ok.get((rec.service_id, None))
        ):
            self.fail(
                f"order id {rec.id} charged {rec.charge} below its upstream cost {rec.cost}"
                " without the operator's consent"
            )

    def apply(self, rec: Rec) -> None:
        before = self.recs.get(rec.id)
        if before is None:
            self.check_new_order(rec)
            self.ids.append(rec.id)
            self.by_customer.setdefault(rec.customer_id, []).append(rec.id)
        else:
            self.kept[before.customer_id] -= before.kept
        self.kept[rec.customer_id] += rec.kept
        self.recs[rec.id] = rec
        if rec.live:
            self.live.add(rec.id)
        else:
            self.live.discard(rec.id)

    async def check_step(self) -> None:
        """After every step: every order this step could have touched (the new ones and the
        live ones), every new upstream order, every balance."""
        new_upstream = self.scan_sim()
        wanted = sorted(self.live)
        async with self.db.read() as conn:
            rows = list(await conn.execute(select(*_COLUMNS).where(Order.id > self.max_id)))
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows += list(await conn.execute(select(*_COLUMNS).where(Order.id.in_(chunk))))
            balances = dict(list(await conn.execute(select(Customer.id, Customer.balance))))
        for rec in sorted((_rec(r) for r in rows), key=lambda r: r.id):
            before = self.recs.get(rec.id)
            self.apply(rec)
            self.check_order(rec, before)
        for provider, upstream_id in new_upstream:
            token = _token_of(self.sims[provider].orders[upstream_id].params)
            owner = self.gw_by_token.get(token or "")
            if owner is None:
                self.fail(
                    f"provider {provider} holds order {upstream_id} ({token}) we have no order for"
                )
                continue
            rec = self.recs[owner]
            if rec.state == REJECTED:
                self.fail(
                    f"order {self.rank(owner)} was rejected and refunded, yet the upstream"
                    f" holds it as {upstream_id}: a free order"
                )
        touched, self.wire.touched = self.wire.touched, set()
        self.check_trails(touched)
        self.note_kills()
        self.check_alarms()
        for cust in self.customers:
            expected = self.funds[cust.id] - self.kept[cust.id]
            if balances.get(cust.id) != expected:
                self.fail(
                    f"customer {cust.id}: balance {balances.get(cust.id)} != top-ups"
                    f" {self.funds[cust.id]} - what their orders keep {self.kept[cust.id]}"
                )

    def check_alarms(self) -> None:
        """A CRITICAL line wakes an operator: it must be true. The one that says an order was
        refunded though the upstream placed it must name a refunded order (which the other
        checks then report as a free order), never one placed as that very upstream order."""
        records, self.alarms.records = self.alarms.records, []
        for record in records:
            message = record.getMessage()
            self.outcomes[f"critical:{message[:40]}"] += 1
            found = REFUNDED_BUT_PLACED.search(message)
            if found is None:
                continue
            rec = self.recs.get(int(found.group(1)))
            if (
                rec is not None
                and rec.state == PLACED
                and (rec.upstream_order_id == int(found.group(2)))
            ):
                self.fail(
                    f"false CRITICAL: {message!r}, but order {self.rank(rec.id)} is placed as"
                    f" upstream {rec.upstream_order_id} and nothing was refunded",
                    bug="false-critical-after-resolve",
                )

    async def check_full(self) -> None:
        """The whole database against everything known: the ledger's own verify, every order
        re-read, every upstream order matched to exactly one of ours."""
        problems = await ledger.verify(self.db)
        if problems:
            self.fail(f"ledger verify: {problems[:10]}")
        async with self.db.read() as conn:
            rows = [_rec(r) for r in await conn.execute(select(*_COLUMNS).order_by(Order.id))]
        if len(rows) != len(self.recs):
            self.fail(f"{len(rows)} orders in the database, {len(self.recs)} known")
        for rec in rows:
            before = self.recs.get(rec.id)
            if before != rec:
                self.fail(f"order id {rec.id} changed outside any check: {before} -> {rec}")
            self.check_order(rec, before)
        listing = [  # what GET /_sim/orders answers, without the JSON, per provider
            (provider, row) for provider, sim in self.sims.items() for row in sim.listing()
        ]
        tokens = Counter(_token_of(row["params"]) for _, row in listing)
        if any(n > 1 for n in tokens.values()):
            twice = [t for t, n in tokens.items() if n > 1]
            self.fail(f"the upstreams hold one request twice (at one provider or two): {twice}")
        by_token = {r.token: r for r in rows}
        for provider, row in listing:
            rec = by_token.get(_token_of(row["params"]))
            if rec is None:
                self.fail(f"upstream order {row['id']} at provider {provider} matches none of ours")
            elif rec.provider_id != provider or not (
                (rec.state == PLACED and rec.upstream_order_id == row["id"])
                or rec.state in (UNKNOWN, SENDING)
            ):
                self.fail(
                    f"upstream order {row['id']} at provider {provider} belongs to order"
                    f" {self.rank(rec.id)}, which is {rec.state} on provider {rec.provider_id}"
                    f" with upstream id {rec.upstream_order_id}"
                )
        placed = Counter((r.provider_id, r.upstream_order_id) for r in rows if r.state == PLACED)
        if any(n > 1 for n in placed.values()):
            self.fail(f"upstream orders claimed twice: {[u for u, n in placed.items() if n > 1]}")
        self.check_trails(set(self.wire.trails), count=False)
        kept: Counter[int] = Counter()
        for rec in rows:
            kept[rec.customer_id] += rec.kept
        async with self.db.read() as conn:
            balances = dict(list(await conn.execute(select(Customer.id, Customer.balance))))
        for cust in self.customers:
            if balances.get(cust.id) != self.funds[cust.id] - kept[cust.id]:
                self.fail(f"customer {cust.id}: balance != top-ups - what their orders keep")

    async def digest(self) -> str:
        """A fingerprint of the end state that two runs of one seed must share: orders by
        rank (never by id), balances, the upstream's orders."""
        parts = [
            (
                self.rank(r.id),
                r.customer_id,
                r.service_id,
                r.state,
                r.status,
                r.charge,
                r.refunded,
                r.upstream_order_id,
            )
            for r in sorted(self.recs.values(), key=lambda r: r.id)
        ]
        async with self.db.read() as conn:
            balances = sorted(list(await conn.execute(select(Customer.id, Customer.balance))))
        # One provider: the upstream ids alone (the digests of runs before providers stay).
        sim = [u if p == A else [p, u] for p, u in sorted(self.sim_by_token.values())]
        money = [self.sim.balance] + [s.balance for p, s in self.sims.items() if p != A]
        text = json.dumps([parts, [list(b) for b in balances], sim, *money])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe(outcome: object) -> str:
    if isinstance(outcome, int):
        return f"accepted as upstream {outcome}"
    if isinstance(outcome, Refused):
        return f"refused ({outcome.reason})"
    if isinstance(outcome, Ambiguous):
        return f"ambiguous ({outcome.reason})"
    return repr(outcome)


async def run_simulation(options: Options) -> Report:
    return await Simulation(options).run()
