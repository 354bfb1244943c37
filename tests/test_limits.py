"""Limits: the per-key token bucket (in-process, and in Redis shared by two gateway instances,
failing open when Redis is gone), the body size limit (413) and the ids-per-call limit.

The Redis tests use the real server at SMMGW_TEST_REDIS_URL (default redis://127.0.0.1:6379/15),
each under a key prefix of its own; they fail when it cannot be reached, unless
SMMGW_TEST_SKIP_REDIS=1 says to skip them on purpose. Runs on SQLite and PostgreSQL.
"""

import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest
import redis.asyncio as redis
from conftest import FakeClock, gateway_settings
from fastapi import FastAPI
from helpers import new_customer
from prometheus_client import REGISTRY

from app import contract
from app.db import Database
from app.limits import LocalRateLimiter, build_limiter, retry_after
from app.main import create_app
from app.settings import Settings, load_settings

REDIS_URL = os.environ.get("SMMGW_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
SKIP_REDIS = os.environ.get("SMMGW_TEST_SKIP_REDIS") == "1"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/15"


async def balance(client: httpx.AsyncClient, key: str | None) -> httpx.Response:
    data = {"action": "balance"} | ({"key": key} if key is not None else {})
    return await client.post("/api/v2", data=data)


def assert_limited(response: httpx.Response, retry: str) -> None:
    assert response.status_code == 429
    assert response.headers["retry-after"] == retry
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"error": contract.RATE_LIMITED} == {"error": "Too many requests"}


def assert_served(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "success"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return gateway_settings(database_url, rate_limit_per_second=0.5, rate_limit_burst=3)


@pytest.fixture
async def started(simulator: FastAPI) -> AsyncIterator:  # type: ignore[type-arg]
    """Starts more gateway instances (each its own app, lifespan and limiter)."""
    async with AsyncExitStack() as stack:

        async def start(settings: Settings) -> tuple[FastAPI, httpx.AsyncClient]:
            app = create_app(
                settings, upstream_transport=httpx.ASGITransport(app=simulator), background=False
            )
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
            )
            return app, client

        yield start


# --- in-process buckets -----------------------------------------------------------------------


async def test_a_burst_then_429_with_retry_after_and_the_contract_body(
    client: httpx.AsyncClient, db: Database
) -> None:
    alice = await new_customer(db, "alice")
    bob = await new_customer(db, "bob")
    for _ in range(3):
        assert_served(await balance(client, alice.key))
    assert_limited(await balance(client, alice.key), "2")  # 1 token at 0.5/s: 2 s
    assert_limited(await balance(client, alice.key), "2")
    for _ in range(3):  # another key has a bucket of its own
        assert_served(await balance(client, bob.key))
    assert_limited(await balance(client, bob.key), "2")


async def test_other_actions_and_transports_share_the_keys_bucket(
    client: httpx.AsyncClient, db: Database
) -> None:
    alice = await new_customer(db, "alice")
    assert (await client.get("/api/v2", params={"key": alice.key, "action": "balance"})).json()
    await client.post("/api/v1", json={"key": alice.key, "action": "services"})
    await client.post("/api/v2", data={"key": alice.key, "action": "status", "order": "1"})
    limited = await client.get("/api/v1", params={"key": alice.key, "action": "nonsense"})
    assert_limited(limited, "2")


async def test_requests_without_a_key_are_not_limited_but_refused(
    client: httpx.AsyncClient, db: Database
) -> None:
    for _ in range(10):
        response = await balance(client, None)
        assert (response.status_code, response.json()) == (200, {"error": "Invalid API key"})
    for _ in range(3):  # a wrong key is a key: its own bucket (by its hash)
        assert (await balance(client, "wrong-key")).json() == {"error": "Invalid API key"}
    assert_limited(await balance(client, "wrong-key"), "2")


async def test_the_bucket_refills_over_time(
    gateway_app: FastAPI, client: httpx.AsyncClient, db: Database
) -> None:
    clock = FakeClock()
    gateway_app.state.gateway.limiter = LocalRateLimiter(1.0, 2, clock=clock)
    alice = await new_customer(db, "alice")
    for _ in range(2):
        assert_served(await balance(client, alice.key))
    assert_limited(await balance(client, alice.key), "1")
    clock.advance(0.5)
    assert_limited(await balance(client, alice.key), "1")  # half a token: still 0.5 s to wait
    clock.advance(0.5)
    assert_served(await balance(client, alice.key))
    assert_limited(await balance(client, alice.key), "1")
    clock.advance(60)  # a long pause refills up to the burst, no more
    for _ in range(2):
        assert_served(await balance(client, alice.key))
    assert_limited(await balance(client, alice.key), "1")


def test_local_buckets_are_keyed_by_hash_and_idle_ones_are_dropped() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(2.0, 4, clock=clock, max_keys=3)  # 4 tokens refill in 2 s
    for name in ("a", "b"):
        assert limiter.take_now(name) == 0
    clock.advance(1.5)
    for _ in range(4):
        assert limiter.take_now("busy") == 0
    assert limiter.take_now("busy") == pytest.approx(0.5)
    digest = {n: hashlib.sha256(n.encode()).digest() for n in ("a", "b", "busy", "c")}
    assert set(limiter._buckets) == {digest["a"], digest["b"], digest["busy"]}  # never keys
    clock.advance(1.0)  # "a" and "b" are full again, "busy" is not
    limiter.take_now("c")  # a 4th key: idle buckets are dropped first
    assert set(limiter._buckets) == {digest["busy"], digest["c"]}
    # kept with its deficit: 2 tokens back in 1 s, not a fresh 4
    assert [limiter.take_now("busy") for _ in range(3)] == [0, 0, pytest.approx(0.5)]
    assert limiter.take_now("a") == 0  # a dropped bucket was full: the same as a new one


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert [retry_after(w) for w in (0.001, 0.5, 1.0, 1.01, 2.0, 59.2)] == [1, 1, 1, 2, 2, 60]


@pytest.mark.parametrize(("rate", "burst"), [(0, 10), (5, 0)])
def test_zero_turns_the_limit_off(rate: float, burst: int) -> None:
    settings = load_settings(rate_limit_per_second=rate, rate_limit_burst=burst)
    assert build_limiter(settings) is None


