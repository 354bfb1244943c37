"""The upstream panel client: the ONE place that calls the upstream over HTTP.

Every call ends in exactly one of three outcomes, because the ledger depends on the difference:

- `Answer`: the upstream answered with a usable JSON value;
- `Refused`: it definitely did not act (the request never left, or it said no) -> safe to refund;
- `Ambiguous`: it may have acted (timeout or reset after sending, 5xx, unreadable body)
  -> funds stay held; never retried here (the upstream has no idempotency).

The typed helpers (`services`, `add`, `status_many`, ...) read either dialect of the contract
(standard / SmartPanel) and the quirks CONTRACT.md lists into the same internal values.
Nothing here raises on upstream behaviour; only programming errors raise.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any, TypeAlias

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from app import contract, metrics
from app.family import Family, UpstreamRules, detect_family, rules_for
from app.money import MAX_AMOUNT, MAX_RATE, parse_upstream_micros

if TYPE_CHECKING:
    from app.settings import Settings

log = logging.getLogger("smm_gateway.upstream")

# The User-Agent of the PHP sample client every panel publishes: some panels sit behind
# bot filters that challenge library User-Agents, never their own documented example.
USER_AGENT = "Mozilla/4.0 (compatible; MSIE 5.01; Windows NT 5.0)"
MAX_BODY_BYTES = 32 * 1024 * 1024  # a catalog is a few MB; anything bigger is not an answer
MAX_IDS_PER_CALL = 100
# Shorter than the usual 5 s server keep-alive (Apache's default) so that we rarely send on a
# connection the server is closing: that race turns a harmless call into an Ambiguous one.
KEEPALIVE_SECONDS = 4.0
_MESSAGE_LIMIT = 300

# Bounds on every number the upstream tells us (one place: `_bounded`). Beyond them a figure is
# a bug or an attack, not news: it would overflow a BIGINT column or our money arithmetic.
MAX_SERVICE_ID = 2**31 - 1  # services.id is a 32-bit INTEGER
MAX_UPSTREAM_ID = 2**63 - 1  # upstream order / refill ids are BIGINT
# Units (min, max, remains, start_count, runs, posts): a charge of this many units at the
# highest usable rate still fits within MAX_AMOUNT.
MAX_COUNT = MAX_AMOUNT * 1000 // MAX_RATE

# Customer-facing messages for refusals CONTRACT.md's table does not standardise.
DRIPFEED_NOT_SUPPORTED = contract.DRIPFEED_NOT_SUPPORTED
INCORRECT_INTERVAL = "Incorrect interval"
ACTIVE_ORDER_FOR_LINK = (
    "You have active order with this link. Please wait until order being completed."
)


# --- outcomes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """The upstream answered with a usable JSON value (dict or list); not an error reply."""

    data: Any


@dataclass(frozen=True)
class Refused:
    """Definite failure: the request never left, or the upstream refused it."""

    message: str  # the upstream's own words (key scrubbed), for logs/operator, never customers
    reason: str  # "error_reply" | "http_4xx" | "connect" | "config" | "tag_like"


@dataclass(frozen=True)
class Ambiguous:
    """The upstream may have acted: the caller must not assume either way."""

    reason: str  # "read_timeout" | "write_timeout" | "deadline" | "http_5xx" | "http_3xx" |
    #              "unreadable" | "empty" | "too_large" | "protocol" | "read_error" |
    #              "write_error" | "reset" | "transport" | "no_order_id" | "unknown_status" |
    #              "unexpected"


Outcome: TypeAlias = Answer | Refused | Ambiguous


# --- normalised values ----------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamService:
    """One catalog entry, normalised from either dialect."""

    service_id: int
    name: str
    category: str
    type: str  # canonical (contract.SERVICE_TYPES)
    rate_micros: int  # per 1000 units (Package-like types: per order)
    min: int
    max: int
    dripfeed: bool
    refill: bool  # absent (SmartPanel) -> False: we do not promise what we cannot ask for
    cancel: bool
    desc: str | None


@dataclass(frozen=True)
class UpstreamOrderStatus:
    status: str | None = None  # canonical; None when unknown (the caller logs raw_status)
    raw_status: str | None = None
    charge_micros: int | None = None  # the upstream's own charge (drops after cancel/partial)
    start_count: int | None = None  # SmartPanel: null until known
    remains: int | None = None  # never negative: over-delivery is reported as remains=0 ...
    currency: str | None = None
    runs: int | None = None  # drip-feed parents
    child_orders: list[int] | None = None  # drip-feed parents / subscriptions ("orders")
    expiry: str | None = None  # subscriptions
    posts: int | None = None
    overdelivered: int = 0  # ... and this many units beyond the order ("+15" / "-15")
    link: str | None = None  # some panels tell an order's link and service in `status`
    service: int | None = None


# --- the client -----------------------------------------------------------------------------


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # The same CA bundle (certifi) as plain httpx; loading it costs ~50 ms, so once.
    return httpx.create_ssl_context()


def default_transport(max_connections: int = 20) -> httpx.AsyncBaseTransport:
    """httpx over aiohttp: measured ~4-6x the default transport's throughput (bench/README.md)."""

    def session() -> aiohttp.ClientSession:
        # Built lazily by the transport, inside the running loop, on first use.
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            keepalive_timeout=KEEPALIVE_SECONDS,
            ssl=_ssl_context(),
        )
        # No cookies: a PHP session cookie makes the panel serialise our concurrent calls.
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    return AiohttpTransport(client=session)


class UpstreamClient:
    """One long-lived client (one connection pool) per process and event loop."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        double_decode: bool | None = True,
        family: Family | None = None,
        max_link_length: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 20,
        provider: str = "default",
    ) -> None:
        self.provider = provider  # its name, for logs and metrics labels
        self._url = url
        self._key = key
        self._double_decode_setting = double_decode  # None: as the family does
        self._family_setting = family  # None: read from the catalog's shape
        self._max_link_length = max_link_length  # None: the family's own limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # The family the last `services` reply was shaped like; None until one was read.
        self.family_heard: Family | None = None
        self._http = httpx.AsyncClient(
            transport=default_transport(max_connections) if transport is None else transport,
            # Waiting for a pool slot is pre-send too, so it shares the connect budget.
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout),
            follow_redirects=False,  # a redirected POST becomes a GET somewhere else
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # keep none
            headers={"User-Agent": USER_AGENT},
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> UpstreamClient:
        return cls(
            settings.upstream_url,
            settings.upstream_key,
            connect_timeout=settings.upstream_connect_timeout_seconds,
            read_timeout=settings.upstream_timeout_seconds,
            double_decode=settings.upstream_double_decode,
            family=None if settings.upstream_family == "auto" else settings.upstream_family,
            max_link_length=settings.upstream_max_link_length,
            transport=transport,
        )

    @property
    def family(self) -> Family | None:
        """The upstream's family: as configured, else as its catalog was shaped; None until
        known (callers then assume SmartPanel, the stricter of the two)."""
        return self._family_setting or self.family_heard

    @property
    def double_decode(self) -> bool:
        if self._double_decode_setting is not None:
            return self._double_decode_setting
        return self.family != "standard"

    @property
    def rules(self) -> UpstreamRules:
        """What an order must look like for this upstream to take it as meant."""
        return rules_for(
            self.family or "smartpanel",
            double_decode=self.double_decode,
            max_link_length=self._max_link_length,
        )

    @property
    def max_call_seconds(self) -> float:
        """Hard bound on one call: an order still `sending` after this (plus a margin) is not
        waiting on a live call any more. On the default transport the pool wait and the
        connect share the connect budget, so a reply always gets its full read timeout."""
        return self.connect_timeout + self.read_timeout

    def __repr__(self) -> str:  # never the key
        return f"UpstreamClient(provider={self.provider!r}, url={self._url!r})"

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the one place that does HTTP --

    async def call(self, action: str, /, **params: str | int) -> Outcome:
        if "key" in params or "action" in params:
            raise ValueError("key and action are set by the client")
        form = {"key": self._key, "action": action} | {k: str(v) for k, v in params.items()}
        if self.double_decode:
            form = {name: encode_for_double_decode(value) for name, value in form.items()}
        started = time.perf_counter()
        outcome = await self._post(form)
        elapsed_ms = (time.perf_counter() - started) * 1000
        match outcome:
            case Answer():
                log.info("upstream %s: answer in %.0f ms", action, elapsed_ms)
            case Refused(message=message, reason=reason):
                log.warning("upstream %s: refused (%s) in %.0f ms: %s",
                            action, reason, elapsed_ms, message)
            case Ambiguous(reason=reason):
                log.warning("upstream %s: ambiguous (%s) in %.0f ms", action, reason, elapsed_ms)
        metrics.observe_upstream(action, outcome, elapsed_ms / 1000, self.provider)
        return outcome

    async def _post(self, form: dict[str, str]) -> Outcome:
        try:
            # Read timeouts are per socket read; the deadline also bounds a trickling reply.
            async with asyncio.timeout(self.max_call_seconds):
                async with self._http.stream("POST", self._url, data=form) as response:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_BODY_BYTES:
                            return Ambiguous("too_large")
                    return self._interpret(response, bytes(body))
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            return self._scrubbed(classify_transport_error(exc))
        except TimeoutError:
            return Ambiguous("deadline")
        except httpx.HTTPError as exc:  # a reply arrived but could not be decoded (gzip ...)
            log.warning("upstream reply undecodable: %s", type(exc).__name__)
            return Ambiguous("unreadable")
        except Exception as exc:
            # Whatever it was, the request may have left: holding funds is the safe side,
            # and a raise here would strand an order in `sending`.
            log.error("upstream call failed unexpectedly: %s: %s", type(exc).__name__,
                      self._scrub(str(exc)))
            return Ambiguous("unexpected")

    def _interpret(self, response: httpx.Response, body: bytes) -> Outcome:
        status = response.status_code
        if status >= 500:
            return Ambiguous("http_5xx")
        data = _parse_json(body)
        message = _error_message(data)
        if status >= 400:
            return Refused(self._scrub(message or f"HTTP {status}"), "http_4xx")
        if message is not None:  # an error reply, whatever the (non-5xx) status code
            return Refused(self._scrub(message), "error_reply")
        if 300 <= status < 400:
            log.warning("upstream redirects to %s: check SMMGW_UPSTREAM_URL",
                        self._scrub(response.headers.get("location", "?")))
            return Ambiguous("http_3xx")
        if not body.strip():
            return Ambiguous("empty")
        if not isinstance(data, dict | list):  # an HTML page, garbage, a bare scalar
            snippet = body[:80].decode("utf-8", "replace")
            log.warning("upstream body unreadable: %r", self._scrub(snippet))
            return Ambiguous("unreadable")
        return Answer(data)

    def _scrub(self, text: str) -> str:
        """The upstream's words may echo what we sent: never let the key through."""
        if len(self._key) >= 4:
            for form in {self._key, urllib.parse.quote(self._key, safe=""),
                         urllib.parse.quote_plus(self._key)}:
                text = text.replace(form, "***")
        return text[:_MESSAGE_LIMIT]

    def _scrubbed(self, outcome: Refused | Ambiguous) -> Refused | Ambiguous:
        if isinstance(outcome, Refused):
            return Refused(self._scrub(outcome.message), outcome.reason)
        return outcome

    # -- actions --

    async def services(self) -> list[UpstreamService] | Refused | Ambiguous:
        outcome = await self.call("services")
        if not isinstance(outcome, Answer):
            return outcome
        data = outcome.data
        if isinstance(data, dict) and "data" in data:
            data = data["data"]
            if data == "Empty Data":  # SmartPanel's empty catalog, exactly; nothing vaguer
                return []
        if not isinstance(data, list):
            return Ambiguous("unreadable")
        self.family_heard = detect_family(data) or self.family_heard
        services: list[UpstreamService] = []
        seen: set[int] = set()
        skipped: list[str] = []
        for item in data:
            service = parse_service(item)
            if service is None or service.service_id in seen:
                skipped.append(_describe(item))
                continue
            seen.add(service.service_id)
            services.append(service)
        if skipped:
            log.warning("upstream services: skipped %d unusable or duplicate entries: %s",
                        len(skipped), ", ".join(skipped[:20]))
            metrics.count_unusable("services", "entry", len(skipped))
        return services

    async def balance(self) -> tuple[int, str] | Refused | Ambiguous:
        outcome = await self.call("balance")
        if not isinstance(outcome, Answer):
            return outcome
        data = outcome.data
        amount = _signed_micros(data.get("balance")) if isinstance(data, dict) else None
        if amount is None or abs(amount) > MAX_AMOUNT:
            metrics.count_unusable("balance", "balance")
            return Ambiguous("unreadable")
        currency = data.get("currency")
        return amount, currency.strip() if isinstance(currency, str) else ""

    async def add(self, params: Mapping[str, str]) -> int | Refused | Ambiguous:
        """Place an order. Refused -> it was not placed; Ambiguous -> it may have been."""
        if self.double_decode:
            for name, value in params.items():
                if has_tag_like_text(value):  # SmartPanel would silently cut it: refuse instead
                    return Refused(tag_like_error(name), "tag_like")
        outcome = await self.call("add", **params)
        if not isinstance(outcome, Answer):
            return outcome
        data = outcome.data
        order_id = _as_int(data.get("order")) if isinstance(data, dict) else None
        if order_id is None or not 0 < order_id <= MAX_UPSTREAM_ID:
            # It said "yes" without an id we could ever match: placed or not, we cannot tell.
            log.error("upstream add answered without a usable order id")
            return Ambiguous("no_order_id")
        log.info("upstream add placed upstream order %d", order_id)
        return order_id

    async def status_one(self, order_id: int) -> UpstreamOrderStatus | Refused | Ambiguous:
        outcome = await self.call("status", order=order_id)
        if not isinstance(outcome, Answer):
            return outcome
        parsed = parse_order_status(outcome.data)
        return parsed if parsed is not None else Ambiguous("unreadable")

    async def status_many(
        self, order_ids: list[int]
    ) -> dict[int, UpstreamOrderStatus | Refused] | Refused | Ambiguous:
        """Statuses by `orders=1,2,3`. Ids missing from the result: the upstream said nothing
        usable about them (no news)."""
        ids = _unique_ids(order_ids)
        if not ids:
            return {}
        outcome = await self.call("status", orders=",".join(map(str, ids)))
        if not isinstance(outcome, Answer):
            return outcome
        data = outcome.data
        items: dict[Any, Any]
        if isinstance(data, list):  # some panels answer [{"order": 1, ...}, ...]
            items = {item.get("order"): item for item in data if isinstance(item, dict)}
        elif len(ids) == 1 and "status" in data and str(ids[0]) not in data:
            items = {ids[0]: data}  # a single-id request answered in the single-status shape
        else:
            items = data
        wanted = set(ids)
        result: dict[int, UpstreamOrderStatus | Refused] = {}
        unusable = 0  # answered, but with numbers we cannot use: no news, not a failed batch
        for key, value in items.items():
            order_id = _as_int(key)
            if order_id not in wanted or order_id is None:
                continue
            refusal = self._item_refusal(value)
            if refusal is not None:
                result[order_id] = refusal
            elif (parsed := parse_order_status(value)) is not None:
                result[order_id] = parsed
            elif isinstance(value, dict) and "status" in value:
                unusable += 1
                log.warning("upstream status: order %d skipped, unusable numbers", order_id)
        if not result and not unusable:
            return Ambiguous("unreadable")
        return result

    async def refill(self, order_id: int) -> int | Refused | Ambiguous:
        outcome = await self.call("refill", order=order_id)
        if not isinstance(outcome, Answer):
            return outcome
        data = outcome.data
        if isinstance(data, list) and len(data) == 1:  # the multi-order shape
            data = data[0]
        value = data.get("refill") if isinstance(data, dict) else None
        if (refusal := self._item_refusal(value)) is not None:
            return refusal
        refill_id = _as_int(value)
        if refill_id is None or not 0 < refill_id <= MAX_UPSTREAM_ID:
            return Ambiguous("unreadable")
        return refill_id

    async def refill_status(self, refill_id: int) -> str | Refused | Ambiguous:
        outcome = await self.call("refill_status", refill=refill_id)
        if not isinstance(outcome, Answer):
            return outcome
        data = outcome.data
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        value = data.get("status") if isinstance(data, dict) else None
        if (message := _error_message(value)) is not None:  # {"status": {"error": ...}}
            return Refused(self._scrub(message), "error_reply")
        status = contract.normalize_refill_status(value)
        if status is None:
            log.warning("upstream refill_status: unknown status %r", _short(value))
            metrics.count_unusable("status", "refill")
            return Ambiguous("unknown_status")
        return status

    async def cancel(self, order_ids: list[int]) -> dict[int, bool | Refused] | Refused | Ambiguous:
        """True: the upstream accepted the cancel request (the order's status says when)."""
        ids = _unique_ids(order_ids)
        if not ids:
            return {}
        outcome = await self.call("cancel", orders=",".join(map(str, ids)))
        if not isinstance(outcome, Answer):
            return outcome
        data = outcome.data
        pairs: list[tuple[Any, Any]]
        if isinstance(data, list):
            pairs = [(i.get("order"), i.get("cancel")) for i in data if isinstance(i, dict)]
        elif "cancel" in data and len(ids) == 1:
            pairs = [(ids[0], data["cancel"])]
        else:  # keyed by id
            pairs = list(data.items())
        wanted = set(ids)
        result: dict[int, bool | Refused] = {}
        for key, value in pairs:
            order_id = _as_int(key)
            if order_id is None or order_id not in wanted:
                continue
            refusal = self._item_refusal(value)
            result[order_id] = refusal if refusal is not None else _as_flag(value)
        return result if result else Ambiguous("unreadable")

    def _item_refusal(self, value: object) -> Refused | None:
        """Per-item errors: {"error": "..."} objects, or plain strings (SmartPanel)."""
        if isinstance(value, str) and value.strip() and _as_int(value) is None:
            return Refused(self._scrub(value.strip()), "error_reply")
        message = _error_message(value)
        return Refused(self._scrub(message), "error_reply") if message is not None else None


