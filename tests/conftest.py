"""Shared fixtures: one suite, two databases.

Every test that takes `db` (or anything built on it) runs twice: on a fresh SQLite file and on
a fresh PostgreSQL database. PostgreSQL comes from SMMGW_TEST_POSTGRES_URL (default: the local
server, database `test`); each test session creates its own database there and drops it at
the end. When PostgreSQL cannot be reached the PostgreSQL half FAILS, unless
SMMGW_TEST_SKIP_POSTGRES=1 says to skip it on purpose.
"""

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.db import Database
from app.main import create_app
from app.models import Base
from app.settings import Settings, load_settings
from app.simulator import SimConfig, create_simulator_app
from app.upstream import UpstreamClient

POSTGRES_ADMIN_URL = os.environ.get(
    "SMMGW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
SKIP_POSTGRES = os.environ.get("SMMGW_TEST_SKIP_POSTGRES") == "1"
SIM_KEY = "sim-test-key"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this session's own on the PostgreSQL server, migrated to head."""
    if SKIP_POSTGRES:
        pytest.skip("SMMGW_TEST_SKIP_POSTGRES=1")
    name = f"smmgw_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable ({exc}); the PostgreSQL half of"
            " the suite must run (set SMMGW_TEST_SKIP_POSTGRES=1 to skip it deliberately)",
            pytrace=False,
        )
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"

    async def migrate() -> None:
        db = Database(url)
        await db.migrate()
        await db.dispose()

    asyncio.run(migrate())
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _truncate_postgres(db: Database) -> None:
    """Empty every table and restart its ids. DELETE, dependents first, rather than TRUNCATE:
    on the few rows a test leaves it is ~10x faster (TRUNCATE rewrites every table file)."""
    async with db.write() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            await conn.execute(table.delete())
        sequences = await conn.execute(
            text("SELECT schemaname, sequencename FROM pg_sequences WHERE schemaname = 'public'")
        )
        for schema, sequence in sequences.all():
            await conn.execute(text(f'ALTER SEQUENCE "{schema}"."{sequence}" RESTART'))
        await insert_default_provider(conn)


async def insert_default_provider(conn) -> None:  # type: ignore[no-untyped-def]
    """Provider `default` is the migration's (0005): an emptied database gets it back, as a
    freshly migrated one has it (its sequence restarted, so it is id 1 again)."""
    await conn.execute(
        text(
            "INSERT INTO providers (name, enabled, created_at, updated_at)"
            " VALUES ('default', true, now(), now())"
        )
    )


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; each test starts from a copy (migrating is the slow part)."""
    path = tmp_path_factory.mktemp("template") / "gateway.db"

    async def migrate() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        await db.migrate()
        await db.dispose()

    asyncio.run(migrate())
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "gateway.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A migrated, empty database of either kind."""
    database = Database(database_url)
    if not database.is_sqlite:
        await _truncate_postgres(database)
    yield database
    await database.dispose()


@pytest.fixture
def sim_config() -> SimConfig:
    return SimConfig(key=SIM_KEY, tick_seconds=1.0, seed=1)


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def simulator(sim_config: SimConfig, clock: FakeClock) -> FastAPI:
    """The upstream stand-in, in-process."""
    return create_simulator_app(sim_config, clock=clock)


@pytest.fixture
async def sim_client(simulator: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Talks to the simulator directly (its /_sim endpoints and its API)."""
    transport = httpx.ASGITransport(app=simulator)
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream.test") as client:
        yield client


def gateway_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "upstream_url": "http://upstream.test/api/v1",
        "upstream_key": SIM_KEY,
        "upstream_timeout_seconds": 2.0,
        "upstream_connect_timeout_seconds": 1.0,
        "rate_limit_per_second": 0,  # tests drive one key hard; tests/test_limits.py turns it on
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return gateway_settings(database_url)


@pytest.fixture
async def gateway_app(
    db: Database, settings: Settings, simulator: FastAPI
) -> AsyncIterator[FastAPI]:
    """The gateway, started (lifespan run), with the in-process simulator as its upstream and
    no background loops: tests sync the catalog themselves."""
    app = create_app(
        settings, upstream_transport=httpx.ASGITransport(app=simulator), background=False
    )
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(gateway_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A downstream customer's HTTP client, talking to the gateway."""
    transport = httpx.ASGITransport(app=gateway_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield client


@pytest.fixture
async def upstream(settings: Settings, simulator: FastAPI) -> AsyncIterator[UpstreamClient]:
    """The gateway's upstream client on its own, talking to the in-process simulator."""
    client = UpstreamClient.from_settings(settings, transport=httpx.ASGITransport(app=simulator))
    try:
        yield client
    finally:
        await client.aclose()


async def fetch_sim_services(sim_client: httpx.AsyncClient) -> list[dict[str, object]]:
    """The simulator's own `services` answer, read as any panel client reads it."""
    response = await sim_client.post("/api/v1", data={"key": SIM_KEY, "action": "services"})
    assert response.status_code == 200
    services = json.loads(response.text)  # SmartPanel says text/html; the body is JSON
    assert isinstance(services, list) and services
    return services


@pytest.fixture
async def sim_services(sim_client: httpx.AsyncClient) -> list[dict[str, object]]:
    return await fetch_sim_services(sim_client)


@pytest.fixture
async def harness(
    gateway_app: FastAPI,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    simulator: FastAPI,
    clock: FakeClock,
):  # type: ignore[no-untyped-def]
    """The gateway with its catalog synced, its simulator and the fake clock, driven together
    (tests/sync_helpers.py)."""
    from sync_helpers import Harness

    harness = Harness(gateway_app.state.gateway, sim_client, client, simulator, clock)
    await harness.sync_catalog()
    return harness
