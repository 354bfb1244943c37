"""The simulator's HTTP face: the panel API at /api/v1 and /api/v2 in the configured dialect,
its fault injection, and the /_sim/* control endpoints (faults, stats, orders, balance).

`smartpanel` reproduces what smmmix's SmartPanel code answers (CONTRACT.md), quirks included;
`standard` answers the Perfect Panel shapes of CONTRACT.md's tables.
"""

import asyncio
import contextlib
import dataclasses
import gzip
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from urllib.parse import unquote_plus

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.types import Message, Receive, Scope, Send

from app.simulator import words
from app.simulator.amounts import padded, to_micros, unpadded
from app.simulator.catalog import Service
from app.simulator.overrides import get_overrides, json_object_update, set_overrides
from app.simulator.state import (
    E_ACTION,
    E_DRIPFEED,
    E_FUNDS,
    E_INTERVAL,
    E_INTERVAL_REQUIRED,
    E_INVALID,
    E_KEY,
    E_LINK,
    E_MAX,
    E_MIN,
    E_MISSING,
    E_NOT_CANCELABLE,
    E_NOT_REFILLABLE,
    E_ORDER,
    E_PROCESSING,
    E_QUANTITY_MISSING,
    E_REFILL,
    E_RUNS_REQUIRED,
    E_SERVICE,
    E_SERVICE_MISSING,
    SMARTPANEL_HIDDEN_STATUSES,
    Dialect,
    Order,
    SimConfig,
    SimError,
    Simulator,
)

JsonValue = object
Payload = JsonValue | None  # None: an empty body, as SmartPanel sometimes answers
Outcome = tuple[Payload, bool]  # the reply, and whether it must never arrive (sim:timeout)
Handler = Callable[[Simulator, Dialect, Mapping[str, str]], Outcome]

# ----- decoding ----------------------------------------------------------------------------------


