"""The dashboard's routes under /dashboard: sign-in and sign-out here, each page's own in
app/dashboard/pages/, the stylesheet from app/dashboard/static/. Never in /openapi.json."""

from importlib.resources import files
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from app.dashboard import auth
from app.dashboard.auth import DashboardRoute, public
from app.dashboard.forms import fields
from app.dashboard.pages import customers, ledger, orders, overview, providers, services
from app.dashboard.render import HEADERS, page

router = APIRouter(prefix="/dashboard", route_class=DashboardRoute)
# The pages' routers carry the prefix themselves: the overview's path is /dashboard itself.
routes = APIRouter(include_in_schema=False)

_STATIC = files("app.dashboard") / "static"
_STATIC_TYPES = {"dashboard.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}


@router.get("/static/{name}")
@public
async def static(name: str) -> Response:
    """The stylesheet and the icon: every byte a page needs comes from here (no CDN)."""
    if name not in _STATIC_TYPES:
        return Response("Not Found", status_code=404)
    body = (_STATIC / name).read_bytes()
    headers = {**HEADERS, "Cache-Control": "public, max-age=3600"}
    return Response(body, media_type=_STATIC_TYPES[name], headers=headers)


@router.get("/login")
@public
async def login_form(request: Request, next: str | None = None) -> Response:
    auth.ensure_session(request)
    return page(request, "login.html", next=auth.safe_next(next))


@router.post("/login")
@public
async def login(request: Request) -> Response:
    values = await fields(request)
    target = auth.safe_next(values.get("next"))
    if auth.sign_in(request, values.get("token", "")):
        return RedirectResponse(target, status_code=303)
    await auth.wrong_token_pause()
    auth.notify(request, "That is not the admin token.", "error")
    return RedirectResponse(f"{auth.LOGIN}?next={quote(target)}", status_code=303)


@router.post("/logout")
async def logout(request: Request) -> Response:
    auth.sign_out(request)
    return RedirectResponse(auth.LOGIN, status_code=303)


routes.include_router(router)
for pages in (overview, customers, orders, services, providers, ledger):
    routes.include_router(pages.router)
