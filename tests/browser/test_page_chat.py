"""The chat view in real Chromium: streaming, stop, reload, and model output that looks like HTML."""
import json
import time

from .browsing import PHONE, expect


def settings(page, **values):
    for name, value in values.items():
        page.locator(f"#settings [name={name}]").fill(str(value))


def send(page, text):
    page.locator("#prompt").fill(text)
    page.locator("#prompt").press("Enter")


def stored_conversation(page):
    return json.loads(page.evaluate("localStorage.getItem('slotserve.conversations')"))[0]


def wait_idle(server):
    """Until no slot is busy: the server has finished or cancelled what the page asked for."""
    for _ in range(200):
        if not any(s["is_processing"] for s in server.get("/slots").json()):
            return
        time.sleep(0.05)
    raise AssertionError("a slot stayed busy")


def test_an_answer_streams_token_by_token_with_its_timings(server, open_page, tmp_path):
    p = open_page(server.base_url)
    page = p.open()
    expect(page.get_by_test_id("model-info")).to_have_text("stories260K.gguf · n_ctx 256 · 2 slots")
    expect(page.locator("#settings [name=temperature]")).to_have_attribute("placeholder", "0")
    settings(page, max_tokens=48)
    send(page, "Tell me a story about a cat.")
    timings = page.locator(".msg.assistant .timings")
    expect(timings).to_contain_text("tok/s")
    expect(timings).to_contain_text("generation 48 tok")
    expect(timings).to_contain_text("cache_n 0")

    answer = stored_conversation(page)["messages"][1]["content"]
    expected = server.post("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Tell me a story about a cat."}],
        "max_tokens": 48}).json()["choices"][0]["message"]["content"]
    assert answer == expected  # the page's request is the one its settings say, streamed whole
    page.screenshot(path=tmp_path / "chat-wide.png")

    send(page, "And then?")  # the second turn reuses the cached first one
    expect(page.locator(".msg.assistant .timings").nth(1)).not_to_contain_text("cache_n 0")


def test_a_conversation_is_still_there_after_a_reload(server, open_page):
    p = open_page(server.base_url)
    page = p.open()
    settings(page, max_tokens=12)
    send(page, "Remember me")
    expect(page.locator(".msg.assistant .timings")).to_be_visible()
    answer = page.locator(".msg.assistant .body").inner_text()
    page.reload()
    expect(page.get_by_test_id("model-info")).to_contain_text("n_ctx")
    expect(page.locator(".msg.user .body")).to_have_text("Remember me")
    expect(page.locator(".msg.assistant .body")).to_have_text(answer)
    expect(page.locator(".msg.assistant .timings")).to_be_visible()
    expect(page.locator("#conversation-list li")).to_have_text(["Remember me×"])
    expect(page.locator("#settings [name=max_tokens]")).to_have_value("12")


def test_an_answer_grows_on_screen_and_stop_ends_it(server, open_page):
    p = open_page(server.base_url)
    page = p.open()
    settings(page, extra='{"ignore_eos": true}')  # no max tokens, context shift on: it would never end
    send(page, "Go on forever")
    body = page.locator(".msg.assistant.streaming .body")
    seen = [""]
    for _ in range(3):  # the answer on screen grows while it streams: each text extends the one before
        expect(body).not_to_have_text(seen[-1])
        seen.append(body.inner_text())
        assert seen[-1].startswith(seen[-2].strip())
    assert any(s["is_processing"] for s in server.get("/slots").json())
    page.locator("#stop").click()
    expect(page.locator(".msg.assistant .badge")).to_have_text("stopped")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()
    wait_idle(server)
    kept = stored_conversation(page)["messages"][1]
    assert kept["stopped"] and kept["content"]  # what came before the stop is kept
    expect(page.locator(".msg.assistant .continue")).to_be_visible()


def test_model_output_that_looks_like_html_is_shown_as_text(server, open_page):
    """The model itself emits the markup: each of its tokens is forced in turn with a logit bias and the
    answer is continued from the page (an assistant prefill), so every character arrives in the stream."""
    markup = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    pieces = server.post("/tokenize", {"content": markup, "with_pieces": True}).json()["tokens"]
    if pieces[0]["piece"] == " ":  # SentencePiece's leading space belongs to no character of the markup
        pieces = pieces[1:]
    assert "".join(t["piece"] for t in pieces) == markup
    p = open_page(server.base_url)
    page = p.open()
    user_markup = "<img src=x onerror=alert(3)> and <b>bold</b>?"
    for i, token in enumerate(pieces):
        settings(page, extra=json.dumps({"logit_bias": [[token["id"], 100]], "max_tokens": 1}))
        if i == 0:
            send(page, user_markup)
        else:
            page.locator(".msg.assistant .continue").click()
        expect(page.locator(".msg.assistant .continue")).to_be_visible()
    answer = page.locator(".msg.assistant .body")
    expect(answer).to_have_text(markup)
    expect(page.locator(".msg.user .body")).to_have_text(user_markup)
    assert stored_conversation(page)["messages"][1]["content"] == markup
    assert page.locator("#messages img, #messages script, #messages b").count() == 0
    # p.close() fails the test if an alert() ran or a script error happened


def test_a_phone_sized_window_keeps_the_chat_in_view(server, open_page, tmp_path):
    p = open_page(server.base_url, PHONE)
    page = p.open()
    expect(page.locator("#conversations")).to_be_hidden()
    expect(page.locator("#settings")).not_to_have_attribute("open", "")
    page.locator("#settings summary").click()
    settings(page, max_tokens=24)
    page.locator("#settings summary").click()
    send(page, "A short one")
    expect(page.locator(".msg.assistant .timings")).to_be_visible()
    box = page.locator(".msg.assistant").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # nothing sideways
    page.screenshot(path=tmp_path / "chat-phone.png")
    page.locator("#toggle-conversations").click()
    expect(page.locator("#conversation-list li")).to_have_count(1)
    page.locator("#conversation-list .title").click()
    expect(page.locator("#conversations")).to_be_hidden()


def test_the_markdown_subset_builds_elements_and_keeps_markup_as_text(server, open_page):
    page = open_page(server.base_url).open()
    source = "\n".join([
        "# Title", "Some **bold** and *italic* and `<b>code</b>`.", "",
        "- one", "- two <i>x</i>", "", "1. first", "", "> quoted",
        "```html", "<script>alert(1)</script>", "```",
        "[site](https://example.org) [bad](javascript:alert(2)) <a href=x>raw</a>",
        "```python", "still streaming"])
    html = page.evaluate("""async (src) => {
      const { render } = await import("/markdown.js");
      const box = document.createElement("div");
      box.append(render(src));
      return box.innerHTML;
    }""", source)
    assert html == (
        "<h3>Title</h3><p>Some <strong>bold</strong> and <em>italic</em> and <code>&lt;b&gt;code&lt;/b&gt;</code>.</p>"
        "<ul><li>one</li><li>two &lt;i&gt;x&lt;/i&gt;</li></ul><ol><li>first</li></ol><blockquote>quoted</blockquote>"
        '<div class="code-block"><div class="code-head"><span>html</span><button type="button" class="copy">copy'
        "</button></div><pre><code>&lt;script&gt;alert(1)&lt;/script&gt;</code></pre></div>"
        '<p><a href="https://example.org" target="_blank" rel="noopener noreferrer nofollow">site</a> '
        "[bad](javascript:alert(2)) &lt;a href=x&gt;raw&lt;/a&gt;</p>"
        '<div class="code-block"><div class="code-head"><span>python</span><button type="button" class="copy">copy'
        "</button></div><pre><code>still streaming</code></pre></div>")
