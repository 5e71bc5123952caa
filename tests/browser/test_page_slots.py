"""The slots and caches view in real Chromium: live slots, slot files, and every action through the real
endpoints, with the server's own answers and errors on the page."""
from .browsing import PHONE, expect



def warm_slot_from_the_chat(page) -> None:
    page.goto("/#/chat")
    page.locator("#settings [name=max_tokens]").fill("16")
    page.locator("#prompt").fill("Once upon a time there was a dog.")
    page.locator("#prompt").press("Enter")
    expect(page.locator(".msg.assistant .timings")).to_be_visible()


def the_warm_slot(server) -> dict:
    warm = [s for s in server.get("/slots").json() if s["n_past"] > 0]
    assert len(warm) == 1, warm
    return warm[0]


def test_save_erase_restore_and_delete_from_the_page(server, open_page, tmp_path):
    for s in range(2):  # start from empty slots: the chat below fills exactly one
        server.post(f"/slots/{s}?action=erase")
    p = open_page(server.base_url)
    page = p.open()
    warm_slot_from_the_chat(page)
    slot = the_warm_slot(server)
    id_slot, n_past = slot["id"], slot["n_past"]
    page.locator(".tabs [data-view=slots]").click()
    card = page.locator(f'.slot[data-slot="{id_slot}"]')
    expect(card.locator(".cached")).to_have_text(f"{n_past} / 256 tokens cached")
    expect(card.locator(".state")).to_have_text("idle")
    status = page.get_by_test_id("slot-status")

    card.locator("input").fill("from-page.bin")
    card.get_by_role("button", name="Save").click()
    expect(status).to_contain_text("saved")
    size = (server.save_dir / "from-page.bin").stat().st_size
    expect(status).to_have_text(f"saved {n_past} tokens of slot {id_slot} to from-page.bin ({size / 1024:.1f} KiB)")
    row = page.locator('tr[data-file="from-page.bin"]')
    expect(row.locator("td").nth(2)).to_have_text(str(n_past))
    expect(row.locator("td").nth(4)).to_have_text("yes")  # it matches this model
    page.screenshot(path=tmp_path / "slots-wide.png", full_page=True)

    card.get_by_role("button", name="Erase").click()
    expect(status).to_have_text(f"erased slot {id_slot} ({n_past} tokens)")
    expect(card.locator(".cached")).to_have_text("0 / 256 tokens cached")
    assert server.get("/slots").json()[id_slot]["n_past"] == 0

    other = 1 - id_slot  # restore into the other slot: the file carries the cache, not the slot number
    page.locator("#restore-target").select_option(str(other))
    row.get_by_role("button", name="Restore").click()
    expect(status).to_have_text(f"restored {n_past} tokens from from-page.bin into slot {other}")
    expect(page.locator(f'.slot[data-slot="{other}"] .cached')).to_have_text(f"{n_past} / 256 tokens cached")
    assert server.get("/slots").json()[other]["n_past"] == n_past

    row.get_by_role("button", name="Delete").click()
    expect(row.get_by_role("button", name="Confirm delete")).to_be_visible()  # one click deletes nothing
    assert (server.save_dir / "from-page.bin").exists()
    row.get_by_role("button", name="Confirm delete").click()
    expect(status).to_have_text("deleted from-page.bin")
    expect(row).to_have_count(0)
    assert not (server.save_dir / "from-page.bin").exists()


def test_a_bad_filename_shows_the_servers_400(server, open_page):
    p = open_page(server.base_url)
    page = p.open("slots")
    card = page.locator('.slot[data-slot="0"]')
    card.locator("input").fill("../escape.bin")
    card.get_by_role("button", name="Save").click()
    message = server.post("/slots/0?action=save", {"filename": "../escape.bin"}).json()["error"]["message"]
    expect(page.get_by_test_id("slot-status")).to_have_text(f"save failed: 400 {message}")
    expect(page.get_by_test_id("slot-status")).to_have_class("status error")
    assert not (server.save_dir.parent / "escape.bin").exists()


def test_the_view_follows_the_server_without_a_reload(server, open_page, tmp_path):
    p = open_page(server.base_url)
    page = p.open("slots")
    expect(page.get_by_test_id("cache-tiers")).to_contain_text("Not available yet")
    assert server.post("/completion", {"prompt": "A bird", "id_slot": 1, "n_predict": 4}).status_code == 200
    n_past = server.get("/slots").json()[1]["n_past"]
    assert server.post("/slots/1?action=save", {"filename": "elsewhere.bin"}).status_code == 200
    # made by another client: the live view shows both without any click
    expect(page.locator('tr[data-file="elsewhere.bin"] td').nth(2)).to_have_text(str(n_past))
    expect(page.locator('.slot[data-slot="1"] .cached')).to_have_text(f"{n_past} / 256 tokens cached")
    assert server.client.delete("/slots/files/elsewhere.bin").status_code == 200
    expect(page.locator('tr[data-file="elsewhere.bin"]')).to_have_count(0)


def test_a_busy_slot_shows_as_busy(server, open_page):
    p = open_page(server.base_url)
    page = p.open()
    page.locator("#settings [name=extra]").fill('{"ignore_eos": true}')  # runs until stopped
    page.locator("#prompt").fill("Keep going")
    page.locator("#prompt").press("Enter")
    # the page marks the answer streaming before its request is even sent: wait for streamed text, which
    # the server sends only after its /slots snapshot shows the slot busy
    expect(page.locator(".msg.assistant.streaming .body")).not_to_be_empty()
    busy = [s for s in server.get("/slots").json() if s["is_processing"]]
    assert len(busy) == 1
    page.locator(".tabs [data-view=slots]").click()  # the stream goes on while the other view shows
    card = page.locator(f'.slot[data-slot="{busy[0]["id"]}"]')
    expect(card.locator(".state")).to_have_text("busy")
    expect(card.locator(".detail")).to_contain_text("remaining ∞")
    page.locator(".tabs [data-view=chat]").click()
    page.locator("#stop").click()
    expect(page.locator(".msg.assistant .badge")).to_have_text("stopped")
    page.locator(".tabs [data-view=slots]").click()
    expect(card.locator(".state")).to_have_text("idle")


def test_the_slots_view_fits_a_phone(server, open_page, tmp_path):
    assert server.post("/slots/0?action=save", {"filename": "phone.bin"}).status_code == 200
    p = open_page(server.base_url, PHONE)
    page = p.open("slots")
    expect(page.locator('tr[data-file="phone.bin"]')).to_be_visible()
    for card in page.locator(".slot").all():
        box = card.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    page.screenshot(path=tmp_path / "slots-phone.png", full_page=True)
    server.client.delete("/slots/files/phone.bin")
