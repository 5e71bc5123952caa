"""Helpers for the browser tests: real headless Chromium (Debian's package) driven by Playwright for
Python, against a real slotserve.

Playwright rather than Selenium: it waits for what a test names (a locator, a text) instead of sleeping,
reads a page's console and dialogs (an alert() from injected markup fails a test), and its Python wheel
carries its own driver, so Debian's `chromium` is all the system needs (no chromium-driver to keep in
step with it). Without Chromium the tests skip with the reason, except under CI=true, where they fail.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))  # ServerProcess
from server import ServerProcess  # noqa: E402

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (fails under CI) with the reason before a test gets here
    expect = None

CHROMIUM = os.environ.get("SLOTSERVE_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--no-first-run", "--disable-sync"]
WIDE = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# greedy, as llama.cpp's stories260K preset; --context-shift: a generation with ignore_eos never ends by
# itself, so stopping it from the page cannot race its natural end
FLAGS = ("-c", "512", "-np", "2", "-b", "32", "--temp", "0", "--seed", "42", "--context-shift")


def missing_browser() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing: `make browser` installs Debian's chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: `make install` (the test extra) or `make browser` brings it"
    return None


class Page:
    """One browser context (its own localStorage) on the server, failing on any script error or dialog."""

    def __init__(self, browser, base_url: str, viewport: dict):
        self.context = browser.new_context(viewport=viewport, base_url=base_url)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("dialog", lambda d: (self.errors.append(f"dialog: {d.message}"), d.dismiss()))
        self.page.set_default_timeout(20_000)

    def open(self, view: str = "chat", ready: bool = True):
        self.page.goto(f"/#/{view}")
        if ready:
            from playwright.sync_api import expect
            expect(self.page.get_by_test_id("model-info")).to_contain_text("n_ctx")
        return self.page

    def close(self):
        self.context.close()
        assert not self.errors, self.errors
