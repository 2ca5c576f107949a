"""The audit console in real headless Chromium (Debian's `chromium`, driven by Playwright),
against a real uvicorn server on a free loopback port; SQLite only, to keep the time down (the
HTTP tests in test_console.py run on both databases).

Every request the browser makes goes through `page.route`: anything not addressed to 127.0.0.1
or localhost is aborted and fails the test. Screenshots land in tests/artifacts/ (gitignored).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest
import uvicorn
from console_support import people, seed_contact
from signin_support import Flow, code_from, make_web_client, redeem, sign_in

from api.app import create_app
from schema.runtime import Appliance, initialise
from security import verify_standalone
from security.config import Settings
from security.keys import AUDIT_SIGNING

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
LOOPBACK = {"127.0.0.1", "localhost"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A served appliance on SQLite, with its people and a contact someone read."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    port = free_port()
    settings = Settings(data_dir=tmp_path_factory.mktemp("console") / "var", dev_mode=True,
                        host="127.0.0.1", port=port, audit_checkpoint_every=8)
    initialise(settings)
    appliance = Appliance.open(settings)
    contact = seed_contact(appliance, reads=2)
    who = people(appliance)
    server = uvicorn.Server(uvicorn.Config(create_app(appliance), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the test server did not start")
        time.sleep(0.05)
    try:
        yield {"base": f"http://127.0.0.1:{port}", "appliance": appliance, "people": who,
               "contact": contact}
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        appliance.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                    headless=True)
        yield browser
        browser.close()


class Guarded:
    """A browser context whose every request must stay on loopback."""

    def __init__(self, chromium: Any, *, width: int = 1280, height: int = 900) -> None:
        self.foreign: list[str] = []
        self.context = chromium.new_context(viewport={"width": width, "height": height},
                                            accept_downloads=True)
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()

    def _route(self, route: Any) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if host in LOOPBACK:
            route.continue_()
        else:
            self.foreign.append(route.request.url)
            route.abort()

    def close(self) -> None:
        self.context.close()
        assert self.foreign == [], f"requests left the appliance: {self.foreign}"


@pytest.fixture
def guarded(chromium: Any) -> Iterator[Any]:
    opened: list[Guarded] = []

    def make(**size: int) -> Guarded:
        opened.append(Guarded(chromium, **size))
        return opened[-1]

    yield make
    for one in opened:
        one.close()


def lines_key_version(live: dict[str, Any]) -> int:
    return int(live["appliance"].keyring.current_version(AUDIT_SIGNING))


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def password_step(page: Any, base: str, person: Any, target: str = "/console/") -> Any:
    response = page.goto(base + target)
    assert "/signin?next=" in page.url
    assert response is not None
    page.fill("#email", person.email)
    page.fill("#password", person.password)
    with page.expect_navigation():
        page.click("button[type=submit]")
    return page


def totp_step(page: Any, code: str) -> Any:
    page.fill("#code", code)
    with page.expect_navigation() as nav:
        page.click("button[type=submit]")
    return nav.value


def test_officer_signs_in_filters_sees_reads_verifies_and_exports(
        live: dict[str, Any], guarded: Any) -> None:
    base, officer, contact = live["base"], live["people"]["officer"], live["contact"]
    browser = guarded()
    page = browser.page
    password_step(page, base, officer)
    assert page.locator("#code").is_visible()
    code = officer.code()
    totp_step(page, code)
    assert page.url == base + "/console/"
    assert page.locator("h1").inner_text() == "Event stream"
    shot(page, "console-events")

    # Filter the stream: the two reads of the contact by the manager.
    page.fill("input[name=action]", "contact.read")
    page.select_option("select[name=decision]", "allow")
    with page.expect_navigation():
        page.click("text=Filter")
    assert "action=contact.read" in page.url
    assert page.locator("table.events tbody tr.allow").count() == 2
    shot(page, "console-events-filtered")
    with page.expect_navigation():  # the little script's Clear button
        page.click("button[data-clear]")
    assert page.locator("input[name=action]").input_value() == ""

    # Who saw this person.
    with page.expect_navigation():
        page.click("nav >> text=Who saw this person")
    page.fill("input[name=contact]", contact)
    with page.expect_navigation():
        page.click("text=Show reads")
    rows = page.locator("#seen tbody tr")
    assert rows.count() == 2
    assert "operator:mgr-east" in rows.first.inner_text()
    assert "email, phone" in rows.first.inner_text()
    shot(page, "console-who-saw")

    # Evidence of those reads: a download of JSON lines with the checkpoint and proofs.
    with page.expect_download() as waiting:
        page.click("text=Export these reads as evidence")
    download = waiting.value
    assert download.suggested_filename.startswith("enclave-evidence-")
    raw = Path(download.path()).read_text().splitlines()
    lines = [json.loads(line) for line in raw]
    assert lines[0]["events"] == 2 and lines[0]["tree_size"] >= 2
    assert lines[0]["filters"] == {"action": "contact.read", "object_id": contact}
    assert any("checkpoint" in line for line in lines) and "manifest" in lines[-1]
    assert [line["event"]["object_ids"] for line in lines if "event" in line] == [[contact]] * 2
    # The stand-alone verifier accepts it (the key checked against the appliance's own).
    key = verify_standalone.parse_key(lines[0]["key"]["verifier_key"])
    appliance_key = live["appliance"].keyring.signing_key(AUDIT_SIGNING, lines_key_version(live))
    assert key.raw == appliance_key.public_key().public_bytes_raw()
    report, _ = verify_standalone.check_export(raw, [key])
    assert report.events == 2

    for nav, name in (("Refusals and anomalies", "console-anomalies"),
                      ("Policy", "console-policy")):
        with page.expect_navigation():
            page.click(f"nav >> text={nav}")
        assert page.locator("h1").inner_text() == nav
        shot(page, name)
    assert page.locator("table.policy").count() >= 3

    # Verify now.
    with page.expect_navigation():
        page.click("nav >> text=Verification")
    assert int(page.locator("#log-size").inner_text()) > 10
    with page.expect_navigation():
        page.click("text=Verify the whole log now")
    assert "The log verifies" in page.locator("#result").inner_text()
    shot(page, "console-verify")

    # The same console on a tablet.
    tablet = guarded(width=820, height=1180)
    tablet.context.add_cookies(browser.context.cookies())
    tablet.page.goto(base + "/console/")
    assert tablet.page.locator("h1").inner_text() == "Event stream"
    width = tablet.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 820, f"the page is {width} px wide on a tablet"
    shot(tablet.page, "console-events-tablet")

    # A reused TOTP code is refused, in another browser.
    again = guarded()
    password_step(again.page, base, officer)
    totp_step(again.page, code)
    assert "/signin" in again.page.url
    assert "not accepted" in again.page.locator(".error").inner_text()
    assert again.page.goto(base + "/console/verify") is not None
    assert "/signin?next=" in again.page.url


@pytest.mark.parametrize("name", ["rep", "admin"])
def test_sales_rep_and_admin_are_refused_the_console(live: dict[str, Any], guarded: Any,
                                                     name: str) -> None:
    base, person = live["base"], live["people"][name]
    page = guarded().page
    password_step(page, base, person)
    if person.totp_secret:
        totp_step(page, person.code())
    assert page.url == base + "/console/"
    assert "security officers and auditors" in page.content()
    response = page.goto(base + "/console/policy")
    assert response is not None and response.status == 403
    shot(page, f"console-refused-{name}")


def test_a_wrong_pkce_verifier_is_refused_over_http(live: dict[str, Any]) -> None:
    base, appliance = live["base"], live["appliance"]
    client_id, secret = make_web_client(appliance)
    rep = live["people"]["rep"]
    with httpx.Client(base_url=base) as http:
        flow = Flow.new(client_id)
        code = code_from(sign_in(http, flow, rep), flow)
        refused = redeem(http, flow, code, secret, verifier=flow.verifier[:-4] + "AAAA")
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid_grant"
        # The code is spent by the failed attempt or still unusable with the right verifier.
        assert redeem(http, flow, code, secret).status_code == 400