def test_the_limit_is_settable_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMMGW_RATE_LIMIT_PER_SECOND", "2.5")
    monkeypatch.setenv("SMMGW_RATE_LIMIT_BURST", "7")
    monkeypatch.setenv("SMMGW_REDIS_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("SMMGW_REDIS_PREFIX", "gw1:")
    settings = load_settings()
    assert (settings.rate_limit_per_second, settings.rate_limit_burst) == (2.5, 7)
    assert (settings.redis_url, settings.redis_prefix) == ("redis://127.0.0.1:6379/3", "gw1:")
    limiter = build_limiter(load_settings(redis_url=""))
    assert isinstance(limiter, LocalRateLimiter) and limiter.burst == 7


@pytest.mark.parametrize("bad", [{"rate_limit_burst": -1}, {"redis_url": "http://x"}])
def test_bad_limit_settings_are_refused(bad: dict) -> None:  # type: ignore[type-arg]
    from app.settings import SettingsError

    with pytest.raises(SettingsError):
        load_settings(**bad)


# --- the body and the ids -------------------------------------------------------------------


class TestBodyAndIds:
    @pytest.fixture
    def settings(self, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
        monkeypatch.setenv("SMMGW_MAX_BODY_BYTES", "400")  # settable from the environment
        monkeypatch.setenv("SMMGW_MAX_IDS_PER_CALL", "5")
        return gateway_settings(database_url)

    async def test_an_oversized_body_is_413(self, client: httpx.AsyncClient, db: Database):
        alice = await new_customer(db, "alice")
        small = await client.post(
            "/api/v2", data={"key": alice.key, "action": "balance", "pad": "x" * 100}
        )
        assert_served(small)
        big = await client.post(
            "/api/v2", data={"key": alice.key, "action": "balance", "pad": "x" * 400}
        )
        assert big.status_code == 413
        assert big.json() == {"error": contract.BODY_TOO_LARGE}

    @pytest.mark.parametrize(
        ("action", "param"),
        [
            ("status", "orders"),
            ("refill", "orders"),
            ("cancel", "orders"),
            ("refill_status", "refills"),
        ],
    )
    async def test_more_ids_than_the_setting_are_refused(
        self, client: httpx.AsyncClient, db: Database, action: str, param: str
    ) -> None:
        alice = await new_customer(db, "alice")
        what = "refill" if param == "refills" else "order"
        six = {"key": alice.key, "action": action, param: "1,2,3,4,5,6"}
        assert (await client.post("/api/v2", data=six)).json() == {
            "error": f"Too many {what} IDs: at most 5 per request"
        }
        five = {"key": alice.key, "action": action, param: "1,2,3,4,5"}
        reply = (await client.post("/api/v2", data=five)).json()
        assert "error" not in reply and len(reply) == 5


@pytest.mark.parametrize(
    ("action", "param"),
    [
        ("status", "orders"),
        ("refill", "orders"),
        ("cancel", "orders"),
        ("refill_status", "refills"),
    ],
)
async def test_101_ids_are_refused_by_default(
    gateway_app: FastAPI, client: httpx.AsyncClient, db: Database, action: str, param: str
) -> None:
    gateway_app.state.gateway.limiter = None
    alice = await new_customer(db, "alice")
    what = "refill" if param == "refills" else "order"
    ids = [str(i) for i in range(1, 102)]
    over = {"key": alice.key, "action": action, param: ",".join(ids)}
    assert (await client.post("/api/v2", data=over)).json() == {
        "error": f"Too many {what} IDs: at most 100 per request"
    }
    hundred = {"key": alice.key, "action": action, param: ",".join(ids[:100])}
    reply = (await client.post("/api/v2", data=hundred)).json()
    assert "error" not in reply and len(reply) == 100


# --- Redis: one limit for every instance ------------------------------------------------------


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own on the real Redis; its keys are deleted afterwards."""
    if SKIP_REDIS:
        pytest.skip("SMMGW_TEST_SKIP_REDIS=1")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (redis.RedisError, OSError) as exc:
        await client.aclose()
        pytest.fail(
            f"Redis at {REDIS_URL} is unreachable ({exc}); set SMMGW_TEST_SKIP_REDIS=1"
            " to skip the Redis tests deliberately",
            pytrace=False,
        )
    prefix = f"smmgw-test:{uuid.uuid4().hex}:"
    try:
        yield prefix
    finally:
        names = [name async for name in client.scan_iter(match=f"{prefix}*")]
        if names:
            await client.delete(*names)
        await client.aclose()


async def redis_keys(prefix: str) -> dict[str, int]:
    """The bucket keys under a prefix, with their time to live in ms."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return {name: await client.pttl(name) async for name in client.scan_iter(f"{prefix}*")}
    finally:
        await client.aclose()


async def test_two_instances_share_one_limit_in_redis(
    database_url: str,
    db: Database,
    started,
    redis_prefix: str,  # type: ignore[no-untyped-def]
) -> None:
    settings = gateway_settings(
        database_url,
        rate_limit_per_second=0.5,
        rate_limit_burst=4,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
    )
    _, first = await started(settings)
    _, second = await started(settings)
    alice = await new_customer(db, "alice")
    bob = await new_customer(db, "bob")
    for client in (first, second, first, second):
        assert_served(await balance(client, alice.key))
    assert_limited(await balance(client=first, key=alice.key), "2")
    assert_limited(await balance(client=second, key=alice.key), "2")
    assert_served(await balance(second, bob.key))  # per key, in Redis too

    keys = await redis_keys(redis_prefix)
    digest = hashlib.sha256(alice.key.encode()).hexdigest()
    assert f"{redis_prefix}rl:{digest}" in keys and len(keys) == 2
    assert not any(alice.key in name or bob.key in name for name in keys)
    assert all(0 < ttl <= 4 / 0.5 * 1000 + 1000 for ttl in keys.values())  # they expire


async def test_redis_buckets_refill_over_time(
    database_url: str,
    db: Database,
    started,
    redis_prefix: str,  # type: ignore[no-untyped-def]
) -> None:
    import asyncio

    settings = gateway_settings(
        database_url,
        rate_limit_per_second=2,
        rate_limit_burst=2,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
    )
    _, first = await started(settings)
    _, second = await started(settings)
    alice = await new_customer(db, "alice")
    assert_served(await balance(first, alice.key))
    assert_served(await balance(second, alice.key))
    assert_limited(await balance(first, alice.key), "1")  # 0.5 s to wait: rounded up to 1 s
    await asyncio.sleep(1.05)  # 2/s: two tokens back (and no more: the burst is 2)
    assert_served(await balance(second, alice.key))
    assert_served(await balance(first, alice.key))
    assert_limited(await balance(second, alice.key), "1")


async def test_an_unreachable_redis_fails_open_loudly(
    database_url: str,
    db: Database,
    started,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    settings = gateway_settings(
        database_url, rate_limit_per_second=0.1, rate_limit_burst=1, redis_url=UNREACHABLE_REDIS
    )
    _, client = await started(settings)
    alice = await new_customer(db, "alice")
    before = REGISTRY.get_sample_value("smmgw_rate_limit_fail_open_total") or 0
    caplog.set_level(logging.INFO)
    for _ in range(5):  # a burst of 1, yet nobody is refused
        assert_served(await balance(client, alice.key))
    after = REGISTRY.get_sample_value("smmgw_rate_limit_fail_open_total")
    assert after - before == 5
    errors = [
        r for r in caplog.records if r.name == "smm_gateway.limits" and r.levelno == logging.ERROR
    ]
    assert len(errors) == 1  # once per outage, not once per request
    assert "WITHOUT a rate limit" in errors[0].getMessage()
    assert alice.key not in caplog.text
