"""The contract endpoint: /api/v2 and /api/v1, one handler, every transport."""

import logging

import pydantic_core
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.contract import (
    BODY_TOO_LARGE,
    INCORRECT_REQUEST,
    INTERNAL_ERROR,
    INVALID_KEY,
    TEMPORARILY_UNAVAILABLE,
    ContractError,
)
from app.customers import authenticate
from app.db import is_unreachable
from app.limits import too_many_requests
from app.logs import SCOPE_KEY, RequestInfo
from app.metrics import error_class, observe_items
from app.panel import render
from app.panel.actions import ACTIONS, KEYED_READS, ActionContext
from app.panel.params import BodyTooLarge, read_params

log = logging.getLogger("smm_gateway.panel")

router = APIRouter()


class Reply(JSONResponse):
    """JSON through pydantic-core's serializer: byte-identical to Starlette's compact
    `json.dumps`, several times faster on a 100-order status reply (bench/README.md)."""

    def render(self, content: object) -> bytes:
        if isinstance(content, bytes):  # rendered already (the `services` reply)
            return content
        return pydantic_core.to_json(content)


async def handle(request: Request) -> JSONResponse:
    gateway = request.app.state.gateway
    # For the request's log line and metrics (app.logs.RequestLogMiddleware reports it).
    info: RequestInfo = request.scope.get(SCOPE_KEY) or RequestInfo("")
    info.action = "unknown"
    try:
        params = await read_params(request, gateway.settings.max_body_bytes)
        key = params.get("key", "").strip()
        name = params.get("action", "").strip().lower()
        action = ACTIONS.get(name)
        if action is not None:
            info.action = name
        if key:
            info.secret = key
            if gateway.limiter is not None and (wait := await gateway.limiter.take(key)):
                info.outcome = "429"
                return too_many_requests(wait)
        keyed = KEYED_READS.get(name) if key else None
        if keyed is not None:  # the action's read and the key lookup in one statement
            caller, prefetched = await keyed(gateway, key, params)
        else:
            caller, prefetched = await authenticate(gateway.db, key), None
        if key:
            gateway.db.outage.answered()  # the key lookup went through: the database is there
        if caller is None:
            raise ContractError(INVALID_KEY)
        info.customer_id = caller.customer_id
        if action is None:
            raise ContractError(INCORRECT_REQUEST)
        ctx = ActionContext(gateway, caller, params, request.headers, prefetched=prefetched)
        reply = await action(ctx)
    except ContractError as exc:
        info.outcome, info.error = error_class(exc.message), exc.message
        return Reply(render.error(exc.message))
    except BodyTooLarge:
        info.outcome = "413"
        return Reply(render.error(BODY_TOO_LARGE), status_code=413)
    except Exception as exc:
        if is_unreachable(exc):
            gateway.db.outage.failed(exc)
            info.outcome = error_class(TEMPORARILY_UNAVAILABLE)
            info.error = TEMPORARILY_UNAVAILABLE
            return Reply(render.error(TEMPORARILY_UNAVAILABLE))
        info.outcome = "500"
        log.exception("unhandled error on %s", request.url.path)
        return Reply(render.error(INTERNAL_ERROR), status_code=500)
    info.outcome = "ok"
    if ctx.items:  # a list reply: its errors are in the items
        observe_items(name, ctx.items)
        if None not in ctx.items:
            info.outcome, info.error = error_class(ctx.items[0]), ctx.items[0]
    return Reply(reply)


# Also with a trailing slash (hidden from the docs): a redirect would turn a POST into a GET.
for path in ("/api/v2", "/api/v1", "/api/v2/", "/api/v1/"):
    router.add_api_route(
        path,
        handle,
        methods=["GET", "POST"],
        tags=["panel API"],
        summary="The panel API: every action through one URL",
        operation_id="panel_" + path.strip("/").replace("/", "_"),
        include_in_schema=not path.endswith("/"),
    )
