"""The admin API: the CLI's operations over HTTP, under `/admin`.

Bearer `SMMGW_ADMIN_TOKEN`. Unset, every route answers 404 as if it did not exist; a wrong or
missing token is 401 with `WWW-Authenticate: Bearer`. Only that token opens it (customers' API
keys are a different thing and never do). Operator errors are 400, unknown things 404, both
`{"detail": "…"}`; the JSON of each reply is the CLI's `--json` output of the same operation.
"""

import math
import secrets
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.admin import ops
from app.admin.schemas import (
    FIRST_DAY,
    LAST_DAY,
    NAME_MAX,
    CatalogSyncOut,
    CustomerCreate,
    CustomerCreated,
    CustomerDetail,
    CustomerOut,
    CustomerPatch,
    EntryOut,
    ErrorOut,
    KeyIssued,
    KeyOut,
    KeyRevoked,
    OfferMapIn,
    OfferOut,
    OffersChanged,
    OrderOut,
    Posting,
    PostingResult,
    PriceChanged,
    PriceRuleIn,
    ProviderBalanceOut,
    ProviderCreate,
    ProviderOut,
    ProviderPatch,
    ReportOut,
    ResolutionOut,
    ResolveIn,
    ServiceChanged,
    ServiceOut,
    ServiceRename,
    Summary,
    SyncPassOut,
    VerifyResult,
)
from app.db import Database
from app.errors import NotFound, OperatorError
from app.providers import ProviderClients
from app.settings import Settings
from app.upstream import UpstreamClient

_bearer = HTTPBearer(
    scheme_name="AdminToken",
    description="The operator's token, SMMGW_ADMIN_TOKEN. A customer's API key never works here.",
    auto_error=False,
)


def _check_token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    token: str = request.app.state.gateway.settings.admin_token
    if not token.strip():
        raise HTTPException(status_code=404, detail="Not Found")  # off: as if absent
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), token.encode()):
        raise HTTPException(
            status_code=401,
            detail="a valid admin token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The router's dependency: puts the bearer scheme on every operation in the OpenAPI
    document (and checks again; `AdminRoute` has checked already)."""
    _check_token(request, credentials)


class AdminRoute(APIRoute):
    """The token is checked first, before the body is even parsed (FastAPI parses it before
    any dependency runs: a malformed body must not answer 422 to a stranger, nor reveal an API
    that is off). Operator errors become 400 (404 for unknown things), `{"detail": "…"}`."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            _check_token(request, await _bearer(request))
            try:
                return await handler(request)
            except RequestValidationError as exc:
                # FastAPI's own 422, but showable whatever was sent: the errors echo the input,
                # and a lone surrogate in it cannot be encoded as UTF-8.
                return JSONResponse({"detail": _showable(exc.errors())}, status_code=422)
            except NotFound as exc:
                return JSONResponse({"detail": str(exc)}, status_code=404)
            except OperatorError as exc:
                return JSONResponse({"detail": str(exc)}, status_code=400)

        return route


def _showable(value: Any) -> Any:
    """JSON-ready, with any text that is not valid Unicode escaped (`\\udc80`)."""
    value = jsonable_encoder(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf or nan: echo them as text
    if isinstance(value, list):
        return [_showable(item) for item in value]
    if isinstance(value, dict):
        return {_showable(k): _showable(v) for k, v in value.items()}
    return value


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "A request that cannot be carried out."},
    401: {"model": ErrorOut, "description": "A missing or wrong admin token."},
    404: {"model": ErrorOut, "description": "Not found, or the admin API is off."},
}


# Ids in paths: within the columns' range, so a huge one is a 422, not a database overflow.
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    route_class=AdminRoute,
    responses=_ERRORS,
)


def _db(request: Request) -> Database:
    return request.app.state.gateway.db


def _settings(request: Request) -> Settings:
    return request.app.state.gateway.settings


def _upstream(request: Request) -> UpstreamClient:
    return request.app.state.gateway.upstream


def _providers(request: Request) -> ProviderClients:
    return request.app.state.gateway.providers


Db = Annotated[Database, Depends(_db)]
Config = Annotated[Settings, Depends(_settings)]
Upstream = Annotated[UpstreamClient, Depends(_upstream)]
Providers = Annotated[ProviderClients, Depends(_providers)]
ProviderRef = Annotated[
    str, Path(max_length=64, description="Provider id or exact name (`default`, …).")
]
CustomerRef = Annotated[str, Path(max_length=NAME_MAX, description="Customer id or exact name.")]
CustomerQuery = Annotated[
    str | None, Query(max_length=NAME_MAX, description="Customer id or name.")
]
Limit = Annotated[int, Query(ge=1, le=10_000, description="How many, newest first.")]


