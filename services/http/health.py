"""``/healthz`` (the process is up), ``/readyz`` (Triton, the store, the workers, the disk) and ``/metrics``
(Prometheus). Open without the token, so that probes and Prometheus need no secret. They answer on the event loop
(readiness in its own threads), never queued behind request work."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from swapstream.services.http.deps import ServiceDep
from swapstream.services.jobs.service import Service
from swapstream.services.jobs.store import JobStoreError

router = APIRouter()


@router.get("/healthz", summary="The process is up")
async def healthz():
    return {"status": "ok"}


def readiness(service: Service) -> dict:
    servers = service.client.servers()
    checks = {"triton": servers["up"] > 0, "triton_servers": f"{servers['up']} of {servers['servers']} up",
              "draining": service.draining, "workers": bool(service.pool and service.pool.alive()),
              "disk": not service.disk.low()}
    if not checks["disk"]:
        checks["disk_error"] = service.disk.describe()
    try:
        service.store.ping()
        checks["store"] = True
    except JobStoreError as error:
        checks["store"] = False
        checks["store_error"] = str(error)
    return checks


@router.get("/readyz", summary="Triton ready, store writable, workers alive, free space on the data disk")
async def readyz(service: ServiceDep):
    checks = await asyncio.get_running_loop().run_in_executor(service.health_executor, readiness, service)
    ready = (checks["triton"] and checks["workers"] and checks["store"] and checks["disk"]
             and not checks["draining"])
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(service: ServiceDep):
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
