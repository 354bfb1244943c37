"""Reading a contract request: every transport clients use, merged into one dict of strings.

Body and query string are merged and the body wins; form, multipart and JSON bodies are all
read; numbers become strings. Anything unreadable is `Incorrect request`, never a 4xx/5xx,
except a body over the limit (413).
"""

import json
from decimal import Decimal
from urllib.parse import parse_qsl

from fastapi import Request

from app.contract import INCORRECT_REQUEST, ContractError
from app.parsing import is_unicode


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _scalar(value: object) -> str:
    """A JSON value as the string a form would have carried."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # 100.0 → "100", 1.5 → "1.5": what the client meant, without exponent notation.
        return format(Decimal(repr(value)).normalize(), "f")
    if isinstance(value, list) and all(
        isinstance(v, str | int) and not isinstance(v, bool) for v in value
    ):
        return ",".join(str(v) for v in value)  # "orders": [1, 2] means "1,2"
    raise ContractError(INCORRECT_REQUEST)


def _form(body: bytes) -> dict[str, str]:
    try:
        text = body.decode("utf-8")
        return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict"))
    except (UnicodeDecodeError, ValueError):
        raise ContractError(INCORRECT_REQUEST) from None


def _json(body: bytes) -> dict[str, str]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):  # deep nesting: not a request
        raise ContractError(INCORRECT_REQUEST) from None
    if not isinstance(data, dict):
        raise ContractError(INCORRECT_REQUEST)
    params = {}
    for name, value in data.items():
        try:
            params[str(name)] = _scalar(value)
        except ContractError:
            continue  # an object or a mixed list: no parameter of ours, so ignored
    return params


async def _multipart(request: Request, body: bytes) -> dict[str, str]:
    """Parse a multipart body already read (within the size limit) by replaying it."""

    async def replay() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form()
    except Exception:  # a broken multipart body is the client's error, not ours
        raise ContractError(INCORRECT_REQUEST) from None
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _clean(params: dict[str, str]) -> dict[str, str]:
    """Refuse text that is not Unicode (a lone surrogate, from a JSON `\\udc80` escape): it
    cannot be stored, logged or sent upstream, so it must stop here, before any charge."""
    if not all(is_unicode(name, value) for name, value in params.items()):
        raise ContractError(INCORRECT_REQUEST)
    return params


async def read_params(request: Request, max_bytes: int) -> dict[str, str]:
    return _clean(await _merged(request, max_bytes))


async def _merged(request: Request, max_bytes: int) -> dict[str, str]:
    params = dict(request.query_params)
    if request.method != "POST":
        return params
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, max_bytes)
    if content_type == "multipart/form-data":
        params.update(await _multipart(request, body))
        return params
    if not body.strip():
        return params
    if content_type == "application/json" or (not content_type and body.lstrip()[:1] == b"{"):
        params.update(_json(body))
    else:
        params.update(_form(body))
    return params
