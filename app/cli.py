"""The operator's command line (`smm-gateway`): a thin face over the domain modules.

Every command that prints data takes `--json` (money as decimal strings, markups as percent
strings). Exit codes: 0 done; 1 a bad value, or a request that cannot be carried out;
2 invalid settings, or a wrong combination of options. A failure prints one line on stderr.
Each database command migrates first, so a fresh SQLite file just works.

Adding a command group (e.g. `orders`) is one block: `orders_app = _group("orders", "…")`,
then `@orders_app.command()` functions built on `_run()`.
"""

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from app import customers, ledger
from app.customers import CustomerView, KeyView
from app.db import Database
from app.errors import NotFound, OperatorError
from app.ledger import EntryView
from app.money import MoneyError, bp_to_percent, parse_micros, percent_to_bp, render
from app.settings import Settings, SettingsError, load_settings

T = TypeVar("T")

app = typer.Typer(
    name="smm-gateway",
    help="smm-gateway: a reseller gateway for SMM panels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _group(name: str, help_text: str) -> typer.Typer:
    group = typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None)
    app.add_typer(group, name=name)
    return group


customers_app = _group("customers", "Customers: create, list, show, disable, enable, set.")
keys_app = _group("keys", "Customers' API keys: issue, list, revoke.")
ledger_app = _group("ledger", "Customers' money: top-ups, adjustments, history, verification.")
services_app = _group("services", "The catalog: sync from the upstream, list, hide, rename, price.")
# Later: orders_app = _group("orders", "…"); `sync --once` and `worker` as top-level commands.


class DialectName(StrEnum):
    standard = "standard"
    smartpanel = "smartpanel"


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
CustomerArg = Annotated[str, typer.Argument(metavar="CUSTOMER", help="Customer id or exact name.")]
ServiceArg = Annotated[int, typer.Argument(metavar="ID", help="Service id.")]
MemoOpt = Annotated[str | None, typer.Option("--memo", help="A note kept with the entry.")]


# --- plumbing -----------------------------------------------------------------------------------


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


@contextmanager
def _operator_errors() -> Iterator[None]:
    """Known failures become one line on stderr: settings → exit 2, the rest → exit 1."""
    try:
        yield
    except SettingsError as exc:
        fail(str(exc), 2)
    except (OperatorError, MoneyError) as exc:
        fail(str(exc), 1)


def _settings() -> Settings:
    with _operator_errors():
        return load_settings()


