// The slots and caches view: GET /slots and GET /slots/files polled while the view is open, and the
// slot actions through the real endpoints (POST /slots/{id}?action=..., DELETE /slots/files/{name}),
// each showing the server's answer or its error message.

import { ApiError, del, get, post } from "./api.js";
import { $, el, showMessage } from "./dom.js";

const kib = (n) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`);

export class SlotsView {
  constructor() {
    this.timer = null;
    this.shown = { slots: "", files: "" }; // last drawn JSON: redraw only what changed
    this.nSlots = 0;
    $("#refresh").addEventListener("click", () => this.refresh());
    $("#auto-refresh").addEventListener("change", () => this.schedule());
  }

  open() { this.refresh(); }

  close() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = $("#auto-refresh").checked && !$("#view-slots").hidden ? setTimeout(() => this.refresh(), 1000) : null;
  }

  async refresh() {
    clearTimeout(this.timer);
    await Promise.all([this.load("slots", "/slots", (slots) => this.drawSlots(slots)),
                       this.load("files", "/slots/files", (files) => this.drawFiles(files))]);
    $("#refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
    this.schedule();
  }

  // one part of the view (#slots or #files) from one endpoint; its error message in its place
  async load(part, path, draw) {
    let data;
    try {
      data = await get(path);
    } catch (e) {
      this.drawOnce(part, String(e), () => $(`#${part}`).replaceChildren(el("p", { class: "error", text: String(e) })));
      return;
    }
    this.drawOnce(part, JSON.stringify(data), () => draw(data));
  }

  drawOnce(part, key, draw) {
    if (this.shown[part] === key) return;
    this.shown[part] = key;
    draw();
  }

  // ---- slots ---------------------------------------------------------------------------------------
  drawSlots(slots) {
    const grid = $("#slots");
    if (this.nSlots !== slots.length) { // the per-slot inputs are kept across refreshes while the count holds
      this.nSlots = slots.length;
      grid.replaceChildren(...slots.map((s) => this.slotCard(s.id)));
      $("#restore-target").replaceChildren(...slots.map((s) => el("option", { value: s.id, text: `${s.id}` })));
    }
    for (const slot of slots) this.updateCard(grid.querySelector(`[data-slot="${slot.id}"]`), slot);
  }

  slotCard(id) {
    const name = el("input", { type: "text", value: `slot${id}.bin`, "aria-label": `file name for slot ${id}` });
    return el("article", { class: "slot", dataset: { slot: id } },
      el("header", {}, el("strong", { text: `slot ${id}` }), el("span", { class: "state" })),
      el("div", { class: "meter" }, el("div", { class: "fill" })),
      el("p", { class: "cached" }),
      el("p", { class: "detail hint" }),
      el("p", { class: "text hint" }),
      el("div", { class: "row" }, name,
        el("button", { type: "button", text: "Save", onclick: () => this.act(id, "save", name.value) }),
        el("button", { type: "button", class: "ghost", text: "Erase", onclick: () => this.act(id, "erase") })));
  }

  updateCard(card, slot) {
    const busy = slot.is_processing;
    const state = card.querySelector(".state");
    state.textContent = busy ? "busy" : "idle";
    state.className = `state ${busy ? "busy" : "idle"}`;
    card.querySelector(".fill").style.width = `${Math.min(100, (100 * slot.n_past) / slot.n_ctx)}%`;
    card.querySelector(".cached").textContent = `${slot.n_past} / ${slot.n_ctx} tokens cached`;
    const detail = [];
    if (slot.id_task !== undefined) detail.push(`last task ${slot.id_task}`);
    const next = slot.next_token?.[0];
    if (busy && next) detail.push(`decoded ${next.n_decoded}`, `remaining ${next.n_remain < 0 ? "∞" : next.n_remain}`);
    if (slot.params) detail.push(`temp ${slot.params.temperature}`, `top-k ${slot.params.top_k}`);
    card.querySelector(".detail").textContent = detail.join(" · ");
    // llama-server shows a slot's text only in its debug mode; show it when a server sends it
    const text = typeof slot.prompt === "string" ? slot.prompt : null;
    card.querySelector(".text").textContent = text === null ? "" : `“${text.slice(0, 120)}${text.length > 120 ? "…" : ""}”`;
  }

  // ---- files ---------------------------------------------------------------------------------------
  drawFiles(files) {
    if (!files.length) {
      $("#files").replaceChildren(el("p", { class: "hint", text: "No saved slot files yet." }));
      return;
    }
    // data-label: a phone shows each row as a card, each value under its column's name
    const rows = files.map((f) => el("tr", { dataset: { file: f.filename } },
      el("td", { class: "name", text: f.filename }),
      el("td", { "data-label": "size", text: kib(f.size) }),
      el("td", { "data-label": "tokens", text: f.n_tokens ?? "?" }),
      el("td", { "data-label": "KV type", text: f.kv_type ?? "" }),
      el("td", { "data-label": "this model", class: { true: "ok", false: "error" }[f.matches_model] ?? "hint",
                 text: { true: "yes", false: "no" }[f.matches_model] ?? "unknown (no sidecar)", title: f.model ?? "" }),
      el("td", { "data-label": "modified", text: f.modified ? new Date(f.modified * 1000).toLocaleString() : "" }),
      el("td", { class: "actions" },
        el("button", { type: "button", text: "Restore", onclick: () => this.act(Number($("#restore-target").value), "restore", f.filename) }),
        el("button", { type: "button", class: "danger", text: "Delete", onclick: (e) => this.remove(e.target, f.filename) }))));
    $("#files").replaceChildren(el("div", { class: "table-wrap" }, el("table", {},
      el("thead", {}, el("tr", {}, ["file", "size", "tokens", "KV type", "this model", "modified", ""].map((h) => el("th", { text: h })))),
      el("tbody", {}, rows))));
  }

  // ---- actions -------------------------------------------------------------------------------------
  async act(id, action, filename) {
    const status = $("#slot-status");
    showMessage(status, `${action} slot ${id}…`, "pending");
    try {
      const body = action === "erase" ? undefined : { filename };
      const res = await post(`/slots/${id}?action=${action}`, body);
      const said = {
        save: () => `saved ${res.n_saved} tokens of slot ${id} to ${res.filename} (${kib(res.n_written)})`,
        restore: () => `restored ${res.n_restored} tokens from ${res.filename} into slot ${id}`,
        erase: () => `erased slot ${id} (${res.n_erased} tokens)`,
      }[action]();
      showMessage(status, said, "ok");
    } catch (e) {
      showMessage(status, `${action} failed: ${e instanceof ApiError ? e : e.message}`, "error");
    }
    await this.refresh();
  }

  async remove(button, filename) {
    if (button.dataset.armed !== "1") { // two clicks: a stray one must not delete a cache
      button.dataset.armed = "1";
      button.textContent = "Confirm delete";
      setTimeout(() => { if (button.isConnected) { button.dataset.armed = ""; button.textContent = "Delete"; } }, 4000);
      return;
    }
    const status = $("#slot-status");
    try {
      await del(`/slots/files/${encodeURIComponent(filename)}`);
      showMessage(status, `deleted ${filename}`, "ok");
    } catch (e) {
      showMessage(status, `delete failed: ${e instanceof ApiError ? e : e.message}`, "error");
    }
    await this.refresh();
  }
}
