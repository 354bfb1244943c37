"""The operator's command line (`smm-gateway`): a thin face over the domain modules.

Every command that prints data takes `--json` (money as decimal strings, markups as percent
strings). Exit codes: 0 done; 1 a bad value, or a request that cannot be carried out;
2 invalid settings, or a wrong combination of options. A failure prints one line on stderr.
Only `migrate`, `serve` and `demo` create or change the schema; every other database command
refuses a database that is not at head (never migrated, or behind) with one line saying so.

The JSON of each command is the model `app/admin/ops.py` returns for it, dumped with
`model_dump(mode="json")`: the same bytes the admin API (`/admin/…`) answers for the same
operation. Every database command also says, loudly on stderr, when orders wait in `unknown`
for an operator's verdict.

Adding a command group is one block: `things_app = _group("things", "…")`, then
`@things_app.command()` functions built on `_run()`.
"""

import asyncio
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import datetime
from enum import StrEnum
from importlib.metadata import version as package_version
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from app import customers
from app.admin import ops
from app.admin.schemas import (
    CustomerCreate,
    CustomerOut,
    CustomerPatch,
    EntryOut,
    OfferMapIn,
    OfferOut,
    OrderOut,
    Posting,
    PriceRuleIn,
    ProviderCreate,
    ProviderOut,
    ProviderPatch,
    ReportLineOut,
    ReportPeriod,
    ResolutionOut,
    ResolveIn,
    ServiceRename,
)
from app.db import Database
from app.errors import OperatorError
from app.models import DEFAULT_PROVIDER_ID
from app.money import MoneyError, bp_to_percent, parse_micros
from app.orders import queries
from app.orders.placing import STATES, UNKNOWN
from app.parsing import MAX_ROW_ID
from app.parsing import row_id as parse_row_id
from app.providers import ProviderClients
from app.settings import Settings, SettingsError, load_settings

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