async def _migrate(db: Database) -> None:
    """Schema to head; an unreachable or unusable database is one line, not a traceback."""
    try:
        await db.migrate()
    except (OSError, DBAPIError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise OperatorError(
            f"database unavailable: {detail[0] if detail else type(exc).__name__}"
        ) from None


def _run(work: Callable[[Database, Settings], Awaitable[T]], settings: Settings | None = None) -> T:
    """Open and migrate the database, run `work`, close; known failures are one line."""
    settings = settings or _settings()

    async def go() -> T:
        db = Database(settings.database_url)
        try:
            await _migrate(db)
            return await work(db, settings)
        finally:
            await db.dispose()

    with _operator_errors():
        return asyncio.run(go())


def _emit(as_json: bool, data: Any, lines: Sequence[str] | str) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        typer.echo(lines if isinstance(lines, str) else "\n".join(lines))


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _amount(text: str) -> int:
    try:
        return parse_micros(text)
    except MoneyError as exc:
        fail(f"bad amount {text!r}: {str(exc).split(':')[0]}")


def _markup(text: str, *, allow_negative: bool = False) -> int:
    """'25' or '25%' → basis points; negative markups only where the caller allows them."""
    try:
        bp = percent_to_bp(text.strip().removesuffix("%"))
    except MoneyError:
        fail(f"bad markup {text!r}: a percentage with at most 2 decimals, e.g. 25 or 12.5")
    if bp < 0 and not allow_negative:
        fail(f"bad markup {text!r}: must not be negative")
    return bp


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


def _short_when(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


async def _customer_id(db: Database, ref: str) -> int:
    """A customer named by id or by exact name."""
    ref = ref.strip()
    if ref.isdigit():
        return (await customers.get_customer(db, int(ref))).id
    for view in await customers.list_customers(db):
        if view.name == ref:
            return view.id
    raise NotFound(f"no customer {ref!r}")


def _markup_text(bp: int | None, settings: Settings) -> str:
    if bp is None:
        return f"default ({bp_to_percent(settings.default_markup_bp)}%)"
    return f"{bp_to_percent(bp)}%"


def _customer_json(view: CustomerView, settings: Settings) -> dict[str, Any]:
    return {
        "id": view.id,
        "name": view.name,
        "dialect": view.dialect,
        "markup_percent": None if view.markup_bp is None else bp_to_percent(view.markup_bp),
        "balance": render(view.balance),
        "currency": settings.currency,
        "disabled": view.disabled,
        "created_at": _when(view.created_at),
    }


def _key_json(key: KeyView) -> dict[str, Any]:
    return {
        "prefix": key.prefix,
        "customer_id": key.customer_id,
        "created_at": _when(key.created_at),
        "revoked_at": _when(key.revoked_at),
    }


def _entry_json(entry: EntryView) -> dict[str, Any]:
    return {
        "id": entry.id,
        "customer_id": entry.customer_id,
        "amount": render(entry.amount),
        "kind": entry.kind,
        "order_id": entry.order_id,
        "ref": entry.ref,
        "memo": entry.memo,
        "created_at": _when(entry.created_at),
    }


async def _nothing(db: Database, settings: Settings) -> None:
    """For commands whose work is the migration `_run` does anyway."""


# --- running ------------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Run the gateway (applies migrations first)."""
    import uvicorn

    _run(_nothing)  # settings valid, schema at head: before any worker starts
    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, workers=workers)


@app.command()
def migrate(as_json: JsonFlag = False) -> None:
    """Bring the database schema to head."""
    settings = _settings()
    _run(_nothing, settings)
    url = _safe_url(settings.database_url)
    _emit(as_json, {"database": url, "migrated": True}, f"database at head: {url}")


@app.command()
def simulator(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 9000,
    key: Annotated[str | None, typer.Option(help="The one API key it accepts.")] = None,
    balance: Annotated[
        str | None, typer.Option(metavar="AMOUNT", help="Its own starting balance.")
    ] = None,
    dialect: Annotated[DialectName, typer.Option(help="The flavour it speaks.")] = (
        DialectName.smartpanel
    ),
    tick: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="Time between two order steps.")
    ] = None,
    latency_ms: Annotated[int | None, typer.Option(min=0, help="Added to every reply.")] = None,
    fault: Annotated[
        list[str] | None,
        typer.Option(metavar="KIND=RATE", help="Fault injection, repeatable, RATE in [0,1]."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed for order fates.")] = None,
) -> None:
    """Run the simulator: a realistic stand-in for the upstream panel."""
    from app.simulator import FAULT_KINDS, SimConfig
    from app.simulator.server import run_simulator

    config: dict[str, Any] = {"dialect": dialect.value, "faults": _faults(fault or [], FAULT_KINDS)}
    if key is not None:
        config["key"] = key
    if balance is not None:
        config["balance_micros"] = _amount(balance)
    if tick is not None:
        if tick <= 0:
            fail("bad --tick: must be positive")
        config["tick_seconds"] = tick
    if latency_ms is not None:
        config["latency_ms"] = latency_ms
    if seed is not None:
        config["seed"] = seed
    sim = SimConfig(**config)
    typer.echo(
        f"simulator on http://{host}:{port}/api/v1 (key {sim.key}, dialect {sim.dialect});"
        " Ctrl-C stops it",
        err=True,
    )
    run_simulator(sim, host, port)


def _faults(specs: list[str], kinds: Sequence[str]) -> dict[str, float]:
    faults: dict[str, float] = {}
    for spec in specs:
        kind, sep, rate_text = spec.partition("=")
        kind = kind.strip()
        if not sep or kind not in kinds:
            fail(f"bad --fault {spec!r}: use KIND=RATE with KIND one of {', '.join(kinds)}")
        try:
            rate = float(rate_text)
        except ValueError:
            rate = -1.0
        if not 0.0 <= rate <= 1.0:
            fail(f"bad --fault {spec!r}: RATE must be a number from 0 to 1")
        faults[kind] = rate
    return faults


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="The gateway's port.")] = 8000,
    sim_port: Annotated[int, typer.Option(help="The simulator's port.")] = 9000,
    as_json: JsonFlag = False,
) -> None:
    """Simulator + gateway on a fresh SQLite file, a demo customer with a balance; Ctrl-C stops."""
    from app.demo import run_demo

    with _operator_errors():
        asyncio.run(run_demo(port=port, sim_port=sim_port, as_json=as_json))


