"""What operators see and send, for the admin API and the CLI's `--json` alike.

The models hold integers (micro-units, basis points) inside and show decimal strings outside:
money renders with `app.money.render` ("12.50"), markups as percent strings ("12.5"); times are
UTC, ISO 8601. `model_dump(mode="json")` is exactly the API's reply body, so a script gets the
same JSON from `smm-gateway … --json` and from `/admin/…`.
"""

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from app.catalog import OfferView, ServiceView, SyncResult
from app.customers import CustomerView, KeyView
from app.ledger import MAX_OPERATOR_REF, EntryView
from app.models import as_utc
from app.money import MAX_RATE, bp_to_percent, parse_micros, percent_to_bp, render
from app.orders import resolution
from app.orders.queries import OrderView
from app.orders.resolution import Resolution
from app.providers import ProviderView
from app.report import Report, ReportLine
from app.sync import PassResult

# --- the edge types -----------------------------------------------------------------------------

Money = Annotated[
    str, Field(pattern=r"^-?\d+\.\d{2,6}$", examples=["12.50"], description="A decimal string.")
]
"""Rendered by `app.money.render`: at least 2 decimals, every significant digit up to 6."""

Percent = Annotated[str, Field(examples=["25", "12.5"], description="A percent string.")]

Timestamp = Annotated[datetime, AfterValidator(as_utc)]
"""Always UTC-aware (SQLite hands datetimes back without a zone)."""


# --- what operators send: every value checked here, once, for the admin API and the CLI -------
# (the CLI builds these same models from its options; a ValidationError is its one-line error)

NAME_MAX = 200
MEMO_MAX = 2000
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MEMO_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # tabs and new lines are fine
_REF = re.compile(rf"[\x21-\x7e]{{1,{MAX_OPERATOR_REF}}}")


def _storable(text: str, control: re.Pattern[str]) -> str:
    """Text a database can store and a log line can show: valid Unicode (no lone surrogate,
    which neither UTF-8 nor PostgreSQL can hold) and no control characters."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate?)") from None
    if control.search(text):
        raise ValueError("control characters are not allowed")
    return text


def _name_text(value: str) -> str:
    return _storable(value, _CONTROL).strip()


def _memo_text(value: str) -> str:
    return _storable(value, _MEMO_CONTROL)


def _ref_text(value: str) -> str:
    if not _REF.fullmatch(value):
        raise ValueError(
            f"a ref is 1 to {MAX_OPERATOR_REF} printable ASCII characters without spaces"
            " (a payment or ticket id)"
        )
    return value


NameIn = Annotated[str, AfterValidator(_name_text), Field(min_length=1, max_length=NAME_MAX)]
"""A customer's name: 1 to 200 characters of text, no control characters."""

LabelIn = Annotated[str, AfterValidator(_name_text), Field(max_length=NAME_MAX)]
"""A service's name or category as customers see it ('' = the upstream's)."""

MemoIn = Annotated[str, AfterValidator(_memo_text), Field(max_length=MEMO_MAX)]

RefIn = Annotated[
    str,
    AfterValidator(_ref_text),
    Field(
        min_length=1,
        max_length=MAX_OPERATOR_REF,
        pattern=rf"^[!-~]{{1,{MAX_OPERATOR_REF}}}$",
        description="Your reference (a payment id): the same ref again credits nothing.",
        examples=["stripe:pi_3Nq2"],
    ),
]

FIRST_DAY = date(1900, 1, 1)
LAST_DAY = date(9998, 12, 31)  # the day after it must still be a date
DayIn = Annotated[date, Field(ge=FIRST_DAY, le=LAST_DAY, description="A day (UTC), YYYY-MM-DD.")]

UpstreamOrderId = Annotated[int, Field(ge=1, le=2**63 - 1)]


def _amount_text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError('give the amount as a decimal string, e.g. "12.50"')
    text = str(value).strip()
    parse_micros(text)  # MoneyError is a ValueError: a 422 naming the field
    return text


def _rate_text(text: str) -> str:
    micros = parse_micros(text)
    if not 0 < micros <= MAX_RATE:
        raise ValueError(f"a rate per 1000 must be above 0 and at most {render(MAX_RATE, 0)}")
    return text


