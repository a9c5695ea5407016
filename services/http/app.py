"""The app factory: it only assembles. The gate before any body is read (``guard.py``), the error answers, one
router per resource under ``/v1`` with the bearer token, the live routes, health and metrics, and the pages.
Adding a resource is its router module plus one line in ``V1_ROUTERS``."""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from swapstream.services.http import health, jobs, options, photos, preview
from swapstream.services.http.deps import require_token
from swapstream.services.http.errors import add_error_handlers
from swapstream.services.jobs.events import JobFeed
from swapstream.services.jobs.guard import V1Guard
from swapstream.services.jobs.service import Service
from swapstream.services.live.routes import mount_live
from swapstream.services.web.pages import mount_pages

V1_ROUTERS = (jobs.router, photos.router, preview.router)  # need the token
PUBLIC = ("/v1/options",)  # GET without the token: the pages build their controls from it before any login


def _refuse_on_low_disk(service: Service):
    def refuse(scope) -> tuple[int, str] | None:
        if scope["method"] == "POST" and scope["path"].rstrip("/") in ("/v1/jobs", "/v1/sources", "/v1/preview") \
                and service.disk.low():
            return 507, f"{service.disk.describe()}; nothing was read or stored. Try again later"
        return None

    return refuse


def create_app(service: Service) -> FastAPI:
    config = service.config

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        app.state.live.stop()
        service.stop()

    app = FastAPI(title="swapstream", version="0.1.0", lifespan=lifespan,
                  description="Batched video face swap over Triton Inference Server.")
    app.state.service = service
    app.state.job_feed = JobFeed(service.store, jobs.job_view)
    # Before any body is read: the token, the size limit, the disk (see guard.py). require_token stays on the
    # routes, so that the OpenAPI docs show the scheme and a route mounted elsewhere keeps it.
    app.add_middleware(V1Guard, token=config.token, body_limit=config.limits.request_limit,
                       refuse=_refuse_on_low_disk(service), public=PUBLIC, allowed_hosts=config.allowed_hosts,
                       allowed_origins=config.allowed_origins)
    add_error_handlers(app)
    auth = [Depends(require_token)]
    for router in V1_ROUTERS:
        app.include_router(router, prefix="/v1", dependencies=auth)
    app.include_router(options.router, prefix="/v1")
    app.state.live = mount_live(app, service.client, service.data_dir, config.device, config.live,
                                service.metrics.live, config.token, auth, config.limits.max_photo_bytes, service.store,
                                service.photo_work, service.choose_swapper)
    app.include_router(health.router)
    mount_pages(app)
    return app
