"""`smm-gateway demo`: the simulator and the gateway in one process, ready to curl.

Both run as uvicorn servers in one event loop on a fresh SQLite file in the working directory;
the gateway's upstream is the simulator. A demo customer gets a key, a markup and a balance.
Ctrl-C (SIGINT) or SIGTERM stops both servers cleanly.
"""

import asyncio
import json
import os
import secrets
import signal
import socket
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
from app.settings import load_settings
from app.simulator import SimConfig, create_simulator_app
from app.upstream import UpstreamClient

HOST = "127.0.0.1"
DEMO_DB = "smm-gateway-demo.db"
DEMO_CUSTOMER = "demo"
DEMO_MARKUP_PERCENT = "25"
DEMO_TOPUP = "100.00"
DEMO_TICK_SECONDS = 5.0  # orders visibly move Pending → In progress → Completed
STARTUP_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class DemoInfo:
    url: str
    docs_url: str
    simulator_url: str
    database: str
    customer_id: int
    customer: str
    key: str
    dialect: str
    markup_percent: str
    balance: str
    currency: str
    services: int
    curl: dict[str, str]


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
    fields = " ".join(f"-d {name}={value}" for name, value in params.items())
    return f"curl -s -d key={key} {fields} {url}"


@asynccontextmanager
async def demo_running(
    port: int = 8000, sim_port: int = 9000, workdir: Path | None = None
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
        # Readable request lines in a terminal, unless the operator chose a format.
        readable = {} if "SMMGW_LOG_FORMAT" in os.environ else {"log_format": "text"}
        settings = load_settings(
            database_url=f"sqlite+aiosqlite:///{db_path}",
            upstream_url=f"http://{HOST}:{sim_port}/api/v1",
            upstream_key=sim_key,
            **readable,
        )
        db = Database(settings.database_url)
        await db.migrate()

        sim_app = create_simulator_app(
            SimConfig(key=sim_key, tick_seconds=DEMO_TICK_SECONDS, currency=settings.currency)
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
        default = next((s for s in catalog if s.type == "Default"), None)
        if default is not None:
            link = "https://www.instagram.com/p/demo-sim:complete/"
            curl["add"] = _curl(
                key, url, action="add", service=default.id, link=link, quantity=default.min
            )
            curl["status"] = _curl(key, url, action="status", order=1)
        yield DemoInfo(
            url=url,
            docs_url=f"http://{HOST}:{port}/docs",
            simulator_url=settings.upstream_url,
            database=str(db_path),
            customer_id=customer_id,
            customer=DEMO_CUSTOMER,
            key=key,
            dialect=settings.default_dialect,
            markup_percent=DEMO_MARKUP_PERCENT,
            balance=render(balance),
            currency=settings.currency,
            services=len(catalog),
            curl=curl,
        )
    finally:
        for server, task in reversed(running):
            await _stop(server, task)
        for sock in (gateway_sock, sim_sock):
            sock.close()
        if db is not None:
            await db.dispose()


def describe(info: DemoInfo) -> str:
    lines = [
        "smm-gateway demo: the simulator and the gateway are running. Ctrl-C stops both.",
        "",
        f"  gateway    {info.url}   (docs: {info.docs_url})",
        f"  upstream   {info.simulator_url}   (the simulator; {info.services} services)",
        f"  database   {info.database}",
        f"  customer   {info.customer} (id {info.customer_id}): markup {info.markup_percent}%,"
        f" balance {info.balance} {info.currency}, dialect {info.dialect}",
        f"  key        {info.key}",
        "",
        "Try:",
        *(f"  {line}" for line in info.curl.values()),
        "",
        "Operator commands on this database, from another terminal:",
        f"  SMMGW_DATABASE_URL=sqlite:///{info.database} smm-gateway ledger history"
        f" {info.customer}",
    ]
    return "\n".join(lines)


async def run_demo(
    port: int = 8000,
    sim_port: int = 9000,
    *,
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
        async with demo_running(port, sim_port) as info:
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
