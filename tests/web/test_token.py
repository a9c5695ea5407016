"""A service with a token: the pages load without it, the page asks for it, refuses a wrong one, accepts the right
one; and the open event streams do not keep the service from stopping."""
from __future__ import annotations

import httpx
import pytest

from swapstream.services.jobs.process import ServiceProcess
from tests.helpers.browser import open_page

TOKEN = "right-token-3f9a"


@pytest.fixture(scope="module")
def service(tmp_path_factory, triton):
    data = tmp_path_factory.mktemp("web-token") / "data"
    with ServiceProcess(data, "--triton", triton.grpc_url, "--token", TOKEN) as running:
        yield running


def test_pages_and_assets_need_no_token_but_the_api_does(service):
    for path in ("/", "/analyze", "/swap-photo", "/static/style.css", "/static/common.js"):
        assert httpx.get(service.url + path).status_code == 200, path
    assert httpx.get(service.url + "/v1/jobs").status_code == 401


def test_the_page_refuses_a_wrong_token_and_accepts_the_right_one(service, browser):
    with open_page(browser, service.url + "/", allow_http=(401,)) as watched:
        page = watched.page
        page.wait_for_selector("#token-dialog[open]")
        assert "asks for a token" in page.inner_text("#token-dialog .token-reason")
        page.fill("#token-dialog input[name=token]", "wrong-token")
        page.press("#token-dialog input[name=token]", "Enter")  # the keyboard is enough
        page.wait_for_selector("#token-dialog[open] >> text=refused the token you entered")
        watched.screenshot("token-refused-desktop")
        page.fill("#token-dialog input[name=token]", TOKEN)
        page.click("#token-dialog >> text=Use this token")
        page.wait_for_selector("text=live: the service pushes every change")
        assert page.evaluate("sessionStorage.getItem('swapstream-token')") == TOKEN
        page.goto(service.url + "/analyze")  # asked once per tab: the next page uses it without asking
        page.goto(service.url + "/")
        page.wait_for_selector("text=live: the service pushes every change")
        assert page.locator("#token-dialog").count() == 0


def test_open_event_streams_do_not_hold_the_service_at_exit(tmp_path, triton, browser):
    service = ServiceProcess(tmp_path / "data", "--triton", triton.grpc_url).start()
    try:
        with open_page(browser, service.url + "/") as watched:
            watched.page.wait_for_selector("text=live: the service pushes every change")
            service.process.terminate()  # SIGTERM while the page's stream is open
            service.process.wait(20)  # uvicorn would wait for the open response forever
            watched.page.wait_for_selector("text=reconnecting")
            watched.allow_http(502)
            watched.errors.clear()  # the page now fails to reconnect to a stopped service: expected here
    finally:
        service.kill()
    assert service.process.returncode in (0, -15), service.log()