# --- classification of transport failures ---------------------------------------------------


def classify_transport_error(exc: BaseException) -> Refused | Ambiguous:
    """A transport exception -> Refused only when the request certainly never left."""
    # httpx_aiohttp maps every aiohttp.ClientConnectionError -- ServerDisconnectedError and
    # resets after the request went out included -- to httpx.ConnectTimeout. Taken at face
    # value that would refund an order the upstream may have placed, so judge by the original
    # aiohttp exception, which it chains as __cause__.
    cause = exc.__cause__
    if isinstance(exc, httpx.TransportError) and isinstance(cause, aiohttp.ClientError):
        exc = cause
    if isinstance(exc, aiohttp.ClientError):
        return _classify_aiohttp(exc)
    name = type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return Refused(f"{name}: {exc}", "connect")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return Refused(f"{name}: {exc}", "config")
    if isinstance(exc, httpx.ReadTimeout):
        return Ambiguous("read_timeout")
    if isinstance(exc, httpx.WriteTimeout):
        return Ambiguous("write_timeout")
    if isinstance(exc, httpx.RemoteProtocolError):
        return Ambiguous("protocol")
    if isinstance(exc, httpx.ReadError):
        return Ambiguous("read_error")
    if isinstance(exc, httpx.WriteError):
        return Ambiguous("write_error")
    return Ambiguous("transport")


