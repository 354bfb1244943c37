"""Pages from Jinja2 templates (autoescaped), with the headers every dashboard page carries.

No script runs on any page: the Content-Security-Policy allows none, styles and images come
from the gateway alone, and forms post only to it.
"""

from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from app.models import as_utc
from app.money import bp_to_percent, render

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "style-src 'self'",
        "img-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer makes Chromium post `Origin: null`
    "Cache-Control": "no-store",  # a page can show a key once: never from a cache
}


def money(micros: int | None) -> str:
    return "–" if micros is None else render(micros)


def percent(bp: int | None) -> str:
    return "default" if bp is None else f"{bp_to_percent(bp)}%"


def when(moment: datetime | None) -> str:
    return "–" if moment is None else as_utc(moment).strftime("%Y-%m-%d %H:%M:%S")


def age(moment: datetime | None) -> str:
    """How long ago, in the largest unit that says it ("3 min", "2 h", "5 d")."""
    if moment is None:
        return "never"
    seconds = max(0, int((datetime.now(UTC) - as_utc(moment)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


_env = Environment(
    loader=PackageLoader("app.dashboard", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,  # a misspelt name fails the page (and its test), not blank
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(money=money, percent=percent, when=when, age=age)


def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A whole page: the template with the session's CSRF token and notices, the currency."""
    session = getattr(request.state, "session", None)
    gateway = request.app.state.gateway
    body = _env.get_template(template).render(
        csrf=session.csrf if session is not None else "",
        signed_in=bool(session and session.signed_in),
        notices=session.take_notices() if session is not None else [],
        currency=gateway.settings.currency,
        path=request.url.path,
        **context,
    )
    return HTMLResponse(body, status_code=status_code, headers=HEADERS)