def _percent_text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError('give the markup as a percent string, e.g. "25" or "12.5"')
    text = str(value).strip().removesuffix("%")
    percent_to_bp(text)
    return text


def _not_negative(text: str) -> str:
    if percent_to_bp(text) < 0:
        raise ValueError("a customer's markup must not be negative")
    return text


AmountIn = Annotated[
    str,
    BeforeValidator(_amount_text),
    WithJsonSchema(
        {"type": "string", "pattern": r"^-?\d+(\.\d{1,6})?$", "examples": ["12.50"]},
        mode="validation",
    ),
]
"""A decimal string ("12.50"; at most 6 decimals; an integer is accepted, a float never)."""

RateIn = Annotated[AmountIn, AfterValidator(_rate_text)]
"""A rate per 1000 units: above 0, at most 1,000,000."""

MarkupIn = Annotated[
    str,
    BeforeValidator(_percent_text),
    WithJsonSchema(
        {"type": "string", "pattern": r"^-?\d+(\.\d{1,2})?%?$", "examples": ["25", "12.5"]},
        mode="validation",
    ),
]
"""A percent string ("25", "12.5"; at most 2 decimals)."""

CustomerMarkupIn = Annotated[MarkupIn, AfterValidator(_not_negative)]

Dialect = Literal["standard", "smartpanel"]


def _money(micros: int | None) -> str | None:
    return None if micros is None else render(micros)


def _percent(bp: int | None) -> str | None:
    return None if bp is None else bp_to_percent(bp)


def _bp(percent: str | None) -> int | None:
    return None if percent is None else percent_to_bp(percent)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- customers and keys -------------------------------------------------------------------------


class KeyOut(_Out):
    """A key by its public prefix; the key itself is never shown again after its creation."""

    prefix: str
    customer_id: int
    created_at: Timestamp
    revoked_at: Timestamp | None

    @classmethod
    def of(cls, key: KeyView) -> Self:
        return cls(
            prefix=key.prefix,
            customer_id=key.customer_id,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
        )


class CustomerOut(_Out):
    id: int
    name: str
    dialect: str
    markup_percent: Percent | None = Field(description="None: the default markup applies.")
    balance: Money
    currency: str
    disabled: bool
    created_at: Timestamp

    @classmethod
    def of(cls, view: CustomerView, currency: str) -> Self:
        return cls(
            id=view.id,
            name=view.name,
            dialect=view.dialect,
            markup_percent=_percent(view.markup_bp),
            balance=render(view.balance),
            currency=currency,
            disabled=view.disabled,
            created_at=view.created_at,
        )


class CustomerDetail(CustomerOut):
    keys: list[KeyOut]

    @classmethod
    def of_keys(cls, view: CustomerView, currency: str, keys: list[KeyView]) -> Self:
        return cls(**CustomerOut.of(view, currency).model_dump(), keys=[KeyOut.of(k) for k in keys])


class CustomerCreated(CustomerOut):
    """The new customer with its first key: the only time the key is shown."""

    key: str
    prefix: str

    @classmethod
    def of_key(cls, view: CustomerView, currency: str, key: str, prefix: str) -> Self:
        return cls(**CustomerOut.of(view, currency).model_dump(), key=key, prefix=prefix)


class KeyIssued(_Out):
    """A new key: the only time it is shown."""

    customer_id: int
    key: str
    prefix: str


class KeyRevoked(_Out):
    prefix: str
    revoked: bool = True


class CustomerCreate(_In):
    name: NameIn
    markup_percent: CustomerMarkupIn | None = Field(
        None, description="Markup in percent; absent or null: the default markup."
    )
    dialect: Dialect | None = Field(None, description="Absent: SMMGW_DEFAULT_DIALECT.")

    @property
    def markup_bp(self) -> int | None:
        return _bp(self.markup_percent)


