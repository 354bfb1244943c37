"""Engines, transactions and migrations for SQLite and PostgreSQL.

Writes go through `Database.write()`: one transaction, `BEGIN IMMEDIATE` on SQLite so two
writers never both read a balance and then both debit it. Reads go through `Database.read()`:
no transaction wrapped around them (autocommit). The few reads on every request's path (the
key lookup, order statuses) go through `Database.fetch()`: the driver itself, without
SQLAlchemy's pool in between, which bench/README.md measured at a fraction of the cost.
"""

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Executable, create_engine, event, inspect, text
from sqlalchemy.engine import Connection, CursorResult, Dialect, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

import migrations

SQLITE_BUSY_TIMEOUT_MS = 10_000
T = TypeVar("T")
log = logging.getLogger("smm_gateway.db")

# What a database that cannot be reached raises (the server down, restarting, or the
# connection cut), as opposed to a bug: a refused or reset socket, a server shutting down.
# What a read on a connection the server dropped raises (asyncpg's own words for it).
_DROPPED = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)

_UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
)


def _as_sqlalchemy(sql: str, exc: BaseException) -> DBAPIError:
    """A driver error as SQLAlchemy would have raised it, for callers written against those."""
    kind = (
        IntegrityError
        if isinstance(exc, asyncpg.IntegrityConstraintViolationError)
        else OperationalError
    )
    return kind(sql, None, exc)


def is_unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps: SQLAlchemy chains the driver's error) says the
    database could not be reached."""
    seen: BaseException | None = exc
    for _ in range(10):  # a chain is a few links long; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, _UNREACHABLE) or getattr(seen, "connection_invalidated", False):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Outage:
    """Whether the database answers, as requests find it: one log line when it stops, one
    when it is back, however many requests meet it in between."""

    def __init__(self) -> None:
        self.since: float | None = None  # monotonic time the outage began; None: answering

    def failed(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.error("database unreachable (%s): answering 'try again later'", type(exc).__name__)

    def answered(self) -> None:
        if self.since is not None:
            log.warning("database reachable again after %.0f s", time.monotonic() - self.since)
            self.since = None


def _sqlite_engine(url: str, busy_timeout_ms: int) -> Engine:
    """A synchronous engine, used from the event loop (see InLoopConnection)."""
    sync_url = url.replace("sqlite+aiosqlite://", "sqlite+pysqlite://", 1)
    # No reset on return: every write ends in COMMIT or ROLLBACK already, and reads run
    # without a transaction.
    engine = create_engine(
        sync_url,
        connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
        pool_reset_on_return=None,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module, so BEGIN is ours.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


async def _begin_immediate(conn: Connection) -> None:
    """BEGIN IMMEDIATE without ever blocking the event loop: the writer's connections wait
    for no lock themselves (busy timeout 0); another process's write lock is waited out
    here, asleep, for up to SQLITE_BUSY_TIMEOUT_MS."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.001
    while True:
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        except OperationalError as exc:
            conn.rollback()
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


class InLoopConnection:
    """A synchronous SQLAlchemy connection behind AsyncConnection's methods, for SQLite.

    A SQLite statement takes microseconds; aiosqlite's thread hop per statement costs more,
    and many times more on a busy machine (bench/README.md). Statements run in the event loop,
    so a transaction's body, which never awaits anything else, runs without interleaving.
    """

    def __init__(self, connection: Connection) -> None:
        self.sync_connection = connection

    @property
    def dialect(self) -> Dialect:
        return self.sync_connection.dialect

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]:
        return self.sync_connection.execute(statement, parameters)

    async def scalar(self, statement: Executable, parameters: Any = None) -> Any:
        return self.sync_connection.scalar(statement, parameters)

    async def exec_driver_sql(self, sql: str, parameters: Any = None) -> CursorResult[Any]:
        return self.sync_connection.exec_driver_sql(sql, parameters)

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return fn(self.sync_connection, *args, **kwargs)


class InThreadConnection(InLoopConnection):
    """The same, each statement run in a thread: for the long reads of a check or a report,
    which must not stop the event loop (customers' requests) while they scan the tables."""

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]:
        return await asyncio.to_thread(self.sync_connection.execute, statement, parameters)

    async def scalar(self, statement: Executable, parameters: Any = None) -> Any:
        return await asyncio.to_thread(self.sync_connection.scalar, statement, parameters)

    async def exec_driver_sql(self, sql: str, parameters: Any = None) -> CursorResult[Any]:
        return await asyncio.to_thread(self.sync_connection.exec_driver_sql, sql, parameters)

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, self.sync_connection, *args, **kwargs)


