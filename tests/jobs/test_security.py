"""Issue 18 on a default instance (no token, loopback), a real ``swapstream serve`` and real clients: requests from
other sites' pages and to rebound names, and the names and origins a deployment allows (item 1), concurrent
source photos (item 4), progressive-JPEG scan bombs on the photo routes (item 6), the pages' security headers
(item 9), and the small ones of item 10 over HTTP. The token instance's share of item 1 is in ``tests/live/test_live_server.py``."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import cv2
import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from swapstream.services.jobs.process import ServiceProcess
from swapstream.services.live import protocol
from tests.helpers.disk import small_tmpfs
from tests.helpers.hostile import scan_bomb
from tests.helpers.service import OBAMA, submit

EVIL = "http://evil.example"
PROXIED = "swap.example"           # the name a proxy gives the service (--allowed-hosts)
APP = "https://app.example"        # pages served from elsewhere that may call it (--allowed-origins)


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    data = tmp_path_factory.mktemp("security") / "data"
    with ServiceProcess(data, "--triton", triton.grpc_url, "--workers", "0", "--min-free-mb", "0",
                        "--allowed-hosts", f"{PROXIED}, other.example", "--allowed-origins", APP) as running:
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
    assert not (service.data / "sources").exists() or not any((service.data / "sources").iterdir())
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


def test_the_names_and_origins_a_deployment_lists_are_served(service, http):
    assert http.get("/v1/jobs", headers={"Host": PROXIED}).status_code == 200
    assert http.get("/v1/jobs", headers={"Host": f"OTHER.example.:{service.port}"}).status_code == 200
    assert http.get("/v1/jobs", headers={"Origin": APP}).status_code == 200
    assert http.get("/v1/jobs", headers={"Origin": APP + ".evil.example"}).status_code == 403
    with _socket(service, APP, PROXIED) as ws:
        ws.send(json.dumps({"type": "start", "source_id": "0" * 32}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == protocol.CLOSE_UNKNOWN_SOURCE


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


# ---------------------------------------------------------------------------------------- 6. scan bombs

@pytest.mark.parametrize("route", ["analyze", "swap-image target", "swap-image source", "jobs target", "jobs source",
                                   "sources"])
def test_a_scan_bomb_is_refused_before_it_is_decoded(http, route):
    bomb = ("bomb.jpg", scan_bomb(), "image/jpeg")
    photo = (OBAMA.name, OBAMA.read_bytes(), "image/jpeg")
    files = {"analyze": [("photo", bomb)], "swap-image target": [("target", bomb), ("source", photo)],
             "swap-image source": [("target", photo), ("source", bomb)], "jobs target": [("target", bomb),
             ("source", photo)], "jobs source": [("target", photo), ("source", bomb)], "sources": [("source", bomb)]}
    path = {"analyze": "/v1/analyze", "sources": "/v1/sources"}.get(route, f"/v1/{route.split()[0]}")
    answer = http.post(path, files=files[route])
    assert answer.status_code == 422, answer.text
    assert "scans" in answer.json()["detail"], answer.text


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


# -------------------------------------------------------------------------------------------- 10. small ones

def test_not_found_does_not_echo_a_long_id(http):
    long_id = "a" * 8000
    for path in (f"/v1/sources/{long_id}", f"/v1/jobs/{long_id}"):
        answer = http.get(path)
        assert answer.status_code == 404, answer.text
        assert len(answer.json()["detail"]) < 200, path[:20]
    assert http.delete(f"/v1/sources/{long_id}").status_code == 404
    assert len(http.delete(f"/v1/sources/{long_id}").json()["detail"]) < 200


def test_an_expired_source_is_gone(service, http):
    made = http.post("/v1/sources", files=[("source", (OBAMA.name, OBAMA.read_bytes(), "image/jpeg"))]).json()
    info = service.data / "sources" / f"{made['id']}.json"
    month_ago = time.time() - 31 * 86400
    os.utime(info, (month_ago, month_ago))  # made 31 days ago: past the 30 days a source is kept
    assert http.get(f"/v1/sources/{made['id']}").status_code == 404
    assert not list(info.parent.glob(f"{made['id']}.*"))


# ----------------------------------------------------------------------------------- 4. concurrent sources

def _peak_growth_mb(pid: int, work) -> float:
    status = Path(f"/proc/{pid}/status")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _kb(status, "VmRSS")
    work()
    return (_kb(status, "VmHWM") - before) / 1024


def _kb(status: Path, field: str) -> int:
    return int(next(line for line in status.read_text().splitlines() if line.startswith(field)).split()[1])


def test_concurrent_sources_share_the_bounded_photo_worker(service, tmp_path):
    """8 requests at once, each with 8 photos of 4096x4096 (410 MB a request, 3.8 GB in all, before)."""
    big = cv2.imencode(".jpg", cv2.resize(cv2.imread(str(OBAMA)), (4096, 4096)), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
    photos = [("source", (f"{i}.jpg", big.tobytes(), "image/jpeg")) for i in range(8)]
    codes: list[int] = []

    def post():
        with service.client() as client:
            codes.append(client.post("/v1/sources", files=photos, timeout=600).status_code)

    def all_at_once():
        threads = [threading.Thread(target=post) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(900)

    grown = _peak_growth_mb(service.process.pid, all_at_once)
    print(f"peak RSS growth, 8 x POST /v1/sources of 8 photos of 4096x4096 at once: {grown:.0f} MB {sorted(codes)}")
    assert sorted(set(codes)) == [201, 429], codes  # the worker and its queue took 5, the others were refused
    assert grown < 600, f"the service's memory rose by {grown:.0f} MB"


def test_a_new_source_is_refused_when_the_disk_is_nearly_full(tmp_path, triton):
    with small_tmpfs(tmp_path, "48m") as disk, \
            ServiceProcess(disk / "data", "--triton", triton.grpc_url, "--workers", "0",
                           "--min-free-mb", "16") as service, service.client() as http:
        ballast = disk / "ballast"
        ballast.write_bytes(b"\1" * (disk_free(disk) - (8 << 20)))  # 8 MB left: under the 16 MB kept free
        answer = http.post("/v1/sources", files=[("source", (OBAMA.name, OBAMA.read_bytes(), "image/jpeg"))])
        assert answer.status_code == 507 and "nothing was read or stored" in answer.json()["detail"], answer.text
        assert not any((service.data / "sources").iterdir())


def disk_free(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize
