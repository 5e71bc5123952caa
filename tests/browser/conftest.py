"""Fixtures of the browser tests: one Chromium per session, a fresh browser context per page, a slotserve
per test module (see browsing.py for why Playwright, and how a missing Chromium is reported)."""
import os

import pytest
from .browsing import CHROMIUM, FLAGS, LAUNCH_ARGS, WIDE, Page, ServerProcess, missing_browser


@pytest.fixture(scope="session")
def browser():
    why = missing_browser()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture()
def open_page(browser):
    pages = []

    def make(base_url: str, viewport: dict = WIDE) -> Page:
        p = Page(browser, base_url, viewport)
        pages.append(p)
        return p

    yield make
    for p in pages:
        p.close()


@pytest.fixture(scope="module")
def server(stories_path, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("slots")
    with ServerProcess(stories_path, *FLAGS, "--slot-save-path", str(save_dir)) as srv:
        srv.save_dir = save_dir
        yield srv
