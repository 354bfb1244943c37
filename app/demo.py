"""`smm-gateway demo`: the simulator and the gateway in one process, ready to curl.

Both run as uvicorn servers in one event loop on a fresh SQLite file in the working directory;
the gateway's upstream is the simulator, speaking SmartPanel (smmmix's family: no refill, no
cancel) or, with `--dialect standard`, the standard family (refill and cancel on the services
that offer them). A demo customer gets a key, a markup and a balance. Orders move fast (a step
every DEMO_TICK_SECONDS, a status sync every DEMO_SYNC_SECONDS) so a newcomer can watch one go
Pending → In progress → Completed. Every command it prints runs as shown from the working
directory. Ctrl-C (SIGINT) or SIGTERM stops both servers cleanly.
"""

import asyncio
import json
import os
import secrets
import shlex
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvicorn

from app import customers, ledger
from app.catalog import customer_catalog, sync_catalog
from app.db import Database
from app.errors import OperatorError
from app.main import create_app
from app.money import parse_micros, percent_to_bp, render
from app.settings import Dialect, Settings, load_settings
from app.simulator import SimConfig, create_simulator_app
from app.upstream import UpstreamClient

HOST = "127.0.0.1"
DEMO_DB = "smm-gateway-demo.db"
DEMO_CUSTOMER = "demo"
DEMO_MARKUP_PERCENT = "25"
DEMO_TOPUP = "100.00"
DEMO_TICK_SECONDS = 2.0  # an order: Pending, In progress after 1 step, Completed after 2
DEMO_SYNC_SECONDS = 1.0  # the gateway's status sync, so customers see each step within a second
DEMO_SERVICE = 10  # a Default service of the simulator's that offers refill and cancel
FAMILIES = {
    "smartpanel": "SmartPanel (smmmix's panel software): no refill, no cancel",
    "standard": "the standard family (Perfect Panel and most others): refill and cancel",
}
STARTUP_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class DemoInfo:
    url: str
    docs_url: str
    dashboard_url: str
    admin_token: str  # signs in to the dashboard (and opens /admin) for this demo only
    simulator_url: str
    database: str
    customer_id: int
    customer: str
    key: str
    upstream_dialect: str
    upstream_family: str
    dialect: str
    markup_percent: str
    balance: str
    currency: str
    services: int
    curl: dict[str, str]
    operator: list[str]


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to the demo: two servers share one loop, and
    uvicorn's own handlers would stop only the last one started."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _server_config(asgi_app: Any, lifespan: str = "on") -> uvicorn.Config:
    # A reply the simulator holds back on purpose must not hold a shutdown hostage.
    return uvicorn.Config(
        asgi_app,
        log_level="warning",
        access_log=False,
        lifespan=lifespan,
        timeout_graceful_shutdown=2,
    )


def _bind(port: int) -> socket.socket:
    try:
        return socket.create_server((HOST, port))
    except OSError as exc:
        raise OperatorError(f"cannot listen on {HOST}:{port}: {exc.strerror or exc}") from None


async def _start(server: _Server, sock: socket.socket, what: str) -> asyncio.Task[None]:
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"demo-{what}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT_SECONDS
    while not server.started:
        if task.done():
            task.result()  # its exception, if any
            raise OperatorError(f"the {what} stopped while starting")
        if loop.time() > deadline:
            raise OperatorError(f"the {what} did not start within {STARTUP_TIMEOUT_SECONDS:.0f}s")
        await asyncio.sleep(0.02)
    return task


