"""The contract endpoint: /api/v2 and /api/v1, one handler, every transport."""

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.contract import (
    BODY_TOO_LARGE,
    INCORRECT_REQUEST,
    INTERNAL_ERROR,
    INVALID_KEY,
    ContractError,
)
from app.customers import authenticate
from app.panel import render
from app.panel.actions import ACTIONS, ActionContext
from app.panel.params import BodyTooLarge, read_params

log = logging.getLogger("smm_gateway.panel")

router = APIRouter()


async def handle(request: Request) -> JSONResponse:
    gateway = request.app.state.gateway
    try:
        params = await read_params(request, gateway.settings.max_body_bytes)
        caller = await authenticate(gateway.db, params.get("key", "").strip())
        if caller is None:
            raise ContractError(INVALID_KEY)
        action = ACTIONS.get(params.get("action", "").strip().lower())
        if action is None:
            raise ContractError(INCORRECT_REQUEST)
        reply = await action(ActionContext(gateway, caller, params, request.headers))
    except ContractError as exc:
        return JSONResponse(render.error(exc.message))
    except BodyTooLarge:
        return JSONResponse(render.error(BODY_TOO_LARGE), status_code=413)
    except Exception:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(render.error(INTERNAL_ERROR), status_code=500)
    return JSONResponse(reply)


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
