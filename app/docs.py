"""The integrators' docs pages, /docs (Swagger UI) and /redoc (ReDoc), served without any CDN.

The pages' scripts and styles come from the `fastapi-offline` package (which ships Swagger UI's
bundle and stylesheet and ReDoc's standalone bundle) and are served by the gateway itself under
/docs/assets/, so the pages render on a network that reaches nothing but the gateway.

Each page also carries a Content-Security-Policy that allows only the gateway's own origin:
ReDoc's sidebar, for one, always asks a CDN for its logo, and a page of ours must not tell a
third party who reads our docs (nor stall on a network that cannot reach it).
"""

import base64
import hashlib
import html
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.panel.openapi import MAIN_OPERATION_ID, PANEL_TAG

ASSETS_URL = "/docs/assets"
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))

SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"

SWAGGER_UI_PARAMETERS: dict[str, Any] = {
    "dom_id": "#swagger-ui",
    "layout": "BaseLayout",
    "deepLinking": True,
    # Swagger UI's default validator badge loads an image from validator.swagger.io.
    "validatorUrl": None,
    "docExpansion": "list",
    "defaultModelsExpandDepth": 0,
    "defaultModelExpandDepth": 3,
    "displayRequestDuration": True,
    "showExtensions": True,
    "showCommonExtensions": True,
}

# The panel operation is what customers come for: it opens on arrival (unless the address
# already names an operation), without scrolling past the introduction.
_SWAGGER_INIT = """
window.ui = SwaggerUIBundle(Object.assign({config}, {{
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  onComplete: function () {{
    if (!window.location.hash) {{
      window.ui.layoutActions.show(["operations", {tag}, {operation}], true);
    }}
  }}
}}));
"""

_SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{assets}/{css}">
<link rel="icon" type="image/png" href="{assets}/{favicon}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/{js}"></script>
<script>{init}</script>
</body>
</html>
"""

_REDOC_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" type="image/png" href="{assets}/{favicon}">
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<noscript>ReDoc needs JavaScript; the same document is at {openapi_url}.</noscript>
<redoc spec-url="{openapi_url}"></redoc>
<script src="{assets}/{js}"></script>
</body>
</html>
"""


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e")


def content_security_policy(*inline_scripts: str) -> str:
    """Only this origin; inline scripts by hash; inline styles (both UIs set style attributes)."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in inline_scripts
    )
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' {hashes}".strip(),
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            "worker-src 'self' blob:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ]
    )


def swagger_ui_page(title: str, openapi_url: str, assets: str) -> HTMLResponse:
    init = _SWAGGER_INIT.format(
        config=_script_json({**SWAGGER_UI_PARAMETERS, "url": openapi_url}),
        tag=_script_json(PANEL_TAG),
        operation=_script_json(MAIN_OPERATION_ID),
    )
    page = _SWAGGER_PAGE.format(
        title=html.escape(title),
        assets=html.escape(assets),
        css=SWAGGER_CSS,
        js=SWAGGER_JS,
        favicon=FAVICON,
        init=init,
    )
    return HTMLResponse(page, headers={"Content-Security-Policy": content_security_policy(init)})


def redoc_page(title: str, openapi_url: str, assets: str) -> HTMLResponse:
    page = _REDOC_PAGE.format(
        title=html.escape(title),
        assets=html.escape(assets),
        openapi_url=html.escape(openapi_url),
        js=REDOC_JS,
        favicon=FAVICON,
    )
    return HTMLResponse(page, headers={"Content-Security-Policy": content_security_policy()})


def install_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve Swagger UI at `docs_url` and ReDoc at `redoc_url`, with local assets only.

    Create the app with `docs_url=None, redoc_url=None` so FastAPI's CDN pages stay off.
    """
    assets = (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON)
    missing = [name for name in assets if not (ASSETS_DIR / name).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-offline is missing docs assets: {', '.join(missing)}")
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    def _urls(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "").rstrip("/")
        return root + (app.openapi_url or "/openapi.json"), root + ASSETS_URL

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return swagger_ui_page(f"{app.title}: API docs", *_urls(request))

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return redoc_page(f"{app.title}: API reference", *_urls(request))
