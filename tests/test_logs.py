"""Logs: one structured line per request, request ids in and out, and no secret in any line.

The gateway's own handler (app.logs.configure_logging, as `serve` and `create_app` set it up)
writes into a buffer here; pytest's caplog holds the raw records as well. Runs on SQLite and
PostgreSQL.
"""

import io
import json
import logging
import secrets
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import SIM_KEY, gateway_settings
from fastapi import FastAPI
from helpers import add, api, new_customer, services_by_id, set_faults

from app.catalog import sync_catalog
from app.db import Database
from app.logs import AccessLogRedactor, configure_logging, redact, set_secrets
from app.main import sending_grace_seconds
from app.panel.actions import ACTIONS
from app.settings import Settings, SettingsError, load_settings
from app.sync import sync_pass
from app.upstream import UpstreamClient

ADMIN_TOKEN = "admin-" + secrets.token_hex(16)
FIELDS = {
    "request_id",
    "method",
    "path",
    "action",
    "customer_id",
    "outcome",
    "status",
    "latency_ms",
}


@pytest.fixture
def settings(database_url: str) -> Settings:
    return gateway_settings(database_url, admin_token=ADMIN_TOKEN)


@pytest.fixture
def output(gateway_app: FastAPI, settings: Settings) -> Iterator[io.StringIO]:
    """Everything the gateway's log handler writes from now on (JSON lines)."""
    buffer = io.StringIO()
    configure_logging(settings, stream=buffer)
    yield buffer
    configure_logging(settings)


def lines(output: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.getvalue().splitlines()]


def access_lines(output: io.StringIO) -> list[dict[str, Any]]:
    return [line for line in lines(output) if line["logger"] == "smm_gateway.access"]


async def test_one_line_per_request_with_its_fields(
    client: httpx.AsyncClient, db: Database, output: io.StringIO
) -> None:
    alice = await new_customer(db, "alice")
    responses = [
        await client.post("/api/v2", data={"key": alice.key, "action": "balance"}),
        await client.get("/api/v1", params={"key": alice.key, "action": "status", "order": "7"}),
        await client.post("/api/v2", json={"key": "nope", "action": "services"}),
        await client.post("/api/v2", data={"key": alice.key, "action": "bogus"}),
        await client.get("/healthz"),
    ]
    logged = access_lines(output)
    assert len(logged) == len(responses)
    for line, response in zip(logged, responses, strict=True):
        assert FIELDS <= set(line)
        assert line["request_id"] == response.headers["x-request-id"]
        assert len(line["request_id"]) == 32 and int(line["request_id"], 16) >= 0
        assert line["status"] == response.status_code
        assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
        assert line["level"] == "INFO"
    balance, status, services, bogus, health = logged
    assert (balance["method"], balance["path"], balance["action"]) == ("POST", "/api/v2", "balance")
    assert (balance["customer_id"], balance["outcome"]) == (alice.id, "ok")
    assert (status["method"], status["path"], status["action"]) == ("GET", "/api/v1", "status")
    assert (status["outcome"], status["error"]) == ("incorrect_order", "Incorrect order ID")
    assert (services["customer_id"], services["outcome"]) == (None, "invalid_key")
    assert (bogus["action"], bogus["outcome"], bogus["customer_id"]) == (
        "unknown",
        "incorrect_request",
        alice.id,
    )
    assert (health["path"], health["action"], health["outcome"]) == ("/healthz", None, "ok")
    assert len({line["request_id"] for line in logged}) == len(logged)


async def test_the_request_id_comes_from_the_client_when_sane(
    client: httpx.AsyncClient, db: Database, output: io.StringIO
) -> None:
    alice = await new_customer(db, "alice")
    given = await client.post(
        "/api/v2",
        data={"key": alice.key, "action": "balance"},
        headers={"X-Request-ID": "order-bot:42.a_b-c"},
    )
    assert given.headers["x-request-id"] == "order-bot:42.a_b-c"
    for insane in ("two words", "x" * 129, "new\\nline", "<script>"):
        response = await client.post(
            "/api/v2",
            data={"key": alice.key, "action": "balance"},
            headers={"X-Request-ID": insane},
        )
        assert response.headers["x-request-id"] != insane
        assert len(response.headers["x-request-id"]) == 32
    ids = [line["request_id"] for line in access_lines(output)]
    assert ids[0] == "order-bot:42.a_b-c" and len(ids) == 5