# --- customers ----------------------------------------------------------------------------------


@customers_app.command("create")
def customers_create(
    name: Annotated[str, typer.Option("--name", help="Unique customer name.")],
    markup: Annotated[
        str | None, typer.Option(metavar="PCT", help="Markup in percent (default: the setting).")
    ] = None,
    dialect: Annotated[
        DialectName | None, typer.Option(help="Reply dialect (default: SMMGW_DEFAULT_DIALECT).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a customer with one API key; the key is printed once and never again."""
    markup_bp = None if markup is None else _markup(markup)

    async def work(db: Database, settings: Settings) -> tuple[CustomerView, str]:
        chosen = dialect.value if dialect else settings.default_dialect
        customer_id, key = await customers.create_customer(db, name, chosen, markup_bp)
        return await customers.get_customer(db, customer_id), key

    view, key = _run(work)
    data = {
        "id": view.id,
        "name": view.name,
        "dialect": view.dialect,
        "markup_percent": None if view.markup_bp is None else bp_to_percent(view.markup_bp),
        "key": key,
        "prefix": key[: customers.PREFIX_LENGTH],
    }
    markup_shown = "default" if view.markup_bp is None else f"{bp_to_percent(view.markup_bp)}%"
    _emit(
        as_json,
        data,
        [
            f"customer {view.id} {view.name!r} created (dialect {view.dialect},"
            f" markup {markup_shown})",
            f"key: {key}",
            "Store the key now: it is shown only this once.",
        ],
    )


@customers_app.command("list")
def customers_list(as_json: JsonFlag = False) -> None:
    """List customers (never their keys)."""
    settings = _settings()
    views = _run(lambda db, s: customers.list_customers(db), settings)
    rows = [
        (
            v.id,
            v.name,
            v.dialect,
            _markup_text(v.markup_bp, settings),
            f"{render(v.balance)} {settings.currency}",
            "disabled" if v.disabled else "active",
        )
        for v in views
    ]
    text = (
        _table(("ID", "NAME", "DIALECT", "MARKUP", "BALANCE", "STATUS"), rows)
        if rows
        else "no customers yet (smm-gateway customers create --name NAME)"
    )
    _emit(as_json, [_customer_json(v, settings) for v in views], text)


@customers_app.command("show")
def customers_show(customer: CustomerArg, as_json: JsonFlag = False) -> None:
    """One customer with its keys' prefixes (never the keys)."""

    async def work(db: Database, settings: Settings) -> tuple[CustomerView, list[KeyView]]:
        customer_id = await _customer_id(db, customer)
        return await customers.get_customer(db, customer_id), await customers.list_keys(
            db, customer_id
        )

    settings = _settings()
    view, keys = _run(work, settings)
    data = _customer_json(view, settings) | {"keys": [_key_json(k) for k in keys]}
    lines = [
        f"customer {view.id}: {view.name}",
        f"  status:   {'disabled' if view.disabled else 'active'}",
        f"  dialect:  {view.dialect}",
        f"  markup:   {_markup_text(view.markup_bp, settings)}",
        f"  balance:  {render(view.balance)} {settings.currency}",
        f"  created:  {_short_when(view.created_at)}",
        "  keys:",
    ]
    lines += [
        f"    {k.prefix}…  created {_short_when(k.created_at)}"
        + (f"  REVOKED {_short_when(k.revoked_at)}" if k.revoked_at else "  live")
        for k in keys
    ] or ["    (none)"]
    _emit(as_json, data, lines)


def _update(customer: str, as_json: JsonFlag, message: str, **changes: Any) -> None:
    async def work(db: Database, settings: Settings) -> CustomerView:
        return await customers.update_customer(db, await _customer_id(db, customer), **changes)

    settings = _settings()
    view = _run(work, settings)
    _emit(as_json, _customer_json(view, settings), f"customer {view.id} {view.name!r}: {message}")


@customers_app.command("disable")
def customers_disable(customer: CustomerArg, as_json: JsonFlag = False) -> None:
    """Disable a customer: all its keys stop working."""
    _update(customer, as_json, "disabled", disabled=True)


@customers_app.command("enable")
def customers_enable(customer: CustomerArg, as_json: JsonFlag = False) -> None:
    """Enable a disabled customer again."""
    _update(customer, as_json, "enabled", disabled=False)


@customers_app.command("set")
def customers_set(
    customer: CustomerArg,
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    markup: Annotated[str | None, typer.Option(metavar="PCT", help="Markup in percent.")] = None,
    default_markup: Annotated[
        bool, typer.Option("--default-markup", help="Return to the default markup.")
    ] = False,
    dialect: Annotated[DialectName | None, typer.Option(help="Reply dialect.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Change a customer's name, markup or dialect."""
    if markup is not None and default_markup:
        fail("give --markup or --default-markup, not both", 2)
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if dialect is not None:
        changes["dialect"] = dialect.value
    if markup is not None:
        changes["markup_bp"] = _markup(markup)
    if default_markup:
        changes["markup_bp"] = None
    if not changes:
        fail("nothing to change: give --name, --markup, --default-markup or --dialect", 2)
    _update(customer, as_json, "updated", **changes)


# --- keys ---------------------------------------------------------------------------------------


@keys_app.command("issue")
def keys_issue(customer: CustomerArg, as_json: JsonFlag = False) -> None:
    """Issue another key for a customer; it is printed once and never again."""

    async def work(db: Database, settings: Settings) -> tuple[int, str]:
        customer_id = await _customer_id(db, customer)
        return customer_id, await customers.issue_key(db, customer_id)

    customer_id, key = _run(work)
    prefix = key[: customers.PREFIX_LENGTH]
    _emit(
        as_json,
        {"customer_id": customer_id, "key": key, "prefix": prefix},
        [
            f"new key for customer {customer_id} (prefix {prefix}):",
            key,
            "Store the key now: it is shown only this once.",
        ],
    )


@keys_app.command("list")
def keys_list(customer: CustomerArg, as_json: JsonFlag = False) -> None:
    """A customer's keys by prefix (never the keys)."""

    async def work(db: Database, settings: Settings) -> list[KeyView]:
        return await customers.list_keys(db, await _customer_id(db, customer))

    keys = _run(work)
    rows = [
        (k.prefix, _short_when(k.created_at), _short_when(k.revoked_at) or "live") for k in keys
    ]
    text = _table(("PREFIX", "CREATED", "REVOKED"), rows) if rows else "no keys"
    _emit(as_json, [_key_json(k) for k in keys], text)


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[
        str, typer.Argument(metavar="PREFIX", help="The key's prefix (see `keys list`).")
    ],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a key at once."""
    _run(lambda db, settings: customers.revoke_key(db, prefix.strip()))
    _emit(as_json, {"prefix": prefix.strip(), "revoked": True}, f"key {prefix.strip()} revoked")


# --- ledger -------------------------------------------------------------------------------------

_SIGNED = {"ignore_unknown_options": True}  # lets a negative AMOUNT through as an argument


def _post(
    operation: Callable[[Database, int, int, str | None], Awaitable[int]],
    customer: str,
    amount_text: str,
    memo: str | None,
    as_json: bool,
    verb: str,
) -> None:
    amount = _amount(amount_text)

    async def work(db: Database, settings: Settings) -> tuple[int, int]:
        customer_id = await _customer_id(db, customer)
        return customer_id, await operation(db, customer_id, amount, memo)

    settings = _settings()
    customer_id, balance = _run(work, settings)
    data = {
        "customer_id": customer_id,
        "amount": render(amount),
        "balance": render(balance),
        "currency": settings.currency,
    }
    _emit(
        as_json,
        data,
        f"customer {customer_id}: {verb} {render(amount)}, balance now"
        f" {render(balance)} {settings.currency}",
    )


@ledger_app.command("topup", context_settings=_SIGNED)
def ledger_topup(
    customer: CustomerArg,
    amount: Annotated[
        str, typer.Argument(metavar="AMOUNT", help="Amount paid, e.g. 100 or 12.50.")
    ],
    memo: MemoOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Add money a customer paid."""
    _post(ledger.topup, customer, amount, memo, as_json, "topped up")


@ledger_app.command("adjust", context_settings=_SIGNED)
def ledger_adjust(
    customer: CustomerArg,
    amount: Annotated[
        str | None,
        typer.Argument(metavar="AMOUNT", help="Signed amount: 5, -5, -0.25 (or use --amount=-5)."),
    ] = None,
    amount_opt: Annotated[
        str | None,
        typer.Option("--amount", metavar="AMOUNT", help="The signed amount, as an option."),
    ] = None,
    memo: MemoOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """A signed correction. Negative amounts: `ledger adjust 3 -5`, `ledger adjust 3 -- -5`
    or `ledger adjust 3 --amount=-5`."""
    if (amount is None) == (amount_opt is None):
        fail("give the amount once: `ledger adjust CUSTOMER -5` or `--amount=-5`", 2)
    _post(
        ledger.adjust,
        customer,
        amount if amount is not None else amount_opt,
        memo,
        as_json,
        "adjusted by",
    )


@ledger_app.command("history")
def ledger_history(
    customer: CustomerArg,
    limit: Annotated[int, typer.Option(min=1, help="How many entries, newest first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """A customer's ledger entries, newest first."""

    async def work(db: Database, settings: Settings) -> tuple[CustomerView, list[EntryView]]:
        view = await customers.get_customer(db, await _customer_id(db, customer))
        return view, await ledger.history(db, view.id, limit)

    view, entries = _run(work)
    rows = [
        (
            e.id,
            _short_when(e.created_at),
            e.kind,
            ("+" if e.amount > 0 else "") + render(e.amount),
            e.order_id,
            e.memo,
        )
        for e in entries
    ]
    lines = [f"customer {view.id} {view.name!r}: balance {render(view.balance)}"]
    lines.append(
        _table(("ID", "WHEN", "KIND", "AMOUNT", "ORDER", "MEMO"), rows) if rows else "no entries"
    )
    _emit(as_json, [_entry_json(e) for e in entries], lines)


@ledger_app.command("verify")
def ledger_verify(as_json: JsonFlag = False) -> None:
    """Check every ledger invariant: exit 0 when clean, 1 (one line per problem) otherwise."""
    problems = _run(lambda db, settings: ledger.verify(db))
    _emit(as_json, {"clean": not problems, "problems": problems}, problems or ["ledger clean"])
    if problems:
        raise typer.Exit(1)


# --- services -----------------------------------------------------------------------------------


@services_app.command("sync")
def services_sync(as_json: JsonFlag = False) -> None:
    """Fetch the upstream catalog now (a failure keeps the last good one)."""
    from app.catalog import SyncResult, sync_catalog
    from app.upstream import UpstreamClient

    async def work(db: Database, settings: Settings) -> SyncResult:
        async with UpstreamClient.from_settings(settings) as upstream:
            return await sync_catalog(db, upstream)

    result = _run(work)
    if not result.ok:
        if as_json:
            _emit(True, {"ok": False, "error": result.error}, "")
        fail(f"catalog sync failed: {result.error}")
    _emit(
        as_json,
        {"ok": True, "services": result.services, "dropped": result.dropped},
        f"{result.services} services synced"
        + (f", {result.dropped} no longer listed upstream (now hidden)" if result.dropped else ""),
    )


@services_app.command("list")
def services_list(
    show_all: Annotated[
        bool, typer.Option("--all", help="Also services the upstream no longer lists.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """The catalog with costs and default prices (hidden services included, marked)."""
    from app.catalog import list_services

    views = _run(lambda db, settings: list_services(db, settings.default_markup_bp))
    views = [v for v in views if show_all or v.upstream_listed]
    data = [
        {
            "id": v.id,
            "type": v.type,
            "name": v.name,
            "category": v.category,
            "upstream_name": v.upstream_name,
            "cost": render(v.cost),
            "price": None if v.price is None else render(v.price),
            "suspended": v.price is None,
            "min": v.min,
            "max": v.max,
            "dripfeed": v.dripfeed,
            "refill": v.refill,
            "cancel": v.cancel,
            "hidden": v.hidden,
            "upstream_listed": v.upstream_listed,
        }
        for v in views
    ]
    rows = [
        (
            v.id,
            v.type,
            v.name if len(v.name) <= 48 else v.name[:47] + "…",
            render(v.cost),
            "suspended" if v.price is None else render(v.price),
            f"{v.min}-{v.max}",
            ",".join(
                f
                for f, on in (("drip", v.dripfeed), ("refill", v.refill), ("cancel", v.cancel))
                if on
            ),
            ", ".join(
                s for s, on in (("hidden", v.hidden), ("not listed", not v.upstream_listed)) if on
            ),
        )
        for v in views
    ]
    text = (
        _table(("ID", "TYPE", "NAME", "COST", "PRICE", "MIN-MAX", "FLAGS", "STATE"), rows)
        if rows
        else "no services (run `smm-gateway services sync`)"
    )
    _emit(as_json, data, text)


def _service_change(as_json: bool, service_id: int, message: str, work: Callable[..., Any]) -> None:
    _run(work)
    _emit(as_json, {"service": service_id, "changed": message}, f"service {service_id}: {message}")


@services_app.command("hide")
def services_hide(service: ServiceArg, as_json: JsonFlag = False) -> None:
    """Hide a service from every customer."""
    from app.catalog import set_hidden

    _service_change(as_json, service, "hidden", lambda db, s: set_hidden(db, service, True))


@services_app.command("show")
def services_show(service: ServiceArg, as_json: JsonFlag = False) -> None:
    """Un-hide a service."""
    from app.catalog import set_hidden

    _service_change(as_json, service, "shown", lambda db, s: set_hidden(db, service, False))


@services_app.command("rename")
def services_rename(
    service: ServiceArg,
    name: Annotated[str | None, typer.Option(help="Name customers see ('' = upstream's).")] = None,
    category: Annotated[
        str | None, typer.Option(help="Category customers see ('' = upstream's).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Rename a service or its category, as customers see it."""
    from app.catalog import rename

    _service_change(
        as_json, service, "renamed", lambda db, s: rename(db, service, name=name, category=category)
    )


@services_app.command("price")
def services_price(
    service: ServiceArg,
    rate: Annotated[str | None, typer.Option(metavar="AMOUNT", help="Fixed rate per 1000.")] = None,
    markup: Annotated[str | None, typer.Option(metavar="PCT", help="Markup in percent.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the price rule.")] = False,
    customer: Annotated[
        str | None, typer.Option(metavar="C", help="Only for this customer (id or name).")
    ] = None,
    allow_below_cost: Annotated[
        bool, typer.Option("--allow-below-cost", help="Allow a price under the upstream rate.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Set a service's price: a fixed --rate, a --markup, or --clear the rule."""
    from app.catalog import clear_price, set_price

    if sum((rate is not None, markup is not None, clear)) != 1:
        fail("give exactly one of --rate AMOUNT, --markup PCT, --clear", 2)
    fixed = None if rate is None else _amount(rate)
    markup_bp = None if markup is None else _markup(markup, allow_negative=True)
    who = "everyone" if customer is None else f"customer {customer}"

    async def work(db: Database, settings: Settings) -> None:
        customer_id = None if customer is None else await _customer_id(db, customer)
        if clear:
            await clear_price(db, service, customer_id)
        else:
            await set_price(
                db,
                service,
                customer_id=customer_id,
                fixed_rate=fixed,
                markup_bp=markup_bp,
                below_cost_ok=allow_below_cost,
            )

    if clear:
        message = f"price rule for {who} cleared"
    elif fixed is not None:
        message = f"fixed rate {render(fixed)} for {who}"
    else:
        message = f"markup {bp_to_percent(markup_bp or 0)}% for {who}"
    _service_change(as_json, service, message, work)


def main() -> None:
    app()