async def _stop(server: _Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    with suppress(asyncio.CancelledError, SystemExit):
        await task


def _fresh_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _curl(key: str, url: str, **params: object) -> str:
    fields = " ".join(f"-d {name}={shlex.quote(str(value))}" for name, value in params.items())
    return f"curl -s -d key={key} {fields} {url}"


def cli_command() -> str:
    """This CLI as a shell in the working directory must be told it: the `smm-gateway` script
    beside the running interpreter (a venv's is on no PATH until activated), relative when it
    lies under the working directory (`.venv/bin/smm-gateway`)."""
    script = Path(sys.executable).parent / "smm-gateway"
    if not script.exists():
        return "smm-gateway"
    cwd = Path.cwd()
    shown = script.relative_to(cwd) if script.is_relative_to(cwd) else script
    return shlex.quote(str(shown))


def _operator_commands(db_path: Path, settings: Settings, customer: str) -> list[str]:
    """The CLI on the demo's database and simulator: one export line, then the commands."""
    env = {
        "SMMGW_DATABASE_URL": f"sqlite:///{db_path}",
        "SMMGW_UPSTREAM_URL": settings.upstream_url,
        "SMMGW_UPSTREAM_KEY": settings.upstream_key,
        "SMMGW_UPSTREAM_DOUBLE_DECODE": str(settings.upstream_double_decode).lower(),
    }
    cli = cli_command()
    return [
        "export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items()),
        *(
            f"{cli} {args}"
            for args in (
                f"ledger history {customer}",
                "orders list",
                "sync --once",
                "summary",
                "ledger verify",
            )
        ),
    ]


@asynccontextmanager
async def demo_running(
    port: int = 8000,
    sim_port: int = 9000,
    workdir: Path | None = None,
    upstream_dialect: Dialect = "smartpanel",
) -> AsyncIterator[DemoInfo]:
    """Start the simulator and the gateway, set up the demo customer; stop both on exit."""
    # Take the ports first: a busy port must not cost the previous demo database.
    gateway_sock, sim_sock = _bind(port), _bind(sim_port)
    db: Database | None = None
    running: list[tuple[_Server, asyncio.Task[None]]] = []
    try:
        db_path = (workdir or Path.cwd()).resolve() / DEMO_DB
        _fresh_database(db_path)
        sim_key = secrets.token_hex(16)
        admin_token = secrets.token_urlsafe(32)  # a new one per demo: the dashboard's sign-in
        # Readable request lines in a terminal, unless the operator chose a format.
        readable = {} if "SMMGW_LOG_FORMAT" in os.environ else {"log_format": "text"}
        settings = load_settings(
            database_url=f"sqlite+aiosqlite:///{db_path}",
            upstream_url=f"http://{HOST}:{sim_port}/api/v1",
            upstream_key=sim_key,
            # Only SmartPanel decodes its parameters twice.
            upstream_double_decode=upstream_dialect == "smartpanel",
            sync_interval_seconds=DEMO_SYNC_SECONDS,
            admin_token=admin_token,
            **readable,
        )
        db = Database(settings.database_url)
        await db.migrate()

        sim_app = create_simulator_app(
            SimConfig(
                key=sim_key,
                dialect=upstream_dialect,
                tick_seconds=DEMO_TICK_SECONDS,
                currency=settings.currency,
            )
        )
        sim = _Server(_server_config(sim_app, lifespan="off"))
        running.append((sim, await _start(sim, sim_sock, "simulator")))

        async with UpstreamClient.from_settings(settings) as upstream:
            synced = await sync_catalog(db, upstream)
        if not synced.ok:
            raise OperatorError(f"the catalog did not sync from the simulator: {synced.error}")

        markup_bp = percent_to_bp(DEMO_MARKUP_PERCENT)
        customer_id, key = await customers.create_customer(
            db, DEMO_CUSTOMER, settings.default_dialect, markup_bp
        )
        balance = await ledger.topup(db, customer_id, parse_micros(DEMO_TOPUP), memo="demo")
        catalog = await customer_catalog(
            db,
            customer_id,
            markup_bp,
            settings.default_markup_bp,
            subscriptions=synced.family == "standard",
        )

        gateway = _Server(_server_config(create_app(settings)))
        running.append((gateway, await _start(gateway, gateway_sock, "gateway")))

        url = f"http://{HOST}:{port}/api/v2"
        curl = {
            "balance": _curl(key, url, action="balance"),
            "services": _curl(key, url, action="services"),
        }
        service = next(s for s in catalog if s.id == DEMO_SERVICE)
        # Order 1 completes (the simulator's `sim:complete` marker); order 2 is canceled.
        complete = "https://www.instagram.com/p/demo-sim:complete/"
        curl["add"] = _curl(
            key, url, action="add", service=service.id, link=complete, quantity=service.min
        )
        curl["status"] = _curl(key, url, action="status", order=1)
        if service.cancel:
            curl["add_to_cancel"] = _curl(
                key,
                url,
                action="add",
                service=service.id,
                link="https://www.instagram.com/p/demo-cancel/",
                quantity=service.min,
            )
            curl["cancel"] = _curl(key, url, action="cancel", orders=2)
        if service.refill:
            curl["refill"] = _curl(key, url, action="refill", order=1)
            curl["refill_status"] = _curl(key, url, action="refill_status", refill=1)
        yield DemoInfo(
            url=url,
            docs_url=f"http://{HOST}:{port}/docs",
            dashboard_url=f"http://{HOST}:{port}/dashboard",
            admin_token=admin_token,
            simulator_url=settings.upstream_url,
            database=str(db_path),
            customer_id=customer_id,
            customer=DEMO_CUSTOMER,
            key=key,
            upstream_dialect=upstream_dialect,
            upstream_family=FAMILIES[upstream_dialect],
            dialect=settings.default_dialect,
            markup_percent=DEMO_MARKUP_PERCENT,
            balance=render(balance),
            currency=settings.currency,
            services=len(catalog),
            curl=curl,
            operator=_operator_commands(db_path, settings, DEMO_CUSTOMER),
        )
    finally:
        for server, task in reversed(running):
            await _stop(server, task)
        for sock in (gateway_sock, sim_sock):
            sock.close()
        if db is not None:
            await db.dispose()


def command_groups(info: DemoInfo) -> list[tuple[str, list[str]]]:
    """The commands the demo suggests, in the order to run them, under their headings."""
    c = info.curl
    seconds = f"{2 * DEMO_TICK_SECONDS + DEMO_SYNC_SECONDS:.0f}"
    groups = [
        (
            "Try (run `status` again to watch Pending → In progress → Completed,"
            f" about {seconds} s):",
            [c["balance"], c["services"], c["add"], c["status"]],
        )
    ]
    if "cancel" in c:
        groups.append(
            ("Cancel an order while it runs (order 2):", [c["add_to_cancel"], c["cancel"]])
        )
    if "refill" in c:
        groups.append(("Once order 1 is Completed, refill it:", [c["refill"], c["refill_status"]]))
    groups.append(
        ("Operator commands on this demo, from another terminal in this directory:", info.operator)
    )
    return groups


def describe(info: DemoInfo) -> str:
    lines = [
        "smm-gateway demo: the simulator and the gateway are running.",
        "",
        f"  gateway    {info.url}   (docs: {info.docs_url})",
        f"  dashboard  {info.dashboard_url}   (sign in with the admin token below)",
        f"  upstream   {info.simulator_url}   (the simulator; {info.services} services)",
        f"             imitating {info.upstream_family}",
        f"  database   {info.database}",
        f"  customer   {info.customer} (id {info.customer_id}): markup {info.markup_percent}%,"
        f" balance {info.balance} {info.currency}, dialect {info.dialect}",
        f"  key        {info.key}",
        f"  admin      {info.admin_token}   (this demo's SMMGW_ADMIN_TOKEN)",
    ]
    for heading, commands in command_groups(info):
        lines += ["", heading, *(f"  {command}" for command in commands)]
    if "refill" not in info.curl:
        lines += [
            "",
            "Refill and cancel: SmartPanel offers neither, so every service says refill false,"
            f" cancel false. To see both, stop this demo and run `{cli_command()} demo"
            " --dialect standard`.",
        ]
    return "\n".join([*lines, "", "Ctrl-C stops both."])


async def run_demo(
    port: int = 8000,
    sim_port: int = 9000,
    *,
    upstream_dialect: Dialect = "smartpanel",
    as_json: bool = False,
    out: Callable[[str], None] = print,
) -> None:
    """Run the demo until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main = asyncio.current_task()
    started = False

    def on_signal() -> None:
        # While starting there is nothing to wait for: cancel the start-up (it cleans up).
        if started:
            stop.set()
        elif main is not None:
            main.cancel()

    handled = (signal.SIGINT, signal.SIGTERM)
    for sig in handled:
        loop.add_signal_handler(sig, on_signal)
    try:
        async with demo_running(port, sim_port, upstream_dialect=upstream_dialect) as info:
            started = True
            out(json.dumps(asdict(info), indent=2) if as_json else describe(info))
            await stop.wait()
    except asyncio.CancelledError:
        pass
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    if not as_json:
        out("demo stopped")
