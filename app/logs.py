"""Logging: configured once per process, one structured line per request, secrets never written.

- `configure_logging(settings)` (called by `create_app`, i.e. once in each worker process, and by
  `serve` for the supervisor): one handler on the root logger, JSON lines
  (`SMMGW_LOG_FORMAT=json`, the default) or text (`text`), at `SMMGW_LOG_LEVEL`.
- `RequestLogMiddleware` (pure ASGI, no BaseHTTPMiddleware): a request id (the client's
  `X-Request-ID` when it is sane, else a fresh one), echoed in the reply's `X-Request-ID`; at
  the end one line on `smm_gateway.access` with request_id, method, path, action, customer_id,
  outcome, status, latency_ms. The panel handler fills in what only it knows (`RequestInfo`).
  `SMMGW_ACCESS_LOG_SAMPLE=N` writes that line for one in N requests that went well (outcome
  `ok`) and for every other request.
  Every other line logged while a request runs carries its request_id.
- Secrets: the upstream key and the admin token (by value, also URL-encoded), the current
  request's customer key, anything shaped like `key=…`/`token=…`, `"key": "…"`,
  `Bearer …` and any 64-hex-digit run (the shape of our customer keys) are replaced by `***`
  in every line our handler writes. The path is logged without its query string. uvicorn's
  own access log is off under `smm-gateway serve` (this line replaces it); when uvicorn is
  run directly, its access lines go through `AccessLogRedactor`, which masks `key=` values.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import sys
import time
import urllib.parse
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from app.settings import Settings

REQUEST_ID_HEADER = b"x-request-id"
SCOPE_KEY = "smmgw.request"  # the RequestInfo of the request, in the ASGI scope
MASK = "***"
CLIENT_CLOSED = 499  # logged for a request cancelled before its reply (nginx's convention)

access_log = logging.getLogger("smm_gateway.access")


class RequestInfo:
    """What the request log line and the request metrics need, filled in as a request goes."""

    __slots__ = ("action", "customer_id", "error", "outcome", "request_id", "secret")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.action: str | None = None  # a known action name, or "unknown"; None: not the API
        self.customer_id: int | None = None
        self.outcome: str | None = None  # "ok", an error class, "413", "429", "500"
        self.error: str | None = None  # the contract error string answered, if any
        self.secret: str | None = None  # the customer's key: masked in any line while it runs


_current: ContextVar[RequestInfo | None] = ContextVar("smmgw_request", default=None)


def current_request() -> RequestInfo | None:
    return _current.get()


# --- redaction ------------------------------------------------------------------------------

_secrets: tuple[str, ...] = ()
_PATTERNS = (
    # key=…, api_key=…, token=… in query strings and form bodies (not idempotency_key=…)
    (
        re.compile(
            r"(?i)(?<![\w-])((?:api_?)?key|(?:admin_|access_)?token|password)=[^&\s\"'#;,]+"
        ),
        r"\1=" + MASK,
    ),
    # "key": "…" in JSON or Python reprs
    (
        re.compile(
            r"""(?i)(["'](?:(?:api_?)?key|(?:admin_|access_)?token|password|authorization)"""
            r"""["']\s*:\s*["'])[^"']*"""
        ),
        r"\1" + MASK,
    ),
    (re.compile(r"(?i)\b(bearer\s+)[\w.~+/=-]+"), r"\1" + MASK),
    (re.compile(r"\b[0-9a-fA-F]{64}\b"), MASK),  # a customer key (or its hash) in any form
    # passwords in URLs (redis://:pw@host, postgresql://user:pw@host)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s/]+@"), r"\1:" + MASK + "@"),
)


