"""Who may see a dashboard page and post its forms, checked before any page code runs.

`DashboardRoute` is every dashboard route's class: off (no SMMGW_ADMIN_TOKEN), the route
answers 404 like a path that does not exist; a page asked without a signed-in session sends
the browser to the sign-in form; a POST without a valid session and the session's CSRF token
is refused (403) before its form is acted on. The sign-in page and the static files are
`public` (seen signed out); their POSTs are still CSRF-checked.
"""

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError

from app.dashboard import session as sessions
from app.dashboard.csrf import form_is_ours
from app.dashboard.render import page
from app.errors import NotFound, OperatorError

LOGIN = "/dashboard/login"
HOME = "/dashboard"
WRONG_TOKEN_DELAY_SECONDS = 1.0  # a guesser gets one try a second per connection


def public(endpoint: Callable) -> Callable:  # type: ignore[type-arg]
    """Mark an endpoint as seen signed out (the sign-in form, the stylesheet)."""
    endpoint.dashboard_public = True  # type: ignore[attr-defined]
    return endpoint


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path of ours, never another site."""
    if target and target.startswith(HOME) and not target.startswith("//") and "\\" not in target:
        return target
    return HOME


class DashboardRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()
        is_public = getattr(self.endpoint, "dashboard_public", False)

        async def route(request: Request) -> Response:
            settings = request.app.state.gateway.settings
            token: str = settings.admin_token
            if not token:
                return JSONResponse({"detail": "Not Found"}, status_code=404)  # off: absent
            session = sessions.read(request, token, settings.dashboard_session_seconds)
            request.state.session = session
            if request.method == "POST":
                if not await form_is_ours(request, session):
                    return refused(request)
                if not is_public and not (session and session.signed_in):
                    return refused(request)
            elif not is_public and not (session and session.signed_in):
                here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"{LOGIN}?next={quote(here)}", status_code=303)
            try:
                response = await handler(request)
            except NotFound as exc:
                response = page(request, "missing.html", status_code=404, what=str(exc))
            except RequestValidationError:  # a path id that is no id (`/orders/abc`, `/orders/0`)
                response = page(request, "missing.html", status_code=404, what="No such page")
            current = request.state.session
            if current is not None and current.dirty:
                sessions.write(response, current, token, secure=_secure(request))
            return response

        return route


def refused(request: Request) -> Response:
    request.state.session = None  # a refused form changes nothing, the cookie included
    return page(request, "refused.html", status_code=403)


def sign_in(request: Request, given: str) -> bool:
    settings = request.app.state.gateway.settings
    if not sessions.token_is(given, settings.admin_token):
        return False
    request.state.session = sessions.fresh(signed_in=True)  # a new CSRF token with it
    return True


async def wrong_token_pause() -> None:
    await asyncio.sleep(WRONG_TOKEN_DELAY_SECONDS)


def sign_out(request: Request) -> None:
    """Replace the signed-in session by an anonymous one (with a notice that says so)."""
    anonymous = sessions.fresh(signed_in=False)
    anonymous.notify("Signed out.")
    request.state.session = anonymous


def ensure_session(request: Request) -> sessions.Session:
    """The sign-in form needs a session for its CSRF token: an anonymous one if none."""
    if request.state.session is None:
        request.state.session = sessions.fresh(signed_in=False)
    return request.state.session


def notify(request: Request, text: str, level: str = "ok") -> None:
    request.state.session.notify(text, level)


def readable(exc: ValidationError) -> str:
    """A form's mistakes in one line: 'amount: …; ref: …'."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "form"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


async def act(request: Request, back: str, action: Callable[[], Awaitable[str]]) -> Response:
    """Run one operation for a form: its one-line result, or why it was refused, is the notice
    on the page the browser is sent back to (POST, then redirect, then GET)."""
    try:
        notify(request, await action())
    except ValidationError as exc:
        notify(request, readable(exc), "error")
    except (OperatorError, NotFound) as exc:
        notify(request, str(exc), "error")
    return RedirectResponse(back, status_code=303)


def refused_form(request: Request, exc: ValidationError | OperatorError, back: str) -> Response:
    """A form whose reply is a page of its own (a key shown once) that was refused: the
    reason is the notice on the page it came from."""
    text = readable(exc) if isinstance(exc, ValidationError) else str(exc)
    notify(request, text, "error")
    return RedirectResponse(back, status_code=303)
