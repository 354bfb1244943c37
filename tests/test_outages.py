"""PostgreSQL going away while the gateway serves (issue 11, "Outages and start-up").

A real network fault: the gateway reaches PostgreSQL through a TCP proxy in this test, which
is closed (listener gone, live connections cut) and reopened on the same port. While it is
closed, every action answers the contract's `Service temporarily unavailable, try again later`
with HTTP 200, one log line says the outage began, and one that it ended; no traceback. Then
the gateway serves again by itself.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import SIM_KEY, gateway_settings
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from app import ledger
from app.catalog import sync_catalog
from app.customers import create_customer
from app.db import Database
from app.main import create_app, refresh_catalog_forever
from app.settings import Settings
from app.simulator import SimConfig, create_simulator_app
from app.sync import sync_forever

UNAVAILABLE = {"error": "Service temporarily unavailable, try again later"}
ADMIN_TOKEN = "outage-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ACTIONS = ("balance", "services", "status", "add", "refill", "refill_status", "cancel")


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `close()` cuts everything, `open()` resumes."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def proxied_url(postgres_url: str) -> AsyncIterator[tuple[str, TcpProxy]]:
    url = make_url(postgres_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.open()
    yield url.set(host="127.0.0.1", port=proxy.port).render_as_string(False), proxy
    await proxy.close()


async def test_postgresql_down_answers_try_again_later_and_comes_back(
    proxied_url: tuple[str, TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    url, proxy = proxied_url
    db = Database(url)
    customer_id, key = await create_customer(db, "outage", "standard", None)
    await ledger.topup(db, customer_id, 10_000_000)
    settings = gateway_settings(url, services_ttl_seconds=0.05, admin_token=ADMIN_TOKEN)
    simulator = create_simulator_app(SimConfig(key=SIM_KEY, tick_seconds=1.0, seed=1))
    app = create_app(
        settings, upstream_transport=httpx.ASGITransport(app=simulator), background=False
    )
    params = {
        "order": "1",
        "orders": "1,2",
        "refill": "1",
        "service": "1",
        "link": "x",
        "quantity": "100",
    }
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:

            async def call(action: str) -> httpx.Response:
                return await client.post("/api/v2", data={"key": key, "action": action} | params)

            before = await call("balance")
            assert before.json()["status"] == "success"

            await proxy.close()
            caplog.clear()
            caplog.set_level(logging.INFO)
            for _ in range(3):
                for action in ACTIONS:
                    response = await call(action)
                    assert response.status_code == 200, (action, response.text)
                    assert response.json() == UNAVAILABLE, action
            assert (await client.get("/healthz")).status_code == 503
            admin = await client.get("/admin/summary", headers=ADMIN)
            assert admin.status_code == 503, admin.text
            # The catalog refresh and the order sync loops meet the outage too, and say nothing
            # more about it, however many passes they make.
            gateway = app.state.gateway
            loops = [
                asyncio.create_task(refresh_catalog_forever(gateway)),
                asyncio.create_task(sync_forever(gateway.db, gateway.upstream, 0.05, 1.0)),
            ]
            await asyncio.sleep(0.3)
            for loop in loops:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            db_lines = [r for r in caplog.records if r.name == "smm_gateway.db"]
            assert [r.levelname for r in db_lines] == ["ERROR"]
            assert not any(r.exc_info for r in caplog.records)
            # Only the access lines speak of each request (the 503 of /healthz is one).
            others = {r.name for r in caplog.records if r.levelno >= logging.WARNING}
            assert others <= {"smm_gateway.db", "smm_gateway.access"}, others

            await proxy.open()
            caplog.clear()
            for _ in range(20):  # pooled connections that died are dropped as they are met
                if (await call("balance")).json().get("status") == "success":
                    break
            assert (await call("balance")).json()["status"] == "success"
            assert (await call("services")).status_code == 200
            db_lines = [r.message for r in caplog.records if r.name == "smm_gateway.db"]
            assert len(db_lines) == 1 and "reachable again" in db_lines[0]
    await db.dispose()  # this test's own pooled connection died with the proxy
    assert await ledger.verify(db) == []
    await db.dispose()


# --- the upstream refuses our key ------------------------------------------------------------


class TestRefusedKey:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return gateway_settings(database_url, upstream_key="not-the-upstream-key")

    async def test_said_by_the_sync_healthz_and_metrics(
        self, gateway_app: FastAPI, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        gateway = gateway_app.state.gateway
        caplog.set_level(logging.WARNING, logger="smm_gateway.catalog")
        result = await sync_catalog(gateway.db, gateway.upstream)
        assert not result.ok and result.error.startswith(
            "the upstream refuses our key (check SMMGW_UPSTREAM_KEY)"
        )
        lines = [r.getMessage() for r in caplog.records if r.name == "smm_gateway.catalog"]
        assert len(lines) == 1 and "refuses our key" in lines[0]
        # A fresh database has no catalog: it must not claim to serve "the last good" one.
        assert "last good" not in lines[0] and "no catalog yet" in lines[0]
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "upstream": "key_refused"}
        scraped = (await client.get("/metrics")).text
        assert "smmgw_upstream_key_refused 1.0" in scraped
        assert "not-the-upstream-key" not in scraped + lines[0]
