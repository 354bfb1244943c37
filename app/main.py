"""The gateway's ASGI application: routers, and the background work a running gateway does."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import asyncpg
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from app import metrics
from app.admin.router import router as admin_router
from app.catalog import catalog_state, stored_family, sync_catalogs, upstream_state
from app.dashboard.router import routes as dashboard_routes
from app.db import Database, is_unreachable, ping
from app.docs import install_docs
from app.gauges import DbCollector, Gauges
from app.head import HeadAsGetMiddleware
from app.limits import build_limiter
from app.logs import RequestLogMiddleware, configure_logging
from app.orders.placing import SEND_MARGIN_SECONDS
from app.panel.openapi import install_openapi
from app.panel.router import router as panel_router
from app.panel.services_cache import ServicesCache
from app.providers import ProviderClients
from app.settings import Settings, get_settings
from app.sync import sync_forever
from app.upstream import UpstreamClient

log = logging.getLogger("smm_gateway")


class Gateway:
    """What one running gateway holds: settings, database, upstream client."""

    def __init__(
        self, settings: Settings, upstream_transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self.db = Database(settings.database_url)
        # One client per provider (the transport, when given, serves every one of them).
        self.providers = ProviderClients(settings, upstream_transport)
        self.limiter = build_limiter(settings)  # None: no per-key rate limit
        self.gauges = Gauges(
            self.db, self.upstream, settings.metrics_refresh_seconds, clients=self.providers
        )
        self.services_cache = ServicesCache()  # the rendered `services` replies

    @property
    def upstream(self) -> UpstreamClient:
        """Provider `default`'s client as the settings define it (today's single upstream)."""
        return self.providers.default

    @upstream.setter
    def upstream(self, client: UpstreamClient) -> None:
        self.providers.default = client

    async def close(self) -> None:
        await self.gauges.close()
        if self.limiter is not None:
            await self.limiter.aclose()
        await self.providers.aclose()
        await self.db.dispose()


async def refresh_catalog_forever(gateway: Gateway) -> None:
    """Sync the catalog now, then every SMMGW_SERVICES_TTL_SECONDS; failures keep the old one."""
    while True:
        try:
            await gateway.providers.refresh(gateway.db)
            await sync_catalogs(gateway.db, gateway.providers)
        except Exception as exc:  # the loop must outlive any one bad pass
            if is_unreachable(exc):  # an outage: said once, by the database's own line
                gateway.db.outage.failed(exc)
            else:
                log.exception("catalog refresh failed")
        await asyncio.sleep(gateway.settings.services_ttl_seconds)


def sending_grace_seconds(settings: Settings) -> float:
    """How long an `add` can legitimately be in flight; `sending` beyond it was interrupted."""
    return (
        settings.upstream_connect_timeout_seconds
        + settings.upstream_timeout_seconds
        + SEND_MARGIN_SECONDS
    )


async def sync_orders_forever(gateway: Gateway) -> None:
    """The status sync (which also recovers orders a crash left in `sending`)."""
    await sync_forever(
        gateway.db,
        gateway.providers,
        gateway.settings.sync_interval_seconds,
        # A provider may have timeouts longer than the settings': each pass counts them.
        sending_grace_seconds(gateway.settings),
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """Outside the panel endpoint (the admin API): an unreachable database is a 503 said
    once in the log, not a 500 with a traceback per request; anything else is the 500."""
    if is_unreachable(exc):
        request.app.state.gateway.db.outage.failed(exc)
        return JSONResponse({"detail": "database unavailable, try again later"}, status_code=503)
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return JSONResponse({"detail": "Internal Server Error"}, status_code=500)


def create_app(
    settings: Settings | None = None,
    *,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    background: bool = True,
) -> FastAPI:
    """Build the gateway. `background=False` leaves catalog refresh to the caller (tests)."""
    settings = settings or get_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = Gateway(settings, upstream_transport)
        app.state.gateway = gateway
        # Until this process has read the catalog itself: the family its last sync heard.
        with suppress(SQLAlchemyError, OSError):
            gateway.upstream.family_heard = await stored_family(gateway.db)
            await gateway.providers.refresh(gateway.db)
        loops = [refresh_catalog_forever] if background else []
        if background and settings.sync_in_process:
            loops.append(sync_orders_forever)
        tasks = [asyncio.create_task(loop(gateway)) for loop in loops]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            await gateway.close()

    app = FastAPI(
        title="smm-gateway",
        summary="The SMM panel API (v2 contract) for this reseller's customers.",
        lifespan=lifespan,
        redirect_slashes=False,
        docs_url=None,  # FastAPI's pages load from a CDN; app.docs serves them locally
        redoc_url=None,
    )
    app.include_router(panel_router)
    # Off (no SMMGW_ADMIN_TOKEN), the admin API answers 404 and the documents leave it out.
    app.include_router(admin_router, include_in_schema=bool(settings.admin_token))
    # The operator's web pages: off (404) like the admin API, never in the documents.
    app.include_router(dashboard_routes, include_in_schema=False)
    app.add_middleware(HeadAsGetMiddleware)  # inside the log line: it still says HEAD
    # Request id, one log line and the request metrics per request (pure ASGI: cheap).
    app.add_middleware(RequestLogMiddleware, on_done=metrics.observe_request)

    @app.get("/healthz", tags=["operations"])
    async def healthz(request: Request) -> JSONResponse:
        """200 once the database answers; `upstream` says how the last catalog fetch found the
        upstream (`ok`, `key_refused`, `failing`, `never_synced`), without failing the check:
        restarting the gateway would not mend the upstream."""
        db = request.app.state.gateway.db
        if not await ping(db):
            return JSONResponse({"status": "database unavailable"}, status_code=503)
        try:
            upstream = upstream_state(await catalog_state(db))
        except SQLAlchemyError:  # the schema is not there yet: the database itself answered
            upstream = "never_synced"
        return JSONResponse({"status": "ok", "upstream": upstream})

    for kind in (SQLAlchemyError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        app.add_exception_handler(kind, _database_error)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus: the counters, and the database gauges of the last snapshot (refreshed
        every SMMGW_METRICS_REFRESH_SECONDS off the request path: a scrape reads nothing)."""
        gateway = request.app.state.gateway
        token = gateway.settings.metrics_token
        if token and not metrics.bearer_is(request.headers.get("authorization", ""), token):
            return Response(
                "a valid metrics token is required\n",
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        state = await gateway.gauges.current()
        body = await asyncio.to_thread(metrics.exposition, DbCollector(state))
        return Response(body, media_type=metrics.CONTENT_TYPE)

    install_openapi(app, settings)
    install_docs(app)
    return app
