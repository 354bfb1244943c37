"""What every page module reaches for: the gateway's parts, ids in paths, paging."""

from datetime import datetime
from typing import Annotated

from fastapi import Path, Request

from app.db import Database
from app.models import as_utc
from app.providers import ProviderClients
from app.settings import Settings

# Ids in paths: within the columns' range (a huge one is a 422, not a database overflow).
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]
PAGE_SIZE = 50


def db_of(request: Request) -> Database:
    return request.app.state.gateway.db


def settings_of(request: Request) -> Settings:
    return request.app.state.gateway.settings


def clients_of(request: Request) -> ProviderClients:
    """Every provider's client: each order is checked, synced and resolved at its own."""
    return request.app.state.gateway.providers


def page_number(text: str | None) -> int:
    """A page number from a query string: 1 for anything that is not a small positive one."""
    if text and text.isascii() and text.isdigit() and 0 < int(text) < 1_000_000:
        return int(text)
    return 1


def stored_moment(value: object) -> datetime | None:
    """A stored time, UTC: a datetime, or the ISO text SQLite or the `kv` table hold it as."""
    if isinstance(value, datetime):
        return as_utc(value)
    try:
        return as_utc(datetime.fromisoformat(value)) if isinstance(value, str) and value else None
    except ValueError:
        return None
