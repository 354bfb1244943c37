"""The dashboard's session: a signed cookie, given for the admin token, that expires.

The cookie holds no secret of the gateway: whether its holder signed in, when, the session's
CSRF token (app/dashboard/csrf.py) and the notices for the next page. It is signed (HMAC, by
itsdangerous) with a key derived from SMMGW_ADMIN_TOKEN, so every instance that shares the
token accepts it and a new token signs everyone out. It is `HttpOnly` (no script reads it),
`SameSite=Strict` (no other site's page sends it), scoped to /dashboard, `Secure` when the
request came over HTTPS, and expires SMMGW_DASHBOARD_SESSION_SECONDS after the sign-in, however
often it is rewritten.
"""

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "smmgw_dashboard"
PATH = "/dashboard"
_PURPOSE = b"smm-gateway dashboard session v1"
_MAX_NOTICES = 4
_NOTICE_CHARS = 600
# A browser drops a cookie over 4 KB (name, attributes and all): a session that grew past this
# would sign its holder out. Older notices go first, then the last one is cut shorter.
COOKIE_BUDGET = 3600


@dataclass
class Session:
    signed_in: bool
    csrf: str
    since: float  # when it began (epoch seconds): it expires from then, not from its last use
    notices: list[tuple[str, str]] = field(default_factory=list)  # (ok | error, text)
    dirty: bool = False  # changed: the reply sets the cookie again

    def notify(self, text: str, level: str = "ok") -> None:
        if len(text) > _NOTICE_CHARS:
            text = text[: _NOTICE_CHARS - 1] + "…"
        self.notices = [*self.notices, (level, text)][-_MAX_NOTICES:]
        self.dirty = True

    def take_notices(self) -> list[tuple[str, str]]:
        taken, self.notices = self.notices, []
        if taken:
            self.dirty = True
        return taken


def fresh(*, signed_in: bool) -> Session:
    """A new session with a new CSRF token (signing in replaces the anonymous one)."""
    return Session(
        signed_in=signed_in, csrf=secrets.token_urlsafe(32), since=time.time(), dirty=True
    )


def _serializer(admin_token: str) -> URLSafeTimedSerializer:
    key = hmac.new(admin_token.encode(), _PURPOSE, hashlib.sha256).digest()
    return URLSafeTimedSerializer(key, salt="dashboard-session")


def token_is(given: str, admin_token: str) -> bool:
    """The admin token compared in constant time."""
    return secrets.compare_digest(given.encode(), admin_token.encode())


def read(request: Request, admin_token: str, lifetime: float) -> Session | None:
    """The request's session, or None: no cookie, a forged or garbled one, or an expired one."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data = _serializer(admin_token).loads(raw, max_age=lifetime)
        since = float(data["since"])
        session = Session(
            signed_in=data["in"] is True,
            csrf=str(data["csrf"]),
            since=since,
            notices=[(str(level), str(text)) for level, text in data.get("notices", [])],
        )
    except (BadSignature, KeyError, TypeError, ValueError):
        return None
    if not 0 <= time.time() - since <= lifetime or len(session.csrf) < 32:
        return None
    return session


def _signed(session: Session, admin_token: str) -> str:
    data = {
        "in": session.signed_in,
        "csrf": session.csrf,
        "since": session.since,
        "notices": session.notices,
    }
    return _serializer(admin_token).dumps(data)


def write(response: Response, session: Session, admin_token: str, *, secure: bool) -> None:
    value = _signed(session, admin_token)
    while len(value) > COOKIE_BUDGET and session.notices:
        if len(session.notices) > 1:
            session.notices = session.notices[1:]
        else:
            level, text = session.notices[0]
            shorter = text[: len(text) // 2]
            session.notices = [(level, shorter + "…")] if len(shorter) > 20 else []
        value = _signed(session, admin_token)
    response.set_cookie(
        COOKIE,
        value,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=secure,
        # A browser forgets it with the session; the signature's age is the real limit.
    )


def clear(response: Response, *, secure: bool) -> None:
    response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict", secure=secure)