async def test_upstream_failures_are_logged_by_class_within_their_request(
    gateway_app: FastAPI,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    db: Database,
    output: io.StringIO,
) -> None:
    gw = gateway_app.state.gateway
    assert (await sync_catalog(gw.db, gw.upstream)).ok
    alice = await new_customer(db, "alice", funds=10**10)
    service = next(
        s for s in (await services_by_id(client, alice.key)).values() if s["type"] == "Default"
    )
    await set_faults(sim_client, {"error5xx": 1.0})
    reply = await client.post(
        "/api/v2",
        data={
            "key": alice.key,
            "action": "add",
            "service": service["service"],
            "link": "https://instagram.com/p/x",
            "quantity": service["min"],
        },
    )
    await set_faults(sim_client, {})
    assert "order" in reply.json()
    request_id = reply.headers["x-request-id"]
    upstream = [
        line
        for line in lines(output)
        if line["logger"] == "smm_gateway.upstream" and line["msg"].startswith("upstream add")
    ]
    assert [line["msg"].split(" in ")[0] for line in upstream] == [
        "upstream add: ambiguous (http_5xx)"
    ]
    assert upstream[0]["level"] == "WARNING" and upstream[0]["request_id"] == request_id
    placed = [line for line in lines(output) if line["logger"] == "smm_gateway.orders"]
    assert placed and all(line["request_id"] == request_id for line in placed)


