"""FastAPI app factory: wires settings, logging, the store and the REST routers."""

from __future__ import annotations

import inspect
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse

from . import __version__
from .auth.audit import AuditMiddleware, AuditTrail
from .bulk.export import run_export
from .bulk.imports import run_import
from .bulk.jobs import BulkRunner
from .dicom.ingest import DicomIngest
from .dicom.urls import PREFIX as DICOMWEB
from .dicom.web import router as dicomweb_router
from .logs import configure_logging
from .rest.bulk import router as bulk_router
from .rest.errors import install_error_handlers
from .rest.hot_routes import install_hot_routes
from .rest.middleware import PathCorsMiddleware, RateLimitMiddleware, RequestContextMiddleware
from .rest.openapi import install_openapi
from .rest.operations import router as operations_router
from .rest.routes import router
from .rest.subscriptions import router as subscriptions_router
from .rest.terminology import router as terminology_router
from .rest.views import router as views_router
from .rest.workflows import router as workflows_router
from .service import ResourceService
from .settings import Settings
from .store import open_store
from .subscriptions.dispatcher import Dispatcher

log = logging.getLogger("fhir_server")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = open_store(settings)
        applied = await store.migrate()
        if applied:
            log.info("schema migrated", extra={"versions": applied, "backend": store.backend})
        app.state.store = store
        app.state.service = ResourceService(store, settings)
        await app.state.service.start()
        app.state.dicom = DicomIngest(app.state.service)  # STOW-RS stores through the SCP's ingest path
        app.state.bulk = BulkRunner(app.state.service, settings, {"export": run_export, "import": run_import})
        await app.state.bulk.start()
        if settings.auth_enabled and settings.audit:
            app.state.audit = AuditTrail(app.state.service)
            app.state.audit.start()
        app.state.subscriptions = Dispatcher(app.state.service)
        app.state.service.on_write = app.state.subscriptions.written
        await app.state.subscriptions.start()
        if settings.auth_enabled:
            from .auth.server import AuthServer

            app.state.auth = AuthServer(store, settings, app.state.service)
            await app.state.auth.start()
        log.info("ready", extra={"backend": store.backend})
        try:
            yield
        finally:
            await app.state.bulk.stop()
            if app.state.audit is not None:
                await app.state.audit.stop()
            await app.state.subscriptions.stop()
            await app.state.service.custom.wait()
            await store.close()

    options = {}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters and not settings.otel:
        # FastAPI's built-in OpenTelemetry costs CPU on every request even with no exporter configured.
        options["telemetry"] = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
    app = FastAPI(title="Alliance FHIR server", version=__version__, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json", **options)
    app.state.settings = settings
    app.state.audit = None

    @app.get("/health", include_in_schema=False)
    async def liveness() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/health/ready", include_in_schema=False)
    async def readiness(request: Request) -> JSONResponse:
        try:
            await request.app.state.store.ping()
        except Exception as exc:  # any failure to reach the database means "not ready"
            return JSONResponse({"status": "unavailable", "database": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok", "database": request.app.state.store.backend})

    install_error_handlers(app)
    app.include_router(operations_router)  # before the generic /{type}/{id} routes that would take $operations
    app.include_router(terminology_router)  # before the generic routes, like the other operations
    app.include_router(bulk_router)  # before the generic routes: /Patient/$export, /Group/{id}/$export
    app.include_router(views_router)
    app.include_router(dicomweb_router)  # before the FHIR routes, whose /{resource_type}/... would take it
    app.include_router(workflows_router)  # Patient $match/$merge/$everything, $referral-stats
    app.include_router(subscriptions_router)
    if settings.auth_enabled:  # authlib and the JOSE stack are imported only when they serve (half a second)
        from .rest.smart import router as smart_router

        app.include_router(smart_router)
    app.include_router(router)
    install_hot_routes(app, router.routes)
    install_openapi(app)
    if settings.rate_limit_per_s > 0:
        app.add_middleware(RateLimitMiddleware, per_second=settings.rate_limit_per_s,
                           burst=settings.rate_limit_burst or max(1, int(settings.rate_limit_per_s * 2)))
    if settings.auth_enabled:  # inside the request context (request ids, access log), outside every route
        from .auth.middleware import BearerAuthMiddleware

        app.add_middleware(BearerAuthMiddleware)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes,
                       path_limits={DICOMWEB: settings.dicomweb_max_body_bytes})
    origins = [o.strip() for o in settings.dicomweb_cors_origins.split(",") if o.strip()]
    if origins:  # outermost, so that refusals (413) carry the headers a browser needs to read them
        app.add_middleware(PathCorsMiddleware, prefix=DICOMWEB, origins=origins)
    if settings.auth_enabled and settings.audit:  # outermost: sees every answer, 401s included
        app.add_middleware(AuditMiddleware, trail_of=lambda: app.state.audit)
    return app
