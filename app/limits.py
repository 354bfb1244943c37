"""The per-key rate limit: a token bucket per API key, in this process or in Redis.

Each key may make `SMMGW_RATE_LIMIT_BURST` requests at once, and gets
`SMMGW_RATE_LIMIT_PER_SECOND` more every second (0 in either turns the limit off). A request
over it is answered `429` with `Retry-After` (whole seconds, at least 1) and the contract's
`{"error": "Too many requests"}`. Buckets are named by the SHA-256 of the key, never the key.
A request without a key is not limited here: it gets `Invalid API key` anyway.

- In-process (default): a dict of buckets; each worker process has its own, so with
  `--workers N` and no Redis a key can make up to N times the limit.
- Redis (`SMMGW_REDIS_URL`): one Lua script per check (refill and take in one atomic round
  trip, on Redis's own clock), keys under `SMMGW_REDIS_PREFIX` expiring once the bucket would
  be full again: every process and instance shares one limit.
  If Redis cannot be asked, the request is let through (fail open): a dead Redis must not turn
  every customer away. It is logged at ERROR (once per outage, then when Redis is back),
  counted in `smmgw_rate_limit_fail_open_total`, and Redis is not asked again for a second
  after a failure, so an outage costs requests nothing.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from fastapi.responses import JSONResponse

from app import metrics
from app.contract import RATE_LIMITED

if TYPE_CHECKING:
    from app.settings import Settings

log = logging.getLogger("smm_gateway.limits")

REDIS_TIMEOUT_SECONDS = 0.25  # a limiter slower than this costs more than it saves
REDIS_RETRY_AFTER_FAILURE_SECONDS = 1.0
LOCAL_MAX_KEYS = 50_000  # idle (refilled) buckets are dropped past this many


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def retry_after(wait_seconds: float) -> int:
    return max(1, math.ceil(wait_seconds))


def too_many_requests(wait_seconds: float) -> JSONResponse:
    return JSONResponse(
        {"error": RATE_LIMITED},
        status_code=429,
        headers={"Retry-After": str(retry_after(wait_seconds))},
    )


class RateLimiter(Protocol):
    async def take(self, key: str) -> float:
        """Spend one token of this key's bucket: 0 when allowed, else seconds until one is."""
        ...

    async def aclose(self) -> None: ...


class LocalRateLimiter:
    """Buckets in this process: [tokens, last refill time] by key digest."""

    def __init__(
        self,
        per_second: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = LOCAL_MAX_KEYS,
    ) -> None:
        self.per_second = per_second
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[bytes, list[float]] = {}
        self._prune_at = max_keys

    def take_now(self, key: str) -> float:
        now = self._clock()
        digest = key_digest(key)
        bucket = self._buckets.get(digest)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune(now)
            self._buckets[digest] = [self.burst - 1, now]
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.per_second)
        bucket[1] = now
        if tokens >= 1:
            bucket[0] = tokens - 1
            return 0.0
        bucket[0] = tokens
        return (1 - tokens) / self.per_second

    async def take(self, key: str) -> float:
        return self.take_now(key)

    def _prune(self, now: float) -> None:
        """A bucket idle long enough to be full again is the same as no bucket."""
        refill = self.burst / self.per_second
        self._buckets = {k: b for k, b in self._buckets.items() if now - b[1] < refill}
        self._prune_at = max(self._prune_at, 2 * len(self._buckets))

    async def aclose(self) -> None:
        self._buckets.clear()


# KEYS[1] the bucket; ARGV: per_second, burst. Returns the wait in seconds ("0": allowed), as
# a string (Lua numbers become integers in a reply).
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(saved[1])
local ts = tonumber(saved[2])
if tokens == nil or ts == nil then
  tokens = burst
elseif now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
else
  now = ts
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisRateLimiter:
    """Buckets in Redis, shared by every process and instance using the same Redis and prefix."""

    def __init__(self, url: str, prefix: str, per_second: float, burst: int) -> None:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.per_second = per_second
        self.burst = burst
        self._prefix = f"{prefix}rl:"
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),  # a retry would double the time a dead Redis costs
            health_check_interval=30,
        )
        self._script = self._redis.register_script(TOKEN_BUCKET_LUA)
        self._skip_until = 0.0
        self._failing = False
        self._errors = (redis.RedisError, OSError, TimeoutError)

    async def take(self, key: str) -> float:
        if self._skip_until and time.monotonic() < self._skip_until:
            metrics.count_fail_open()
            return 0.0
        name = self._prefix + key_digest(key).hex()
        try:
            wait = await self._script(keys=[name], args=[repr(self.per_second), self.burst])
        except self._errors as exc:
            self._skip_until = time.monotonic() + REDIS_RETRY_AFTER_FAILURE_SECONDS
            metrics.count_fail_open()
            if not self._failing:
                self._failing = True
                log.error(
                    "rate limit: Redis unreachable (%s); requests are let through WITHOUT a "
                    "rate limit until it answers again",
                    type(exc).__name__,
                )
            return 0.0
        if self._failing:
            self._failing = False
            self._skip_until = 0.0
            log.warning("rate limit: Redis answers again; the shared limit applies")
        return float(wait)

    async def aclose(self) -> None:
        await self._redis.aclose()


def build_limiter(settings: Settings) -> RateLimiter | None:
    """The limiter the settings ask for; None when the limit is off."""
    if settings.rate_limit_per_second <= 0 or settings.rate_limit_burst <= 0:
        return None
    if settings.redis_url:
        return RedisRateLimiter(
            settings.redis_url,
            settings.redis_prefix,
            settings.rate_limit_per_second,
            settings.rate_limit_burst,
        )
    return LocalRateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