def strip_tags(text: str) -> str:
    """PHP's strip_tags(): drop `<…>` tags (quote-aware, nested `<` counted), `<!-- … -->`
    comments and NUL bytes. A `<` followed by whitespace is text; an unclosed `<` eats the rest,
    so `I <3 you` becomes `I `."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "\0":
            i += 1
        elif char != "<" or (i + 1 < n and text[i + 1].isspace()):
            out.append(char)
            i += 1
        elif text.startswith("<!--", i):
            end = text.find("-->", i + 4)
            i = n if end < 0 else end + 3
        else:
            i = _tag_end(text, i + 1)
    return "".join(out)


def _tag_end(text: str, i: int) -> int:
    depth, quote = 0, ""
    while i < len(text):
        char = text[i]
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "<":
            depth += 1
        elif char == ">":
            if depth == 0:
                return i + 1
            depth -= 1
        i += 1
    return i


def php_decode(value: str) -> str:
    """SmartPanel reads every value as strip_tags(urldecode(v)) after PHP decoded the form once."""
    return strip_tags(unquote_plus(value))


def _scalar(value: object) -> str | None:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return None


async def read_params(request: Request, dialect: Dialect) -> dict[str, str]:
    """Query string and body merged, the body winning (PHP's $_REQUEST)."""
    params: dict[str, str] = dict(request.query_params)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        with contextlib.suppress(HTTPException, MultiPartException):
            form = await request.form()
            params.update((k, v) for k, v in form.items() if isinstance(v, str))
    elif content_type == "application/json" and dialect == "standard":
        # SmartPanel never reads a JSON body (the key then looks missing); the standard does.
        with contextlib.suppress(ValueError):
            body = json.loads(await request.body())
            if isinstance(body, dict):
                for key, value in body.items():
                    text = _scalar(value)
                    if text is not None:
                        params[str(key)] = text
    if dialect == "smartpanel":
        params = {key: php_decode(value) for key, value in params.items()}
    return params


# ----- wording -----------------------------------------------------------------------------------

_SMARTPANEL_TEXT = {
    E_KEY: "API is Disable for this user or User Not Found! Contact the Support",
    E_ACTION: "This action is Invalid",
    E_SERVICE_MISSING: "There are missing required parameters. Please check your API Manual",
    E_SERVICE: "Service ID does not exists",
    E_LINK: "Bad Link",
    E_QUANTITY_MISSING: "Quantity is required",
    E_MIN: "Quantity must to be greater than or equal to minimum amount {}",
    E_MAX: "Quantity must to be less than or equal to maximum amount {}",
    E_DRIPFEED: "This services does not support Dripfeed feature!",
    E_INTERVAL_REQUIRED: "Interval time is required",
    E_RUNS_REQUIRED: "Runs is required",
    E_MISSING: "{} field is required",
    E_INVALID: "Invalid {}",
    E_FUNDS: "Not enough funds on balance",
    E_ORDER: "Incorrect order ID",
    E_PROCESSING: "There was an error processing your request. Please try again later",
}
_STANDARD_TEXT = {
    E_KEY: words.STD_INVALID_KEY,
    E_ACTION: words.STD_INCORRECT_REQUEST,
    E_SERVICE_MISSING: words.STD_INCORRECT_SERVICE,
    E_SERVICE: words.STD_INCORRECT_SERVICE,
    E_LINK: words.STD_BAD_LINK,
    E_QUANTITY_MISSING: words.std_missing("quantity"),
    E_DRIPFEED: "Drip-feed is not available for this service",
    E_INTERVAL_REQUIRED: words.std_missing("interval"),
    E_RUNS_REQUIRED: words.std_missing("runs"),
    E_INVALID: "Invalid parameter: {}",
    E_FUNDS: words.STD_NOT_ENOUGH_FUNDS,
    E_ORDER: words.STD_INCORRECT_ORDER,
    E_REFILL: words.STD_INCORRECT_REFILL,
    E_NOT_REFILLABLE: words.STD_NOT_REFILLABLE,
    E_NOT_CANCELABLE: "Order not eligible for cancel",
    E_PROCESSING: "Internal error, try again later",
}


def error_text(dialect: Dialect, err: SimError) -> str:
    if dialect == "smartpanel":
        arg = err.arg
        if err.code == E_MISSING and isinstance(arg, str):
            arg = arg.capitalize()  # "Comments field is required"
        return _SMARTPANEL_TEXT.get(err.code, "This action is Invalid").format(arg)
    number = err.arg if isinstance(err.arg, int) else 0
    if err.code == E_MIN:
        return words.std_quantity_low(number)
    if err.code == E_MAX:
        return words.std_quantity_high(number)
    if err.code == E_MISSING:
        return words.std_missing(str(err.arg))
    return _STANDARD_TEXT.get(err.code, words.STD_INCORRECT_REQUEST).format(err.arg)


def error_payload(dialect: Dialect, err: SimError) -> JsonValue:
    if dialect == "smartpanel" and err.code == E_INTERVAL:
        return {"status": "error", "message": "Invalid Interval in minutes"}
    return {"error": error_text(dialect, err)}


# ----- replies -----------------------------------------------------------------------------------

SESSION_COOKIE = "ci_session"
_CONTENT_TYPE = {"smartpanel": "text/html; charset=utf-8", "standard": "application/json"}


def reply(dialect: Dialect, payload: Payload, status_code: int = 200) -> Response:
    body = b""
    if payload is not None:
        if dialect == "smartpanel":
            # json_encode($data, JSON_PRETTY_PRINT): four spaces, "\/" for "/", \u-escapes;
            # the one reply built elsewhere in its code (the interval error) is compact.
            compact = isinstance(payload, dict) and payload.get("status") == "error"
            text = json.dumps(payload, separators=(",", ":")) if compact else json.dumps(
                payload, indent=4)
            text = text.replace("/", "\\/")
        else:
            text = json.dumps(payload, separators=(",", ":"))
        body = text.encode()
    response = Response(body, status_code=status_code, media_type=_CONTENT_TYPE[dialect])
    if dialect == "smartpanel":  # CodeIgniter's CSRF cookie, on every reply
        response.set_cookie("csrfToken", secrets.token_hex(16), path="/", samesite="lax")
    return response


def service_payload(service: Service, dialect: Dialect) -> dict[str, object]:
    if dialect == "smartpanel":
        rate = service.rate_micros
        return {
            "service": str(service.id),
            "name": service.name,
            "category": service.category,
            "rate": unpadded(rate) if service.user_rate else padded(rate, 4),
            "min": str(service.min),
            "max": str(service.max),
            "type": words.smartpanel_type(service.type),
            "desc": service.desc,
            "dripfeed": "1" if service.dripfeed else "0",
        }
    item: dict[str, object] = {
        "service": service.id,
        "name": service.name,
        "type": service.type,
        "category": service.category,
        "rate": padded(service.rate_micros, 2),
        "min": str(service.min),
        "max": str(service.max),
        "refill": service.refill,
        "cancel": service.cancel,
        "dripfeed": service.dripfeed,
    }
    if service.desc is not None:
        item["desc"] = service.desc
    return item


def shown_status(status: str) -> str:
    """Internal statuses the API never prints: SmartPanel answers them as Pending."""
    return words.PENDING if status in SMARTPANEL_HIDDEN_STATUSES else status


def status_payload(sim: Simulator, dialect: Dialect, order: Order) -> dict[str, object]:
    payload = _status_payload(sim, dialect, order)
    if sim.withholds_figures(order):
        payload.pop("charge", None)
        payload.pop("remains", None)
    return sim.overrides.apply("status", order.id, payload)


def _status_payload(sim: Simulator, dialect: Dialect, order: Order) -> dict[str, object]:
    view = sim.view(order)
    status = shown_status(view.status)
    if dialect == "smartpanel":
        children = [str(i) for i in view.children]  # MySQL ids come back as strings
        if view.kind == "dripfeed":
            return {"status": status, "runs": str(view.runs), "orders": children}
        if order.service.type == words.SUBSCRIPTIONS:
            # Stored as a plain order (no subscription branch), shown in the subscription shape.
            return {"status": status, "expiry": False, "posts": None, "orders": []}
        return {
            "order": str(view.id),
            "status": status,
            "charge": padded(view.charge, 4),
            "start_count": None if view.start_count is None else str(view.start_count),
            "remains": f"+{view.over}" if view.over else str(view.remains),
            "currency": "USD",  # SmartPanel prints USD whatever the panel's currency
        }
    return {
        "order": str(view.id),
        "charge": padded(view.charge, 4),
        "start_count": str(view.start_count or 0),
        "status": status,
        "remains": str(view.remains),
        "currency": sim.config.currency,
    }


# ----- actions -----------------------------------------------------------------------------------


def _ids(raw: str) -> list[str]:
    return [piece.strip() for piece in raw.split(",") if piece.strip()]


def _id_value(piece: str) -> int | str:
    return int(piece) if piece.isdigit() else piece


def do_services(sim: Simulator, dialect: Dialect, params: Mapping[str, str]) -> Outcome:
    return [sim.overrides.apply("services", s.id, service_payload(s, dialect))
            for s in sim.listed_services()], False


def do_balance(sim: Simulator, dialect: Dialect, params: Mapping[str, str]) -> Outcome:
    if dialect == "smartpanel":
        return {"status": "success", "balance": padded(sim.balance, 4), "currency": "USD"}, False
    return {"status": "success", "balance": padded(sim.balance, 2),
            "currency": sim.config.currency}, False


def do_add(sim: Simulator, dialect: Dialect, params: Mapping[str, str]) -> Outcome:
    order = sim.add(params, dialect)
    return {"status": "success", "order": order.id}, order.hang


def do_status(sim: Simulator, dialect: Dialect, params: Mapping[str, str]) -> Outcome:
    single, many = params.get("order", ""), params.get("orders", "")
    if single != "":  # SmartPanel answers `order` first when both are sent
        order = sim.find(single)
        if order is None:
            raise SimError(E_ORDER)
        return status_payload(sim, dialect, order), False
    if many != "":
        result: dict[str, object] = {}
        for piece in many.split(","):
            key = piece if dialect == "smartpanel" else piece.strip()
            order = sim.find(piece)
            if order is not None:
                result[key] = status_payload(sim, dialect, order)
            elif dialect == "smartpanel":
                result[key] = "Incorrect order ID"
            else:
                result[key] = {"error": words.STD_INCORRECT_ORDER}
        return result, False
    if dialect == "smartpanel":
        return None, False  # SmartPanel echoes nothing at all
    raise SimError(E_ORDER)


def do_refill(sim: Simulator, dialect: Dialect, params: Mapping[str, str]) -> Outcome:
    if params.get("orders", "").strip():
        items: list[dict[str, object]] = []
        for piece in _ids(params["orders"]):
            try:
                items.append({"order": _id_value(piece), "refill": sim.refill(piece).id})
            except SimError as err:
                items.append({"order": _id_value(piece),
                              "refill": {"error": error_text(dialect, err)}})
        return items, False
    if not params.get("order", "").strip():
        raise SimError(E_ORDER)
    return {"refill": str(sim.refill(params["order"]).id)}, False


def do_refill_status(sim: Simulator, dialect: Dialect,
                     params: Mapping[str, str]) -> Outcome:
    if params.get("refills", "").strip():
        items: list[dict[str, object]] = []
        for piece in _ids(params["refills"]):
            try:
                items.append({"refill": _id_value(piece), "status": sim.refill_status(piece)})
            except SimError as err:
                items.append({"refill": _id_value(piece),
                              "status": {"error": error_text(dialect, err)}})
        return items, False
    return {"status": sim.refill_status(params.get("refill", ""))}, False


def do_cancel(sim: Simulator, dialect: Dialect, params: Mapping[str, str]) -> Outcome:
    pieces = _ids(params.get("orders", "")) or _ids(params.get("order", ""))
    if not pieces:
        raise SimError(E_ACTION)
    items: list[dict[str, object]] = []
    for piece in pieces:
        try:
            sim.cancel(piece)
            items.append({"order": _id_value(piece), "cancel": 1})
        except SimError as err:
            items.append({"order": _id_value(piece), "cancel": {"error": error_text(dialect, err)}})
    return items, False


_SMARTPANEL_ACTIONS: dict[str, Handler] = {
    "services": do_services, "add": do_add, "status": do_status, "balance": do_balance,
}
_ACTIONS: dict[str, dict[str, Handler]] = {
    "smartpanel": _SMARTPANEL_ACTIONS,  # stock SmartPanel: no refill, no cancel
    "standard": {**_SMARTPANEL_ACTIONS, "refill": do_refill, "refill_status": do_refill_status,
                 "cancel": do_cancel},
}


def dispatch(sim: Simulator, dialect: Dialect, params: Mapping[str, str]) -> Outcome:
    key = params.get("key", "")
    if key == "" or key != sim.config.key:
        raise SimError(E_KEY)
    handler = _ACTIONS[dialect].get(params.get("action", ""))
    if handler is None:
        raise SimError(E_ACTION)
    return handler(sim, dialect, params)


# ----- faults ------------------------------------------------------------------------------------

_CLOUDFLARE_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
_CLOUDFLARE_CHALLENGE = (
    b'<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>'
    b'<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">'
    b'<meta name="robots" content="noindex,nofollow"></head><body>'
    b'<div class="main-wrapper" role="main"><div class="main-content">'
    b'<h1 class="zone-name-title h1">smmmix.com</h1>'
    b'<h2 class="h2" id="challenge-body-text">Checking if the site connection is secure</h2>'
    b"<noscript>Enable JavaScript and cookies to continue</noscript></div></div>"
    b'<div class="footer" role="contentinfo">Ray ID: <code>8a1f2c3d4e5f6a7b</code> '
    b"Performance &amp; security by Cloudflare</div></body></html>"
)
# A JSON reply gzipped twice over by a misconfigured server: bytes, not JSON.
_GARBAGE = gzip.compress(b'{"status":"success","balance":"100.8429","currency":"USD"}', mtime=0)
_CF_HEADERS = {"server": "cloudflare", "cf-ray": "8a1f2c3d4e5f6a7b-FRA"}


def fault_page(kind: str, dialect: Dialect) -> Response | None:
    """The reply of a fault that does nothing at all, or None for the other kinds."""
    if kind == "error5xx":
        return Response(_CLOUDFLARE_502, 502, headers=_CF_HEADERS, media_type="text/html")
    if kind == "html":
        return Response(_CLOUDFLARE_CHALLENGE, 200, headers=_CF_HEADERS, media_type="text/html")
    if kind == "garbage":
        return Response(_GARBAGE, 200, media_type=_CONTENT_TYPE[dialect])
    return None


class SimulatedDrop(httpx.RemoteProtocolError):
    """Raised after a partial reply. Under uvicorn the connection is closed mid-body; an
    in-process client (httpx.ASGITransport) receives this very exception, a transport error."""


class DropResponse(Response):
    """Headers with the full Content-Length, half the body, then the connection goes away."""

    def __init__(self, inner: Response) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.inner.body
        await send({"type": "http.response.start", "status": self.inner.status_code,
                    "headers": self.inner.raw_headers})
        await send({"type": "http.response.body", "body": body[: len(body) // 2],
                    "more_body": True})
        raise SimulatedDrop("simulated connection drop after the request was processed")


class HangResponse(Response):
    """The reply that never comes: wait until the client gives up (disconnects) or, after
    `seconds`, answer very late. Cancellable: an in-process client's timeout just cancels it."""

    def __init__(self, inner: Response, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        waiter = asyncio.ensure_future(_until_disconnect(receive))
        try:
            done, _ = await asyncio.wait({waiter}, timeout=self.seconds)
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        if waiter not in done:
            await self.inner(scope, receive, send)


async def _until_disconnect(receive: Receive) -> None:
    message: Message = await receive()
    while message["type"] != "http.disconnect":
        message = await receive()


class _QuietDrops(logging.Filter):
    """uvicorn logs an app exception with a traceback; a simulated drop is not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SimulatedDrop))


def _quiet_drop_logs() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in logger.filters):
        logger.addFilter(_QuietDrops())


# ----- endpoints ---------------------------------------------------------------------------------


async def _delay_reply(sim: Simulator) -> None:
    if sim.config.reply_delay_ms > 0:
        await asyncio.sleep(sim.config.reply_delay_ms / 1000)


async def panel_api(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    dialect = sim.config.dialect
    params = await read_params(request, dialect)
    action = params.get("action", "")
    sim.count(action)  # every request that reached the API, faulted or not
    fault = sim.draw_fault()
    if sim.config.latency_ms > 0:
        await asyncio.sleep(sim.config.latency_ms / 1000)
    if action in sim.overrides.latency_ms:
        await asyncio.sleep(sim.overrides.latency_ms[action] / 1000)
    page = fault_page(fault, dialect) if fault else None
    if page is not None:
        return page
    if fault == "reject":  # a definite refusal, nothing done
        code = E_SERVICE if action == "add" else E_KEY
        return reply(dialect, error_payload(dialect, SimError(code)))
    sim.settle_due()
    try:
        payload, hang = dispatch(sim, dialect, params)
    except SimError as err:
        payload, hang = error_payload(dialect, err), False
    response = reply(dialect, payload)
    await _delay_reply(sim)
    if dialect == "smartpanel" and SESSION_COOKIE not in request.cookies:
        sim.sessions += 1  # a row in the panel's session table, for every cookie-less call
        response.set_cookie(SESSION_COOKIE, secrets.token_hex(20), path="/", httponly=True)
    # Both faults below come after the action was performed: an `add` has created its order.
    if hang or fault == "timeout_after_accept":
        return HangResponse(response, sim.hang_seconds)
    if fault == "drop":
        return DropResponse(response)
    return response


async def get_faults(request: Request) -> Response:
    return JSONResponse(request.app.state.sim.faults)


async def set_faults(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    refused = await json_object_update(request, sim.set_faults, "{KIND: RATE}")
    return refused or JSONResponse(sim.faults)


async def get_stats(request: Request) -> Response:
    return JSONResponse(request.app.state.sim.stats())


async def reset_stats(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    sim.calls.clear()
    return JSONResponse(sim.stats())


async def list_orders(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    sim.settle_due()
    return JSONResponse(sim.listing())


async def set_balance(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    try:
        body = await request.json()
        value = body.get("balance") if isinstance(body, dict) else None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise TypeError("not a number")
        micros = to_micros(str(value))
    except (ValueError, TypeError) as exc:
        return JSONResponse({"error": f"balance must be a decimal amount: {exc}"}, 400)
    sim.balance = micros
    return JSONResponse({"balance": padded(sim.balance, 4)})


async def get_catalog(request: Request) -> Response:
    sim: Simulator = request.app.state.sim
    return JSONResponse({str(s.id): dataclasses.asdict(s) for s in sim.catalog.values()})


async def edit_catalog(request: Request) -> Response:
    """JSON {"<id>": {field: value, …} | null}: change, add or delist services at run time."""
    sim: Simulator = request.app.state.sim
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError('the body must be a JSON object {"<id>": {fields} | null}')
        sim.edit_catalog(body)
    except (ValueError, TypeError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return await get_catalog(request)


def create_simulator_app(config: SimConfig,
                         clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """The simulator as an ASGI app; `app.state.sim` is its state, for tests to look inside."""
    if config.dialect not in ("smartpanel", "standard"):
        raise ValueError(f"unknown dialect {config.dialect!r}")
    app = FastAPI(title="smm-gateway upstream simulator", openapi_url=None, docs_url=None,
                  redoc_url=None, redirect_slashes=False)
    app.state.sim = Simulator(config, clock)
    for path in ("/api/v1", "/api/v2", "/api/v1/", "/api/v2/"):  # no slash redirects
        app.add_route(path, panel_api, methods=["GET", "POST"], include_in_schema=False)
    app.add_route("/_sim/faults", get_faults, methods=["GET"])
    app.add_route("/_sim/faults", set_faults, methods=["POST"])
    app.add_route("/_sim/stats", get_stats, methods=["GET"])
    app.add_route("/_sim/reset-stats", reset_stats, methods=["POST"])
    app.add_route("/_sim/orders", list_orders, methods=["GET"])
    app.add_route("/_sim/balance", set_balance, methods=["POST"])
    app.add_route("/_sim/catalog", get_catalog, methods=["GET"])
    app.add_route("/_sim/catalog", edit_catalog, methods=["POST"])
    app.add_route("/_sim/overrides", get_overrides, methods=["GET"])
    app.add_route("/_sim/overrides", set_overrides, methods=["POST"])
    _quiet_drop_logs()
    return app
