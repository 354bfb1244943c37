"""Providers: the upstream panels the gateway buys from, and one client for each.

Provider `default` is today's single upstream: its NULL url and key mean "from the settings"
(SMMGW_UPSTREAM_URL / SMMGW_UPSTREAM_KEY, timeouts, family, double decoding), so a deployment
that never adds a provider runs exactly as before. Other providers keep their key encrypted
(app.provider_keys); a key is never shown after it is set, only its fingerprint.

`ProviderClients` holds one `UpstreamClient` per provider (one connection pool each), built
from the table and rebuilt when a provider's settings change (its `updated_at` moves).
"""

import logging
from dataclasses import dataclass
from datetime import datetime

import httpx
from sqlalchemy import insert, select, update

from app.db import Database
from app.errors import NotFound, OperatorError
from app.family import FAMILIES
from app.models import DEFAULT_PROVIDER, DEFAULT_PROVIDER_ID, Provider, as_utc, utcnow
from app.parsing import row_id
from app.provider_keys import decrypt_key, encrypt_key, fingerprint
from app.settings import Settings
from app.upstream import UpstreamClient

log = logging.getLogger("smm_gateway.providers")

MAX_NAME_LENGTH = 64
MAX_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class ProviderView:
    """A provider as an operator sees it: never its key, only whether one is set and its
    fingerprint."""

    id: int
    name: str
    url: str | None  # None: SMMGW_UPSTREAM_URL (provider `default` only)
    key_fingerprint: str | None
    key_from_settings: bool
    family: str | None  # as set; None: read from its catalog's shape
    family_heard: str | None
    double_decode: bool | None
    connect_timeout_seconds: float | None
    read_timeout_seconds: float | None
    enabled: bool
    low_balance_threshold: int | None
    balance: int | None
    balance_currency: str | None
    balance_at: datetime | None
    out_of_funds_at: datetime | None
    catalog_synced_at: datetime | None
    catalog_error: str | None
    updated_at: datetime

    @property
    def is_default(self) -> bool:
        return self.id == DEFAULT_PROVIDER_ID

    @property
    def low_balance(self) -> bool:
        """Its balance as last heard is below the operator's threshold."""
        return (
            self.enabled
            and self.low_balance_threshold is not None
            and self.balance is not None
            and self.balance < self.low_balance_threshold
        )


def _view(row: Provider) -> ProviderView:
    return ProviderView(
        id=row.id,
        name=row.name,
        url=row.url,
        key_fingerprint=row.key_fingerprint,
        key_from_settings=row.id == DEFAULT_PROVIDER_ID and row.key_encrypted is None,
        family=row.family,
        family_heard=row.family_heard,
        double_decode=row.double_decode,
        connect_timeout_seconds=row.connect_timeout_seconds,
        read_timeout_seconds=row.read_timeout_seconds,
        enabled=row.enabled,
        low_balance_threshold=row.low_balance_threshold,
        balance=row.balance,
        balance_currency=row.balance_currency,
        balance_at=row.balance_at,
        out_of_funds_at=row.out_of_funds_at,
        catalog_synced_at=row.catalog_synced_at,
        catalog_error=row.catalog_error,
        updated_at=row.updated_at,
    )


async def _rows(db: Database) -> list[Provider]:
    async with db.read() as conn:
        result = await conn.execute(select(Provider).order_by(Provider.id))
        return [Provider(**row._mapping) for row in result]


async def list_providers(db: Database) -> list[ProviderView]:
    return [_view(row) for row in await _rows(db)]


async def provider_id_for(db: Database, ref: str | int) -> int:
    """A provider named by id or by exact name (ASCII digits make an id)."""
    text = str(ref).strip()
    async with db.read() as conn:
        if text.isascii() and text.isdigit():
            number = row_id(text)
            found = (
                None
                if number is None
                else await conn.scalar(select(Provider.id).where(Provider.id == number))
            )
        else:
            found = await conn.scalar(select(Provider.id).where(Provider.name == text))
    if found is None:
        raise NotFound(f"no provider {text!r}")
    return found


async def get_provider(db: Database, ref: str | int) -> ProviderView:
    provider_id = await provider_id_for(db, ref)
    return next(v for v in await list_providers(db) if v.id == provider_id)


