"""HEAD answered wherever GET is: load balancers and uptime checks probe with HEAD.

FastAPI's routes list only the methods they are declared with, so `HEAD /healthz` would be a
405. This pure ASGI middleware runs a HEAD request as the GET it stands for and sends the
reply's status and headers (Content-Length included, as HTTP asks) without its body.
"""

from typing import Any


class HeadAsGetMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)