class CustomerPatch(_In):
    """Only the fields given change; `"markup_percent": null` returns to the default markup."""

    name: NameIn | None = None
    markup_percent: CustomerMarkupIn | None = None
    dialect: Dialect | None = None
    disabled: bool | None = None

    def changes(self) -> dict[str, Any]:
        """Keyword arguments for `customers.update_customer`."""
        changes: dict[str, Any] = {}
        for field in ("name", "dialect", "disabled"):
            if getattr(self, field) is not None:
                changes[field] = getattr(self, field)
        if "markup_percent" in self.model_fields_set:
            changes["markup_bp"] = _bp(self.markup_percent)
        return changes


# --- ledger -------------------------------------------------------------------------------------


class EntryOut(_Out):
    id: int
    customer_id: int
    amount: Money = Field(description="Signed: money in is positive.")
    kind: str
    order_id: int | None
    ref: str | None
    memo: str | None
    created_at: Timestamp
    balance_after: Money = Field(description="The customer's balance right after this entry.")

    @classmethod
    def of(cls, entry: EntryView) -> Self:
        return cls(
            id=entry.id,
            customer_id=entry.customer_id,
            amount=render(entry.amount),
            kind=entry.kind,
            order_id=entry.order_id,
            ref=entry.ref,
            memo=entry.memo,
            created_at=entry.created_at,
            balance_after=render(entry.balance_after),
        )


class Posting(_In):
    amount: AmountIn = Field(description="A top-up: positive. An adjustment: signed, not zero.")
    memo: MemoIn | None = None
    ref: RefIn | None = None

    @property
    def micros(self) -> int:
        return parse_micros(self.amount)


class PostingResult(_Out):
    """A top-up or an adjustment done: the amount and the balance now. With a ref posted
    before (`duplicate`), nothing moved: the first posting's entry and amount."""

    customer_id: int
    amount: Money
    balance: Money
    currency: str
    entry_id: int
    ref: str | None = None
    duplicate: bool = False


class VerifyResult(_Out):
    clean: bool
    problems: list[str]

    @classmethod
    def of(cls, problems: list[str]) -> Self:
        return cls(clean=not problems, problems=problems)


# --- services -----------------------------------------------------------------------------------


class ServiceOut(_Out):
    """A service as the operator sees it: the upstream's cost and the default customer price."""

    id: int
    type: str
    name: str
    category: str
    upstream_name: str
    cost: Money = Field(description="The upstream's rate per 1000.")
    price: Money | None = Field(description="The default customer rate per 1000; None: suspended.")
    suspended: bool = Field(description="The price would be below cost without consent.")
    min: int
    max: int
    dripfeed: bool
    refill: bool
    cancel: bool
    hidden: bool
    upstream_listed: bool
    unavailable: str | None = Field(
        None, description="Why customers cannot order it although it is listed upstream."
    )
    suspended_for_customers: list[int] = Field(
        [], description="Customers whose own fixed price is below cost: not sold to them."
    )
    updated_at: Timestamp

    @classmethod
    def of(cls, view: ServiceView) -> Self:
        return cls(
            id=view.id,
            type=view.type,
            name=view.name,
            category=view.category,
            upstream_name=view.upstream_name,
            cost=render(view.cost),
            price=_money(view.price),
            suspended=view.price is None,
            min=view.min,
            max=view.max,
            dripfeed=view.dripfeed,
            refill=view.refill,
            cancel=view.cancel,
            hidden=view.hidden,
            upstream_listed=view.upstream_listed,
            unavailable=view.unavailable,
            suspended_for_customers=list(view.suspended_for),
            updated_at=view.updated_at,
        )


class ServiceChanged(_Out):
    service: int
    changed: str


class CustomerBrief(_Out):
    id: int
    name: str


class PriceExempt(CustomerBrief):
    """A customer a rule for everyone does not reach, and why: their own price comes first."""

    reason: str


class PriceChanged(ServiceChanged):
    """A price rule set: whom it reaches now, and who keeps a price of their own (DESIGN.md's
    order: the customer's rule for the service, the customer's markup, the rule for everyone)."""

    applies_to: list[CustomerBrief] = Field(description="Customers now priced by this rule.")
    not_applied_to: list[PriceExempt] = Field(
        description="Customers this rule does not reach, each with the reason."
    )


class ServiceRename(_In):
    """The names customers see; an empty string returns to the upstream's."""

    name: LabelIn | None = None
    category: LabelIn | None = None