def _classify_aiohttp(exc: aiohttp.ClientError) -> Refused | Ambiguous:
    name = type(exc).__name__
    # Connector errors and connection timeouts happen before a byte of the request is sent
    # (aiohttp raises ConnectionTimeoutError only around connector.connect()).
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return Refused(f"{name}: {exc}", "connect")
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return Refused(f"{name}: {exc}", "config")
    if isinstance(exc, aiohttp.SocketTimeoutError | aiohttp.ServerTimeoutError):
        return Ambiguous("read_timeout")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Ambiguous("protocol")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Ambiguous("read_error")
    if isinstance(exc, aiohttp.ClientOSError):  # a reset once connected (ECONNRESET, EPIPE)
        return Ambiguous("reset")
    if isinstance(exc, aiohttp.ClientConnectionResetError):
        return Ambiguous("reset")
    return Ambiguous("transport")


# --- parsing --------------------------------------------------------------------------------

def _parse_json(body: bytes) -> Any:
    """JSON whatever the content type says (SmartPanel answers text/html); floats as Decimal."""
    try:
        return json.loads(body.decode("utf-8-sig"), parse_float=Decimal)
    except (ValueError, RecursionError):
        return None


def _error_message(data: object) -> str | None:
    """{"error": "..."} or SmartPanel's {"status": "error", "message": "..."} -> the message."""
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if error not in (None, "", False):
        return error.strip() if isinstance(error, str) else json.dumps(error, default=str)
    status = data.get("status")
    if isinstance(status, str) and status.strip().lower() == "error":
        message = data.get("message") or data.get("error") or "error"
        return message.strip() if isinstance(message, str) else json.dumps(message, default=str)
    return None