# What `Database.read()`/`write()` hand out: same methods on both databases.
Conn = AsyncConnection | InLoopConnection  # InThreadConnection is one


# The hot reads' connections plan every statement by an index: they run only a few known
# lookups of ≤ 100 rows by unique keys, and on a small or never-analysed table the planner
# may price a sequential scan of the whole table below 100 index descents (it did for a
# 100-id `status` on 4,000 orders: tests/test_query_plans.py). `enable_seqscan = off` only
# prices such a scan out; a statement with no index to use still runs.
HOT_READ_SETTINGS = {"enable_seqscan": "off"}


class HotPool:
    """A few asyncpg connections for the hot reads, handed out with nothing else to do.

    asyncpg's own Pool does per-checkout work the hot reads never need: a proxy object per
    acquire, and per release a task (`asyncio.shield`), a timeout scope and a reset (a round
    trip by default: `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`).
    The hot reads are single autocommit SELECTs that change no session state, so a connection
    goes back as it came, in a list; one that failed or was interrupted is closed instead
    (its protocol may be mid-operation). asyncpg prepares each statement once per connection
    and reuses it (its statement cache, keyed by the SQL text): our statements are constants.
    """

    def __init__(self, dsn: str, max_size: int) -> None:
        self.dsn = dsn
        self.max_size = max_size
        self.size = 0  # open or being opened
        self._idle: list[asyncpg.Connection] = []
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()

    async def acquire(self) -> asyncpg.Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.is_closed():
                return conn
            self.size -= 1
        if self.size >= self.max_size:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self.release(waiter.result())  # handed over as we were cancelled
                raise
            if handed is not None:
                return handed
            # None: a slot freed by a closed connection, so open one here.
        self.size += 1
        try:
            return await asyncpg.connect(self.dsn, server_settings=HOT_READ_SETTINGS)
        except BaseException:
            self.size -= 1
            self._wake(None)
            raise

    def _wake(self, conn: asyncpg.Connection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def release(self, conn: asyncpg.Connection) -> None:
        if not self._wake(conn):
            self._idle.append(conn)

    def discard(self, conn: asyncpg.Connection) -> None:
        conn.terminate()
        self.size -= 1
        self._wake(None)

    def discard_idle(self) -> None:
        """After one connection was found dropped, the idle ones likely were too (a server
        restart, pg_terminate_backend of all): close them rather than fail on each."""
        while self._idle:
            self.discard(self._idle.pop())

    async def close(self) -> None:
        while self._idle:
            conn = self._idle.pop()
            self.size -= 1
            with suppress(Exception):
                await conn.close(timeout=2)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.cancel()


def _open_sqlite_reader(url: str) -> sqlite3.Connection:
    path = url.split(":///", 1)[1]
    conn = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
    )
    conn.execute("PRAGMA busy_timeout=2000")
    return conn


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._sqlite_write: Engine | None = None
        self._sqlite_read: Engine | None = None
        self._pg: AsyncEngine | None = None
        if self.is_sqlite:
            self._sqlite_write = _sqlite_engine(url, busy_timeout_ms=0)
            # Autocommit reads: each statement sees the latest commit, holds no lock.
            self._sqlite_read = _sqlite_engine(url, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS)
        else:
            # pool_pre_ping: a pooled connection the server dropped (a restart, a failover,
            # pg_terminate_backend) is replaced before use instead of failing a write.
            self._pg = create_async_engine(
                url, pool_size=10, max_overflow=20, pool_reset_on_return=None, pool_pre_ping=True
            )
            self._pg_autocommit = self._pg.execution_options(isolation_level="AUTOCOMMIT")
        self._sqlite_reader: sqlite3.Connection | None = None
        self._pg_pool: HotPool | None = None
        # SQLite has one writer at a time; a transaction that awaits something else must not
        # let another of this process's writers start on the same file.
        self._write_lock = asyncio.Lock()
        self.outage = Outage()

    def _hot_pool(self) -> HotPool:
        pool = self._pg_pool
        if pool is None:
            # No floor: the pool opens connections as reads need them, so a server that is
            # away costs one failed connect per read, not a retry loop in the background.
            pool = self._pg_pool = HotPool(
                self.url.replace("postgresql+asyncpg://", "postgresql://", 1), max_size=10
            )
        return pool

    async def fetch(self, sqlite_sql: str, postgres_sql: str, *args: Any) -> list[Sequence[Any]]:
        """One hot read, straight through the driver; the SQL is given in each dialect.

        SQLite: a read-only stdlib connection used in the event loop. An indexed read in WAL
        mode never waits for a writer and takes microseconds, less than a thread hop costs.
        """
        if self.is_sqlite:
            if self._sqlite_reader is None:
                self._sqlite_reader = _open_sqlite_reader(self.url)
            return self._sqlite_reader.execute(sqlite_sql, args).fetchall()
        pool = self._hot_pool()
        dropped: BaseException | None = None
        for attempt in (1, 2):
            conn = await pool.acquire()
            try:
                rows = await conn.fetch(postgres_sql, *args)
            except _DROPPED as exc:
                # A pooled connection the server dropped (a restart, pg_terminate_backend)
                # fails, sometimes leaving asyncpg's protocol mid-operation: it is closed for
                # good (the idle ones with it), and the read, harmless to repeat, gets one
                # more try on a fresh one. A server still away fails again: an outage, which
                # its own line reports (so nothing is said here then).
                pool.discard(conn)
                pool.discard_idle()
                if attempt == 2:
                    raise
                dropped = exc
            except asyncpg.PostgresError:
                pool.release(conn)  # the server refused the statement: the session is fine
                raise
            except BaseException:
                pool.discard(conn)  # a cancellation or a client error mid-read: state unknown
                raise
            else:
                pool.release(conn)
                if dropped is not None:
                    log.info(
                        "database: a pooled connection was gone (%s); read again on a new one",
                        type(dropped).__name__,
                    )
                return rows
        raise AssertionError("unreachable")

    async def pg_write(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        """One writing statement on PostgreSQL, through the driver on a hot-read connection:
        autocommit, so the statement is its own transaction (all of it or nothing). Never
        retried here (a write may have committed before its reply was lost: the caller knows
        whether repeating it is harmless). Driver errors are raised as SQLAlchemy's
        (IntegrityError for a constraint, OperationalError otherwise), chained to the
        driver's, as the SQLAlchemy path raises them."""
        pool = self._hot_pool()
        try:
            conn = await pool.acquire()
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # refused to connect
            raise _as_sqlalchemy(sql, exc) from exc
        try:
            rows = await conn.fetch(sql, *args)
        except asyncpg.PostgresError as exc:
            if conn.is_closed():  # the server is shutting down, or terminated us
                pool.discard(conn)
                pool.discard_idle()
            else:
                pool.release(conn)  # refused by the server: the session is fine
            raise _as_sqlalchemy(sql, exc) from exc
        except BaseException as exc:
            pool.discard(conn)  # dropped, cancelled, or a client error: state unknown
            if isinstance(exc, _DROPPED) and not isinstance(exc, OSError):
                pool.discard_idle()
                raise _as_sqlalchemy(sql, exc) from exc
            raise
        pool.release(conn)
        return rows

    async def sqlite_write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn` on the stdlib connection inside one write transaction (BEGIN IMMEDIATE, as
        `write()`): a few prebuilt statements without SQLAlchemy's per-statement work. sqlite3
        errors are raised as SQLAlchemy's (IntegrityError, OperationalError, ...)."""
        async with self.write() as conn:
            assert isinstance(conn, InLoopConnection)
            raw = conn.sync_connection.connection.driver_connection
            try:
                return fn(raw)
            except sqlite3.Error as exc:
                raise DBAPIError.instance(None, None, exc, sqlite3.Error) from exc

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Conn]:
        """One write transaction: commits on success, rolls back on any exception."""
        if self._pg is not None:
            async with self._pg.begin() as conn:
                yield conn
            return
        assert self._sqlite_write is not None
        async with self._write_lock:
            with self._sqlite_write.connect() as sync_conn:
                await _begin_immediate(sync_conn)
                try:
                    yield InLoopConnection(sync_conn)
                except BaseException:
                    sync_conn.rollback()
                    raise
                sync_conn.commit()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Conn]:
        if self._pg is not None:
            async with self._pg_autocommit.connect() as conn:
                yield conn
            return
        assert self._sqlite_read is not None
        with self._sqlite_read.connect() as sync_conn:
            yield InLoopConnection(sync_conn)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Conn]:
        """A transaction whose reads all see one consistent state (for checks and reports).
        SQLite: a deferred read transaction (WAL keeps its snapshot from the first read on),
        which takes no write lock: customers' writes go on while a check runs."""
        if self._pg is None:
            assert self._sqlite_read is not None
            with self._sqlite_read.connect() as sync_conn:
                sync_conn.exec_driver_sql("BEGIN DEFERRED")
                try:
                    yield InThreadConnection(sync_conn)
                finally:
                    sync_conn.rollback()
            return
        engine = self._pg.execution_options(isolation_level="REPEATABLE READ")
        async with engine.begin() as conn:
            yield conn

    async def dispose(self) -> None:
        if self._sqlite_reader is not None:
            self._sqlite_reader.close()
            self._sqlite_reader = None
        if self._pg_pool is not None:
            await self._pg_pool.close()
            self._pg_pool = None
        for engine in (self._sqlite_write, self._sqlite_read):
            if engine is not None:
                engine.dispose()
        if self._pg is not None:
            await self._pg.dispose()

    async def migrate(self) -> None:
        """Bring the schema to head (alembic upgrade head) on this database."""
        async with self.write() as conn:
            await conn.run_sync(_upgrade_head)

    async def schema_problem(self) -> str | None:
        """None when the schema is at head; otherwise what is wrong, in a few words. Reads
        only: a database that was never migrated is left exactly as it is."""
        if self.is_sqlite and _sqlite_file_missing(self.url):
            return "does not exist (it was never migrated)"
        async with self.read() as conn:
            current = set(await conn.run_sync(_current_heads))
        heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
        if current == heads:
            return None
        if not current:
            return "has no smm-gateway schema (it was never migrated)"
        return (
            f"has schema revision {', '.join(sorted(current))}, this smm-gateway needs"
            f" {', '.join(sorted(heads))}"
        )


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade_head(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")
    ensure_unique_upstream_ids(connection)


UPSTREAM_ID_INDEX = "uq_orders_upstream_order_id"
# One upstream order of one provider (migration 0005: orders.provider_id) belongs to one order.
SHARED_UPSTREAM_IDS = (
    "SELECT upstream_order_id, MIN(id), MAX(id), COUNT(*), provider_id FROM orders"
    " WHERE upstream_order_id IS NOT NULL AND state <> 'rejected'"
    " GROUP BY provider_id, upstream_order_id HAVING COUNT(*) > 1"
    " ORDER BY provider_id, upstream_order_id"
)


def _upstream_id_columns(connection: Connection) -> list[str]:
    """The index's columns for this schema: before migration 0005 there is no provider."""
    columns = {c["name"] for c in inspect(connection).get_columns("orders")}
    return (
        ["provider_id", "upstream_order_id"] if "provider_id" in columns else ["upstream_order_id"]
    )


def ensure_unique_upstream_ids(connection: Connection) -> bool:
    """Make the database refuse a second order on one upstream order (of one provider), when
    its data allows: a database where two orders already share one keeps a plain index (so a
    migration never fails on old data), `ledger verify` lists them, and the next `migrate`
    after they are fixed makes the index unique. Returns whether it is unique now."""
    columns = _upstream_id_columns(connection)
    found = {i["name"]: i for i in inspect(connection).get_indexes("orders")}
    current = found.get(UPSTREAM_ID_INDEX)
    if current is not None and list(current["column_names"]) != columns:
        connection.execute(text(f"DROP INDEX {UPSTREAM_ID_INDEX}"))
        current = None
    if current is not None and current["unique"]:
        return True
    group = ", ".join(columns)
    shared = (
        connection.execute(
            text(
                f"SELECT {group} FROM orders WHERE upstream_order_id IS NOT NULL"
                f" AND state <> 'rejected' GROUP BY {group} HAVING COUNT(*) > 1"
            )
        ).first()
        is not None
    )
    if current is not None and shared:
        return False
    if current is not None:
        connection.execute(text(f"DROP INDEX {UPSTREAM_ID_INDEX}"))
    unique = "" if shared else "UNIQUE "
    connection.execute(
        text(
            f"CREATE {unique}INDEX {UPSTREAM_ID_INDEX} ON orders ({group})"
            " WHERE state <> 'rejected'"
        )
    )
    return not shared


def _sqlite_file_missing(url: str) -> bool:
    """Checked before connecting: connecting would create the file."""
    path = url.split(":///", 1)[1]
    return path != ":memory:" and not Path(path).exists()


def _current_heads(connection: Connection) -> tuple[str, ...]:
    return MigrationContext.configure(connection).get_current_heads()


async def ping(db: Database) -> bool:
    try:
        async with db.read() as conn:
            await conn.exec_driver_sql("SELECT 1")
        return True
    except Exception:  # a health check reports; it never raises
        return False