app = typer.Typer(
    name="smm-gateway",
    help="smm-gateway: a reseller gateway for SMM panels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _show_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"smm-gateway {package_version('smm-gateway')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """smm-gateway: a reseller gateway for SMM panels."""


def _group(name: str, help_text: str) -> typer.Typer:
    group = typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None)
    app.add_typer(group, name=name)
    return group


customers_app = _group("customers", "Customers: create, list, show, disable, enable, set.")
keys_app = _group("keys", "Customers' API keys: issue, list, revoke.")
ledger_app = _group("ledger", "Customers' money: top-ups, adjustments, history, verification.")
services_app = _group("services", "The catalog: sync from the upstream, list, hide, rename, price.")
orders_app = _group("orders", "Orders: list, show, and resolve the ones in `unknown`.")
providers_app = _group(
    "providers", "Upstream providers: add, list, show, set, disable, enable, balance."
)


class DialectName(StrEnum):
    standard = "standard"
    smartpanel = "smartpanel"


OrderState = StrEnum("OrderState", {state: state for state in STATES})  # type: ignore[misc]


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
CustomerArg = Annotated[str, typer.Argument(metavar="CUSTOMER", help="Customer id or exact name.")]


def row_id(value: str | int) -> int:
    """An id as the tables hold them: ASCII digits only ("٥" is not 5), 1 … 2**31 - 1."""
    if isinstance(value, int):
        return value
    if (number := parse_row_id(value.strip())) is not None:
        return number
    raise typer.BadParameter(f"{value!r} is not an id (1 to {MAX_ROW_ID}, ASCII digits)")


ServiceArg = Annotated[int, typer.Argument(metavar="ID", help="Service id.", parser=row_id)]
MemoOpt = Annotated[str | None, typer.Option("--memo", help="A note kept with the entry.")]
RefOpt = Annotated[
    str | None,
    typer.Option(
        "--ref", help="Your reference (a payment id): the same ref again credits nothing."
    ),
]


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


async def _prepare(db: Database, settings: Settings, migrate: bool) -> None:
    """Schema to head (`migrate`), or make sure it is there already: a command pointed at the
    wrong database (say PostgreSQL's `postgres`) must not quietly create tables in it. An
    unreachable or unusable database is one line, not a traceback."""
    try:
        if migrate:
            await db.migrate()
            return
        problem = await db.schema_problem()
    except (OSError, DBAPIError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise OperatorError(
            f"database unavailable: {detail[0] if detail else type(exc).__name__}"
        ) from None
    if problem is not None:
        raise OperatorError(
            f"database {_safe_url(settings.database_url)} {problem}: run `smm-gateway migrate`"
        )


UNRESOLVED_HINT = "smm-gateway orders list --state unknown"


def unresolved_warning(count: int) -> str:
    verb = "awaits" if count == 1 else "await"
    return f"WARNING: {count} order{'' if count == 1 else 's'} {verb} resolution: {UNRESOLVED_HINT}"


def held_warning(ids: list[int]) -> str:
    shown = ", ".join(map(str, ids[:10])) + (" …" if len(ids) > 10 else "")
    return (
        f"WARNING: {len(ids)} settlement{'' if len(ids) == 1 else 's'} held (a final status"
        f" came without remains or charge; settled once the upstream reports them): orders {shown}"
    )


def _run(
    work: Callable[[Database, Settings], Awaitable[T]],
    settings: Settings | None = None,
    *,
    migrate: bool = False,
) -> T:
    """Open the database (migrating it only when asked: `migrate`, `serve`), check its schema,
    run `work`, close; known failures are one line. Afterwards, a loud line on stderr while
    orders wait in `unknown` (DESIGN.md: an operator must resolve them, and must not be able
    to miss them)."""
    settings = settings or _settings()

    async def go() -> T:
        db = Database(settings.database_url)
        try:
            await _prepare(db, settings, migrate)
            result = await work(db, settings)
            if unresolved := await ops.unresolved(db):
                typer.echo(unresolved_warning(unresolved), err=True)
            if held := await queries.held_settlements(db):
                typer.echo(held_warning(held), err=True)
            if low := await ops.low_balance_warning(db):
                typer.echo(low, err=True)
            return result
        finally:
            await db.dispose()

    with _operator_errors():
        return asyncio.run(go())


@asynccontextmanager
async def _clients(db: Database, settings: Settings) -> AsyncIterator[ProviderClients]:
    """Every provider's client, as the providers table says now; closed afterwards."""
    clients = ProviderClients(settings)
    try:
        await clients.refresh(db)
        yield clients
    finally:
        await clients.aclose()


def _jsonable(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list):
        return [_jsonable(item) for item in data]
    return data


def _emit(as_json: bool, data: Any, lines: Sequence[str] | str) -> None:
    """`data`: a model (dumped as the admin API dumps it), a list of them, or plain JSON."""
    if as_json:
        typer.echo(json.dumps(_jsonable(data), indent=2, ensure_ascii=False))
    else:
        typer.echo(lines if isinstance(lines, str) else "\n".join(lines))


@contextmanager
def _progress(as_json: bool, what: str) -> Iterator[Callable[[str], None]]:
    """A live line on stderr while slow work runs, only for a person at a terminal: nothing
    with --json or when stdout or stderr is not a terminal. Yields `say(text)` to update it."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    shown = not as_json and sys.stdout.isatty() and sys.stderr.isatty()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,  # the command's own result line replaces it
        disable=not shown,
    ) as progress:
        task = progress.add_task(what, total=None)
        yield lambda text: progress.update(task, description=text)


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


def _checked(model: type[M], options: dict[str, str], **values: Any) -> M:
    """The operator's input, checked by the same model the admin API reads (one place for
    every bound); a refusal is one line naming the option. `options` maps fields to the
    command's own names for them (`amount` → `AMOUNT`, `markup_percent` → `--markup`)."""
    try:
        return model(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        fail(f"bad {options.get(field, field.replace('_', '-') or 'input')}: {message}")


def _short_when(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _markup_text(percent: str | None, settings: Settings) -> str:
    if percent is None:
        return f"default ({bp_to_percent(settings.default_markup_bp)}%)"
    return f"{percent}%"


async def _nothing(db: Database, settings: Settings) -> None:
    """For commands whose work is what `_run` does anyway (migrate, or check the schema)."""


# --- running ------------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Run the gateway (applies migrations first). It refreshes the catalog and runs the status
    sync in-process; with SMMGW_SYNC_IN_PROCESS=false it leaves the sync to `smm-gateway worker`.
    Logs: our own line per request replaces uvicorn's access log (which would show `key=`).
    With --workers > 1, /metrics adds up all workers (a fresh PROMETHEUS_MULTIPROC_DIR)."""
    import uvicorn

    from app.logs import configure_logging
    from app.metrics import multiprocess_dir

    settings = _settings()
    if not 1 <= port <= 65535:
        fail(f"--port must be between 1 and 65535, not {port}", 2)
    _run(_nothing, settings, migrate=True)  # settings valid, schema at head: before any worker
    _check_port_free(host, port)
    configure_logging(settings)
    with multiprocess_dir(workers):
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,  # logging is app.logs' (each worker configures it in create_app)
            access_log=False,
            http=settings.http_parser,
            limit_concurrency=settings.http_limit_concurrency,
            timeout_keep_alive=settings.http_keep_alive_seconds,
            h11_max_incomplete_event_size=settings.http_max_header_bytes,
        )


def _check_port_free(host: str, port: int) -> None:
    """A busy port (or a host that is not ours) in one line, before uvicorn's six."""
    try:
        socket.create_server((host, port)).close()
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


@app.command()
def migrate(as_json: JsonFlag = False) -> None:
    """Bring the database schema to head (creating it in a new database)."""
    settings = _settings()
    _run(_nothing, settings, migrate=True)
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
    # Ctrl-C is how it stops: uvicorn re-raises the signal once it has shut down.
    with suppress(KeyboardInterrupt):
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
    dialect: Annotated[
        DialectName,
        typer.Option(
            help="The upstream family the simulator imitates: smartpanel (smmmix: no refill,"
            " no cancel) or standard (refill and cancel)."
        ),
    ] = DialectName.smartpanel,
    as_json: JsonFlag = False,
) -> None:
    """Simulator + gateway on a fresh SQLite file, a demo customer with a balance; Ctrl-C stops."""
    from app.demo import run_demo

    with _operator_errors():
        asyncio.run(
            run_demo(port=port, sim_port=sim_port, upstream_dialect=dialect.value, as_json=as_json)
        )


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
    body = _checked(
        CustomerCreate,
        {"name": "--name", "markup_percent": "--markup"},
        name=name,
        markup_percent=markup,
        dialect=dialect.value if dialect else None,
    )
    created = _run(
        lambda db, settings: ops.create_customer(
            db, settings, body.name, body.markup_bp, body.dialect
        )
    )
    markup_shown = "default" if created.markup_percent is None else f"{created.markup_percent}%"
    _emit(
        as_json,
        created,
        [
            f"customer {created.id} {created.name!r} created (dialect {created.dialect},"
            f" markup {markup_shown})",
            f"key: {created.key}",
            "Store the key now: it is shown only this once.",
        ],
    )


@customers_app.command("list")
def customers_list(as_json: JsonFlag = False) -> None:
    """List customers (never their keys)."""
    settings = _settings()
    listed = _run(ops.list_customers, settings)
    rows = [
        (
            c.id,
            c.name,
            c.dialect,
            _markup_text(c.markup_percent, settings),
            f"{c.balance} {c.currency}",
            "disabled" if c.disabled else "active",
        )
        for c in listed
    ]
    text = (
        _table(("ID", "NAME", "DIALECT", "MARKUP", "BALANCE", "STATUS"), rows)
        if rows
        else "no customers yet (smm-gateway customers create --name NAME)"
    )
    _emit(as_json, listed, text)


@customers_app.command("show")
def customers_show(customer: CustomerArg, as_json: JsonFlag = False) -> None:
    """One customer with its keys' prefixes (never the keys)."""
    settings = _settings()
    shown = _run(lambda db, s: ops.show_customer(db, s, customer), settings)
    lines = [
        f"customer {shown.id}: {shown.name}",
        f"  status:   {'disabled' if shown.disabled else 'active'}",
        f"  dialect:  {shown.dialect}",
        f"  markup:   {_markup_text(shown.markup_percent, settings)}",
        f"  balance:  {shown.balance} {shown.currency}",
        f"  created:  {_short_when(shown.created_at)}",
        "  keys:",
    ]
    lines += [
        f"    {k.prefix}…  created {_short_when(k.created_at)}"
        + (f"  REVOKED {_short_when(k.revoked_at)}" if k.revoked_at else "  live")
        for k in shown.keys
    ] or ["    (none)"]
    _emit(as_json, shown, lines)


def _update(customer: str, as_json: JsonFlag, message: str, **changes: Any) -> None:
    changed: CustomerOut = _run(lambda db, s: ops.update_customer(db, s, customer, **changes))
    _emit(as_json, changed, f"customer {changed.id} {changed.name!r}: {message}")


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
    given: dict[str, Any] = {"markup_percent": None} if default_markup else {}
    given |= {"markup_percent": markup} if markup is not None else {}
    given |= {"name": name} if name is not None else {}
    given |= {"dialect": dialect.value} if dialect is not None else {}
    if not given:
        fail("nothing to change: give --name, --markup, --default-markup or --dialect", 2)
    patch = _checked(CustomerPatch, {"name": "--name", "markup_percent": "--markup"}, **given)
    _update(customer, as_json, "updated", **patch.changes())


# --- keys ---------------------------------------------------------------------------------------


@keys_app.command("issue")
def keys_issue(customer: CustomerArg, as_json: JsonFlag = False) -> None:
    """Issue another key for a customer; it is printed once and never again."""
    issued = _run(lambda db, settings: ops.issue_key(db, customer))
    _emit(
        as_json,
        issued,
        [
            f"new key for customer {issued.customer_id} (prefix {issued.prefix}):",
            issued.key,
            "Store the key now: it is shown only this once.",
        ],
    )


@keys_app.command("list")
def keys_list(customer: CustomerArg, as_json: JsonFlag = False) -> None:
    """A customer's keys by prefix (never the keys)."""
    keys = _run(lambda db, settings: ops.list_keys(db, customer))
    rows = [
        (k.prefix, _short_when(k.created_at), _short_when(k.revoked_at) or "live") for k in keys
    ]
    text = _table(("PREFIX", "CREATED", "REVOKED"), rows) if rows else "no keys"
    _emit(as_json, keys, text)


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[
        str, typer.Argument(metavar="PREFIX", help="The key's prefix (see `keys list`).")
    ],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a key at once."""
    revoked = _run(lambda db, settings: ops.revoke_key(db, prefix))
    _emit(as_json, revoked, f"key {revoked.prefix} revoked")


# --- ledger -------------------------------------------------------------------------------------

_SIGNED = {"ignore_unknown_options": True}  # lets a negative AMOUNT through as an argument


def _post(
    operation: Callable[..., Awaitable[Any]],
    customer: str,
    amount_text: str,
    memo: str | None,
    ref: str | None,
    as_json: bool,
    verb: str,
) -> None:
    body = _checked(
        Posting,
        {"amount": "amount", "memo": "--memo", "ref": "--ref"},
        amount=amount_text,
        memo=memo,
        ref=ref,
    )
    posted = _run(lambda db, settings: operation(db, settings, customer, body))
    if posted.duplicate:
        text = (
            f"customer {posted.customer_id}: ref {posted.ref!r} was posted already"
            f" (entry {posted.entry_id}, {posted.amount}): nothing credited now, balance"
            f" {posted.balance} {posted.currency}"
        )
    else:
        text = (
            f"customer {posted.customer_id}: {verb} {posted.amount}, balance now"
            f" {posted.balance} {posted.currency}"
        )
    _emit(as_json, posted, text)


@ledger_app.command("topup", context_settings=_SIGNED)
def ledger_topup(
    customer: CustomerArg,
    amount: Annotated[
        str, typer.Argument(metavar="AMOUNT", help="Amount paid, e.g. 100 or 12.50.")
    ],
    memo: MemoOpt = None,
    ref: RefOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Add money a customer paid. With --ref (the payment's id), a repeated top-up credits
    nothing and answers the first."""
    _post(ops.topup, customer, amount, memo, ref, as_json, "topped up")


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
    ref: RefOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """A signed correction. Negative amounts: `ledger adjust 3 -5`, `ledger adjust 3 -- -5`
    or `ledger adjust 3 --amount=-5`. With --ref, a repeated adjustment moves nothing."""
    if (amount is None) == (amount_opt is None):
        fail("give the amount once: `ledger adjust CUSTOMER -5` or `--amount=-5`", 2)
    _post(
        ops.adjust,
        customer,
        amount if amount is not None else amount_opt,
        memo,
        ref,
        as_json,
        "adjusted by",
    )


@ledger_app.command("history")
def ledger_history(
    customer: CustomerArg,
    limit: Annotated[
        int, typer.Option(min=1, max=10_000, help="How many entries, newest first.")
    ] = 50,
    as_json: JsonFlag = False,
) -> None:
    """A customer's ledger entries, newest first."""

    async def work(db: Database, settings: Settings) -> tuple[CustomerOut, list[EntryOut]]:
        customer_id = await ops.customer_id_for(db, customer)
        view = CustomerOut.of(await customers.get_customer(db, customer_id), settings.currency)
        return view, await ops.history(db, customer_id, limit)

    view, entries = _run(work)
    rows = [
        (
            e.id,
            _short_when(e.created_at),
            e.kind,
            ("" if e.amount.startswith("-") else "+") + e.amount,
            e.balance_after,
            e.order_id,
            e.memo,
        )
        for e in entries
    ]
    lines = [f"customer {view.id} {view.name!r}: balance {view.balance}"]
    headers = ("ID", "WHEN", "KIND", "AMOUNT", "BALANCE", "ORDER", "MEMO")
    lines.append(_table(headers, rows) if rows else "no entries")
    _emit(as_json, entries, lines)


@ledger_app.command("verify")
def ledger_verify(as_json: JsonFlag = False) -> None:
    """Check every ledger invariant: exit 0 when clean, 1 (one line per problem) otherwise."""
    result = _run(lambda db, settings: ops.verify(db))
    _emit(as_json, result, result.problems or ["ledger clean"])
    if not result.clean:
        raise typer.Exit(1)


# --- services -----------------------------------------------------------------------------------


@services_app.command("sync")
def services_sync(as_json: JsonFlag = False) -> None:
    """Fetch every enabled provider's catalog now (a failure keeps that one's last good one)."""

    async def work(db: Database, settings: Settings) -> Any:
        async with _clients(db, settings) as clients:
            with _progress(as_json, "fetching the catalog from the upstream"):
                return await ops.sync_catalog(db, clients)

    result = _run(work)
    if not result.ok:
        if as_json:
            _emit(True, result, "")
        fail(f"catalog sync failed: {result.error}")
    _emit(
        as_json,
        result,
        f"{result.services} services synced from a {result.family or 'smartpanel'}-family"
        " upstream"
        + (f", {result.dropped} no longer listed upstream (now hidden)" if result.dropped else "")
        + "".join(
            f"\nsuspended: service {p.service} for "
            f"{'everyone' if p.customer is None else f'customer {p.customer}'}: fixed price"
            f" {p.rate} is below the upstream's {p.cost} (change it, or --allow-below-cost)"
            for p in result.suspended
        ),
    )


@services_app.command("list")
def services_list(
    show_all: Annotated[
        bool, typer.Option("--all", help="Also services the upstream no longer lists.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """The catalog with costs and default prices (hidden services included, marked)."""
    listed = _run(lambda db, s: ops.list_services(db, s, include_unlisted=show_all))
    rows = [
        (
            v.id,
            v.type,
            v.name if len(v.name) <= 48 else v.name[:47] + "…",
            v.cost,
            "suspended" if v.price is None else v.price,
            f"{v.min}-{v.max}",
            ",".join(
                f
                for f, on in (("drip", v.dripfeed), ("refill", v.refill), ("cancel", v.cancel))
                if on
            ),
            ", ".join(
                s
                for s, on in (
                    ("hidden", v.hidden),
                    ("not listed", not v.upstream_listed),
                    (_suspended_for(v.suspended_for_customers), bool(v.suspended_for_customers)),
                )
                if on
            )
            or (v.unavailable or ""),
        )
        for v in listed
    ]
    text = (
        _table(("ID", "TYPE", "NAME", "COST", "PRICE", "MIN-MAX", "FLAGS", "STATE"), rows)
        if rows
        else "no services (run `smm-gateway services sync`)"
    )
    _emit(as_json, listed, text)


def _suspended_for(customers: list[int]) -> str:
    return (
        "price below cost for customer"
        + ("s " if len(customers) > 1 else " ")
        + ", ".join(map(str, customers))
    )


def _service_change(as_json: bool, work: Callable[[Database, Settings], Awaitable[Any]]) -> None:
    changed = _run(work)
    _emit(as_json, changed, f"service {changed.service}: {changed.changed}")


@services_app.command("hide")
def services_hide(service: ServiceArg, as_json: JsonFlag = False) -> None:
    """Hide a service from every customer."""
    _service_change(as_json, lambda db, s: ops.set_hidden(db, service, True))


@services_app.command("show")
def services_show(service: ServiceArg, as_json: JsonFlag = False) -> None:
    """Un-hide a service."""
    _service_change(as_json, lambda db, s: ops.set_hidden(db, service, False))


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
    body = _checked(
        ServiceRename, {"name": "--name", "category": "--category"}, name=name, category=category
    )
    _service_change(
        as_json, lambda db, s: ops.rename_service(db, service, body.name, body.category)
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
    if sum((rate is not None, markup is not None, clear)) != 1:
        fail("give exactly one of --rate AMOUNT, --markup PCT, --clear", 2)
    if clear:
        _service_change(as_json, lambda db, s: ops.clear_price(db, service, customer))
        return
    body = _checked(
        PriceRuleIn,
        {"rate": "--rate", "markup_percent": "--markup", "customer": "--customer"},
        rate=rate,
        markup_percent=markup,
        customer=customer,
        allow_below_cost=allow_below_cost,
    )
    changed = _run(lambda db, s: ops.set_price(db, service, body))
    _emit(as_json, changed, f"service {changed.service}: {changed.changed}")


@services_app.command("offers")
def services_offers(
    service: Annotated[
        int | None,
        typer.Argument(
            metavar="[ID]", help="Service id (all services when absent).", parser=row_id
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """The providers that deliver a service, in the order an order tries them."""
    listed = _run(lambda db, s: ops.list_offers(db, service))
    _emit(as_json, listed, _offers_table(listed) if listed else "no offers")


def _offers_table(offers: list[OfferOut]) -> str:
    rows = [
        (
            o.service,
            o.position,
            o.provider,
            o.provider_service_id,
            o.rate,
            f"{o.min}-{o.max}",
            ", ".join(
                s
                for s, on in (("not listed", not o.listed), ("disabled", not o.provider_enabled))
                if on
            ),
        )
        for o in offers
    ]
    headers = ("SERVICE", "POS", "PROVIDER", "ITS ID", "ITS RATE", "MIN-MAX", "STATE")
    return _table(headers, rows)


@services_app.command("map")
def services_map(
    service: ServiceArg,
    provider: Annotated[str, typer.Argument(metavar="PROVIDER", help="Provider id or name.")],
    provider_service: Annotated[
        int, typer.Argument(metavar="PROVIDER_SERVICE_ID", help="Its id there.", parser=row_id)
    ],
    position: Annotated[
        int | None,
        typer.Option(min=0, max=10_000, help="Lower is tried first (default: after the others)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Make a provider's service (as synced) an alternative of local service ID: customers
    keep one id and one price; an order goes to the first provider that takes it."""
    body = _checked(
        OfferMapIn,
        {"provider": "PROVIDER", "provider_service_id": "PROVIDER_SERVICE_ID"},
        provider=provider,
        provider_service_id=provider_service,
        position=position,
    )
    changed = _run(lambda db, s: ops.map_offer(db, service, body))
    _emit(
        as_json,
        changed,
        [f"service {changed.service}: {changed.changed}", _offers_table(changed.offers)],
    )


@services_app.command("unmap")
def services_unmap(
    service: ServiceArg,
    provider: Annotated[str, typer.Argument(metavar="PROVIDER", help="Provider id or name.")],
    as_json: JsonFlag = False,
) -> None:
    """Take a provider's offer off local service ID (it goes back to a service of its own)."""
    changed = _run(lambda db, s: ops.unmap_offer(db, service, provider))
    lines = [f"service {changed.service}: {changed.changed}"]
    _emit(as_json, changed, lines + ([_offers_table(changed.offers)] if changed.offers else []))


# --- providers ----------------------------------------------------------------------------------

ProviderArg = Annotated[str, typer.Argument(metavar="PROVIDER", help="Provider id or name.")]


class FamilyName(StrEnum):
    smartpanel = "smartpanel"
    standard = "standard"


def _provider_lines(p: ProviderOut) -> list[str]:
    def or_default(value: object, default: str) -> str:
        return default if value is None else str(value)

    balance = (
        "never asked (smm-gateway providers balance)"
        if p.balance is None
        else f"{p.balance} {p.balance_currency or ''}".rstrip()
        + f" at {_short_when(p.balance_at)}"
        + ("  LOW" if p.low_balance else "")
    )
    lines = [
        f"provider {p.id}: {p.name} ({'enabled' if p.enabled else 'DISABLED'})",
        f"  url:             {or_default(p.url, 'from SMMGW_UPSTREAM_URL')}",
        f"  key:             {p.key}",
        f"  family:          {or_default(p.family, 'detect')}"
        + (f" (heard: {p.family_heard})" if p.family_heard else ""),
        f"  double decode:   {or_default(p.double_decode, 'as its family')}",
        f"  timeouts:        connect {or_default(p.connect_timeout_seconds, 'setting')} s,"
        f" read {or_default(p.read_timeout_seconds, 'setting')} s",
        f"  low balance at:  {or_default(p.low_balance_threshold, 'no warning')}",
        f"  balance:         {balance}",
        "  catalog:         "
        + (f"synced {_short_when(p.catalog_synced_at)}" if p.catalog_synced_at else "never synced")
        + (f"; last error: {p.catalog_error}" if p.catalog_error else ""),
    ]
    if p.out_of_funds_since is not None:
        lines.append(
            f"  OUT OF FUNDS since {_short_when(p.out_of_funds_since)}: tried after the others"
        )
    return lines


_PROVIDER_OPTIONS = {
    "url": "--url",
    "key": "--key",
    "connect_timeout_seconds": "--connect-timeout",
    "read_timeout_seconds": "--timeout",
    "low_balance": "--low-balance",
    "name": "--name",
}
UrlOpt = Annotated[str | None, typer.Option("--url", help="Its API URL (…/api/v2).")]
KeyOpt = Annotated[
    str | None, typer.Option("--key", help="Its API key (stored encrypted, never shown).")
]
FamilyOpt = Annotated[
    FamilyName | None, typer.Option("--family", help="Its family (default: read from its catalog).")
]
DoubleDecodeOpt = Annotated[
    bool | None,
    typer.Option(
        "--double-decode/--no-double-decode", help="Encode values twice (default: as the family)."
    ),
]
ConnectOpt = Annotated[
    float | None, typer.Option("--connect-timeout", metavar="SECONDS", help="Connect timeout.")
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option("--timeout", metavar="SECONDS", help="Read timeout (`add` is ambiguous after)."),
]
LowBalanceOpt = Annotated[
    str | None,
    typer.Option("--low-balance", metavar="AMOUNT", help="Warn below this balance there."),
]


@providers_app.command("add")
def providers_add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A name of your choice.")],
    url: UrlOpt = None,
    key: KeyOpt = None,
    family: FamilyOpt = None,
    double_decode: DoubleDecodeOpt = None,
    connect_timeout: ConnectOpt = None,
    timeout: TimeoutOpt = None,
    low_balance: LowBalanceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Add a provider (needs SMMGW_SECRET_KEY: its key is stored encrypted). Then
    `smm-gateway services sync` imports its catalog, and `services map` makes its services
    alternatives of yours."""
    if url is None or key is None:
        fail("give --url and --key", 2)
    body = _checked(
        ProviderCreate,
        _PROVIDER_OPTIONS,
        name=name,
        url=url,
        key=key,
        family=None if family is None else family.value,
        double_decode=double_decode,
        connect_timeout_seconds=connect_timeout,
        read_timeout_seconds=timeout,
        low_balance=low_balance,
    )
    added = _run(lambda db, s: ops.add_provider(db, s, body))
    _emit(as_json, added, [*_provider_lines(added), "next: smm-gateway services sync"])


@providers_app.command("list")
def providers_list(as_json: JsonFlag = False) -> None:
    """Every provider (never their keys)."""
    listed = _run(lambda db, s: ops.list_providers(db))
    rows = [
        (
            p.id,
            p.name,
            p.url or "(SMMGW_UPSTREAM_URL)",
            p.family or p.family_heard or "detect",
            "enabled" if p.enabled else "disabled",
            "-" if p.balance is None else f"{p.balance}{'  LOW' if p.low_balance else ''}",
            _short_when(p.catalog_synced_at) or "never",
        )
        for p in listed
    ]
    headers = ("ID", "NAME", "URL", "FAMILY", "STATE", "BALANCE", "CATALOG SYNCED")
    _emit(as_json, listed, _table(headers, rows))


@providers_app.command("show")
def providers_show(provider: ProviderArg, as_json: JsonFlag = False) -> None:
    """One provider in full (its key only by fingerprint)."""
    shown = _run(lambda db, s: ops.show_provider(db, provider))
    _emit(as_json, shown, _provider_lines(shown))


def _patch(provider: str, as_json: bool, message: str, **given: Any) -> None:
    patch = _checked(ProviderPatch, _PROVIDER_OPTIONS, **given)
    changed = _run(lambda db, s: ops.update_provider(db, s, provider, patch))
    _emit(as_json, changed, [f"provider {changed.name}: {message}", *_provider_lines(changed)[1:]])


@providers_app.command("set")
def providers_set(
    provider: ProviderArg,
    name: Annotated[str | None, typer.Option("--name", help="A new name.")] = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
    family: FamilyOpt = None,
    double_decode: DoubleDecodeOpt = None,
    connect_timeout: ConnectOpt = None,
    timeout: TimeoutOpt = None,
    low_balance: LowBalanceOpt = None,
    reset: Annotated[
        list[str] | None,
        typer.Option(
            "--reset",
            metavar="FIELD",
            help="Back to its default: url, key (provider default: the settings'), family,"
            " double-decode, connect-timeout, timeout, low-balance. Repeatable.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Change a provider's settings; the gateway uses them from its next call there."""
    given: dict[str, Any] = {}
    names = {
        "url": "url",
        "key": "key",
        "family": "family",
        "double-decode": "double_decode",
        "connect-timeout": "connect_timeout_seconds",
        "timeout": "read_timeout_seconds",
        "low-balance": "low_balance",
    }
    for field in reset or []:
        if field not in names:
            fail(f"bad --reset {field!r}: one of {', '.join(names)}", 2)
        given[names[field]] = None
    values = {
        "name": name,
        "url": url,
        "key": key,
        "family": None if family is None else family.value,
        "double_decode": double_decode,
        "connect_timeout_seconds": connect_timeout,
        "read_timeout_seconds": timeout,
        "low_balance": low_balance,
    }
    given |= {k: v for k, v in values.items() if v is not None}
    if not given:
        fail("nothing to change: give an option (see --help)", 2)
    _patch(provider, as_json, "updated", **given)


@providers_app.command("disable")
def providers_disable(provider: ProviderArg, as_json: JsonFlag = False) -> None:
    """No new order goes to this provider (its orders still sync, refill and cancel there)."""
    _patch(provider, as_json, "disabled", enabled=False)


@providers_app.command("enable")
def providers_enable(provider: ProviderArg, as_json: JsonFlag = False) -> None:
    """Route orders to this provider again."""
    _patch(provider, as_json, "enabled", enabled=True)


@providers_app.command("balance")
def providers_balance(
    provider: Annotated[
        str | None, typer.Argument(metavar="[PROVIDER]", help="One provider (default: all).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Our balance at every enabled provider (or one), asked now."""

    async def work(db: Database, settings: Settings) -> Any:
        async with _clients(db, settings) as clients:
            return await ops.provider_balance(db, clients, provider)

    balances = _run(work)
    rows = [
        (
            b.provider,
            f"{b.balance} {b.currency or ''}".rstrip() if b.balance is not None else "-",
            "LOW" if b.low_balance else (f"unavailable: {b.error}" if b.error else "ok"),
        )
        for b in balances
    ]
    _emit(as_json, balances, _table(("PROVIDER", "BALANCE", "STATE"), rows))


# --- orders -------------------------------------------------------------------------------------

OrderArg = Annotated[
    int,
    typer.Argument(metavar="ID", help="Order id (ours, as customers see it).", parser=row_id),
]


def _order_lines(order: OrderOut, currency: str) -> list[str]:
    charge = f"{order.charge} {currency}"
    if order.refunded != "0.00":
        charge += f", refunded {order.refunded}: pays {order.current_charge}"
    upstream = (
        "none"
        if order.upstream_order_id is None
        else f"order {order.upstream_order_id}, status {order.upstream_status or '-'}"
        + (f", charged {order.upstream_charge}" if order.upstream_charge is not None else "")
    )
    lines = [
        f"order {order.id}: {order.state.upper() if order.state == UNKNOWN else order.state}",
        f"  customer:    {order.customer_id}",
        f"  service:     {order.service_id}",
        f"  status:      {order.status}",
        f"  quantity:    {order.quantity}"
        + (f"  (start count {order.start_count})" if order.start_count is not None else "")
        + (f"  (remains {order.remains})" if order.remains is not None else ""),
        f"  rate:        {order.rate} per 1000",
        f"  charge:      {charge}",
        f"  upstream:    {upstream}",
        f"  provider:    {order.provider_id}"
        + (" (default)" if order.provider_id == DEFAULT_PROVIDER_ID else ""),
        f"  created:     {_short_when(order.created_at)}",
        f"  refreshed:   {_short_when(order.refreshed_at) or 'never'}",
    ]
    if order.error:
        lines.append(f"  error:       {order.error}")
    lines += [f"  sent:        {name}={value}" for name, value in order.params.items()]
    if order.state == UNKNOWN:
        lines += [
            f"  Provider {order.provider_id} may or may not have this order; funds stay held"
            " until you say which:",
            f"    smm-gateway orders resolve {order.id} --upstream-order N   (it exists upstream)",
            f"    smm-gateway orders resolve {order.id} --not-placed         (refund in full)",
        ]
    return lines


@orders_app.command("list")
def orders_list(
    state: Annotated[
        OrderState | None, typer.Option(help="Only orders in this state (unknown: to resolve).")
    ] = None,
    customer: Annotated[
        str | None, typer.Option(metavar="C", help="Only this customer's (id or name).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many, newest first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Orders, newest first: customer, state, status, upstream status, charge, last refresh."""

    async def work(db: Database, settings: Settings) -> tuple[list[OrderOut], dict[int, str]]:
        orders = await ops.list_orders(
            db, state=None if state is None else state.value, customer=customer, limit=limit
        )
        names = {c.id: c.name for c in await customers.list_customers(db)}
        return orders, names

    listed, names = _run(work)
    rows = [
        (
            o.id,
            _short_when(o.created_at),
            f"{o.customer_id} {names.get(o.customer_id, '')}".rstrip(),
            o.service_id,
            o.quantity,
            o.state.upper() if o.state == UNKNOWN else o.state,
            o.status,
            o.upstream_status or "",
            o.current_charge,
            _short_when(o.refreshed_at) or "never",
        )
        for o in listed
    ]
    headers = (
        "ID",
        "CREATED",
        "CUSTOMER",
        "SERVICE",
        "QTY",
        "STATE",
        "STATUS",
        "UPSTREAM",
        "CHARGE",
        "REFRESHED",
    )
    _emit(as_json, listed, _table(headers, rows) if rows else "no orders")


@orders_app.command("show")
def orders_show(order: OrderArg, as_json: JsonFlag = False) -> None:
    """One order in full: charges, the upstream's side, the parameters sent."""
    settings = _settings()
    shown = _run(lambda db, s: ops.get_order(db, order), settings)
    _emit(as_json, shown, _order_lines(shown, settings.currency))


def _check_lines(resolved: ResolutionOut) -> list[str]:
    check = resolved.upstream_check
    if check is None:
        return []
    if not check.found:
        said = "does not know it"
    else:
        said = f"status {check.status or '-'}, charge {check.charge or '-'}"
        said += f" (the order costs {check.expected_charge} there)"
        if check.link is not None:
            said += f", link {check.link}"
        if check.service is not None:
            said += f", service {check.service}"
    lines = [f"  the upstream on order {check.upstream_order_id}: {said}"]
    lines += [f"  MISMATCH (accepted with --force): {m}" for m in check.mismatches]
    return lines


@orders_app.command("resolve")
def orders_resolve(
    order: OrderArg,
    upstream_order: Annotated[
        str | None,
        typer.Option(metavar="N", help="It exists upstream as order N: now placed."),
    ] = None,
    not_placed: Annotated[
        bool, typer.Option("--not-placed", help="It never reached the upstream: refund in full.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Accept N though the upstream's answer differs from it."),
    ] = False,
    correct: Annotated[
        bool,
        typer.Option(
            "--correct", help="Correct an earlier verdict (placed, not placed, another N)."
        ),
    ] = False,
    memo: MemoOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Resolve an `unknown` order: --upstream-order N (it exists upstream; the upstream is asked
    about N first, and a mismatch is refused unless --force) or --not-placed (refund in full).
    With --correct, a verdict given before is corrected by an audited ledger entry."""
    if (upstream_order is None) == (not not_placed):
        fail("give exactly one of --upstream-order N or --not-placed", 2)
    verdict = _checked(
        ResolveIn,
        {"upstream_order_id": "--upstream-order", "memo": "--memo"},
        upstream_order_id=upstream_order,
        not_placed=not_placed,
        force=force,
        correct=correct,
        memo=memo,
    )

    async def work(db: Database, settings: Settings) -> ResolutionOut:
        async with _clients(db, settings) as clients:
            return await ops.resolve(db, clients, order, verdict)

    resolved = _run(work)
    if resolved.state == "rejected":
        text = [f"order {resolved.id}: not placed, {resolved.refunded} refunded"]
    else:
        text = [f"order {resolved.id}: placed as upstream order {resolved.upstream_order_id}"]
    text += _check_lines(resolved)
    if resolved.correction:
        text.append(f"  corrected by ledger entry {resolved.correction}")
        if resolved.error:
            text.append(f"  note: {resolved.error}")
    _emit(as_json, resolved, text)


# --- sync, worker, report, summary --------------------------------------------------------------


@app.command()
def sync(
    once: Annotated[bool, typer.Option("--once", help="One status-sync pass, then exit.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """One status-sync pass (--once): poll active orders in batches of 100, settle final ones,
    turn orders stranded in `sending` into `unknown`. The loop is `smm-gateway worker`."""
    if not once:
        fail("`sync` runs one pass: say --once (the loop is `smm-gateway worker`)", 2)

    async def work(db: Database, settings: Settings) -> Any:
        async with _clients(db, settings) as clients:
            with _progress(as_json, "asking the upstream for statuses") as say:
                return await ops.run_sync_pass(
                    db,
                    clients,
                    settings,
                    on_batch=lambda r: say(
                        f"polled {r.polled} orders in {r.upstream_calls} upstream calls,"
                        f" settled {r.settled}"
                    ),
                )

    result = _run(work)
    lines = [
        f"sync pass: polled {result.polled} orders in {result.upstream_calls} upstream calls,"
        f" settled {result.settled}"
    ]
    lines += [f"anomaly: {line}" for line in result.anomalies]
    _emit(as_json, result, lines)
    if result.failed_batches:
        fail(
            f"{result.failed_batches} status batch(es) failed (upstream unreachable?);"
            " those orders are retried on the next pass"
        )


@app.command()
def worker() -> None:
    """Run the background work as a process of its own until Ctrl-C or SIGTERM: the status sync
    (every SMMGW_SYNC_INTERVAL_SECONDS) and the catalog refresh (every
    SMMGW_SERVICES_TTL_SECONDS).

    Then start the gateway with SMMGW_SYNC_IN_PROCESS=false, so `serve` leaves the status sync to
    this process. (Both at once stay correct, batches are leased, but poll the upstream twice.)
    """
    from app.logs import configure_logging

    settings = _settings()
    _run(_nothing, settings)  # settings valid, schema at head, unresolved orders said out loud
    configure_logging(settings)  # SMMGW_LOG_FORMAT / SMMGW_LOG_LEVEL, secrets masked
    if settings.sync_in_process:
        typer.echo(
            "note: SMMGW_SYNC_IN_PROCESS is true here; start `serve` with"
            " SMMGW_SYNC_IN_PROCESS=false so only this worker runs the status sync",
            err=True,
        )
    typer.echo("worker running (status sync and catalog refresh); Ctrl-C stops it", err=True)
    with _operator_errors():
        asyncio.run(_work_until_stopped(settings))
    typer.echo("worker stopped", err=True)


async def _work_until_stopped(settings: Settings) -> None:
    from app.main import Gateway, refresh_catalog_forever, sync_orders_forever

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled = (signal.SIGINT, signal.SIGTERM)
    for sig in handled:
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(settings)
    loops = [
        asyncio.create_task(refresh_catalog_forever(gateway), name="catalog refresh"),
        asyncio.create_task(sync_orders_forever(gateway), name="status sync"),
    ]
    stopping = asyncio.create_task(stop.wait())
    try:
        # The loops never return; if one does (a bug), stop rather than run half a worker.
        done, _ = await asyncio.wait([stopping, *loops], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopping:
                raise OperatorError(f"the {task.get_name()} loop ended unexpectedly")
    finally:
        for task in [stopping, *loops]:
            task.cancel()
        for task in [stopping, *loops]:
            with suppress(asyncio.CancelledError):
                await task
        for sig in handled:
            loop.remove_signal_handler(sig)
        await gateway.close()


def _report_table(lines: list[ReportLineOut]) -> str:
    rows = [(r.id, r.name, r.orders, r.revenue, r.upstream_cost, r.margin) for r in lines]
    headers = ("ID", "NAME", "ORDERS", "REVENUE", "UPSTREAM COST", "MARGIN")
    return _table(headers, rows) if rows else "  (no orders)"


@app.command()
def report(
    since: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d"], metavar="YYYY-MM-DD", help="First day included (UTC)."),
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d"], metavar="YYYY-MM-DD", help="Last day included (UTC)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Revenue, upstream cost and margin per customer, per service and per provider, and the
    totals.
    Counts orders that may exist upstream (placed, unknown); refunds are already netted."""
    period = _checked(
        ReportPeriod,
        {"since": "--since", "until": "--until"},
        since=None if since is None else since.date(),
        until=None if until is None else until.date(),
    )
    first, last = period.since, period.until
    result = _run(lambda db, settings: ops.report(db, settings, first, last))
    period = f"{first or 'the beginning'} to {last or 'now'}"
    total = result.total
    lines = [
        f"report from {period} (UTC), in {result.currency}",
        "",
        "by customer:",
        _report_table(result.by_customer),
        "",
        "by service:",
        _report_table(result.by_service),
        "",
        "by provider:",
        _report_table(result.by_provider),
        "",
        f"total: {total.orders} orders, revenue {total.revenue}, upstream cost"
        f" {total.upstream_cost}, margin {total.margin}",
    ]
    _emit(as_json, result, lines)


@app.command()
def summary(as_json: JsonFlag = False) -> None:
    """Orders by state, the unresolved count, the catalog's sync state, today's revenue, cost
    and margin (UTC), and the upstream balance (asked now)."""
    from app.upstream import UpstreamClient

    async def work(db: Database, settings: Settings) -> Any:
        async with UpstreamClient.from_settings(settings) as upstream:
            return await ops.summary(db, settings, upstream)

    result = _run(work)
    counts = ", ".join(f"{state} {n}" for state, n in result.orders_by_state.items())
    catalog = (
        f"last synced {_short_when(result.catalog.synced_at)}"
        if result.catalog.synced_at
        else "never synced"
    )
    if result.catalog.last_error:
        catalog += f"; the last sync failed: {result.catalog.last_error}"
    today = result.today
    up = result.upstream
    balance = (
        f"{up.balance} {up.currency or ''}".rstrip()
        if up.balance is not None
        else f"unavailable ({up.error})"
    )
    _emit(
        as_json,
        result,
        [
            f"orders: {counts}",
            f"unresolved (unknown): {result.unresolved}",
            f"catalog: {catalog}",
            f"today (UTC): {today.orders} orders, revenue {today.revenue}, upstream cost"
            f" {today.upstream_cost}, margin {today.margin} {result.currency}",
            f"upstream balance: {balance}",
        ],
    )


def main() -> None:
    app()
