"""Per-item answer overrides (`/_sim/overrides`): make one order's `status` or one service's
`services` entry say exactly what a misbehaving panel says -- a poison number ("1e+30", NaN,
-5), a status word we do not know ("Rejected") -- while everything else answers as usual.
`latency_ms` slows one action only ({"latency_ms": {"add": 800}}), so that a test can act
(drop database connections, take a lock) while that call is in flight.

The fields given replace the answer's own, verbatim; nothing else changes (what the order
costs or keeps upstream stays the simulator's own). Kept apart from the state so that it is
one self-contained knob.
"""

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

KINDS = ("status", "services")


class Overrides:
    def __init__(self) -> None:
        self.by_kind: dict[str, dict[int, dict[str, Any]]] = {kind: {} for kind in KINDS}
        self.latency_ms: dict[str, float] = {}  # action -> extra delay, on top of SimConfig's

    def set(self, body: Mapping[str, object]) -> None:
        """{"status"|"services": {"<id>": {field: value} | null}, "latency_ms": {action: ms}}:
        set or clear (null; 0 for a latency)."""
        body = dict(body)
        latency = body.pop("latency_ms", {})
        if not isinstance(latency, dict) or not all(
            isinstance(ms, int | float) and not isinstance(ms, bool) and ms >= 0
            for ms in latency.values()
        ):
            raise ValueError('give "latency_ms": {"<action>": milliseconds >= 0}')
        for kind, items in body.items():
            if kind not in KINDS or not isinstance(items, dict):
                raise ValueError('give {"status"|"services": {"<id>": {fields} | null}}')
            for raw_id, fields in items.items():
                if not str(raw_id).isdigit() or not isinstance(fields, dict | None):
                    raise ValueError(f"{kind} {raw_id!r}: a whole-number id and an object or null")
        self.latency_ms = {a: float(ms) for a, ms in {**self.latency_ms, **latency}.items() if ms}
        for kind, items in body.items():
            table = self.by_kind[kind]
            for raw_id, fields in items.items():  # type: ignore[union-attr]
                if fields is None:
                    table.pop(int(raw_id), None)
                else:
                    table[int(raw_id)] = dict(fields)

    def apply(self, kind: str, item_id: int, payload: dict[str, object]) -> dict[str, object]:
        fields = self.by_kind[kind].get(item_id)
        return payload if fields is None else {**payload, **fields}

    def listing(self) -> dict[str, object]:
        tables = {kind: {str(k): v for k, v in t.items()} for kind, t in self.by_kind.items()}
        return {**tables, "latency_ms": self.latency_ms}


async def json_object_update(
    request: Request, apply: Callable[[dict[str, Any]], None], shape: str
) -> JSONResponse | None:
    """Apply a knob's JSON object body; a 400 with the reason when it is not one `apply` takes."""
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError(f"the body must be a JSON object {shape}".rstrip())
        apply(body)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return None


async def get_overrides(request: Request) -> Response:
    return JSONResponse(request.app.state.sim.overrides.listing())


async def set_overrides(request: Request) -> Response:
    overrides: Overrides = request.app.state.sim.overrides
    refused = await json_object_update(request, overrides.set, "")
    return refused or JSONResponse(overrides.listing())