# --- the operator's changes ---------------------------------------------------------------------


def _checked_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH or name.isdigit() or any(c.isspace() for c in name):
        raise OperatorError(
            f"a provider's name is 1 to {MAX_NAME_LENGTH} characters without spaces, not only"
            " digits (digits name a provider by id)"
        )
    return name


def _checked_url(url: str) -> str:
    url = url.strip()
    if not url.startswith(("http://", "https://")) or len(url) > 2048:
        raise OperatorError("a provider's URL starts with http:// or https://")
    return url


def _checked_timeout(name: str, seconds: float | None) -> float | None:
    if seconds is not None and not 0 < seconds <= MAX_TIMEOUT_SECONDS:
        raise OperatorError(f"{name} must be more than 0 and at most {MAX_TIMEOUT_SECONDS:g} s")
    return seconds


def _checked_family(family: str | None) -> str | None:
    if family is not None and family not in FAMILIES:
        raise OperatorError(f"a family is one of {', '.join(FAMILIES)}")
    return family


def _key_values(settings: Settings, key: str) -> dict[str, object]:
    key = key.strip()
    if not key:
        raise OperatorError("a provider's key must not be empty")
    return {
        "key_encrypted": encrypt_key(settings.secret_key, key),
        "key_fingerprint": fingerprint(key),
    }


async def add_provider(
    db: Database,
    settings: Settings,
    *,
    name: str,
    url: str,
    key: str,
    family: str | None = None,
    double_decode: bool | None = None,
    connect_timeout_seconds: float | None = None,
    read_timeout_seconds: float | None = None,
    low_balance_threshold: int | None = None,
) -> ProviderView:
    values: dict[str, object] = {
        "name": _checked_name(name),
        "url": _checked_url(url),
        **_key_values(settings, key),
        "family": _checked_family(family),
        "double_decode": double_decode,
        "connect_timeout_seconds": _checked_timeout("--connect-timeout", connect_timeout_seconds),
        "read_timeout_seconds": _checked_timeout("--timeout", read_timeout_seconds),
        "enabled": True,
        "low_balance_threshold": _checked_threshold(low_balance_threshold),
        "created_at": utcnow(),
        "updated_at": utcnow(),
    }
    async with db.write() as conn:
        if await conn.scalar(select(Provider.id).where(Provider.name == values["name"])):
            raise OperatorError(f"a provider named {values['name']!r} exists already")
        await conn.execute(insert(Provider).values(**values))
    log.info("provider %r added (%s)", values["name"], values["url"])
    return await get_provider(db, str(values["name"]))


def _checked_threshold(micros: int | None) -> int | None:
    if micros is not None and micros < 0:
        raise OperatorError("a low-balance threshold must not be negative")
    return micros


# Fields `update_provider` takes; None in `clear` returns a field to its default.
SETTABLE = (
    "url",
    "key",
    "family",
    "double_decode",
    "connect_timeout_seconds",
    "read_timeout_seconds",
    "low_balance_threshold",
    "enabled",
    "name",
)


async def update_provider(
    db: Database, settings: Settings, ref: str | int, **changes: object
) -> ProviderView:
    """Change a provider's settings. A value of None returns the field to its default (the
    settings' for provider `default`, the family's for double decoding, …)."""
    unknown = set(changes) - set(SETTABLE)
    if unknown:
        raise OperatorError(f"cannot set {', '.join(sorted(unknown))}")
    if not changes:
        raise OperatorError("nothing to change")
    provider_id = await provider_id_for(db, ref)
    values: dict[str, object] = {}
    for field, value in changes.items():
        if field == "key":
            if value is None:
                if provider_id != DEFAULT_PROVIDER_ID:
                    raise OperatorError("only provider `default` takes its key from the settings")
                values |= {"key_encrypted": None, "key_fingerprint": None}
            else:
                values |= _key_values(settings, str(value))
        elif field == "url":
            if value is None and provider_id != DEFAULT_PROVIDER_ID:
                raise OperatorError("only provider `default` takes its URL from the settings")
            values["url"] = None if value is None else _checked_url(str(value))
        elif field == "name":
            if provider_id == DEFAULT_PROVIDER_ID:
                raise OperatorError("provider `default` keeps its name")
            values["name"] = _checked_name(str(value))
        elif field == "family":
            values["family"] = _checked_family(value)  # type: ignore[arg-type]
        elif field in ("connect_timeout_seconds", "read_timeout_seconds"):
            values[field] = _checked_timeout(field, value)  # type: ignore[arg-type]
        elif field == "low_balance_threshold":
            values[field] = _checked_threshold(value)  # type: ignore[arg-type]
        else:
            values[field] = value
    values["updated_at"] = utcnow()
    async with db.write() as conn:
        if "name" in values and await conn.scalar(
            select(Provider.id).where(Provider.name == values["name"], Provider.id != provider_id)
        ):
            raise OperatorError(f"a provider named {values['name']!r} exists already")
        await conn.execute(update(Provider).where(Provider.id == provider_id).values(**values))
    log.info("provider %s changed: %s", provider_id, ", ".join(sorted(changes)))  # never values
    return await get_provider(db, provider_id)