# --- overview -----------------------------------------------------------------------------------


@router.get("/summary")
async def summary(db: Db, settings: Config, upstream: Upstream) -> Summary:
    """Orders by state, how many `unknown` orders await resolution, the catalog's sync state,
    today's revenue, upstream cost and margin, and the upstream balance (asked now)."""
    return await ops.summary(db, settings, upstream)


# --- customers and keys -------------------------------------------------------------------------


@router.post("/customers", status_code=201)
async def create_customer(body: CustomerCreate, db: Db, settings: Config) -> CustomerCreated:
    """Create a customer with one API key. The key is in this reply and never again."""
    return await ops.create_customer(db, settings, body.name, body.markup_bp, body.dialect)


@router.get("/customers")
async def list_customers(db: Db, settings: Config) -> list[CustomerOut]:
    return await ops.list_customers(db, settings)


@router.get("/customers/{customer}")
async def show_customer(customer: CustomerRef, db: Db, settings: Config) -> CustomerDetail:
    """One customer (by id or exact name) with its keys' prefixes (never the keys)."""
    return await ops.show_customer(db, settings, customer)


@router.patch("/customers/{customer}")
async def update_customer(
    customer: CustomerRef, body: CustomerPatch, db: Db, settings: Config
) -> CustomerOut:
    """Change name, markup (`null`: the default), dialect, or disable/enable (`disabled`)."""
    return await ops.update_customer(db, settings, customer, **body.changes())


@router.post("/customers/{customer}/keys", status_code=201)
async def issue_key(customer: CustomerRef, db: Db) -> KeyIssued:
    """Another key for the customer. The key is in this reply and never again."""
    return await ops.issue_key(db, customer)


@router.get("/customers/{customer}/keys")
async def list_keys(customer: CustomerRef, db: Db) -> list[KeyOut]:
    return await ops.list_keys(db, customer)


@router.post("/keys/{prefix}/revoke")
async def revoke_key(prefix: str, db: Db) -> KeyRevoked:
    """Revoke a key at once, by its prefix."""
    return await ops.revoke_key(db, prefix)


# --- ledger -------------------------------------------------------------------------------------


@router.post("/customers/{customer}/topup")
async def topup(customer: CustomerRef, body: Posting, db: Db, settings: Config) -> PostingResult:
    """Add money the customer paid (positive)."""
    return await ops.topup(db, settings, customer, body)


@router.post("/customers/{customer}/adjust")
async def adjust(customer: CustomerRef, body: Posting, db: Db, settings: Config) -> PostingResult:
    """A signed correction (never below a zero balance)."""
    return await ops.adjust(db, settings, customer, body)


@router.get("/customers/{customer}/ledger")
async def ledger_history(customer: CustomerRef, db: Db, limit: Limit = 50) -> list[EntryOut]:
    """The customer's ledger entries, newest first."""
    return await ops.history(db, customer, limit)


@router.get("/ledger/verify")
async def ledger_verify(db: Db) -> VerifyResult:
    """Check every ledger invariant; `clean` false lists one line per problem."""
    return await ops.verify(db)


# --- services -----------------------------------------------------------------------------------


@router.post("/services/sync", responses={502: {"model": ErrorOut}})
async def sync_services(db: Db, clients: Providers) -> CatalogSyncOut:
    """Fetch every enabled provider's catalog now; on failure (502) the last good one stays."""
    result = await ops.sync_catalog(db, clients)
    if not result.ok:
        raise HTTPException(status_code=502, detail=f"catalog sync failed: {result.error}")
    return result


@router.get("/services")
async def list_services(
    db: Db,
    settings: Config,
    include_unlisted: Annotated[
        bool, Query(alias="all", description="Also services the upstream no longer lists.")
    ] = False,
) -> list[ServiceOut]:
    """The catalog with costs and default prices, hidden services included (marked)."""
    return await ops.list_services(db, settings, include_unlisted=include_unlisted)


@router.post("/services/{service_id}/hide")
async def hide_service(service_id: RowId, db: Db) -> ServiceChanged:
    return await ops.set_hidden(db, service_id, True)


@router.post("/services/{service_id}/show")
async def show_service(service_id: RowId, db: Db) -> ServiceChanged:
    return await ops.set_hidden(db, service_id, False)


@router.patch("/services/{service_id}")
async def rename_service(service_id: RowId, body: ServiceRename, db: Db) -> ServiceChanged:
    """Rename the service or its category as customers see them ('' = the upstream's)."""
    return await ops.rename_service(db, service_id, body.name, body.category)


