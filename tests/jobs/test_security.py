"""Issue 18 on a default instance (no token, loopback), a real ``swapstream serve`` and real clients: requests from
other sites' pages and to rebound names (item 1), the pages' security headers (item 9), and the small ones of
item 10 over HTTP. The token instance's share of item 1 is in ``tests/live/test_live_server.py``."""
from __future__ import annotations

import json
import socket

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from swapstream.services.jobs.process import ServiceProcess
from swapstream.services.live import protocol
from tests.helpers.service import OBAMA, submit

EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    data = tmp_path_factory.mktemp("security") / "data"
    with ServiceProcess(data, "--triton", triton.grpc_url, "--workers", "0", "--min-free-mb", "0") as running:
        yield running


@pytest.fixture(scope="module")
def http(service):
    with service.client() as client:
        yield client


def _jobs(http) -> int:
    return http.get("/v1/jobs").json()["total"]


# ------------------------------------------------------------------------------------- 1. other sites' pages

def test_a_cross_site_form_post_is_refused_before_anything_is_stored(service, http):
    before = _jobs(http)
    photo = [("source", (OBAMA.name, OBAMA.read_bytes(), "image/jpeg"))]
    for origin in (EVIL, "null", f"http://127.0.0.1:{service.port + 1}", f"https://127.0.0.1:{service.port}x"):
        answer = http.post(
            "/v1/jobs", files=[("target", (OBAMA.name, OBAMA.read_bytes(), "image/jpeg")), *photo],
            headers={"Origin": origin})
        assert answer.status_code == 403, (origin, answer.text)
        assert "another site" in answer.json()["detail"]
        answer = http.post("/v1/sources", files=photo, headers={"Origin": origin})
        assert answer.status_code == 403, (origin, answer.text)
    # a form's navigation carries no Origin on some browsers' GETs, but Sec-Fetch-Site says where it came from
    assert http.get("/v1/jobs", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert _jobs(http) == before
    assert not any((service.data / "sources").glob("*.npy"))
    # the service's own pages (same origin) and clients that are not browsers are served
    assert http.get("/v1/jobs", headers={"Origin": service.url, "Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert http.post("/v1/sources", files=photo, headers={"Origin": service.url}).status_code == 201
    assert http.get("/v1/jobs").status_code == 200


def test_a_rebound_host_is_refused(service, http):
    job = submit(http, OBAMA).json()
    for host in (f"evil.example:{service.port}", "evil.example", f"127.0.0.1.evil.example:{service.port}", ""):
        for path in ("/v1/jobs", f"/v1/jobs/{job['id']}/target"):
            answer = httpx.get(service.url + path, headers={"Host": host})
            assert answer.status_code == 403, (host, path, answer.text)
            assert "Host" in answer.json()["detail"]
    for host in (f"127.0.0.1:{service.port}", f"localhost:{service.port}", "localhost"):
        assert httpx.get(f"{service.url}/v1/jobs/{job['id']}/target", headers={"Host": host}).status_code == 200
    assert httpx.get(f"{service.url}/healthz", headers={"Host": "evil.example"}).status_code == 200  # probes


def _socket(service, origin: str | None = None, host: str = "127.0.0.1"):
    sock = socket.create_connection(("127.0.0.1", service.port))
    return connect(f"ws://{host}:{service.port}/v1/live", sock=sock, origin=origin,
                   subprotocols=[protocol.SUBPROTOCOL], open_timeout=10)


def test_a_cross_site_websocket_is_refused_at_the_handshake(service):
    for origin, host in ((EVIL, "127.0.0.1"), ("null", "127.0.0.1"), (None, "evil.example")):
        with pytest.raises(InvalidStatus) as refused:
            _socket(service, origin, host)
        assert refused.value.response.status_code == 403, (origin, host)
    with _socket(service, service.url) as ws:  # the /live page's own origin
        ws.send(json.dumps({"type": "start", "source_id": "0" * 32}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == protocol.CLOSE_UNKNOWN_SOURCE


# ------------------------------------------------------------------------------------------- 9. the pages

@pytest.mark.parametrize("path", ["/", "/live", "/analyze", "/swap-photo", "/static/live.js", "/static/style.css"])
def test_pages_carry_security_headers(http, path):
    answer = http.get(path)
    assert answer.status_code == 200
    policy = dict(part.strip().split(" ", 1) for part in answer.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert all("http" not in sources and "*" not in sources and "unsafe" not in sources for sources in policy.values())
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "same-origin"
