"""The baseline for bench/gateway.py: a bare FastAPI app with one POST endpoint.

It reads the form-encoded body exactly the way the gateway does (the whole body, then
`urllib.parse.parse_qsl`), and returns a constant JSON reply. No database, no key check, no
dispatch: whatever the gateway does beyond this is what its ratio to this endpoint measures.
Served like the gateway (uvicorn, one worker, uvloop + httptools, no access log):

    .venv/bin/uvicorn --app-dir bench bare:app --port 8090 --log-level warning --no-access-log
"""

from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

REPLY = {"status": "ok", "balance": "100.00", "currency": "USD"}

app = FastAPI(title="bench baseline", openapi_url=None, docs_url=None, redoc_url=None)


@app.post("/api/v2")
async def bare(request: Request) -> JSONResponse:
    params = dict(parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True))
    if not params.get("key"):
        return JSONResponse({"error": "Invalid API key"})
    return JSONResponse(REPLY)
