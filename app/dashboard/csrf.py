"""Every dashboard form carries the session's CSRF token; a POST without it, or with another,
changes nothing (a synchronizer token kept in the signed session cookie).

SameSite=Strict already keeps other sites' pages from sending the cookie; the token also
covers a browser that ignores SameSite, and the Origin check a page served by another origin
(another port of the same host counts as another site to SameSite, not to the cookie).
"""

import secrets
from urllib.parse import urlsplit

from fastapi import Request

from app.dashboard.session import Session

FIELD = "csrf"


async def form_is_ours(request: Request, session: Session | None) -> bool:
    """True when the POST came from one of our pages: its Origin (when the browser says one)
    is this host, and its form's token is the session's."""
    origin = request.headers.get("origin")
    # "null": a browser that hides the origin (privacy settings); the token decides alone.
    if origin not in (None, "null") and urlsplit(origin).netloc != request.headers.get("host"):
        return False
    if session is None:
        return False
    given = (await request.form()).get(FIELD)
    if not isinstance(given, str):
        return False
    return secrets.compare_digest(given.encode(), session.csrf.encode())