# --- what the gateway learns about a provider ---------------------------------------------------


async def record_balance(db: Database, provider_id: int, micros: int, currency: str) -> None:
    """Our balance there as just heard (not a setting: `updated_at` stays, no client rebuilt)."""
    now = utcnow()
    values: dict[str, object] = {
        "balance": micros,
        "balance_currency": currency[:8] or None,
        "balance_at": now,
    }
    if micros > 0:
        values["out_of_funds_at"] = None
    async with db.write() as conn:
        await conn.execute(update(Provider).where(Provider.id == provider_id).values(**values))


async def mark_out_of_funds(db: Database, provider_id: int, out: bool) -> None:
    """It refused an order for lack of funds (`out`), or took one again."""
    async with db.write() as conn:
        await conn.execute(
            update(Provider)
            .where(Provider.id == provider_id)
            .values(out_of_funds_at=utcnow() if out else None)
        )


async def low_balances(db: Database) -> list[ProviderView]:
    """Enabled providers whose balance as last heard is below their threshold."""
    return [v for v in await list_providers(db) if v.low_balance]


def low_balance_warning(views: list[ProviderView]) -> str:
    from app.money import render

    shown = "; ".join(
        f"{v.name} {render(v.balance or 0)} {v.balance_currency or ''} < "
        f"{render(v.low_balance_threshold or 0)}".replace("  ", " ")
        for v in views
    )
    return (
        f"WARNING: low balance at provider{'s' if len(views) > 1 else ''} {shown}: top up there"
        " (smm-gateway providers balance)"
    )


# --- clients ------------------------------------------------------------------------------------


def build_client(
    settings: Settings, row: Provider, transport: httpx.AsyncBaseTransport | None = None
) -> UpstreamClient:
    """The client for one provider row; what the row leaves NULL comes from the settings for
    provider `default` (exactly today's single upstream), from the defaults for the others."""
    is_default = row.id == DEFAULT_PROVIDER_ID
    if row.key_encrypted is not None:
        key = decrypt_key(settings.secret_key, row.key_encrypted)
    elif is_default:
        key = settings.upstream_key
    else:
        raise OperatorError(f"provider {row.name!r} has no key")
    family = row.family or (
        None if not is_default or settings.upstream_family == "auto" else settings.upstream_family
    )
    double_decode = row.double_decode
    if double_decode is None and is_default:
        double_decode = settings.upstream_double_decode
    client = UpstreamClient(
        row.url or settings.upstream_url,
        key,
        connect_timeout=row.connect_timeout_seconds or settings.upstream_connect_timeout_seconds,
        read_timeout=row.read_timeout_seconds or settings.upstream_timeout_seconds,
        double_decode=double_decode,
        family=family,  # type: ignore[arg-type]
        max_link_length=settings.upstream_max_link_length if is_default else None,
        transport=transport,
        provider=row.name,
    )
    if row.family_heard in FAMILIES:
        client.family_heard = row.family_heard  # type: ignore[assignment]
    return client


def _overrides_settings(row: Provider) -> bool:
    """Provider `default` with nothing of its own set is the settings' upstream."""
    return any(
        value is not None
        for value in (
            row.url,
            row.key_encrypted,
            row.family,
            row.double_decode,
            row.connect_timeout_seconds,
            row.read_timeout_seconds,
        )
    )


