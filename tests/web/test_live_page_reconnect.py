"""The /live page when its replica leaves: two real ``swapstream serve`` replicas (one data folder, one store) behind
one address (a TCP forwarder standing for the load balancer); the page streams through the first; the balancer sends
new connections to the second and the first is drained (SIGTERM): the page sees 1012 with "reconnect", takes a new
ticket and goes on streaming through the second, without the user doing anything."""
from __future__ import annotations

import signal

from swapstream.services.jobs.process import ServiceProcess
from tests.helpers.browser import chromium, open_page, wait_until
from tests.helpers.media import MEDIA
from tests.helpers.service import metric_values
from tests.helpers.tcp_proxy import TcpProxy

OBAMA = MEDIA / "img01_single_frontal_obama.jpg"
TOKEN = "live-reconnect-page-token"


def answered(page) -> int:
    return int(page.evaluate("Number(document.querySelector('#counts').textContent.split(' / ')[1]) || 0"))


def test_the_live_page_reconnects_by_itself_when_its_replica_drains(tmp_path, triton):
    data = tmp_path / "data"
    args = ("--triton", triton.grpc_url, "--token", TOKEN, "--workers", "0", "--drain-timeout", "1")
    with ServiceProcess(data, *args) as leaving, ServiceProcess(data, *args) as staying, \
            TcpProxy(f"127.0.0.1:{leaving.port}") as balancer, chromium() as browser, \
            open_page(browser, f"http://{balancer.address}/live", allow_http=(401,)) as watched:
        page = watched.page
        page.set_input_files("#source", str(OBAMA))
        page.click("#start")
        page.fill("#token-dialog input[name=token]", TOKEN)
        page.click("#token-dialog button[type=submit]")
        wait_until(page, "Number(document.querySelector('#counts').textContent.split(' / ')[1]) >= 3", 90_000)
        balancer.retarget(f"127.0.0.1:{staying.port}")  # the leaving replica is no longer ready
        leaving.process.send_signal(signal.SIGTERM)
        assert leaving.process.wait(60) == 0
        before = answered(page)
        wait_until(page, "document.querySelector('#status').textContent.startsWith('Streaming (reconnected')",
                   60_000)
        wait_until(page, f"Number(document.querySelector('#counts').textContent.split(' / ')[1]) >= {before + 3}",
                   90_000)
        with staying.client(TOKEN) as http:
            assert metric_values(http)["swapstream_live_frames_answered_total"] >= 3
        assert page.evaluate("!document.getElementById('error') || document.getElementById('error').hidden")
        page.click("#stop")
        wait_until(page, "document.querySelector('#status').textContent === 'Stopped.'", 30_000)