def _as_int(value: object) -> int | None:
    """5, "5", " 5 ", Decimal("5.0") -> 5; anything else -> None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str | Decimal | float):
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            return None
        if number.is_finite() and number == number.to_integral_value():
            return int(number)
    return None


def _as_flag(value: object) -> bool:
    """true/false, "1"/"0", 1/0, "yes"/"no"; missing -> False."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "on"):
            return True
        number = _as_int(text)
        return number is not None and number != 0
    number = _as_int(value)
    return number is not None and number != 0


def _as_text(value: object) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    return None


def _signed_micros(value: object) -> int | None:
    """A balance may be negative (credit); parse_upstream_micros reads only non-negative."""
    text = str(value).strip() if isinstance(value, str | int | Decimal) else None
    if text is not None and text.startswith("-"):
        magnitude = parse_upstream_micros(text[1:])
        return -magnitude if magnitude is not None else None
    return parse_upstream_micros(value)


def _unique_ids(order_ids: list[int]) -> list[int]:
    ids = list(dict.fromkeys(order_ids))
    if len(ids) > MAX_IDS_PER_CALL:
        raise ValueError(f"at most {MAX_IDS_PER_CALL} ids per call, got {len(ids)}")
    return ids


def _short(value: object) -> str:
    return repr(value)[:60]


def _describe(item: object) -> str:
    service_id = item.get("service") if isinstance(item, dict) else None
    return f"service {_short(service_id)}" if service_id is not None else "entry without id"


def parse_service(item: object) -> UpstreamService | None:
    """One `services` entry of either dialect -> UpstreamService; None when unusable
    (no id, unknown type, no usable rate or bounds)."""
    if not isinstance(item, dict):
        return None
    try:
        service_id = _bounded(item, "service", MAX_SERVICE_ID)
        rate = _bounded(item, "rate", MAX_RATE, money=True)
        low, high = _bounded(item, "min", MAX_COUNT), _bounded(item, "max", MAX_COUNT)
    except UnusableNumber:
        return None
    service_type = contract.canonical_type(item.get("type"))
    if (service_id is None or service_id <= 0 or service_type is None or rate is None
            or low is None or high is None or high < low):
        return None
    return UpstreamService(
        service_id=service_id,
        name=_as_text(item.get("name")) or f"Service {service_id}",
        category=_as_text(item.get("category")) or "",
        type=service_type,
        rate_micros=rate,
        min=low,
        max=high,
        dripfeed=_as_flag(item.get("dripfeed")),
        refill=_as_flag(item.get("refill")),
        cancel=_as_flag(item.get("cancel")),
        desc=_as_text(item.get("desc")),
    )