@dataclass
class _Held:
    client: UpstreamClient | None  # None with `from_settings`: whatever `default` is now
    version: datetime
    enabled: bool
    name: str
    from_settings: bool = False


class ProviderClients:
    """One client per provider, by id. `default` is the settings' client until provider
    `default` is given settings of its own. Rebuilt on `refresh` when a provider changed;
    a replaced client is closed with the others (a call may still be using it)."""

    def __init__(
        self,
        settings: Settings | None,
        transport: httpx.AsyncBaseTransport | None = None,
        default: UpstreamClient | None = None,
    ) -> None:
        """Without `settings`, only `default` (a caller holding one client): never refreshed."""
        if default is None:
            assert settings is not None
            default = UpstreamClient.from_settings(settings, transport=transport)
        self.settings = settings
        self.transport = transport
        self.default = default
        self._held: dict[int, _Held] = {}
        self._retired: list[UpstreamClient] = []

    def versions(self) -> dict[int, datetime]:
        return {pid: held.version for pid, held in self._held.items()}

    async def refresh(self, db: Database) -> None:
        """Read the providers table; (re)build the clients of providers that changed."""
        if self.settings is None:
            return
        for row in await _rows(db):
            version = as_utc(row.updated_at)
            held = self._held.get(row.id)
            if held is not None and held.version == version:
                held.enabled = row.enabled
                continue
            client: UpstreamClient | None = None
            from_settings = row.id == DEFAULT_PROVIDER_ID and not _overrides_settings(row)
            if from_settings:
                if row.family_heard in FAMILIES and self.default.family_heard is None:
                    self.default.family_heard = row.family_heard  # type: ignore[assignment]
            else:
                try:
                    client = build_client(self.settings, row, self.transport)
                except OperatorError as exc:
                    log.error("provider %r cannot be used: %s", row.name, exc)
                    client = None
            if held is not None and held.client is not None:
                self._retired.append(held.client)
            self._held[row.id] = _Held(client, version, row.enabled, row.name, from_settings)

    async def refresh_if_changed(self, db: Database, seen: dict[int, datetime]) -> None:
        """`seen`: providers' `updated_at` as a read just found them."""
        known = self.versions()
        if any(known.get(pid) != as_utc(moment) for pid, moment in seen.items()):
            await self.refresh(db)

    def get(self, provider_id: int) -> UpstreamClient | None:
        held = self._held.get(provider_id)
        if held is None:
            return self.default if provider_id == DEFAULT_PROVIDER_ID else None
        return self._client(held)

    def _client(self, held: _Held) -> UpstreamClient | None:
        return self.default if held.from_settings else held.client

    def name(self, provider_id: int) -> str:
        held = self._held.get(provider_id)
        if held is not None:
            return held.name
        return DEFAULT_PROVIDER if provider_id == DEFAULT_PROVIDER_ID else str(provider_id)

    def enabled(self) -> dict[int, UpstreamClient]:
        """Every enabled provider with a usable client, by id (default alone before the first
        refresh)."""
        if not self._held:
            return {DEFAULT_PROVIDER_ID: self.default}
        clients = {pid: self._client(held) for pid, held in self._held.items() if held.enabled}
        return {pid: client for pid, client in clients.items() if client is not None}

    def all(self) -> dict[int, UpstreamClient]:
        """Every provider with a usable client, enabled or not (its orders still sync)."""
        if not self._held:
            return {DEFAULT_PROVIDER_ID: self.default}
        clients = {pid: self._client(held) for pid, held in self._held.items()}
        return {pid: client for pid, client in clients.items() if client is not None}

    @property
    def max_call_seconds(self) -> float:
        return max(client.max_call_seconds for client in self.all().values())

    async def aclose(self) -> None:
        closing = {id(c): c for c in [self.default, *self._retired]}
        for held in self._held.values():
            if held.client is not None:
                closing[id(held.client)] = held.client
        for client in closing.values():
            await client.aclose()


def as_clients(upstream: "UpstreamClient | ProviderClients") -> ProviderClients:
    """A caller holding one client holds provider `default` alone."""
    if isinstance(upstream, UpstreamClient):
        return ProviderClients(None, default=upstream)
    return upstream
