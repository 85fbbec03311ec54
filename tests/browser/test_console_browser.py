"""The console in a real headless Chromium (Debian's `chromium`, driven by Playwright):
log in, resolve a conflict, import a file, filter the audit log, open a user's scope, and
read it all on a phone. Screenshots of each page go to test-artifacts/console/ (printed).

Skipped, saying so, where there is no Chromium (.ci/run installs it)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from proxy.devserver.backend import PouchServer

from support import Gateway, audited_gateway, basic

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
CHROMIUM = os.environ.get("COUCHGATE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
WAIT_MS = 60_000  # a loaded machine: generous, the waits end as soon as the page is there

if not Path(CHROMIUM).exists():
    pytest.skip(
        f"browser tests SKIPPED: no Chromium at {CHROMIUM} (apt-get install chromium, or set COUCHGATE_CHROMIUM)",
        allow_module_level=True,
    )

from playwright.async_api import BrowserContext, Page, async_playwright, expect  # noqa: E402

expect.set_options(timeout=WAIT_MS)


@pytest.fixture
async def console_gw(backend: PouchServer, medic: str) -> AsyncIterator[Gateway]:
    async with audited_gateway(backend, medic, users_refresh_interval=3600) as gw:
        yield gw


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """A fresh Chromium profile per test."""
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900}, accept_downloads=True,
        )  # fmt: skip
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            await context.close()


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


async def logged_in(context: BrowserContext, gw: Gateway, backend: PouchServer, page_name: str = "") -> Page:
    page = context.pages[0] if context.pages else await context.new_page()
    await page.goto(f"{gw.url}/_couchgate/console#/{page_name}")
    await page.get_by_label("Name").fill(backend.admin_user)
    await page.get_by_label("Password").fill(backend.admin_password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("navigation", name="Console pages")).to_be_visible()
    return page


def leaf(doc_id: str, revs: list[str], **fields: Any) -> dict[str, Any]:
    start = int(revs[0].split("-")[0])
    return {"_id": doc_id, "_rev": revs[0], "_revisions": {"start": start, "ids": [r.split("-")[1] for r in revs]},
            **fields}  # fmt: skip


async def test_log_in_with_the_keyboard_and_refused_passwords(
    browser: BrowserContext, console_gw: Gateway, backend: PouchServer
) -> None:
    page = await browser.new_page()
    await page.goto(f"{console_gw.url}/_couchgate/console")
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await shot(page, "login")
    # Every form control has a label the browser knows.
    unlabelled = await page.evaluate(
        "[...document.querySelectorAll('input, select')].filter(e => !e.labels || !e.labels.length).length"
    )
    assert unlabelled == 0
    await page.get_by_label("Name").fill(backend.admin_user)
    await page.get_by_label("Password").fill("wrong")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("alert")).to_have_text("Name or password is incorrect.")
    await page.get_by_label("Password").fill(backend.admin_password)
    await page.get_by_label("Password").press("Enter")
    await expect(page.get_by_role("heading", name="Conflicts", level=1)).to_be_visible()
    # Keyboard only: Tab reaches the Users link, Enter opens it.
    for _ in range(12):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.textContent") == "Users":
            break
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Users", level=1)).to_be_visible()
    await expect(page.get_by_role("link", name="Users")).to_have_attribute("aria-current", "page")


async def test_resolve_a_conflict(
    browser: BrowserContext, console_gw: Gateway, backend: PouchServer, medic: str
) -> None:
    base = {"type": "data_record", "form": "visit", "v": 1, "note": "x"}
    for docs in ([leaf("shared", ["1-aaa"], **base)],
                 [leaf("shared", ["2-bbb", "1-aaa"], **{**base, "note": "y"}),
                  leaf("shared", ["2-ccc", "1-aaa"], **{**base, "v": 2})]):  # fmt: skip
        assert backend.request("POST", f"/{medic}/_bulk_docs", {"docs": docs, "new_edits": False})[0] == 201
    page = await logged_in(browser, console_gw, backend, "conflicts")
    await page.get_by_role("button", name="shared").click()
    await expect(page.get_by_role("heading", name="shared: concurrent_edit")).to_be_visible()
    await page.get_by_role("button", name="Preview automatic merge").click()
    await expect(page.get_by_role("heading", name="Automatic merge")).to_be_visible()
    await shot(page, "conflicts")
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.get_by_text("Done: shared")).to_be_visible()
    status, doc = backend.request("GET", f"/{medic}/shared?conflicts=true")
    assert status == 200 and "_conflicts" not in doc and doc["v"] == 2 and doc["note"] == "y"


async def test_import_a_file_and_see_its_statuses(
    browser: BrowserContext, console_gw: Gateway, backend: PouchServer, medic: str, tmp_path: Path
) -> None:
    upload = tmp_path / "people.ndjson"
    docs = [
        {"_id": "imp-a", "type": "person", "name": "A"},
        {"_id": "imp-b", "type": "person"},
        {"_id": "_nope"},
    ]
    upload.write_text("".join(json.dumps(d) + "\n" for d in docs))
    page = await logged_in(browser, console_gw, backend, "import")
    await page.get_by_label("File").set_input_files(str(upload))
    await page.get_by_role("button", name="Import").click()
    await expect(page.locator("#import-counts")).to_have_text("3 docs answered: created 2, invalid 1")
    results = page.get_by_role("table", name="Per-doc results")
    for doc_id, status in (("imp-a", "created"), ("imp-b", "created"), ("_nope", "invalid")):
        await expect(results.get_by_role("row").filter(has_text=doc_id)).to_contain_text(status)
    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="Download the results").click()
    saved = tmp_path / "results.ndjson"
    await (await download_info.value).save_as(str(saved))
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [line.get("status") for line in lines[:3]] == ["created", "created", "invalid"]
    assert lines[-1]["summary"] == {"created": 2, "invalid": 1}
    await shot(page, "import")
    assert backend.request("GET", f"/{medic}/imp-a")[0] == 200


async def test_filter_the_audit_log_and_verify_it(
    browser: BrowserContext, console_gw: Gateway, backend: PouchServer, medic: str
) -> None:
    admin = {"Authorization": basic(backend.admin_user, backend.admin_password)}
    for i in range(3):
        await console_gw.call("PUT", f"/{medic}/audited-{i}", json={"v": i}, headers=admin)
    page = await logged_in(browser, console_gw, backend, "audit")
    await page.get_by_label("Action").fill("create")
    await page.get_by_role("button", name="Filter").click()
    table = page.get_by_role("table", name="Audit entries, page 1")
    # The filtered page replaces the first (unfiltered) one: only the three creates remain.
    await expect(table.locator("tbody tr td:nth-child(3)")).to_have_text(["create"] * 3)
    await expect(table.get_by_role("button", name="audited-2")).to_be_visible()
    await table.get_by_role("button", name="audited-1").click()
    await expect(page.get_by_role("heading", name="History of audited-1")).to_be_visible()
    await page.get_by_role("button", name="Verify the hash chain").click()
    await expect(page.get_by_text("Audit log intact")).to_be_visible()
    await shot(page, "audit")


async def test_open_a_users_scope(browser: BrowserContext, console_gw: Gateway, backend: PouchServer) -> None:
    page = await logged_in(browser, console_gw, backend, "users")
    await page.get_by_role("button", name="Count again now").click()
    users = page.get_by_role("table", name="Offline users")
    await expect(users.get_by_role("row").filter(has_text="supervisor")).not_to_contain_text("counting")
    await users.get_by_role("button", name="chw1").click()
    await expect(page.get_by_role("heading", name="Scope of chw1")).to_be_visible()
    kinds = page.get_by_role("table", name="Docs chw1 replicates, by kind")
    await expect(kinds.get_by_role("row").filter(has_text="person")).to_be_visible()
    await shot(page, "users")


async def test_readable_on_a_phone(
    browser: BrowserContext, console_gw: Gateway, backend: PouchServer
) -> None:
    page = await logged_in(browser, console_gw, backend, "users")
    await page.set_viewport_size({"width": 390, "height": 844})
    pages = (("conflicts", "Conflicts", "Conflicted docs"), ("audit", "Audit log", "Audit entries, page 1"),
             ("import", "Import", None), ("users", "Users", "Offline users"))  # fmt: skip
    for name, heading, table in pages:
        await page.get_by_role("link", name=heading).click()
        await expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible()
        if table:
            await expect(page.get_by_role("table", name=table)).to_be_visible()  # the data is in
        # Nothing wider than the screen: wide tables scroll inside their own box.
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name} is {overflow}px wider than a phone"
        await shot(page, f"phone-{name}")