class UnusableNumber(ValueError):
    """An upstream number out of range or malformed: the item carrying it is skipped."""


def _bounded(item: dict[str, Any], name: str, maximum: int, *, money: bool = False) -> int | None:
    """The ONE bound on numbers read from the upstream: absent (missing, null, "") -> None;
    0 <= value <= maximum (micro-units when `money`) -> the value; anything else (negative,
    NaN, 1e+30, "abc", a list) raises UnusableNumber, logged and counted here."""
    value = item.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = parse_upstream_micros(value) if money else _as_int(value)
    if number is None or not 0 <= number <= maximum:
        log.warning("upstream %s %s is unusable: skipped", name, _short(value))
        metrics.count_unusable("number", name)
        raise UnusableNumber(name)
    return number


def _remains(item: dict[str, Any]) -> tuple[int | None, int]:
    """"15" -> (15, 0); "+15" or "-15" (over-delivery, by panel) -> (0, 15)."""
    value = item.get("remains")
    text = value.strip() if isinstance(value, str) else None
    if text is not None and text[:1] in ("+", "-"):
        return 0, _bounded({"remains": text[1:]}, "remains", MAX_COUNT) or 0
    if isinstance(value, int | Decimal) and not isinstance(value, bool) and value < 0:
        return 0, _bounded({"remains": -value}, "remains", MAX_COUNT) or 0
    return _bounded(item, "remains", MAX_COUNT), 0


def parse_order_status(item: object) -> UpstreamOrderStatus | None:
    """One status object of either dialect; None when it carries no status at all, or a
    number we cannot use (out of range, malformed: see `_bounded`)."""
    if not isinstance(item, dict) or "status" not in item:
        return None
    raw = item.get("status")
    raw_status = raw.strip() if isinstance(raw, str) else (None if raw is None else _short(raw))
    status = contract.normalize_order_status(raw)
    if status is None:  # shown In progress by the caller; never settles the order
        metrics.count_unusable("status", "order")
    children = item.get("orders")
    child_orders = None
    if isinstance(children, list):
        ids = map(_as_int, children)
        child_orders = [i for i in ids if i is not None and 0 < i <= MAX_UPSTREAM_ID]
    try:
        remains, overdelivered = _remains(item)
        return UpstreamOrderStatus(
            status=status,
            raw_status=raw_status,
            charge_micros=_bounded(item, "charge", MAX_AMOUNT, money=True),
            start_count=_bounded(item, "start_count", MAX_COUNT),
            remains=remains,
            currency=_as_text(item.get("currency")),
            runs=_bounded(item, "runs", MAX_COUNT),
            child_orders=child_orders,
            expiry=_as_text(item.get("expiry")),
            posts=_bounded(item, "posts", MAX_COUNT),
            overdelivered=overdelivered,
            link=_as_text(item.get("link")),
            service=_as_int(item.get("service")),
        )
    except UnusableNumber:
        return None


# --- double decoding and tags (SmartPanel's strip_tags(urldecode(v))) -----------------------


def encode_for_double_decode(value: str) -> str:
    """Encode once more, so that the value survives a second urldecode intact."""
    return urllib.parse.quote(value, safe="")


