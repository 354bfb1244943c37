"""Soak: the money path against real processes, under upstream faults and SIGKILLs, then proofs.

One run, on this machine:

1. a fresh PostgreSQL database (`smmgw_soak_<pid>`, dropped at the end unless --keep), migrated;
2. the simulator as its own process (`smm-gateway simulator`), every fault kind at --fault-rate;
3. two gateways (`smm-gateway serve`) on that one database, each running the in-process status
   sync (so the multi-instance claiming of batches is exercised), upstream timeout 2 s, sync
   interval 1 s, per-key rate limit off;
4. --customers customers with top-ups (a second top-up half-way through; every tenth customer
   gets little money, so "Not enough funds" happens under concurrency too), then --orders
   `add`s at --rate per second, round-robin over the two gateways, over every service type of
   the catalog (read through `services`), each with a unique link (or username) carrying a
   fate marker (`sim:complete|partial|cancel|reject|timeout`, most none); a third carry an
   Idempotency-Key and are retried on the other gateway after a network error (a bot would),
   some of those are sent twice on purpose (the replay must answer the same); plus customer
   `status` polls of their own order ids (single and 100-id forms);
5. meanwhile --kills SIGKILLs of a random gateway at random moments, each restarted at once on
   the same port (ready when /healthz answers). A request that fails at the network level is
   counted; only a keyed one is retried, an unkeyed one is "unknown to the customer";
6. then it stops sending, lets the sync run until quiet (no `sending` order, no placed order
   short of a final status, nothing changing for 3 intervals; --quiet-timeout), and PROVES:
   `smm-gateway ledger verify` exits 0; per customer, top-ups - balance = sum of current
   charges; every simulator order is exactly one gateway order (by upstream id, or by link for
   an `unknown` one) and nothing in the gateway is bought twice or for free; what arrived
   upstream is exactly what the gateway recorded; every placed order settled once, with the
   simulator's final status and exactly DESIGN.md's refund (recomputed from the simulator's
   remains or charge); every reply a customer got is consistent with the ledger (an
   order id is theirs and charged, an error was not charged, replays agree) and `status`
   through the API shows the database's status and charge; no HTTP 5xx from a gateway.
   It prints every figure, lists the unresolved `unknown` orders, and exits 1 if a proof fails.
7. cleans up its processes and database on any exit (Ctrl-C, SIGTERM, errors); the children
   also die with it (PR_SET_PDEATHSIG) if it is killed outright.

With --providers 2 (issue 13) a second simulator (standard dialect, its own seed, the same
faults) is added as provider `b` (its key encrypted with a SMMGW_SECRET_KEY the gateways
share) and mapped as the second alternative of every service; from 30 % to 50 % of the sends
the first simulator has no funds, so its orders fail over to `b`. The proofs then hold per
provider: an upstream order is (provider, its id), and every one is exactly one gateway order
on that provider (an `unknown` one by link, on that provider too); no link is bought at two.

    .venv/bin/python bench/soak.py [--orders 10000] [--customers 50] [--rate 10] [--kills 5]
        [--fault-rate 0.03] [--seed N] [--providers 1|2] [--keep] [--summary FILE.json]

bench/README.md, "Soak", has a full run's figures and what it found.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from soak_wide import Wide, add_options

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLI = str(Path(sys.executable).parent / "smm-gateway")
PG_ADMIN_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
SIM_KEY = "soak-sim-key-5f0c2b9e7a41"
SIM_BALANCE = "1000000000"  # the simulator's own money: never the limit
SIM_B_KEY = "soak-sim-b-key-3d9a71c0e2f8"
SOAK_SECRET = "soak-secret-key-for-provider-keys-7c41e09b"  # SMMGW_SECRET_KEY of the run
B_PROVIDER = 2  # `providers add` gives the second provider id 2
FUNDS_WINDOW = (0.3, 0.5)  # share of the sends during which the first simulator has no money
COMPOSITE = 10**13  # an upstream order is (provider, its id): provider * COMPOSITE + id
SIM_TICK = 0.5
SYNC_INTERVAL = 1.0
UPSTREAM_TIMEOUT = 2.0
UPSTREAM_CONNECT_TIMEOUT = 1.0
FAULT_KINDS = ("error5xx", "html", "garbage", "drop", "timeout_after_accept", "reject")
# Fate markers in links, with their shares: most orders carry none (the simulator's own draw).
MARKERS = (
    ("", 0.55),
    ("sim:complete", 0.12),
    ("sim:partial", 0.12),
    ("sim:cancel", 0.10),
    ("sim:reject", 0.08),
    ("sim:timeout", 0.03),
)
FINAL = ("Completed", "Partial", "Canceled", "Expired")
NOT_ENOUGH_FUNDS = "Not enough funds on balance"
INCORRECT_ORDER = "Incorrect order ID"
MICROS = 1_000_000
TOPUP = 1_000 * MICROS  # per customer at the start, and half of it again half-way through
TIGHT_TOPUP = 20 * MICROS  # every tenth customer: runs out of money during the run
KEYED_SHARE = 0.33  # adds that carry an Idempotency-Key
REPLAY_SHARE = 0.15  # keyed adds sent a second time on purpose, to the other gateway
CLIENT_TIMEOUT = 30.0
KEYED_RETRY_SECONDS = 45.0  # a keyed add is retried for this long (the other gateway, backoff)
MAX_IN_FLIGHT = 400
DRIPFEED_INTERVALS = (5, 10, 15, 30, 60, 90)
SUBSCRIPTION_DELAYS = (0, 5, 10, 15, 30, 60, 90)


def micros_text(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS)
    return f"{sign}{whole:,}.{frac:06d}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# ============================================ processes ==========================================

# Started through this stub: the child asks the kernel for SIGKILL when the soak dies, then
# becomes the command (prctl survives exec), so nothing outlives a `kill -9` of the soak.
_DIE_WITH_PARENT = (
    "import ctypes, os, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)\n"  # PR_SET_PDEATHSIG, SIGKILL
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() == int(sys.argv[1]):\n"
    "    os.execv(sys.argv[2], sys.argv[2:])\n"
)


@dataclass
class Proc:
    name: str
    cmd: list[str]
    env: dict[str, str]
    port: int
    log: Path
    health: str  # path that answers 200 once it serves
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts + 1} at {time.strftime('%X')} =====\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *self.cmd],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: one signal reaches all of it
            )
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)  # the group this Popen leads, nothing else

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()

    def stop(self) -> None:
        if not self.alive:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(8)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""


async def wait_healthy(proc: Proc, client: httpx.AsyncClient, within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    url = f"http://{HOST}:{proc.port}{proc.health}"
    while time.monotonic() < deadline:
        if not proc.alive:
            raise SetupError(f"{proc.name} exited while starting:\n{proc.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            reply = await client.get(url, timeout=2.0)
            if reply.status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise SetupError(f"{proc.name} not healthy after {within:.0f} s:\n{proc.tail()}")


class SetupError(Exception):
    """The soak could not be set up or driven (not a failed proof)."""


# ============================================ database ===========================================


async def pg_admin(admin_url: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def database_urls(admin_url: str, name: str) -> tuple[str, str]:
    """(URL for the gateways' env, URL for app.db.Database) of database `name` on that server."""
    base = admin_url.rsplit("/", 1)[0]
    plain = f"{base}/{name}"
    return plain, plain.replace("postgresql://", "postgresql+asyncpg://", 1)


# ============================================= records ===========================================


@dataclass
class Customer:
    index: int
    id: int
    name: str
    key: str
    tight: bool
    topups: int = 0  # micros this script topped up
    order_ids: list[int] = field(default_factory=list)  # ids the gateway answered to `add`


@dataclass
class Send:
    """One `add` a customer meant to make, and what they were told."""

    seq: int
    customer: int  # index into the customers list
    service: int
    type: str
    marker: str
    ident: str  # its unique link (the username for subscriptions)
    fields: dict[str, str]
    key: str | None  # Idempotency-Key
    outcome: str = "pending"  # order | error | lost
    order_id: int | None = None
    error: str | None = None
    lost: str | None = None  # refused | cut | http_<code> | bad_reply
    attempts: list[str] = field(default_factory=list)
    replay: str | None = None  # same | different: ... | lost


@dataclass
class Kill:
    gateway: str
    at: float  # seconds since sending started
    pid: int
    ready_after: float = 0.0  # seconds from SIGKILL to /healthz 200 on the new process
    ready_at: float = 0.0


@dataclass
class Net:
    """A request that failed at the network level."""

    action: str
    gateway: str
    kind: str  # refused | cut
    started: float
    ended: float


# ============================================== load =============================================


def pick_marker(rng: random.Random) -> str:
    draw, total = rng.random(), 0.0
    for marker, share in MARKERS:
        total += share
        if draw < total:
            return marker
    return ""


def order_fields(
    svc: dict[str, Any], tag: str, marker: str, rng: random.Random
) -> tuple[dict[str, str], str] | None:
    """The `add` parameters for a catalog entry (standard dialect), and the order's unique
    identity as it reaches the upstream (link, or username for subscriptions); None for a
    type this soak does not know."""
    kind = svc["type"]
    lo, hi = int(svc["min"]), int(svc["max"])
    fields = {"service": str(svc["service"])}

    def quantity() -> str:
        return str(min(hi, lo * rng.choice((1, 1, 2, 3))))

    def lines(word: str, low: int, high: int) -> str:
        count = rng.randint(max(low, 1), max(min(high, low + 4), max(low, 1)))
        return "\n".join(f"{word} {i} {tag}" for i in range(count))

    if kind == "Subscriptions":
        username = f"{tag}.{marker}" if marker else tag
        fields |= {
            "username": username,
            "min": str(lo),
            "max": str(min(hi, lo * 2)),
            "delay": str(rng.choice(SUBSCRIPTION_DELAYS)),
            "posts": str(rng.randint(1, 3)),
        }
        return fields, username
    link = f"https://soak.example/{tag}" + (f"?{marker}" if marker else "")
    fields["link"] = link
    if kind == "Default":
        fields["quantity"] = quantity()
        if svc.get("dripfeed") and rng.random() < 0.25:
            fields["runs"] = str(rng.randint(2, 3))
            fields["interval"] = str(rng.choice(DRIPFEED_INTERVALS))
    elif kind == "Package":
        pass
    elif kind in ("Custom Comments", "Custom Comments Package"):
        fields["comments"] = lines("nice post", lo, hi)
    elif kind == "Comment Replies":
        fields["username"] = f"user_{tag}"
        fields["comments"] = lines("reply", lo, hi)
    elif kind == "Mentions Custom List":
        fields["usernames"] = lines("user", lo, hi).replace(" ", "_")
    elif kind in (
        "Mentions",
        "Mentions with Hashtags",
        "Mentions Hashtag",
        "Mentions User Followers",
        "Mentions Media Likers",
        "Comment Likes",
        "Poll",
        "Invites from Groups",
        "SEO",
    ):
        extra = {
            "Mentions": {"usernames": "alice_soak\nbob_soak"},
            "Mentions with Hashtags": {"usernames": "alice_soak", "hashtags": "soak,smm"},
            "Mentions Hashtag": {"hashtag": "soaktest"},
            "Mentions User Followers": {"username": "soak_celebrity"},
            "Mentions Media Likers": {"media": "https://soak.example/media/1"},
            "Comment Likes": {"username": "soak_commenter"},
            "Poll": {"answer_number": str(rng.randint(1, 4))},
            "Invites from Groups": {"groups": "https://t.me/soak_group"},
            "SEO": {"keywords": "soak gateway\nsmm panel"},
        }[kind]
        fields |= extra
        fields["quantity"] = quantity()
    else:
        return None
    return fields, link


class Soak:
    def __init__(
        self,
        args: argparse.Namespace,
        client: httpx.AsyncClient,
        gateways: list[Proc],
        sim: Proc,
        customers: list[Customer],
        catalog: list[dict[str, Any]],
        db: Any,
    ) -> None:
        self.args = args
        self.client = client
        self.gateways = gateways
        self.sim = sim
        self.customers = customers
        self.catalog = catalog
        self.db = db
        self.rng = random.Random(f"{args.seed}:load")
        self.kill_rng = random.Random(f"{args.seed}:kills")
        self.run_tag = f"r{args.seed}p{os.getpid()}"
        self.sends: list[Send] = []
        self.net: list[Net] = []
        self.kills: list[Kill] = []
        self.http_status: Counter[str] = Counter()  # non-200 replies by "action HTTP n"
        self.requests: Counter[str] = Counter()  # HTTP requests sent, by action
        self.polls = Counter()  # status polls: sent, ids, lost, anomalies, ...
        self.poll_anomalies: list[str] = []
        self.keyed_retries = 0
        self.t0 = 0.0
        self.send_seconds = 0.0
        self.requests_while_sending = 0
        self.restarting = False
        self.sending = True
        self.rr = [0, 0]
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.wide = Wide(args, client, f"http://{HOST}:{sim.port}")  # the options of issue 10
        self.funds_out = False  # --providers 2: the first simulator's money is gone for now

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def funds_window(self, share: float) -> None:
        """The first simulator's balance gone within FUNDS_WINDOW: its orders fail over."""
        out = FUNDS_WINDOW[0] <= share < FUNDS_WINDOW[1]
        if out == self.funds_out:
            return
        self.funds_out = out
        balance = "0" if out else SIM_BALANCE
        with contextlib.suppress(httpx.HTTPError):
            await self.client.post(
                f"http://{HOST}:{self.sim.port}/_sim/balance", json={"balance": balance}
            )
        print(f"  first provider's balance now {balance}", flush=True)

    # ----- one HTTP request --------------------------------------------------------------------

    async def request(
        self, gw: Proc, action: str, form: dict[str, str], headers: dict[str, str] | None = None
    ) -> tuple[str, Any]:
        """('json', data) | ('http', status) | ('refused', text) | ('cut', text)."""
        self.requests[action] += 1
        started = self.now()
        try:
            reply = await self.client.post(
                f"http://{HOST}:{gw.port}/api/v2", data=form, headers=headers or {}
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left: the gateway is down (or restarting).
            self.net.append(Net(action, gw.name, "refused", started, self.now()))
            return "refused", type(exc).__name__
        except httpx.TransportError as exc:
            # Sent, then the connection died (or no reply in time): the customer cannot know.
            self.net.append(Net(action, gw.name, "cut", started, self.now()))
            return "cut", type(exc).__name__
        if reply.status_code != 200:
            self.http_status[f"{action} HTTP {reply.status_code}"] += 1
            return "http", reply.status_code
        try:
            return "json", reply.json()
        except ValueError:
            self.http_status[f"{action} unreadable body"] += 1
            return "http", 200

    def next_gateway(self, polls: bool = False) -> Proc:
        """Round-robin over the gateways, adds and polls each on their own turn."""
        self.rr[polls] += 1
        return self.gateways[self.rr[polls] % len(self.gateways)]

    def other(self, gw: Proc) -> Proc:
        return next(g for g in self.gateways if g is not gw)

    # ----- add ---------------------------------------------------------------------------------

    def new_send(self, seq: int) -> Send:
        while True:
            svc = self.rng.choice(self.catalog)
            marker = pick_marker(self.rng)
            if svc["type"] != "Subscriptions":
                marker = "+".join(m for m in (marker, self.wide.charge_marker()) if m)
            tag = f"soak-{self.run_tag}-{seq}"
            made = order_fields(svc, tag, marker, self.rng)
            if made is not None:
                break
        fields, ident = made
        keyed = self.rng.random() < KEYED_SHARE
        return Send(
            seq=seq,
            customer=self.rng.randrange(len(self.customers)),
            service=int(svc["service"]),
            type=svc["type"],
            marker=marker,
            ident=ident,
            fields=fields,
            key=f"idem-{tag}" if keyed else None,
        )

    @staticmethod
    def read_add(data: Any) -> tuple[str, int | str | None]:
        if isinstance(data, dict) and isinstance(data.get("order"), int):
            return "order", data["order"]
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return "error", data["error"]
        return "bad", None

    async def add(self, send: Send) -> None:
        customer = self.customers[send.customer]
        form = {"key": customer.key, "action": "add", **send.fields}
        headers = {"Idempotency-Key": send.key} if send.key else {}
        gw = self.next_gateway()
        give_up = time.monotonic() + KEYED_RETRY_SECONDS
        backoff = 0.2
        while True:
            kind, data = await self.request(gw, "add", form, headers)
            send.attempts.append(f"{gw.name}:{kind}")
            if kind in ("refused", "cut") and send.key and time.monotonic() < give_up:
                # A bot that sent an Idempotency-Key can safely try again, elsewhere.
                self.keyed_retries += 1
                gw = self.other(gw)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 3.0)
                continue
            break
        if kind in ("refused", "cut"):
            send.outcome, send.lost = "lost", kind
            return
        if kind == "http":
            send.outcome, send.lost = "lost", f"http_{data}"
            return
        what, value = self.read_add(data)
        if what == "order":
            send.outcome, send.order_id = "order", int(value)  # type: ignore[arg-type]
            customer.order_ids.append(int(value))  # type: ignore[arg-type]
        elif what == "error":
            send.outcome, send.error = "error", str(value)
        else:
            send.outcome, send.lost = "lost", "bad_reply"
            self.http_status[f"add bad reply {str(data)[:60]}"] += 1
            return
        # No row is kept for an add refused for funds: a replay may then succeed; skip those.
        replayable = what == "order" or value != NOT_ENOUGH_FUNDS
        if send.key and replayable and self.rng.random() < REPLAY_SHARE:
            kind2, data2 = await self.request(self.other(gw), "add", form, headers)
            if kind2 != "json":
                send.replay = "lost"
            else:
                again = self.read_add(data2)
                send.replay = "same" if again == (what, value) else f"different: {data2!r}"

    async def _add_task(self, send: Send) -> None:
        try:
            await self.add(send)
        finally:
            self.slots.release()

    # ----- status polls ------------------------------------------------------------------------

    async def poll(self) -> None:
        with_ids = [c for c in self.customers if c.order_ids]
        if not with_ids:
            return
        customer = self.rng.choice(with_ids)
        gw = self.next_gateway(polls=True)
        if self.rng.random() < 0.6:
            ids = [self.rng.choice(customer.order_ids[-300:])]
            form = {"key": customer.key, "action": "status", "order": str(ids[0])}
        else:
            recent = customer.order_ids[-100:]
            ids = self.rng.sample(recent, min(len(recent), self.rng.randint(2, 100)))
            form = {"key": customer.key, "action": "status", "orders": ",".join(map(str, ids))}
        self.polls["requests"] += 1
        self.polls["ids"] += len(ids)
        kind, data = await self.request(gw, "status", form)
        if kind != "json":
            self.polls[f"lost_{kind}"] += 1
            return
        items = {str(ids[0]): data} if "order" in form else data
        if not isinstance(items, dict):
            self.polls["anomalies"] += 1
            self.poll_anomalies.append(f"{form.get('order') or 'orders'}: {str(data)[:120]}")
            return
        for oid in ids:
            item = items.get(str(oid))
            if not isinstance(item, dict) or "status" not in item:
                # An order id this very customer was given must always be visible to them.
                self.polls["anomalies"] += 1
                if len(self.poll_anomalies) < 20:
                    self.poll_anomalies.append(f"customer {customer.id} order {oid}: {item!r}")
            else:
                self.polls["answered"] += 1

    async def _poll_task(self) -> None:
        with contextlib.suppress(Exception):
            await self.poll()

    # ----- kills -------------------------------------------------------------------------------

    def kill_plan(self, planned: float) -> list[tuple[float, int]]:
        """One kill at a random moment in each of --kills equal slots of 5%..90% of the sending."""
        kills = self.args.kills
        if kills <= 0:
            return []
        start, span = 0.05 * planned, 0.85 * planned
        slot = span / kills
        return [
            (
                start + k * slot + self.kill_rng.uniform(0.0, slot * 0.8),
                self.kill_rng.randrange(len(self.gateways)),
            )
            for k in range(kills)
        ]

    async def killer(self, planned: float) -> None:
        for at, which in self.kill_plan(planned):
            await asyncio.sleep(max(0.0, at - self.now()))
            gw = self.gateways[which]
            pid = gw.popen.pid if gw.popen else -1
            record = Kill(gw.name, round(self.now(), 2), pid)
            self.restarting = True
            gw.kill()
            print(f"  [{self.now():7.1f}s] SIGKILL {gw.name} (pid {pid}); restarting", flush=True)
            gw.start()
            await wait_healthy(gw, self.client)
            self.restarting = False
            record.ready_at = self.now()
            record.ready_after = round(record.ready_at - record.at, 2)
            self.kills.append(record)
            print(
                f"  [{self.now():7.1f}s] {gw.name} back after {record.ready_after:.1f} s",
                flush=True,
            )

    # ----- the sending phase -------------------------------------------------------------------

    async def topup_all(self, amount_for: Any, memo: str) -> None:
        from app.ledger import topup

        for customer in self.customers:
            amount = amount_for(customer)
            await topup(self.db, customer.id, amount, memo=memo)
            customer.topups += amount

    async def run(self) -> None:
        args = self.args
        planned = args.orders / args.rate
        self.t0 = time.monotonic()
        killer = asyncio.create_task(self.killer(planned))
        wide = asyncio.create_task(self.wide.run(planned, self.now))
        poller = asyncio.create_task(self.poll_loop())
        tasks: set[asyncio.Task[None]] = set()
        report_every = max(1, args.orders // 20)
        halfway = args.orders // 2
        topped_up = False
        try:
            for seq in range(args.orders):
                await asyncio.sleep(max(0.0, seq / args.rate - self.now()))
                await self.slots.acquire()
                if killer.done() and not killer.cancelled() and killer.exception():
                    raise killer.exception()  # type: ignore[misc]  # a restart failed
                if getattr(args, "providers", 1) == 2:
                    await self.funds_window(seq / args.orders)
                if seq >= halfway and not topped_up:
                    topped_up = True
                    await self.topup_all(
                        lambda c: (TIGHT_TOPUP if c.tight else TOPUP) // 2, "soak: second top-up"
                    )
                send = self.new_send(seq)
                self.sends.append(send)
                task = asyncio.create_task(self._add_task(send))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if (seq + 1) % report_every == 0:
                    self.progress(seq + 1)
            if tasks:
                await asyncio.wait(tasks, timeout=KEYED_RETRY_SECONDS + 2 * CLIENT_TIMEOUT)
        except BaseException:  # interrupted or failed: stop everything at once
            for task in (killer, poller, wide, *tasks):
                task.cancel()
            raise
        finally:
            wide.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await wide
            await self.wide.heal_all()
            self.send_seconds = self.now()
            self.requests_while_sending = sum(self.requests.values())
            self.sending = False
            poller.cancel()
            if not self.restarting:
                killer.cancel()  # kills not yet due are not made; a restart is finished
            done = await asyncio.gather(killer, poller, return_exceptions=True)
        if isinstance(done[0], Exception):
            raise done[0]  # a restart that failed
        stuck = [s for s in self.sends if s.outcome == "pending"]
        if stuck:
            raise SetupError(f"{len(stuck)} adds never finished (e.g. seq {stuck[0].seq})")

    async def poll_loop(self) -> None:
        rate = self.args.poll_rate if self.args.poll_rate is not None else self.args.rate
        if rate <= 0:
            return
        n = 0
        tasks: set[asyncio.Task[None]] = set()
        while True:
            n += 1
            await asyncio.sleep(max(0.0, n / rate - self.now()))
            task = asyncio.create_task(self._poll_task())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    def progress(self, done: int) -> None:
        told = Counter(s.outcome for s in self.sends)
        print(
            f"  [{self.now():7.1f}s] sent {done:,} adds ({done / max(self.now(), 1e-9):.1f}/s); "
            f"replies: {told['order']:,} ids, {told['error']:,} errors, {told['lost']:,} lost, "
            f"{told['pending']:,} in flight; polls {self.polls['requests']:,}; "
            f"kills {len(self.kills)}",
            flush=True,
        )


# ============================================= quiet =============================================


async def db_snapshot(db: Any) -> dict[str, Any]:
    from sqlalchemy import func, select

    from app.models import Order

    async with db.read() as conn:
        states = {
            s: n
            for s, n in await conn.execute(select(Order.state, func.count()).group_by(Order.state))
        }
        active = await conn.scalar(
            select(func.count())
            .select_from(Order)
            .where(
                Order.state == "placed",
                (Order.status.not_in(FINAL)) | Order.settled_at.is_(None),
            )
        )
        leased = await conn.scalar(
            select(func.count())
            .select_from(Order)
            .where(
                Order.state == "placed",
                Order.settled_at.is_(None),
                Order.lease_until.is_not(None),
                Order.lease_until > func.now(),
            )
        )
        refunded = await conn.scalar(select(func.coalesce(func.sum(Order.refunded), 0)))
        updated = await conn.scalar(select(func.max(Order.updated_at)))
    return {
        "states": states,
        "active": active or 0,
        "leased": leased or 0,
        "refunded": int(refunded or 0),
        "updated": str(updated),
    }


async def wait_quiet(db: Any, within: float) -> tuple[bool, float, dict[str, Any], dict[str, Any]]:
    """Until no order is `sending`, every placed order is final and settled, and nothing has
    changed for 3 sync intervals; False on timeout. Returns (quiet, seconds, last snapshot,
    lease facts): orders a killed instance had claimed stay leased (app/sync.py LEASE) and are
    polled by nobody until the lease runs out."""
    started = time.monotonic()
    last: dict[str, Any] | None = None
    stable = 0
    next_note = 0.0
    leases = {"leased_max": 0, "last_lease_seen_s": 0.0}
    while True:
        snap = await db_snapshot(db)
        busy = snap["states"].get("sending", 0) > 0 or snap["active"] > 0
        stable = stable + 1 if (snap == last and not busy) else 0
        last = snap
        waited = time.monotonic() - started
        if snap["leased"]:
            leases["leased_max"] = max(leases["leased_max"], snap["leased"])
            leases["last_lease_seen_s"] = round(waited, 1)
        if stable >= 3:
            return True, waited, snap, leases
        if waited > within:
            return False, waited, snap, leases
        if waited >= next_note:
            print(
                f"  [quiet +{waited:5.1f}s] sending {snap['states'].get('sending', 0)}, "
                f"placed not yet final/settled {snap['active']} "
                f"(of which leased by a sync pass: {snap['leased']})",
                flush=True,
            )
            next_note = waited + 10
        await asyncio.sleep(SYNC_INTERVAL)


# ============================================= proofs ============================================


@dataclass
class Proof:
    name: str
    ok: bool
    detail: list[str] = field(default_factory=list)


def ident_of(params: dict[str, Any]) -> str | None:
    value = params.get("link") or params.get("username")
    return str(value) if value else None


async def load_gateway_orders(db: Any) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from app.models import Order

    cols = (
        Order.id,
        Order.customer_id,
        Order.service_id,
        Order.state,
        Order.status,
        Order.quantity,
        Order.charge,
        Order.cost,
        Order.refunded,
        Order.upstream_order_id,
        Order.upstream_charge,
        Order.upstream_first_charge,
        Order.params,
        Order.error,
        Order.settled_at,
        Order.created_at,
        Order.lease_until,
        Order.announced,
        Order.idempotency_key,
        Order.provider_id,
    )
    async with db.read() as conn:
        rows = await conn.execute(select(*cols).order_by(Order.id))
        out = []
        for row in rows:
            item = dict(row._mapping)
            item["params"] = json.loads(item["params"])
            out.append(item)
        return out


async def load_money(db: Any) -> tuple[dict[int, int], dict[int, int]]:
    """(balance by customer id, top-up entries' sum by customer id) from the database."""
    from sqlalchemy import func, select

    from app.models import Customer as CustomerRow
    from app.models import LedgerEntry

    async with db.read() as conn:
        balances = {
            cid: bal for cid, bal in await conn.execute(select(CustomerRow.id, CustomerRow.balance))
        }
        topups = {
            cid: int(total)
            for cid, total in await conn.execute(
                select(LedgerEntry.customer_id, func.sum(LedgerEntry.amount))
                .where(LedgerEntry.kind == "topup")
                .group_by(LedgerEntry.customer_id)
            )
        }
    return balances, topups


def sample(items: list[Any], n: int = 8) -> str:
    shown = ", ".join(map(str, items[:n]))
    return shown + (f", … ({len(items)} in all)" if len(items) > n else "")


PACKAGE_TYPES = ("Package", "Custom Comments Package")


def by_remains(sim_order: dict[str, Any]) -> bool:
    """DESIGN.md: a Partial refund follows the upstream's `remains` for plain orders; packages,
    subscriptions and (SmartPanel's) drip-feed parents settle by the upstream's charge ratio."""
    return sim_order["kind"] == "plain" and sim_order["type"] not in PACKAGE_TYPES


def expected_refund(o: dict[str, Any], s: dict[str, Any], remains: dict[int, int]) -> int:
    charge = o["charge"]
    if s["status"] == "Completed":
        return 0
    if s["status"] == "Canceled":
        return charge
    if by_remains(s):
        left = min(max(remains[int(s["id"])], 0), o["quantity"])
        return charge * left // o["quantity"]
    # The base: the upstream's own first charge as the gateway heard it live, else our estimate.
    kept, cost = int(s["charge_micros"]), o["upstream_first_charge"] or o["cost"]
    if cost <= 0:
        return 0
    return charge - -(-charge * min(kept, cost) // cost)


def remains_used(matched: dict[int, dict[str, Any]], sim_by_id: dict[int, Any]) -> int:
    return sum(
        1
        for sid, o in matched.items()
        if o["state"] == "placed"
        and sim_by_id[sid]["status"] == "Partial"
        and by_remains(sim_by_id[sid])
    )


async def upstream_remains(port: int, ids: list[int], key: str = SIM_KEY) -> dict[int, int]:
    """The upstream's `remains` for these orders, asked through its own API in batches of 100
    (its faults still fire: a batch is asked again until it reads)."""
    found: dict[int, int] = {}
    async with httpx.AsyncClient(timeout=3.0) as client:
        for start in range(0, len(ids), 100):
            chunk = ids[start : start + 100]
            form = {"key": key, "action": "status", "orders": ",".join(map(str, chunk))}
            for _ in range(50):
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    reply = await client.post(f"http://{HOST}:{port}/api/v1", data=form)
                    data = reply.json()
                    if isinstance(data, dict) and all(str(i) in data for i in chunk):
                        for i in chunk:
                            found[i] = int(str(data[str(i)]["remains"]).lstrip("+"))
                        break
            else:
                raise SetupError(f"the simulator never answered `status` for {chunk[:3]}…")
    return found


def prove(
    soak: Soak,
    orders: list[dict[str, Any]],
    sim_orders: list[dict[str, Any]],
    remains: dict[int, int],
    balances: dict[int, int],
    db_topups: dict[int, int],
    verify: tuple[int, str],
    api_view: tuple[int, list[str]],
) -> tuple[list[Proof], dict[str, Any]]:
    proofs: list[Proof] = []
    facts: dict[str, Any] = {}

    # 1. the ledger's own invariants, through the operator's command
    code, text = verify
    proofs.append(
        Proof(
            "`smm-gateway ledger verify` exits 0",
            code == 0,
            [line for line in text.splitlines() if line.strip()][:20],
        )
    )

    # 2. per customer: top-ups - balance = sum of current charges
    current: dict[int, int] = defaultdict(int)
    for o in orders:
        current[o["customer_id"]] += o["charge"] - o["refunded"]
    bad = []
    for c in soak.customers:
        spent = c.topups - balances[c.id]
        if spent != current[c.id] or db_topups.get(c.id, 0) != c.topups:
            bad.append(
                f"customer {c.id}: top-ups {micros_text(c.topups)} (ledger "
                f"{micros_text(db_topups.get(c.id, 0))}) - balance {micros_text(balances[c.id])} "
                f"= {micros_text(spent)} but orders' current charges = {micros_text(current[c.id])}"
            )
    proofs.append(
        Proof(
            f"per customer ({len(soak.customers)}): top-ups - balance = Σ (charge - refunded)",
            not bad,
            bad[:10],
        )
    )

    # 3. upstream <-> gateway: one to one; nothing bought twice, nothing free
    by_upstream: dict[int, list[dict[str, Any]]] = defaultdict(list)
    by_ident: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for o in orders:
        if o["upstream_order_id"] is not None:
            by_upstream[o["upstream_order_id"]].append(o)
        ident = ident_of(o["params"])
        if ident is not None:
            by_ident[ident].append(o)
    sim_by_id = {int(s["id"]): s for s in sim_orders}
    sim_by_ident: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in sim_orders:
        ident = ident_of(s["params"])
        sim_by_ident[ident or f"<none {s['id']}>"].append(s)

    problems: list[str] = []
    matched: dict[int, dict[str, Any]] = {}  # sim id -> gateway order
    via_ident = 0
    for s in sim_orders:
        sid, ident = int(s["id"]), ident_of(s["params"])
        placed = by_upstream.get(sid, [])
        candidates = [o for o in by_ident.get(ident or "", []) if o["state"] != "rejected"]
        if len(placed) > 1:
            problems.append(
                f"upstream order {sid}: {len(placed)} gateway orders name it "
                f"({[o['id'] for o in placed]})"
            )
            continue
        if placed:
            o = placed[0]
            if o["state"] != "placed" or ident_of(o["params"]) != ident:
                problems.append(
                    f"upstream order {sid}: gateway order {o['id']} is {o['state']} "
                    f"with link {ident_of(o['params'])!r}, upstream has {ident!r}"
                )
            others = [x["id"] for x in candidates if x["id"] != o["id"]]
            if others:
                problems.append(f"upstream order {sid}: also matches gateway orders {others}")
            matched[sid] = o
            continue
        open_ = [
            o
            for o in candidates
            if o["state"] in ("unknown", "sending") and o["upstream_order_id"] is None
        ]
        if len(open_) == 1 and len(candidates) == 1:
            if open_[0].get("provider_id", 1) != s.get("provider", open_[0].get("provider_id", 1)):
                problems.append(
                    f"upstream order {sid} ({ident!r}) is at provider {s['provider']}, its "
                    f"gateway order {open_[0]['id']} waits unknown on provider "
                    f"{open_[0]['provider_id']}"
                )
                continue
            matched[sid] = open_[0]
            via_ident += 1
        elif not candidates:
            problems.append(
                f"upstream order {sid} ({ident!r}): no gateway order at all "
                "(the upstream charged us, no customer was charged)"
            )
        else:
            problems.append(
                f"upstream order {sid} ({ident!r}): ambiguous gateway orders "
                f"{[(o['id'], o['state']) for o in candidates]}"
            )
    for sid_list in sim_by_ident.values():
        if len(sid_list) > 1:
            problems.append(
                f"the upstream holds {len(sid_list)} orders for one link "
                f"{ident_of(sid_list[0]['params'])!r}: {[s['id'] for s in sid_list]}"
                " (bought twice)"
            )
    gw_claims = Counter(o["id"] for o in matched.values())
    for oid, n in gw_claims.items():
        if n > 1:
            problems.append(f"gateway order {oid} matches {n} upstream orders")
    for upstream_id, os_ in by_upstream.items():
        if upstream_id not in sim_by_id:
            problems.append(
                f"gateway orders {[o['id'] for o in os_]} name upstream order "
                f"{upstream_id}, which the upstream does not have"
            )
    free = [
        o["id"]
        for o in orders
        if o["state"] == "rejected" and ident_of(o["params"]) in sim_by_ident
    ]
    if free:
        problems.append(
            f"{len(free)} rejected (refunded) gateway orders exist upstream "
            f"(free orders): {sample(free)}"
        )
    twice = [ident for ident, os_ in by_ident.items() if len(os_) > 1]
    if twice:
        problems.append(f"{len(twice)} links have several gateway orders: {sample(twice, 4)}")
    placed_count = sum(1 for o in orders if o["state"] == "placed")
    proofs.append(
        Proof(
            f"every upstream order ({len(sim_orders):,}) is exactly one gateway order "
            f"({len(sim_orders) - via_ident:,} by upstream id, {via_ident:,} unknown ones by "
            f"link); every placed gateway order ({placed_count:,}) is an upstream order; "
            "no link bought twice; no rejected order upstream",
            not problems,
            problems[:15],
        )
    )

    # 4. what arrived upstream is exactly what the gateway recorded
    diffs = []
    for sid, o in matched.items():
        arrived = {k: v for k, v in sim_by_id[sid]["params"].items() if k not in ("key", "action")}
        if arrived != o["params"]:
            diffs.append(
                f"order {o['id']} / upstream {sid}: sent {o['params']!r}, arrived {arrived!r}"
            )
    proofs.append(
        Proof(
            f"parameters arrived upstream exactly as recorded ({len(matched):,})",
            not diffs,
            diffs[:5],
        )
    )

    # 5. every placed order settled once, with the upstream's final status and the refund
    #    DESIGN.md prescribes, computed here from the upstream's own figures
    unsettled, wrong = [], []
    compared_charge = refund_gap = 0
    for sid, o in matched.items():
        if o["state"] != "placed":
            continue
        s = sim_by_id[sid]
        if o["settled_at"] is None or o["status"] not in FINAL:
            unsettled.append(
                f"order {o['id']} ({o['status']}, upstream {s['status']}, "
                f"lease until {o['lease_until']})"
            )
            continue
        if o["status"] != s["status"]:
            wrong.append(f"order {o['id']}: {o['status']}, upstream says {s['status']}")
            continue
        expected = expected_refund(o, s, remains)
        refund_gap += abs(o["refunded"] - expected)
        if o["refunded"] != expected:
            wrong.append(
                f"order {o['id']} ({s['type']}, {s['kind']}, {o['status']}): refunded "
                f"{o['refunded']} of {o['charge']}, expected {expected} (upstream kept "
                f"{s['charge_micros']} of cost {o['cost']}, remains {remains.get(sid)})"
            )
        if o["upstream_charge"] is not None:
            compared_charge += 1
            if o["upstream_charge"] != int(s["charge_micros"]):
                wrong.append(
                    f"order {o['id']}: recorded upstream charge {o['upstream_charge']}"
                    f", the upstream keeps {s['charge_micros']}"
                )
    settled = Counter(o["status"] for o in matched.values() if o["state"] == "placed")
    proofs.append(
        Proof(
            "every placed order settled once, with the upstream's final status and exactly "
            "DESIGN.md's refund: 0 if Completed, all if Canceled, Partial: floor(charge × "
            f"remains / quantity) by the upstream's remains ({remains_used(matched, sim_by_id)}"
            " orders), else by the upstream's charge ratio; recorded upstream charge = what the "
            f"upstream kept ({compared_charge:,} orders where it reported one) {dict(settled)}",
            not unsettled and not wrong,
            (
                [
                    f"{len(unsettled)} unsettled, {len(wrong)} wrong; refunds off by "
                    f"{micros_text(refund_gap)} in all:"
                ]
                if unsettled or wrong
                else []
            )
            + (unsettled + wrong)[:15],
        )
    )

    # 6. what customers were told agrees with the ledger
    by_id = {o["id"]: o for o in orders}
    issues = []
    replays = Counter()
    for send in soak.sends:
        customer = soak.customers[send.customer]
        gw_orders = by_ident.get(send.ident, [])
        if send.outcome == "order":
            o = by_id.get(send.order_id or -1)
            if o is None or o["customer_id"] != customer.id:
                issues.append(f"add #{send.seq}: told order {send.order_id}, not theirs/absent")
            elif o["state"] not in ("placed", "unknown") or ident_of(o["params"]) != send.ident:
                issues.append(
                    f"add #{send.seq}: told order {send.order_id}, which is "
                    f"{o['state']} for {ident_of(o['params'])!r}"
                )
        elif send.outcome == "error":
            charged = [o["id"] for o in gw_orders if o["charge"] != o["refunded"]]
            if charged:
                issues.append(
                    f"add #{send.seq}: told {send.error!r} but orders {charged} hold their money"
                )
        if send.replay is not None:
            replays[send.replay if send.replay in ("same", "lost") else "different"] += 1
            if send.replay.startswith("different"):
                issues.append(
                    f"add #{send.seq}: replay with its Idempotency-Key answered "
                    f"{send.replay[11:]}, first {send.order_id or send.error!r}"
                )
    if soak.polls["anomalies"]:
        issues.append(
            f"{soak.polls['anomalies']} status polls did not show an order the "
            f"customer was given: {soak.poll_anomalies[:5]}"
        )
    api_checked, api_problems = api_view
    issues += api_problems
    facts["replays"] = dict(replays)
    proofs.append(
        Proof(
            "customers' replies agree with the ledger: every order id told is theirs, placed or "
            "unknown, for that link; no error-answered add holds money; Idempotency-Key replays "
            f"({sum(replays.values())}) answer the same; every status poll showed the customer's "
            f"order; final `status` via the API ({api_checked:,} ids) = database status and charge",
            not issues,
            issues[:15],
        )
    )

    # 7. no internal errors
    fives = {
        k: v
        for k, v in soak.http_status.items()
        if " HTTP 5" in k or "unreadable" in k or "bad reply" in k
    }
    proofs.append(
        Proof(
            "no HTTP 5xx or unreadable reply from a gateway",
            not fives,
            [f"{k}: {v}" for k, v in fives.items()],
        )
    )

    # 8. nothing left in `sending`
    sending = [o["id"] for o in orders if o["state"] == "sending"]
    proofs.append(
        Proof(
            "no order left in `sending` (crashes recovered to `unknown`)",
            not sending,
            [sample(sending)] if sending else [],
        )
    )

    # unresolved `unknown` orders: what an operator resolves
    exists, absent = [], []
    by_ident_sim = {ident: ss[0] for ident, ss in sim_by_ident.items()}
    for o in orders:
        if o["state"] != "unknown":
            continue
        s = by_ident_sim.get(ident_of(o["params"]) or "")
        if s is not None:
            exists.append((o["id"], int(s["id"])))
        else:
            absent.append(o["id"])
    facts["unknown_exists_upstream"] = exists
    facts["unknown_not_upstream"] = absent
    facts["matched"] = len(matched)
    return proofs, facts


async def api_view_check(soak: Soak) -> tuple[int, list[str], dict[int, dict[str, Any]]]:
    """`status` through the API for every order id each customer was given."""
    problems: list[str] = []
    seen: dict[int, dict[str, Any]] = {}
    gw = soak.gateways[0]
    for customer in soak.customers:
        ids = sorted(set(customer.order_ids))
        for start in range(0, len(ids), 100):
            chunk = ids[start : start + 100]
            form = {"key": customer.key, "action": "status", "orders": ",".join(map(str, chunk))}
            kind, data = await soak.request(gw, "status (final check)", form)
            if kind != "json" or not isinstance(data, dict):
                problems.append(f"final status for customer {customer.id}: {kind} {data!r}"[:200])
                continue
            for oid in chunk:
                seen[oid] = data.get(str(oid))
    return len(seen), problems, seen


def compare_api_view(
    seen: dict[int, Any], orders: list[dict[str, Any]], problems: list[str]
) -> None:
    by_id = {o["id"]: o for o in orders}
    for oid, item in seen.items():
        o = by_id.get(oid)
        if not isinstance(item, dict) or "status" not in item or o is None:
            problems.append(f"order {oid}: `status` answered {item!r}")
            continue
        charge = int(Decimal(item["charge"]) * MICROS)
        if item["status"] != o["status"] or charge != o["charge"] - o["refunded"]:
            problems.append(
                f"order {oid}: `status` says {item['status']} {item['charge']}, "
                f"database {o['status']} {micros_text(o['charge'] - o['refunded'])}"
            )


# ============================================== report ===========================================


def report(
    soak: Soak,
    orders: list[dict[str, Any]],
    sim_orders: list[dict[str, Any]],
    stats: tuple[dict[str, Any], dict[str, Any]],
    proofs: list[Proof],
    facts: dict[str, Any],
    times: dict[str, float],
) -> dict[str, Any]:
    args = soak.args
    sends = soak.sends
    told = Counter(s.outcome for s in sends)
    errors = Counter(s.error for s in sends if s.outcome == "error")
    lost = Counter(s.lost for s in sends if s.outcome == "lost")
    states = Counter(o["state"] for o in orders)
    rejected_by = Counter(o["error"] for o in orders if o["state"] == "rejected")
    settled = Counter(o["status"] for o in orders if o["state"] == "placed")
    refunds = sum(o["refunded"] for o in orders)
    # From the add to its settlement (the simulator finishes an order in 2 ticks of 0.5 s,
    # drip-feeds and subscriptions in a few more): how stale a customer's status got.
    lags = sorted(
        (o["settled_at"] - o["created_at"]).total_seconds()
        for o in orders
        if o["state"] == "placed" and o["settled_at"] is not None
    )

    def pct(q: float) -> float:
        return lags[min(len(lags) - 1, int(q * len(lags)))] if lags else 0.0

    charged = sum(o["charge"] for o in orders)
    held = sum(o["charge"] - o["refunded"] for o in orders if o["state"] == "unknown")
    upstream_kept = sum(int(s["charge_micros"]) for s in sim_orders)
    net = soak.net

    def in_kill(n: Net) -> bool:
        return any(
            k.gateway == n.gateway and n.ended >= k.at and n.started <= k.ready_at + 1.0
            for k in soak.kills
        )

    lost_net = Counter(f"{n.action} {n.kind}" for n in net)
    outside = [n for n in net if not in_kill(n)]
    keyed = [s for s in sends if s.key]
    keyed_retried = [s for s in keyed if len(s.attempts) > 1]
    unkeyed_lost = [s for s in sends if not s.key and s.outcome == "lost"]
    ids_told = {s.ident for s in sends if s.outcome in ("order", "error")}
    unheard = Counter(o["state"] for o in orders if ident_of(o["params"]) not in ids_told)
    calls_run, calls_end = stats
    sim_calls = calls_end.get("calls", {})
    status_calls_run = calls_run.get("calls", {}).get("status", 0)
    elapsed = times["total"]
    send_s = times["send"]
    http_requests = soak.requests_while_sending

    print("\n================================ soak figures ================================")
    print(
        f"command: .venv/bin/python bench/soak.py --orders {args.orders} --customers "
        f"{args.customers} --rate {args.rate:g} --kills {args.kills} --fault-rate "
        f"{args.fault_rate:g} --seed {args.seed}"
        + (f" --poll-rate {args.poll_rate:g}" if args.poll_rate is not None else "")
        + (f" --charge-differs {args.charge_differs:g}" if args.charge_differs else "")
        + (f" --catalog-changes {args.catalog_changes}" if args.catalog_changes else "")
        + (f" --poison {args.poison}" if args.poison else "")
    )
    print(f"wider faults (issue 10): {soak.wide.counts}")
    print(
        f"machine: {os.cpu_count()} CPUs, load average {times['load0']:.1f} → "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        f"orders sent (adds): {len(sends):,}  ({sum(1 for s in sends if s.key):,} with an "
        f"Idempotency-Key; HTTP add requests incl. retries and replays: "
        f"{soak.requests['add']:,})"
    )
    print(
        f"  told an order id: {told['order']:,}; told an error: {told['error']:,}; "
        f"lost (no answer): {told['lost']:,} {dict(lost)}"
    )
    for text, n in errors.most_common():
        print(f"    error {text!r}: {n:,}")
    print(f"gateway orders: {len(orders):,} {dict(states)}")
    print(f"  placed: {states['placed']:,}; settled by status: {dict(settled)}")
    print(f"  rejected (refunded in full): {states['rejected']:,}")
    for text, n in rejected_by.most_common():
        print(f"    {text!r}: {n:,}")
    print(
        f"  unknown (funds held, operator resolves): {states['unknown']:,}, holding "
        f"{micros_text(held)}"
    )
    print(f"  orders whose customer never got an answer (lost requests): {dict(unheard)}")
    print(
        f"money: top-ups {micros_text(sum(c.topups for c in soak.customers))}; charged "
        f"{micros_text(charged)}; refunds total {micros_text(refunds)}; customers now pay "
        f"{micros_text(charged - refunds)}; the upstream kept {micros_text(upstream_kept)} for "
        f"{len(sim_orders):,} orders"
    )
    print(
        f"add → settlement of placed orders: p50 {pct(0.5):.1f} s, p90 {pct(0.9):.1f} s, "
        f"p99 {pct(0.99):.1f} s, max {pct(1.0):.1f} s; {sum(1 for x in lags if x > 30):,} "
        "took over 30 s (a killed instance's claimed batch waits out its lease)"
    )
    print(f"kills: {len(soak.kills)}")
    for k in soak.kills:
        print(
            f"  at {k.at:7.1f} s: SIGKILL {k.gateway} (pid {k.pid}), healthy again after "
            f"{k.ready_after:.1f} s"
        )
    print(
        f"requests lost to kills (network errors): {len(net) - len(outside):,} "
        f"{dict(lost_net)}; outside kill windows: {len(outside)}"
    )
    print(
        f"  keyed adds retried on the other gateway: {len(keyed_retried):,} "
        f"({soak.keyed_retries:,} retries), of which answered: "
        f"{sum(1 for s in keyed_retried if s.outcome != 'lost'):,}; unkeyed adds unknown to "
        f"the customer: {len(unkeyed_lost):,} "
        f"({dict(Counter(s.lost for s in unkeyed_lost))})"
    )
    print(f"  Idempotency-Key replays sent on purpose: {facts['replays']}")
    print(
        f"elapsed: {elapsed:.1f} s (setup {times['setup']:.1f}, sending {send_s:.1f}, "
        f"quiet {times['quiet']:.1f}, proofs {times['proofs']:.1f})"
    )
    if times.get("leased_max"):
        print(
            f"  quiet phase: up to {times['leased_max']} placed orders leased by a sync pass "
            f"(a killed instance's claim: nobody polls them until the lease runs out); last "
            f"seen leased {times['last_lease_seen_s']:.1f} s after sending stopped"
        )
    print(
        f"throughput: {len(sends) / send_s:.1f} adds/s over the sending phase incl. its last "
        f"replies (target {args.rate:g}); "
        f"{http_requests / send_s:.1f} HTTP requests/s to the gateways while sending"
    )
    print(f"upstream calls by action (/_sim/stats): {sim_calls} total {calls_end.get('total')}")
    print(
        f"status polls: {soak.polls['requests']:,} customer requests for "
        f"{soak.polls['ids']:,} order ids (lost to kills: "
        f"{soak.polls['lost_refused'] + soak.polls['lost_cut']}) vs {status_calls_run:,} "
        f"upstream status calls while sending ({sim_calls.get('status', 0):,} by the end, "
        f"all from the sync): {soak.polls['requests'] / max(status_calls_run, 1):.1f} customer "
        "polls per upstream call"
    )
    unknown_exists = facts["unknown_exists_upstream"]
    unknown_absent = facts["unknown_not_upstream"]
    print(f"\nunresolved `unknown` orders: {len(unknown_exists) + len(unknown_absent):,}")
    print(
        f"  exist upstream ({len(unknown_exists):,}; `orders resolve ID --upstream-order N`): "
        + " ".join(f"{o}→{u}" for o, u in unknown_exists[:60])
        + (" …" if len(unknown_exists) > 60 else "")
    )
    print(
        f"  not upstream ({len(unknown_absent):,}; `orders resolve ID --not-placed`): "
        + " ".join(map(str, unknown_absent[:60]))
        + (" …" if len(unknown_absent) > 60 else "")
    )

    print("\n================================ proofs ================================")
    for p in proofs:
        print(f"[{'PASS' if p.ok else 'FAIL'}] {p.name}")
        for line in p.detail:
            print(f"       {line}")
    ok = all(p.ok for p in proofs)
    print("\nall proofs passed" if ok else "\nPROOFS FAILED")
    return {
        "args": vars(args),
        "ok": ok,
        "proofs": [asdict(p) for p in proofs],
        "orders_sent": len(sends),
        "told": dict(told),
        "errors": dict(errors),
        "lost": dict(lost),
        "gateway_states": dict(states),
        "rejected_by_error": dict(rejected_by),
        "settled_by_status": dict(settled),
        "refunds_micros": refunds,
        "settle_lag_seconds": {
            "p50": pct(0.5),
            "p90": pct(0.9),
            "p99": pct(0.99),
            "max": pct(1.0),
            "over_30s": sum(1 for x in lags if x > 30),
        },
        "charged_micros": charged,
        "held_in_unknown_micros": held,
        "upstream_kept_micros": upstream_kept,
        "upstream_orders": len(sim_orders),
        "kills": [asdict(k) for k in soak.kills],
        "wider_faults": soak.wide.counts,
        "lost_to_kills": len(net) - len(outside),
        "network_errors": dict(lost_net),
        "network_errors_outside_kills": len(outside),
        "keyed_retried": len(keyed_retried),
        "unkeyed_lost": len(unkeyed_lost),
        "replays": facts["replays"],
        "times": times,
        "adds_per_second": len(sends) / send_s,
        "upstream_calls": sim_calls,
        "status_polls": dict(soak.polls),
        "upstream_status_calls_while_sending": status_calls_run,
        "unknown_exists_upstream": unknown_exists,
        "unknown_not_upstream": unknown_absent,
    }


# ============================================== main =============================================


async def read_catalog(client: httpx.AsyncClient, gw: Proc, key: str) -> list[dict[str, Any]]:
    """The gateway syncs the catalog at start-up: wait for it through the API."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            reply = await client.post(
                f"http://{HOST}:{gw.port}/api/v2", data={"key": key, "action": "services"}
            )
            data = reply.json()
            if isinstance(data, list) and data:
                return data
        await asyncio.sleep(0.2)
    raise SetupError(f"the gateway's catalog stayed empty:\n{gw.tail()}")


def by_provider(provider: int, sim_orders: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One simulator's orders as the proofs see them with several providers: (provider, id)."""
    return [
        {**x, "id": provider * COMPOSITE + int(x["id"]), "provider": provider} for x in sim_orders
    ]


async def add_second_provider(db: Any, port: int) -> None:
    """Provider `b`, as an operator adds one (its key encrypted with the run's secret), and its
    catalog synced (again while the simulator's faults refuse the fetch)."""
    from app.catalog import sync_catalog
    from app.providers import ProviderClients, add_provider
    from app.settings import load_settings

    settings = load_settings(secret_key=SOAK_SECRET)
    added = await add_provider(
        db, settings, name="b", url=f"http://{HOST}:{port}/api/v2", key=SIM_B_KEY, family="standard"
    )
    if added.id != B_PROVIDER:
        raise SetupError(f"provider b got id {added.id}")
    clients = ProviderClients(settings)
    try:
        await clients.refresh(db)
        client = clients.get(B_PROVIDER)
        assert client is not None
        for _ in range(50):
            if (await sync_catalog(db, client, B_PROVIDER)).ok:
                return
            await asyncio.sleep(0.1)
    finally:
        await clients.aclose()
    raise SetupError("provider b's catalog could not be fetched")


async def map_second_provider(db: Any, catalog: list[dict[str, Any]]) -> int:
    """Provider b's service N becomes the second alternative of every service N customers see."""
    from app.catalog import map_offer
    from app.errors import OperatorError

    mapped = 0
    for service in catalog:
        with contextlib.suppress(OperatorError):  # a type of its own there: left unmapped
            await map_offer(db, int(service["service"]), B_PROVIDER, int(service["service"]))
            mapped += 1
    return mapped


async def create_customers(db: Any, n: int, rng: random.Random) -> list[Customer]:
    from app.customers import create_customer
    from app.ledger import topup

    customers = []
    for i in range(n):
        tight = i % 10 == 9
        markup = rng.choice((None, 0, 1000, 2500, 3333))  # basis points; None: the default
        cid, key = await create_customer(db, f"soak-customer-{i:03d}", "standard", markup)
        amount = TIGHT_TOPUP if tight else TOPUP
        await topup(db, cid, amount, memo="soak: first top-up")
        customers.append(Customer(i, cid, f"soak-customer-{i:03d}", key, tight, amount))
    return customers


async def soak_main(args: argparse.Namespace, procs: list[Proc], workdir: Path) -> dict[str, Any]:
    from app.db import Database

    times: dict[str, float] = {"load0": os.getloadavg()[0]}
    started = time.monotonic()
    name = f"smmgw_soak_{os.getpid()}"
    gw_url, db_url = database_urls(args.postgres, name)
    await pg_admin(args.postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await pg_admin(args.postgres, f'CREATE DATABASE "{name}"')
    print(f"database {name} on {args.postgres.rsplit('/', 1)[0]}; logs in {workdir}", flush=True)
    db = Database(db_url)
    main_task = asyncio.current_task()
    assert main_task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, kill: unwind through every finally
        loop.add_signal_handler(sig, main_task.cancel)
    try:
        return await _soak(args, procs, workdir, db, gw_url, times, started)
    finally:
        await db.dispose()
        if args.keep:
            print(f"kept: database {name}, logs in {workdir}")
        else:
            for proc in procs:  # the database cannot be dropped under their connections
                proc.stop()
            with contextlib.suppress(Exception):
                await pg_admin(args.postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _soak(
    args: argparse.Namespace,
    procs: list[Proc],
    workdir: Path,
    db: Any,
    gw_url: str,
    times: dict[str, float],
    started: float,
) -> dict[str, Any]:
    await db.migrate()
    rng = random.Random(f"{args.seed}:setup")
    customers = await create_customers(db, args.customers, rng)

    env = dict(os.environ)
    for var in [v for v in env if v.startswith("SMMGW_")]:
        del env[var]  # nothing from the caller's environment changes the set-up
    sim_port = free_port()
    sim_cmd = [
        CLI,
        "simulator",
        "--host",
        HOST,
        "--port",
        str(sim_port),
        "--key",
        SIM_KEY,
        "--balance",
        SIM_BALANCE,
        "--tick",
        str(SIM_TICK),
        "--seed",
        str(args.seed),
    ]
    for kind in FAULT_KINDS:
        sim_cmd += ["--fault", f"{kind}={args.fault_rate:g}"]
    sim = Proc("simulator", sim_cmd, env, sim_port, workdir / "simulator.log", "/_sim/stats")
    procs.append(sim)
    sim_b: Proc | None = None
    if args.providers == 2:  # the second provider: the other family, its own seed and key
        b_port = free_port()
        b_cmd = [*sim_cmd, "--dialect", "standard"]
        b_cmd[b_cmd.index("--port") + 1] = str(b_port)
        b_cmd[b_cmd.index("--key") + 1] = SIM_B_KEY
        b_cmd[b_cmd.index("--seed") + 1] = str(args.seed + 1)
        sim_b = Proc("simulator-b", b_cmd, env, b_port, workdir / "simulator-b.log", "/_sim/stats")
        procs.append(sim_b)
    gw_env = env | {
        "SMMGW_DATABASE_URL": gw_url,
        "SMMGW_UPSTREAM_URL": f"http://{HOST}:{sim_port}/api/v1",
        "SMMGW_UPSTREAM_KEY": SIM_KEY,
        "SMMGW_UPSTREAM_TIMEOUT_SECONDS": str(UPSTREAM_TIMEOUT),
        "SMMGW_UPSTREAM_CONNECT_TIMEOUT_SECONDS": str(UPSTREAM_CONNECT_TIMEOUT),
        "SMMGW_SYNC_INTERVAL_SECONDS": str(SYNC_INTERVAL),
        "SMMGW_RATE_LIMIT_PER_SECOND": "0",
        "SMMGW_DEFAULT_DIALECT": "standard",
        "SMMGW_LOG_LEVEL": args.gateway_log_level,
        "SMMGW_SECRET_KEY": SOAK_SECRET,
    }
    gateways = []
    for label in ("A", "B"):
        port = free_port()
        gw = Proc(
            f"gateway-{label}",
            [CLI, "serve", "--host", HOST, "--port", str(port)],
            gw_env,
            port,
            workdir / f"gateway-{label}.log",
            "/healthz",
        )
        gateways.append(gw)
        procs.append(gw)

    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT + 64, max_keepalive_connections=64)
    timeout = httpx.Timeout(CLIENT_TIMEOUT, connect=2.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        sim.start()
        await wait_healthy(sim, client)
        if sim_b is not None:
            sim_b.start()
            await wait_healthy(sim_b, client)
            await add_second_provider(db, sim_b.port)
        for gw in gateways:
            gw.start()
        for gw in gateways:
            await wait_healthy(gw, client)
        catalog = await read_catalog(client, gateways[0], customers[0].key)
        if sim_b is not None:
            mapped = await map_second_provider(db, catalog)
            print(f"provider b (simulator :{sim_b.port}, standard): {mapped} services mapped")
        types = Counter(s["type"] for s in catalog)
        print(
            f"simulator :{sim_port} (faults {args.fault_rate:g} each of {', '.join(FAULT_KINDS)})"
            f"; gateways :{gateways[0].port} and :{gateways[1].port}; "
            f"{len(customers)} customers; catalog {len(catalog)} services, "
            f"{len(types)} types",
            flush=True,
        )
        times["setup"] = time.monotonic() - started

        soak = Soak(args, client, gateways, sim, customers, catalog, db)
        print(
            f"sending {args.orders:,} adds at {args.rate:g}/s (~{args.orders / args.rate:.0f} s)"
            f", {args.kills} kills",
            flush=True,
        )
        await soak.run()
        times["send"] = soak.send_seconds
        stats_run = (await client.get(f"http://{HOST}:{sim_port}/_sim/stats")).json()

        print("sending done; waiting for the sync to settle everything", flush=True)
        quiet, waited, snap, leases = await wait_quiet(db, args.quiet_timeout)
        times["quiet"] = waited
        times.update(leases)
        print(
            f"  {'quiet' if quiet else 'NOT quiet (timeout)'} after {waited:.1f} s: {snap}",
            flush=True,
        )
        proofs_started = time.monotonic()
        stats_end = (await client.get(f"http://{HOST}:{sim_port}/_sim/stats")).json()
        sim_orders = (await client.get(f"http://{HOST}:{sim_port}/_sim/orders", timeout=120)).json()
        partial = [int(x["id"]) for x in sim_orders if x["status"] == "Partial" and by_remains(x)]
        remains = await upstream_remains(sim_port, partial)
        if sim_b is not None:
            url = f"http://{HOST}:{sim_b.port}/_sim/orders"
            b_orders = (await client.get(url, timeout=120)).json()
            partial = [int(x["id"]) for x in b_orders if x["status"] == "Partial" and by_remains(x)]
            b_remains = await upstream_remains(sim_b.port, partial, SIM_B_KEY)
            sim_orders = by_provider(1, sim_orders) + by_provider(B_PROVIDER, b_orders)
            remains = {COMPOSITE + i: n for i, n in remains.items()} | {
                B_PROVIDER * COMPOSITE + i: n for i, n in b_remains.items()
            }
        orders = await load_gateway_orders(db)
        balances, db_topups = await load_money(db)
        api_checked, api_problems, seen = await api_view_check(soak)
        compare_api_view(seen, orders, api_problems)
        verify = await asyncio.create_subprocess_exec(
            CLI,
            "ledger",
            "verify",
            env=gw_env,
            cwd=workdir,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        verify_out, _ = await verify.communicate()
        verified = (-1 if verify.returncode is None else verify.returncode, verify_out.decode())
        if sim_b is not None:
            for o in orders:  # an upstream order is (provider, its id)
                if o["upstream_order_id"] is not None:
                    o["upstream_order_id"] += o["provider_id"] * COMPOSITE
        proofs, facts = prove(
            soak,
            orders,
            sim_orders,
            remains,
            balances,
            db_topups,
            verified,
            (api_checked, api_problems),
        )
        if not quiet:
            proofs.append(Proof("the sync went quiet before --quiet-timeout", False, [str(snap)]))
        times["proofs"] = time.monotonic() - proofs_started
        times["total"] = time.monotonic() - started
        summary = report(soak, orders, sim_orders, (stats_run, stats_end), proofs, facts, times)
        if sim_b is not None:
            spread = Counter(f"{o['provider_id']}:{o['state']}" for o in orders)
            summary["orders_by_provider"] = dict(sorted(spread.items()))
            print(f"gateway orders by provider:state: {summary['orders_by_provider']}")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=10_000, help="adds to send")
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--rate", type=float, default=10.0, help="adds per second")
    parser.add_argument(
        "--poll-rate",
        type=float,
        default=None,
        help="customer status polls per second (default: --rate)",
    )
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs of a gateway")
    parser.add_argument(
        "--fault-rate", type=float, default=0.03, help="the simulator's rate of each fault kind"
    )
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the sync to settle everything",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("SMMGW_TEST_POSTGRES_URL", PG_ADMIN_DEFAULT),
        help="admin URL of the PostgreSQL server (a database to connect to)",
    )
    parser.add_argument("--gateway-log-level", default="WARNING")
    parser.add_argument(
        "--providers",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: a second simulator as provider b, the alternative of every service",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    parser.add_argument("--summary", help="write every figure and proof to this JSON file")
    add_options(parser)
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1, 1_000_000)
    if args.orders < 1 or args.customers < 1 or args.rate <= 0 or args.kills < 0:
        parser.error("--orders, --customers, --rate must be positive, --kills >= 0")
    if not 0 <= args.fault_rate * len(FAULT_KINDS) <= 1:
        parser.error("--fault-rate times 6 kinds must stay within [0, 1]")
    print(f"smm-gateway soak, seed {args.seed}", flush=True)

    procs: list[Proc] = []
    workdir = Path(tempfile.mkdtemp(prefix="smmgw-soak-"))
    code = 2
    try:
        summary = asyncio.run(soak_main(args, procs, workdir))
        if args.summary:
            Path(args.summary).write_text(json.dumps(summary, indent=2, default=str))
        code = 0 if summary["ok"] else 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted; cleaned up", file=sys.stderr)
        code = 130
    except SetupError as exc:
        print(f"soak could not run: {exc}", file=sys.stderr)
        code = 2
    finally:
        for proc in procs:
            proc.stop()
        if code != 0 and not args.keep:
            print(f"logs of this run: {workdir}", file=sys.stderr)
        elif not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
