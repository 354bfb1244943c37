"""Tables. Money columns are integer micro-units; markups are basis points."""

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Made by migration 0005 from today's upstream settings (SMMGW_UPSTREAM_URL / _KEY).
DEFAULT_PROVIDER_ID = 1
DEFAULT_PROVIDER = "default"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands datetimes back without a zone; every stored one is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# The condition of the partial index ix_orders_due ('placed' is app.orders.placing.PLACED).
DUE_WHERE = "settled_at IS NULL AND state = 'placed'"


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # None: the default markup applies (SMMGW_DEFAULT_MARKUP_PERCENT).
    markup_bp: Mapped[int | None] = mapped_column(Integer)
    dialect: Mapped[str] = mapped_column(String(20))
    # Cached sum of this customer's ledger entries; changed only with an entry.
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    # A short public part of the key that names it (shown in lists, used to revoke).
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LedgerEntry(Base):
    """Append-only. `ref` is unique so an order is charged once and settled once."""

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))  # topup | charge | refund | adjustment
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True)
    ref: Mapped[str | None] = mapped_column(String(64), unique=True)
    memo: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Provider(Base):
    """One upstream panel the gateway buys from. Provider `default` (id 1, made by migration
    0005) leaves url and key NULL: they come from SMMGW_UPSTREAM_URL / SMMGW_UPSTREAM_KEY, as
    before there were providers. NULL family / double_decode / timeouts: as the settings (or
    the family) say."""

    __tablename__ = "providers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    url: Mapped[str | None] = mapped_column(Text)
    # Fernet token of the provider's API key (SMMGW_SECRET_KEY): a copy of the database alone
    # does not give the key away. A short fingerprint names it without showing it.
    key_encrypted: Mapped[str | None] = mapped_column(Text)
    key_fingerprint: Mapped[str | None] = mapped_column(String(16))
    family: Mapped[str | None] = mapped_column(String(20))  # smartpanel | standard | NULL: detect
    double_decode: Mapped[bool | None] = mapped_column(Boolean)
    connect_timeout_seconds: Mapped[float | None] = mapped_column(Float)
    read_timeout_seconds: Mapped[float | None] = mapped_column(Float)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    low_balance_threshold: Mapped[int | None] = mapped_column(BigInteger)  # micros
    # Our balance there as last heard, and when: the low-balance warning and gauge read these.
    balance: Mapped[int | None] = mapped_column(BigInteger)
    balance_currency: Mapped[str | None] = mapped_column(String(8))
    balance_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # It refused an order for lack of funds: tried after the others until it takes one again.
    out_of_funds_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Its catalog as the last fetch found it (the family heard, when, and what went wrong).
    family_heard: Mapped[str | None] = mapped_column(String(20))
    catalog_synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    catalog_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Changed with every setting: the gateway rebuilds a provider's client when it moves.
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Service(Base):
    """The upstream catalog as last fetched, plus the operator's presentation choices."""

    __tablename__ = "services"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(40))
    rate: Mapped[int] = mapped_column(BigInteger)  # upstream rate per 1000, micros
    min: Mapped[int] = mapped_column(BigInteger)
    max: Mapped[int] = mapped_column(BigInteger)
    dripfeed: Mapped[bool] = mapped_column(Boolean, default=False)
    refill: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str | None] = mapped_column(Text)
    # False once the upstream stops listing it: hidden from customers, kept for old orders.
    upstream_listed: Mapped[bool] = mapped_column(Boolean, default=True)
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    display_name: Mapped[str | None] = mapped_column(Text)
    display_category: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ServiceOffer(Base):
    """One (provider, provider service id) that delivers a local service, in the operator's
    order of preference (`position`, lowest first), with what that provider's catalog said
    about it at its last sync. The local service's own row is its reference offer's (the
    first enabled, listed one): the customer's price is computed from that one's rate."""

    __tablename__ = "service_offers"
    __table_args__ = (
        # One provider's service delivers one local service; a local service has at most one
        # offer per provider.
        UniqueConstraint("provider_id", "provider_service_id"),
        UniqueConstraint("service_id", "provider_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"), index=True)
    provider_id: Mapped[int] = mapped_column(ForeignKey("providers.id"))
    provider_service_id: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer, default=0)
    name: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(40))
    rate: Mapped[int] = mapped_column(BigInteger)  # that provider's rate per 1000, micros
    min: Mapped[int] = mapped_column(BigInteger)
    max: Mapped[int] = mapped_column(BigInteger)
    dripfeed: Mapped[bool] = mapped_column(Boolean, default=False)
    refill: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str | None] = mapped_column(Text)
    # False once that provider stops listing it: not routed to, kept for old orders.
    listed: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PriceRule(Base):
    """A fixed rate or a markup for a service, for everyone (customer_id NULL) or one customer."""

    __tablename__ = "price_rules"
    __table_args__ = (
        UniqueConstraint("service_id", "customer_id"),
        # NULLs are distinct in the constraint above: one rule for everyone needs its own.
        Index(
            "uq_price_rules_everyone",
            "service_id",
            unique=True,
            sqlite_where=text("customer_id IS NULL"),
            postgresql_where=text("customer_id IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"), index=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    fixed_rate: Mapped[int | None] = mapped_column(BigInteger)
    markup_bp: Mapped[int | None] = mapped_column(Integer)
    # The operator's explicit consent to sell below the upstream rate.
    below_cost_ok: Mapped[bool] = mapped_column(Boolean, default=False)


class Order(Base):
    """A customer's order. `state` is the placement phase; `status` what the customer sees."""

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("customer_id", "idempotency_key"),
        # Orders in one state by age: `sending` ones past their grace (each sync pass), the
        # oldest `unknown` (a gauge), counts by state.
        Index("ix_orders_state_created", "state", "created_at"),
        # The orders a sync pass polls (and the active-order gauges count): placed, not settled,
        # a tenth of the table or less, in the order a pass claims them. Partial, so that no
        # planner can prefer walking the settled ones, even on statistics never gathered. It
        # replaces (state, refreshed_at), through which, at a million orders, each claim read
        # and sorted every placed order: 0.36 s per batch of 100 on PostgreSQL (migration 0007,
        # bench/README.md "Scale"). Queries that use it write its conditions as literals.
        Index(
            "ix_orders_due",
            # `state` first although it is constant here: SQLite, with no statistics, counts
            # the conditions an index serves, and would prefer (state, created_at) otherwise.
            "state",
            "provider_id",  # a pass claims each provider's batches apart
            "refreshed_at",
            "id",
            sqlite_where=text(DUE_WHERE),
            postgresql_where=text(DUE_WHERE),
        ),
        # A customer's orders by id (`status`): both conditions in one index, so it is the
        # plan even on stale statistics (migration 0004). It serves customer_id alone too.
        Index("ix_orders_customer_id_id", "customer_id", "id"),
        # One upstream order of a provider belongs to one of ours at most (a rejected one let
        # it go: an operator's correction keeps the id it was wrongly given, for the audit).
        Index(
            "uq_orders_upstream_order_id",
            "provider_id",
            "upstream_order_id",
            unique=True,
            sqlite_where=text("state <> 'rejected'"),
            postgresql_where=text("state <> 'rejected'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"))
    # The provider it was (or is being) sent to, recorded before each send: a crash between
    # the phases still knows where to look. Its `cost` and `params` are that provider's.
    # No foreign key (migration 0005 says why): providers are never deleted.
    provider_id: Mapped[int] = mapped_column(Integer, server_default=text("1"), index=True)
    state: Mapped[str] = mapped_column(String(16))  # sending | placed | rejected | unknown
    status: Mapped[str] = mapped_column(String(16))
    params: Mapped[str] = mapped_column(Text)  # JSON of the parameters sent upstream
    quantity: Mapped[int] = mapped_column(BigInteger)  # units charged for (× runs)
    rate: Mapped[int] = mapped_column(BigInteger)  # the customer's rate when ordered
    charge: Mapped[int] = mapped_column(BigInteger)
    # What the upstream should charge us at its catalog rate: the base of charge-ratio refunds.
    cost: Mapped[int] = mapped_column(BigInteger)
    refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    upstream_order_id: Mapped[int | None] = mapped_column(BigInteger)
    # The upstream's charge as last reported (what it keeps once final) ...
    upstream_charge: Mapped[int | None] = mapped_column(BigInteger)
    # ... and as first reported while the order was live: the base of the charge ratio.
    upstream_first_charge: Mapped[int | None] = mapped_column(BigInteger)
    # Snapshotted at intent, so that a later catalog change never changes how it settles.
    service_type: Mapped[str] = mapped_column(String(40))
    settle_by: Mapped[str] = mapped_column(String(16))  # remains | charge_ratio
    upstream_status: Mapped[str | None] = mapped_column(String(32))
    start_count: Mapped[int | None] = mapped_column(BigInteger)
    remains: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    # The customer was given this order's id (placed or unknown): it stays visible to them,
    # even when an operator later finds it was never placed.
    announced: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    refreshed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Which sync pass holds the lease: its writes carry it, so a pass that lost it writes nothing.
    lease_owner: Mapped[str | None] = mapped_column(String(32))
    # A final status arrived without the figures its settlement needs: held for the operator.
    held: Mapped[str | None] = mapped_column(String(200))
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Refill(Base):
    """A refill a customer asked for, under our own id."""

    __tablename__ = "refills"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    upstream_refill_id: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    refreshed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Setting(Base):
    """Small operational facts that must survive restarts (catalog sync time, …)."""

    __tablename__ = "kv"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class CatalogVersion(Base):
    """One row (id 1): a number that triggers move with every change of what `services`
    shows (migration 0006), so each instance knows when its rendered catalog is stale."""

    __tablename__ = "catalog_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)