class PriceRuleIn(_In):
    """A price for one service: exactly one of a fixed `rate` per 1000 or a `markup_percent`,
    for everyone or for one `customer` (id or exact name)."""

    rate: RateIn | None = None
    markup_percent: MarkupIn | None = None
    customer: str | None = Field(
        None, max_length=NAME_MAX, description="Customer id or exact name; absent: everyone."
    )
    allow_below_cost: bool = False

    @model_validator(mode="after")
    def _one_price(self) -> Self:
        if (self.rate is None) == (self.markup_percent is None):
            raise ValueError("give exactly one of rate or markup_percent")
        return self

    @property
    def fixed_rate(self) -> int | None:
        return None if self.rate is None else parse_micros(self.rate)

    @property
    def markup_bp(self) -> int | None:
        return _bp(self.markup_percent)


class SuspendedPriceOut(_Out):
    """A fixed price the upstream's rate overtook: the service is not sold at it."""

    service: int
    customer: int | None = Field(description="None: the price for everyone.")
    rate: Money
    cost: Money


class ProviderSyncOut(_Out):
    provider: str | None
    ok: bool
    services: int
    dropped: int
    error: str | None
    family: str | None

    @classmethod
    def of(cls, result: SyncResult) -> Self:
        return cls(
            provider=result.provider,
            ok=result.ok,
            services=result.services,
            dropped=result.dropped,
            error=result.error,
            family=result.family,
        )


ProviderName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^\S+$", examples=["panel-b"])
]
UrlIn = Annotated[str, Field(min_length=8, max_length=2048, pattern=r"^https?://\S+$")]
SecretIn = Annotated[str, Field(min_length=1, max_length=500, pattern=r"^\S+$")]
TimeoutIn = Annotated[float, Field(gt=0, le=600)]
Family = Literal["smartpanel", "standard"]


def _not_negative_amount(text: str) -> str:
    if parse_micros(text) < 0:
        raise ValueError("must not be negative")
    return text


ThresholdIn = Annotated[AmountIn, AfterValidator(_not_negative_amount)]


class CatalogSyncOut(_Out):
    ok: bool
    services: int
    dropped: int = Field(description="No longer listed upstream: now hidden from customers.")
    error: str | None
    family: str | None = Field(
        None, description="The upstream's family (smartpanel | standard), set or as heard."
    )
    suspended: list[SuspendedPriceOut] = Field(
        [], description="Fixed prices now below the upstream's rate: not sold until changed."
    )
    providers: list[ProviderSyncOut] = Field([], description="Each provider's own result.")

    @classmethod
    def of_all(cls, results: list[SyncResult]) -> Self:
        """Every provider's sync in one: ok when every one went well; `family` is the first
        (provider default's)."""
        first = cls.of(results[0])
        errors = [f"{r.provider}: {r.error}" for r in results if not r.ok]
        # Suspended prices are the whole catalog's: the last good sync's list says all.
        last_good = next((r for r in reversed(results) if r.ok), results[0])
        return first.model_copy(
            update={
                "ok": not errors,
                "services": sum(r.services for r in results),
                "dropped": sum(r.dropped for r in results),
                "error": first.error if len(results) == 1 else "; ".join(errors) or None,
                "suspended": cls.of(last_good).suspended,
                "providers": [ProviderSyncOut.of(r) for r in results],
            }
        )

    @classmethod
    def of(cls, result: SyncResult) -> Self:
        return cls(
            ok=result.ok,
            services=result.services,
            dropped=result.dropped,
            error=result.error,
            family=result.family,
            suspended=[
                SuspendedPriceOut(
                    service=p.service_id,
                    customer=p.customer_id,
                    rate=render(p.rate),
                    cost=render(p.cost),
                )
                for p in result.suspended
            ],
        )


# --- providers ----------------------------------------------------------------------------------