def set_secrets(*values: str) -> None:
    """Values never to write (the upstream key, the admin token), in the forms they travel."""
    global _secrets
    found: set[str] = set()
    for secret in values:
        if len(secret) >= 4:  # a shorter one would mask half of every line
            found |= {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    _secrets = tuple(sorted(found, key=len, reverse=True))


def _may_hold_a_secret(text: str) -> bool:
    """Whatever one of the patterns needs; most values (paths, ids, actions) have none of it.
    (Plain `in` tests: a regex search costs several times more on a short string.)"""
    return len(text) >= 64 or "=" in text or ":" in text or "bearer" in text.lower()


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    info = _current.get()
    if info is not None and info.secret and len(info.secret) >= 4 and info.secret in text:
        text = text.replace(info.secret, MASK)
    if not _may_hold_a_secret(text):
        return text  # the common case
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# Request-line fields whose values come from a fixed vocabulary of ours (or are numbers).
_OURS = frozenset({"method", "action", "outcome", "status", "latency_ms", "customer_id"})


def _redacted(value: object) -> object:
    return redact(value) if isinstance(value, str) else value


# --- formatters -----------------------------------------------------------------------------


_second: tuple[int, str] = (0, "")


def _timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 UTC with milliseconds; the part up to the second is made once a second."""
    global _second
    whole = int(record.created)
    if _second[0] != whole:
        _second = (whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{int((record.created - whole) * 1000):03d}Z"


_encode = json.JSONEncoder(ensure_ascii=False, default=str).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, pid, msg, the record's `fields`,
    request_id."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,  # which worker, under --workers N
            "msg": redact(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(
                {
                    name: value if name in _OURS else _redacted(value)
                    for name, value in fields.items()
                }
            )
        if "request_id" not in line and (info := _current.get()) is not None:
            line["request_id"] = info.request_id
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = redact(self.formatStack(record.stack_info))
        return _encode(line)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(text: str) -> str:
    """Control characters (a `%0D%0A` in a path, a newline in a name) as `\\r`, `\\n`,
    `\\xNN`: a text line must never be split or rewritten by what it quotes."""
    if text.isprintable():
        return text  # the common case, and cheap
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], text)


def _indented(block: str) -> str:
    """A traceback under its line, each of its lines indented and escaped: none can pass for
    a log line of its own, whatever text the exception quotes."""
    return "\n".join("  " + _escaped(line) for line in block.splitlines())


class TextFormatter(logging.Formatter):
    """`ts LEVEL logger: message k=v …` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, f"{record.name}:"]
        parts.append(_escaped(record.getMessage()))
        fields = getattr(record, "fields", None) or {}
        if "request_id" not in fields and (info := _current.get()) is not None:
            parts.append(f"request_id={info.request_id}")
        parts.extend(
            f"{name}={_escaped(str(value))}" for name, value in fields.items() if value is not None
        )
        text = " ".join(parts)
        if record.exc_info:
            text += "\n" + _indented(self.formatException(record.exc_info))
        if record.stack_info:
            text += "\n" + _indented(self.formatStack(record.stack_info))
        return redact(text)


class AccessLogRedactor(logging.Filter):
    """For uvicorn's access log when uvicorn runs without `serve`: its lines carry the path
    with the query string, where GET clients put `key=`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


_handler: logging.Handler | None = None
_sample = 1  # SMMGW_ACCESS_LOG_SAMPLE
_access_filter = AccessLogRedactor()


def configure_logging(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """Our one handler on the root logger (replacing the one a previous call installed; other
    handlers, a test runner's say, are left alone). Returns it."""
    global _handler, _sample
    set_secrets(settings.upstream_key, settings.admin_token)
    _sample = settings.access_log_sample
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    _handler = handler
    uvicorn_access = logging.getLogger("uvicorn.access")
    if _access_filter not in uvicorn_access.filters:
        uvicorn_access.addFilter(_access_filter)
    # One line per upstream call is ours (app/upstream.py); httpx would add a second.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return handler


# --- the request line -----------------------------------------------------------------------

_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            text = value.decode("latin-1")
            if _SANE_ID.fullmatch(text):
                return text
            break
    return secrets.token_hex(16)


RequestHook = Callable[[RequestInfo, int, float], None]


def _client(scope: dict[str, Any]) -> str | None:
    """The client's address (the proxy's, unless uvicorn trusts its forwarded headers)."""
    client = scope.get("client")
    return client[0] if client else None


class RequestLogMiddleware:
    """Pure ASGI: request id in and out, one access line, and `on_done(info, status, seconds)`
    (the request metrics) once the reply is sent or the request failed."""

    def __init__(self, app: Any, on_done: RequestHook | None = None) -> None:
        self.app = app
        self.on_done = on_done
        self._ok_seen = 0  # requests that went well, for SMMGW_ACCESS_LOG_SAMPLE

    def _sampled(self) -> bool:
        """One in `_sample` of the requests that went well gets its line, the first included."""
        self._ok_seen += 1
        return _sample == 1 or self._ok_seen % _sample == 1

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info = RequestInfo(_request_id(scope["headers"]))
        scope[SCOPE_KEY] = info
        token = _current.set(info)
        status = 500  # unless a reply starts: an exception escaped every handler
        echo = (REQUEST_ID_HEADER, info.request_id.encode("latin-1"))

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:  # shutdown, or a client gone under a server that cancels
            status, info.outcome = CLIENT_CLOSED, info.outcome or "cancelled"
            raise
        finally:
            elapsed = time.perf_counter() - started
            if info.outcome is None and info.action is not None and status >= 500:
                info.outcome = "500"
            if self.on_done is not None:
                self.on_done(info, status, elapsed)
            level = logging.INFO if status < 500 else logging.ERROR
            outcome = info.outcome or ("ok" if status < 400 else str(status))
            if access_log.isEnabledFor(level) and (outcome != "ok" or self._sampled()):
                # makeRecord + handle: Logger.log would also walk the stack for a caller that
                # is always this line.
                record = access_log.makeRecord(
                    access_log.name,
                    level,
                    __file__,
                    0,
                    "%s %s %d",
                    (scope["method"], scope["path"], status),
                    None,
                )
                record.fields = {
                    "request_id": info.request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "client": _client(scope),
                    "action": info.action,
                    "customer_id": info.customer_id,
                    "outcome": outcome,
                    "error": info.error,
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 2),
                }
                access_log.handle(record)
            _current.reset(token)