async def test_no_secret_in_any_log_line(
    gateway_app: FastAPI,
    client: httpx.AsyncClient,
    sim_client: httpx.AsyncClient,
    db: Database,
    output: io.StringIO,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scenario with errors and upstream failures of every kind: neither the customers' keys,
    nor the upstream key, nor the admin token appear in any line."""
    caplog.set_level(logging.DEBUG)
    gw = gateway_app.state.gateway
    assert (await sync_catalog(gw.db, gw.upstream)).ok
    alice = await new_customer(db, "alice", funds=10**10)
    service = next(
        s for s in (await services_by_id(client, alice.key)).values() if s["type"] == "Default"
    )
    order = {"service": service["service"], "quantity": service["min"]}
    link = "https://instagram.com/p/secrets"

    await client.get("/api/v2", params={"key": alice.key, "action": "balance"})
    await client.get(f"/api/v2?key={alice.key}&action=nonsense")
    placed = await add(client, alice.key, order | {"link": f"{link}/ok?sim:complete"})
    await add(client, alice.key, order | {"link": f"{link}/no?sim:reject"})
    grace = sending_grace_seconds(gw.settings)
    for fault in ("error5xx", "html", "garbage", "drop", "reject"):
        await set_faults(sim_client, {fault: 1.0})
        await add(client, alice.key, order | {"link": f"{link}/{fault}"})
        await sync_pass(gw.db, gw.upstream, sending_grace_seconds=grace)
        await set_faults(sim_client, {})
    await api(client, alice.key, "status", orders=f"{placed['order']},99999")
    await client.post("/api/v2", json={"key": ADMIN_TOKEN, "action": "balance"})
    # the admin API: a good token, a wrong one, and a key issued through it
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert (await client.get("/admin/summary", headers=bearer)).status_code == 200
    assert (
        await client.get("/admin/summary", headers={"Authorization": f"Bearer {alice.key}"})
    ).status_code == 401
    issued = await client.post(f"/admin/customers/{alice.id}/keys", headers=bearer)
    assert issued.status_code == 201
    new_key = issued.json()["key"]
    await client.get("/api/v2", params={"key": new_key, "action": "balance"})
    assert (await client.get("/metrics")).status_code == 200
    # a connect failure to the upstream, whose error names the URL it tried
    simulated = gw.upstream
    gw.upstream = UpstreamClient(
        f"http://127.0.0.1:1/api/v1?key={SIM_KEY}", SIM_KEY, connect_timeout=1, read_timeout=1
    )
    try:
        await add(client, alice.key, order | {"link": f"{link}/unreachable"})
    finally:
        await gw.upstream.aclose()
        gw.upstream = simulated

    keys = (alice.key, new_key, SIM_KEY, ADMIN_TOKEN)
    raw = caplog.text  # the records themselves, before any formatting of ours

    # A bug whose message carries every secret: only our handler's redaction stands between
    # the message and the log (the raw record has it, by construction).
    async def boom(ctx: Any) -> Any:
        raise RuntimeError(f"boom {ctx.params} {SIM_KEY} {ADMIN_TOKEN}")

    monkeypatch.setitem(ACTIONS, "balance", boom)
    crashed = await client.post("/api/v2", data={"key": alice.key, "action": "balance"})
    assert crashed.status_code == 500 and crashed.json() == {"error": "Internal error"}

    written = output.getvalue()
    assert "Traceback" in written and "boom" in written
    assert '"outcome": "500"' in written
    upstream_lines = [
        line["msg"] for line in lines(output) if line["logger"] == "smm_gateway.upstream"
    ]
    for kind in (
        "ambiguous (http_5xx)",
        "ambiguous (unreadable)",
        "ambiguous (protocol)",
        "refused (error_reply)",
        "refused (connect)",
    ):
        assert any(kind in msg for msg in upstream_lines), kind
    for secret in keys:
        forms = {secret, urllib.parse.quote(secret), urllib.parse.quote_plus(secret)}
        for form in forms:
            assert form not in written, form
            assert form not in raw, form


def test_uvicorns_access_line_has_its_key_masked(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_logging(load_settings())
    uvicorn_access = logging.getLogger("uvicorn.access")
    # uvicorn's own logging config (another test may have run a server) stops propagation.
    monkeypatch.setattr(uvicorn_access, "propagate", True)
    monkeypatch.setattr(uvicorn_access, "disabled", False)
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    key = secrets.token_hex(32)
    uvicorn_access.info(
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5000",
        "GET",
        f"/api/v2?action=balance&key={key}&order=1",
        "1.1",
        200,
    )
    assert key not in caplog.text
    assert "/api/v2?action=balance&key=***&order=1" in caplog.text
    assert any(
        isinstance(f, AccessLogRedactor) for f in logging.getLogger("uvicorn.access").filters
    )


def test_redaction_patterns() -> None:
    set_secrets("upstream-secret", "x")  # too short to mask safely: ignored
    assert redact("a upstream-secret b") == "a *** b"
    assert redact("upstream%2Dsecret") == "upstream%2Dsecret"  # not a form it travels in
    assert redact("GET /api/v2?key=abc123&action=balance") == "GET /api/v2?key=***&action=balance"
    assert redact("api_key=abc&token=t1&idempotency_key=keep") == (
        "api_key=***&token=***&idempotency_key=keep"
    )
    assert redact('{"key": "abc", "action": "add"}') == '{"key": "***", "action": "add"}'
    assert redact("{'key': 'abc'}") == "{'key': '***'}"
    assert redact("Authorization: Bearer abc.DEF-123") == "Authorization: Bearer ***"
    assert redact("k " + "ab" * 32 + " done") == "k *** done"
    assert redact("redis://:hunter2@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact("postgresql://gw:pw@db/x") == "postgresql://gw:***@db/x"
    assert redact("x" * 10) == "x" * 10
    set_secrets()


async def test_text_format_and_level(
    client: httpx.AsyncClient, db: Database, database_url: str
) -> None:
    alice = await new_customer(db, "alice")
    buffer = io.StringIO()
    configure_logging(
        gateway_settings(database_url, log_format="text", log_level="info"), stream=buffer
    )
    try:
        response = await client.post("/api/v2", data={"key": alice.key, "action": "balance"})
        [line] = buffer.getvalue().splitlines()
        assert " INFO smm_gateway.access: POST /api/v2 200 " in line
        for part in (
            f"request_id={response.headers['x-request-id']}",
            "action=balance",
            f"customer_id={alice.id}",
            "outcome=ok",
            "status=200",
            "latency_ms=",
        ):
            assert part in line
        quiet = io.StringIO()
        configure_logging(gateway_settings(database_url, log_level="WARNING"), stream=quiet)
        await client.post("/api/v2", data={"key": alice.key, "action": "balance"})
        assert quiet.getvalue() == ""  # request lines are INFO
    finally:
        configure_logging(load_settings())


def test_log_settings() -> None:
    assert load_settings(log_level="debug").log_level == "DEBUG"
    assert load_settings().log_format == "json"
    for bad in ({"log_level": "loud"}, {"log_format": "xml"}):
        with pytest.raises(SettingsError):
            load_settings(**bad)


async def test_text_lines_cannot_be_forged(
    client: httpx.AsyncClient, db: Database, database_url: str
) -> None:
    """A path with %0D%0A (or a name with a newline) stays inside its own line, escaped; the
    access line says which client asked."""
    buffer = io.StringIO()
    configure_logging(gateway_settings(database_url, log_format="text"), stream=buffer)
    forged = "/x%0D%0A2026-01-01T00:00:00.000Z INFO smm_gateway.access: POST /admin 200%1B[2K"
    try:
        response = await client.get(forged)
        assert response.status_code == 404
        [line] = buffer.getvalue().splitlines()
        assert "\r" not in buffer.getvalue() and "\x1b" not in line
        assert "/x\\r\\n2026-01-01T00:00:00.000Z INFO" in line and "\\x1b[2K" in line
        assert "client=127.0.0.1" in line
    finally:
        configure_logging(load_settings())


async def test_the_access_line_names_the_client(
    client: httpx.AsyncClient, output: io.StringIO
) -> None:
    await client.get("/healthz")
    [line] = access_lines(output)
    assert line["client"] == "127.0.0.1"


def test_a_traceback_in_text_cannot_forge_a_line(database_url: str) -> None:
    buffer = io.StringIO()
    configure_logging(gateway_settings(database_url, log_format="text"), stream=buffer)
    try:
        try:
            raise ValueError("bad\n2026-01-01T00:00:00.000Z INFO smm_gateway.access: forged\r")
        except ValueError:
            logging.getLogger("smm_gateway.test").exception("it failed")
        first, *rest = buffer.getvalue().splitlines()
        assert first.endswith("smm_gateway.test: it failed") and rest
        assert all(line.startswith("  ") for line in rest)
        assert "\r" not in buffer.getvalue()
    finally:
        configure_logging(load_settings())


class TestSampledAccessLines:
    """SMMGW_ACCESS_LOG_SAMPLE=3: one line in three of the requests that went well (the first
    included); every request that did not go well keeps its line, with the same fields."""

    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return gateway_settings(database_url, access_log_sample=3)

    async def test_one_in_n_good_lines_and_every_other_line(
        self, client: httpx.AsyncClient, db: Database, output: io.StringIO
    ) -> None:
        alice = await new_customer(db, "alice")
        good = [
            (await client.post("/api/v2", data={"key": alice.key, "action": "balance"})).headers[
                "x-request-id"
            ]
            for _ in range(7)
        ]
        bad = [
            (await client.post("/api/v2", data={"key": "nope", "action": "balance"})).headers[
                "x-request-id"
            ]
            for _ in range(2)
        ]
        logged = access_lines(output)
        assert [line["request_id"] for line in logged if line["outcome"] == "ok"] == [
            good[0],
            good[3],
            good[6],
        ]
        assert [line["request_id"] for line in logged if line["outcome"] != "ok"] == bad
        assert all(FIELDS <= set(line) and alice.key not in json.dumps(line) for line in logged)


def test_the_access_log_sample_is_a_positive_whole_number() -> None:
    for wrong in ("0", "-1", "x"):
        with pytest.raises(SettingsError, match="SMMGW_ACCESS_LOG_SAMPLE"):
            load_settings(access_log_sample=wrong)