# PHP's strip_tags treats "<" as a tag start unless whitespace follows it (at the end of the
# string too: it then eats nothing but the "<"), and drops NUL bytes.
_TAG_LIKE = re.compile(r"<(?!\s)|\x00")


def has_tag_like_text(value: str) -> bool:
    """Text SmartPanel's strip_tags would eat (`<3`, `<b>`, `a<`): refuse it at add."""
    return _TAG_LIKE.search(value) is not None


def tag_like_error(param: str) -> str:
    return f"Text like <3 or <tag> is not allowed in {param}"


_TAG_LIKE_ERROR = re.compile(r"Text like <3 or <tag> is not allowed in (\w{1,40})")


# --- refusal texts -> contract strings ------------------------------------------------------

_EXACT_ERRORS = {
    contract.INCORRECT_SERVICE: (
        "service id does not exists", "service id does not exist", "incorrect service id",
        "invalid service id", "invalid service", "service not found", "service is disabled",
        "service not active",
    ),
    contract.BAD_LINK: ("bad link", "invalid link", "incorrect link", "link is invalid"),
    contract.INCORRECT_ORDER: (
        "incorrect order id", "invalid order id", "order not found", "order id not found",
    ),
    contract.INCORRECT_REFILL: ("incorrect refill id", "invalid refill id", "refill not found"),
    contract.NOT_REFILLABLE: (
        "order not eligible for refill", "refill is disabled for this service",
        "refill not available", "refill is not available", "refill is disabled",
    ),
    INCORRECT_INTERVAL: ("invalid interval in minutes", "invalid interval", "incorrect interval"),
}
_BY_TEXT = {text: error for error, texts in _EXACT_ERRORS.items() for text in texts}
_NUMBER = r"(\d[\d,]*(?:\.\d+)?)"
_QUANTITY_LOW = re.compile(
    rf"quantity (?:must to be greater than or equal to minimum amount|less than minimal"
    rf"|must be greater than or equal to minimum amount|is less than minimum(?: amount)?) "
    rf"{_NUMBER}")
_QUANTITY_HIGH = re.compile(
    rf"quantity (?:must to be less than or equal to maximum amount|more than maximum"
    rf"|must be less than or equal to maximum amount|is more than maximum(?: amount)?) "
    rf"{_NUMBER}")


def contract_error_for(upstream_message: str) -> str | None:
    """An upstream refusal text -> the CONTRACT.md error string to show a customer; None when
    it must not reach a customer (our upstream key, our upstream balance, anything unknown)."""
    text = " ".join(upstream_message.split())
    if match := _TAG_LIKE_ERROR.fullmatch(text):  # our own pre-send refusal
        return tag_like_error(match[1])
    low = text.lower().rstrip(".! ")
    if is_upstream_funds_error(low) or is_upstream_key_error(low):
        return None
    if low in _BY_TEXT:
        return _BY_TEXT[low]
    for pattern, render in ((_QUANTITY_LOW, contract.quantity_too_low),
                            (_QUANTITY_HIGH, contract.quantity_too_high)):
        if (match := pattern.search(low)) and (bound := _as_int(match[1].replace(",", ""))):
            return render(bound)
    if re.search(r"does not support drip[- ]?feed|drip[- ]?feed (?:is )?(?:not|disabled)", low):
        return DRIPFEED_NOT_SUPPORTED
    if "active order with this link" in low:
        return ACTIVE_ORDER_FOR_LINK
    return None


def is_upstream_funds_error(message: str) -> bool:
    """The upstream says OUR (the reseller's) balance there is too low: an operator alert."""
    low = message.lower()
    return ("not enough funds" in low or "insufficient funds" in low
            or "insufficient balance" in low or "not enough balance" in low)


def is_upstream_key_error(message: str) -> bool:
    """The upstream refuses OUR key: an operator alert, never the customer's 'Invalid API key'."""
    low = message.lower()
    return ("api is disable" in low or "user not found" in low
            or re.search(r"(invalid|incorrect|wrong|bad) api key", low) is not None)