class ProviderOut(_Out):
    """A provider; its key is never shown, only a fingerprint that tells keys apart."""

    id: int
    name: str
    url: str | None = Field(description="None: SMMGW_UPSTREAM_URL (provider default).")
    key: str = Field(
        description="`from SMMGW_UPSTREAM_KEY`, or `fingerprint <8 hex>` of the key set."
    )
    family: str | None = Field(description="As set; None: read from its catalog's shape.")
    family_heard: str | None
    double_decode: bool | None = Field(description="None: as its family does.")
    connect_timeout_seconds: float | None = Field(description="None: the setting's.")
    read_timeout_seconds: float | None = Field(description="None: the setting's.")
    enabled: bool
    low_balance_threshold: Money | None
    balance: Money | None = Field(description="Our balance there, as last heard.")
    balance_currency: str | None
    balance_at: Timestamp | None
    low_balance: bool = Field(description="The balance last heard is below the threshold.")
    out_of_funds_since: Timestamp | None = Field(
        description="It refused an order for lack of funds: tried after the others."
    )
    catalog_synced_at: Timestamp | None
    catalog_error: str | None

    @classmethod
    def of(cls, view: ProviderView) -> Self:
        key = (
            "from SMMGW_UPSTREAM_KEY"
            if view.key_from_settings
            else f"fingerprint {view.key_fingerprint}"
        )
        return cls(
            id=view.id,
            name=view.name,
            url=view.url,
            key=key,
            family=view.family,
            family_heard=view.family_heard,
            double_decode=view.double_decode,
            connect_timeout_seconds=view.connect_timeout_seconds,
            read_timeout_seconds=view.read_timeout_seconds,
            enabled=view.enabled,
            low_balance_threshold=_money(view.low_balance_threshold),
            balance=_money(view.balance),
            balance_currency=view.balance_currency,
            balance_at=view.balance_at,
            low_balance=view.low_balance,
            out_of_funds_since=view.out_of_funds_at,
            catalog_synced_at=view.catalog_synced_at,
            catalog_error=view.catalog_error,
        )


class ProviderCreate(_In):
    """A new provider. Its key is stored encrypted (SMMGW_SECRET_KEY) and never shown again."""

    name: ProviderName
    url: UrlIn
    key: SecretIn
    family: Family | None = Field(None, description="Absent: read from its catalog's shape.")
    double_decode: bool | None = Field(None, description="Absent: as its family does.")
    connect_timeout_seconds: TimeoutIn | None = None
    read_timeout_seconds: TimeoutIn | None = None
    low_balance: ThresholdIn | None = Field(
        None, description="Warn (CLI, metrics) when our balance there is below this."
    )

    def values(self) -> dict[str, Any]:
        """Keyword arguments for `providers.add_provider`."""
        return {
            "name": self.name,
            "url": self.url,
            "key": self.key,
            "family": self.family,
            "double_decode": self.double_decode,
            "connect_timeout_seconds": self.connect_timeout_seconds,
            "read_timeout_seconds": self.read_timeout_seconds,
            "low_balance_threshold": None
            if self.low_balance is None
            else parse_micros(self.low_balance),
        }


class ProviderPatch(_In):
    """Only the fields given change; null returns one to its default (the settings' for
    provider default's url and key, the family's for double decoding, the settings' timeouts,
    no threshold)."""

    name: ProviderName | None = None
    url: UrlIn | None = None
    key: SecretIn | None = None
    family: Family | None = None
    double_decode: bool | None = None
    connect_timeout_seconds: TimeoutIn | None = None
    read_timeout_seconds: TimeoutIn | None = None
    low_balance: ThresholdIn | None = None
    enabled: bool | None = None

    def changes(self) -> dict[str, Any]:
        """Keyword arguments for `providers.update_provider`."""
        changes: dict[str, Any] = {}
        for field in self.model_fields_set:
            value = getattr(self, field)
            if field == "low_balance":
                changes["low_balance_threshold"] = None if value is None else parse_micros(value)
            elif field in ("enabled", "name") and value is None:
                continue
            else:
                changes[field] = value
        return changes


class ProviderBalanceOut(_Out):
    provider: str
    balance: Money | None
    currency: str | None
    error: str | None
    low_balance: bool


