"""A server with --api-key: the page loads without the key, asks for it once, shows the 401 of a wrong one,
and sends a right one with every request (the streamed chat and the slots view)."""
import pytest
from .browsing import FLAGS, ServerProcess, expect


KEY = "sesame-4242"


@pytest.fixture(scope="module")
def keyed(stories_path):
    with ServerProcess(stories_path, *FLAGS, "--api-key", KEY) as srv:
        yield srv


def test_the_page_asks_for_the_key_and_shows_the_401_of_a_wrong_one(keyed, open_page, tmp_path):
    p = open_page(keyed.base_url)
    page = p.open(ready=False)
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.get_by_test_id("key-error")).to_be_hidden()  # asking is not an error yet
    page.locator("#key-input").fill("not-the-key")
    page.locator("#key-input").press("Enter")
    expect(page.get_by_test_id("key-error")).to_have_text("401 Invalid API Key")
    expect(dialog).to_be_visible()
    page.screenshot(path=tmp_path / "api-key.png")

    page.locator("#key-input").fill(KEY)
    page.locator("#key-input").press("Enter")
    expect(dialog).to_be_hidden()
    expect(page.get_by_test_id("model-info")).to_contain_text("n_ctx 256")
    page.locator("#settings [name=max_tokens]").fill("8")
    page.locator("#prompt").fill("Hello")
    page.locator("#prompt").press("Enter")
    expect(page.locator(".msg.assistant .timings")).to_contain_text("generation 8 tok")

    page.reload()  # asked once: the key is kept in this browser
    expect(page.get_by_test_id("model-info")).to_contain_text("n_ctx 256")
    expect(dialog).to_be_hidden()
    page.goto("/#/slots")
    expect(page.locator(".slot")).to_have_count(2)
    expect(page.locator("#files")).to_contain_text("--slot-save-path")  # the server's own 501 message