@router.put("/services/{service_id}/price")
async def set_price(service_id: RowId, body: PriceRuleIn, db: Db) -> PriceChanged:
    """A fixed `rate` or a `markup_percent`, for everyone or one `customer`. The reply lists
    whom it reaches and who keeps a price of their own (a markup or a rule), and why."""
    return await ops.set_price(db, service_id, body)


@router.delete("/services/{service_id}/price")
async def clear_price(
    service_id: RowId,
    db: Db,
    customer: CustomerQuery = None,
) -> ServiceChanged:
    """Remove the price rule for everyone, or for one customer."""
    return await ops.clear_price(db, service_id, customer)


@router.get("/services/{service_id}/offers")
async def list_offers(service_id: RowId, db: Db) -> list[OfferOut]:
    """The providers that deliver the service, in the order an order tries them."""
    return await ops.list_offers(db, service_id)


@router.put("/services/{service_id}/offers")
async def map_offer(service_id: RowId, body: OfferMapIn, db: Db) -> OffersChanged:
    """Make a provider's service (as synced) an alternative of this service."""
    return await ops.map_offer(db, service_id, body)


@router.delete("/services/{service_id}/offers/{provider}")
async def unmap_offer(service_id: RowId, provider: ProviderRef, db: Db) -> OffersChanged:
    """Take a provider's offer off this service (it goes back to a service of its own)."""
    return await ops.unmap_offer(db, service_id, provider)


# --- providers ----------------------------------------------------------------------------------


@router.get("/providers")
async def list_providers(db: Db) -> list[ProviderOut]:
    """Every provider; keys never shown (a fingerprint tells them apart)."""
    return await ops.list_providers(db)


@router.post("/providers", status_code=201)
async def add_provider(body: ProviderCreate, db: Db, settings: Config) -> ProviderOut:
    """A new provider (its key stored encrypted with SMMGW_SECRET_KEY, never shown again)."""
    return await ops.add_provider(db, settings, body)


@router.get("/provider-balances")
async def providers_balance(db: Db, clients: Providers) -> list[ProviderBalanceOut]:
    """Our balance at every enabled provider, asked now."""
    return await ops.provider_balance(db, clients)


@router.get("/providers/{provider}")
async def show_provider(provider: ProviderRef, db: Db) -> ProviderOut:
    return await ops.show_provider(db, provider)


@router.patch("/providers/{provider}")
async def update_provider(
    provider: ProviderRef, body: ProviderPatch, db: Db, settings: Config
) -> ProviderOut:
    """Change a provider (`enabled` false: no new order goes there; its orders still sync)."""
    return await ops.update_provider(db, settings, provider, body)


@router.get("/providers/{provider}/balance")
async def provider_balance(provider: ProviderRef, db: Db, clients: Providers) -> ProviderBalanceOut:
    """Our balance at this provider, asked now."""
    return (await ops.provider_balance(db, clients, provider))[0]


# --- orders -------------------------------------------------------------------------------------


@router.get("/orders")
async def list_orders(
    db: Db,
    state: Literal["sending", "placed", "rejected", "unknown"] | None = None,
    customer: CustomerQuery = None,
    limit: Limit = 50,
) -> list[OrderOut]:
    """Orders, newest first; `state=unknown` lists those awaiting resolution."""
    return await ops.list_orders(db, state=state, customer=customer, limit=limit)


@router.get("/orders/{order_id}")
async def show_order(order_id: RowId, db: Db) -> OrderOut:
    return await ops.get_order(db, order_id)


@router.post("/orders/{order_id}/resolve")
async def resolve_order(
    order_id: RowId, body: Annotated[ResolveIn, Body()], db: Db, clients: Providers
) -> ResolutionOut:
    """The verdict on an `unknown` order: it exists upstream as `upstream_order_id` (placed,
    once the upstream confirms that id matches the order, or with `force`), or it was
    `not_placed` (refunded in full). With `correct`, an earlier verdict is corrected."""
    return await ops.resolve(db, clients, order_id, body)


@router.post("/sync")
async def sync_pass(db: Db, clients: Providers, settings: Config) -> SyncPassOut:
    """One status-sync pass now (what `smm-gateway sync --once` does)."""
    return await ops.run_sync_pass(db, clients, settings)


# --- report -------------------------------------------------------------------------------------


@router.get("/report")
async def report(
    db: Db,
    settings: Config,
    since: Annotated[
        date | None, Query(ge=FIRST_DAY, le=LAST_DAY, description="First day included (UTC).")
    ] = None,
    until: Annotated[
        date | None, Query(ge=FIRST_DAY, le=LAST_DAY, description="Last day included (UTC).")
    ] = None,
) -> ReportOut:
    """Revenue, upstream cost and margin per customer and per service, with totals."""
    return await ops.report(db, settings, since, until)