class OfferOut(_Out):
    """One provider's offer of a local service, in the order they are tried."""

    service: int
    provider: str
    provider_id: int
    provider_service_id: int
    position: int
    name: str
    type: str
    rate: Money = Field(description="That provider's rate per 1000, as last synced.")
    min: int
    max: int
    listed: bool
    provider_enabled: bool

    @classmethod
    def of(cls, view: OfferView) -> Self:
        return cls(
            service=view.service_id,
            provider=view.provider,
            provider_id=view.provider_id,
            provider_service_id=view.provider_service_id,
            position=view.position,
            name=view.name,
            type=view.type,
            rate=render(view.rate),
            min=view.min,
            max=view.max,
            listed=view.listed,
            provider_enabled=view.enabled,
        )


class OfferMapIn(_In):
    provider: ProviderName = Field(description="Provider id or name.")
    provider_service_id: int = Field(ge=1, le=2**31 - 1)
    position: int | None = Field(
        None, ge=0, le=10_000, description="Lower is tried first; absent: after the others."
    )


class OffersChanged(_Out):
    service: int
    changed: str
    offers: list[OfferOut]


# --- orders -------------------------------------------------------------------------------------


class OrderOut(_Out):
    id: int
    customer_id: int
    service_id: int
    state: str = Field(description="sending | placed | rejected | unknown (awaits an operator)")
    status: str = Field(description="What the customer sees.")
    quantity: int
    rate: Money = Field(description="The customer's rate per 1000 when ordered.")
    charge: Money = Field(description="Debited when ordered.")
    refunded: Money
    current_charge: Money = Field(description="What the customer now pays: charge − refunded.")
    upstream_order_id: int | None
    upstream_status: str | None
    upstream_charge: Money | None
    start_count: int | None
    remains: int | None
    error: str | None
    params: dict[str, str] = Field(description="The parameters sent upstream.")
    created_at: Timestamp
    refreshed_at: Timestamp | None
    provider_id: int = Field(1, description="The provider it was sent to (1: default).")

    @classmethod
    def of(cls, order: OrderView) -> Self:
        return cls(
            id=order.id,
            customer_id=order.customer_id,
            service_id=order.service_id,
            state=order.state,
            status=order.status,
            quantity=order.quantity,
            rate=render(order.rate),
            charge=render(order.charge),
            refunded=render(order.refunded),
            current_charge=render(order.current_charge),
            upstream_order_id=order.upstream_order_id,
            upstream_status=order.upstream_status,
            upstream_charge=_money(order.upstream_charge),
            start_count=order.start_count,
            remains=order.remains,
            error=order.error,
            params={str(k): str(v) for k, v in order.params.items()},
            created_at=order.created_at,
            refreshed_at=order.refreshed_at,
            provider_id=order.provider_id,
        )


class ResolveIn(_In):
    """The operator's verdict on an `unknown` order: exactly one of the two. The upstream is
    asked about `upstream_order_id` first; an id it does not know, or one whose link or service
    differ from the order's, is refused unless `force`. With `correct`, a verdict already given
    (placed, or not placed) is corrected, money included, by an audited ledger entry."""

    upstream_order_id: UpstreamOrderId | None = Field(
        None, description="It exists upstream under this id: the order is placed."
    )
    not_placed: bool = Field(False, description="It never reached the upstream: refund in full.")
    force: bool = Field(False, description="Accept the id though the upstream's answer differs.")
    correct: bool = Field(False, description="Correct an order resolved (or placed) before.")
    memo: MemoIn | None = Field(None, description="Why: kept with the correction's entry.")

    @model_validator(mode="after")
    def _one_verdict(self) -> Self:
        if (self.upstream_order_id is None) == (not self.not_placed):
            raise ValueError("give exactly one of upstream_order_id or not_placed: true")
        return self


class UpstreamCheck(_Out):
    """What the order's upstream says about the id given, and how it differs from the order."""

    upstream_order_id: int
    found: bool = Field(description="False: the upstream does not know this id (or no answer).")
    status: str | None
    charge: Money | None = Field(description="The upstream's charge for it.")
    expected_charge: Money = Field(description="What the order should cost there (its cost).")
    link: str | None = Field(description="Its link, where the upstream tells it.")
    service: int | None = Field(description="Its service, where the upstream tells it.")
    mismatches: list[str] = Field(description="Each way it differs from the order; [] = none.")
    forced: bool = Field(description="Accepted despite the mismatches (force).")

    @classmethod
    def of(cls, check: "resolution.UpstreamCheck") -> Self:
        return cls(
            upstream_order_id=check.upstream_order_id,
            found=check.found,
            status=check.status,
            charge=_money(check.charge),
            expected_charge=render(check.expected_charge),
            link=check.link,
            service=check.service,
            mismatches=list(check.mismatches),
            forced=check.forced,
        )


class ResolutionOut(OrderOut):
    """The order after the verdict, with what the upstream said and any correction entry."""

    upstream_check: UpstreamCheck | None
    correction: str | None = Field(description="The ledger ref of the correction, if any.")

    @classmethod
    def of_resolution(cls, done: Resolution) -> Self:
        check = done.check
        return cls(
            **OrderOut.of(done.order).model_dump(),
            upstream_check=None if check is None else UpstreamCheck.of(check),
            correction=done.correction_ref,
        )


# --- sync, report, summary ----------------------------------------------------------------------


class ReportPeriod(_In):
    """The days a report covers (both included, UTC)."""

    since: DayIn | None = None
    until: DayIn | None = None


class SyncPassOut(_Out):
    """One status-sync pass."""

    polled: int
    upstream_calls: int
    settled: int
    failed_batches: int
    anomalies: list[str]

    @classmethod
    def of(cls, result: PassResult) -> Self:
        return cls(
            polled=result.polled,
            upstream_calls=result.upstream_calls,
            settled=result.settled,
            failed_batches=result.failed_batches,
            anomalies=list(result.anomalies),
        )


class ReportTotal(_Out):
    orders: int
    revenue: Money = Field(description="What customers pay: charges less refunds.")
    upstream_cost: Money = Field(description="The upstream's charge (else its catalog cost).")
    margin: Money

    @classmethod
    def of(cls, line: ReportLine) -> Self:
        return cls(
            orders=line.orders,
            revenue=render(line.revenue),
            upstream_cost=render(line.upstream_cost),
            margin=render(line.margin),
        )


class ReportLineOut(ReportTotal):
    id: int = Field(description="The customer's, the service's or the provider's id.")
    name: str

    @classmethod
    def of_line(cls, line: ReportLine) -> Self:
        return cls(id=line.key, name=line.name, **ReportTotal.of(line).model_dump())


class ReportOut(_Out):
    """Orders that may exist upstream (placed, unknown) created in [since, until)."""

    since: Timestamp | None
    until: Timestamp | None = Field(description="Exclusive.")
    currency: str
    by_customer: list[ReportLineOut]
    by_service: list[ReportLineOut]
    total: ReportTotal
    by_provider: list[ReportLineOut] = Field(
        [], description="Each provider's orders: what they paid us, what it kept, the margin."
    )

    @classmethod
    def of(cls, report: Report, currency: str) -> Self:
        return cls(
            since=report.since,
            until=report.until,
            currency=currency,
            by_customer=[ReportLineOut.of_line(line) for line in report.by_customer],
            by_service=[ReportLineOut.of_line(line) for line in report.by_service],
            total=ReportTotal.of(report.total),
            by_provider=[ReportLineOut.of_line(line) for line in report.by_provider],
        )


class CatalogState(_Out):
    synced_at: Timestamp | None = Field(description="The last good sync; None: never.")
    last_error: str | None = Field(description="Why the last sync failed; None: it did not.")


class UpstreamBalanceOut(_Out):
    balance: Money | None = Field(description="The reseller's own balance at the upstream, now.")
    currency: str | None
    error: str | None = Field(description="Why it could not be read; None: it was.")


class Summary(_Out):
    orders_by_state: dict[str, int] = Field(description="Every state, zero included.")
    unresolved: int = Field(description="Orders in `unknown`: an operator must resolve them.")
    catalog: CatalogState
    currency: str
    today: ReportTotal = Field(
        description="Orders created today (UTC), counted as `report` counts them."
    )
    upstream: UpstreamBalanceOut


class ErrorOut(_Out):
    detail: str
