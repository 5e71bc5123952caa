// The chat view: conversations from localStorage, answers streamed token by token from
// /v1/chat/completions, a stop button that aborts the request (the server then cancels the task),
// "continue" (the last answer sent back as an assistant prefill) and the timings of each answer.

import { stream } from "./api.js";
import { $, el } from "./dom.js";
import { render } from "./markdown.js";
import { Conversations, loadSettings, saveSettings } from "./store.js";

const NUMBERS = ["temperature", "top_k", "top_p", "min_p", "max_tokens", "seed"];
// /props's default_generation_settings.params names for the placeholders
const DEFAULT_NAMES = { max_tokens: "n_predict" };

const fmt = (x, digits = 1) => (typeof x === "number" ? x.toFixed(digits) : "?");

export function timingsText(t) {
  return `prompt ${t.prompt_n} tok · ${fmt(t.prompt_per_second)} tok/s — ` +
    `generation ${t.predicted_n} tok · ${fmt(t.predicted_per_second)} tok/s — cache_n ${t.cache_n}`;
}

export class ChatView {
  constructor() {
    this.convs = new Conversations();
    this.controller = null; // the AbortController of the running answer
    this.live = null; // {answer, body}: the message being streamed and its node
    this.form = $("#settings");
    if (matchMedia("(max-width: 760px)").matches) this.form.open = false; // a phone keeps the chat in view
    this.bindSettings();
    $("#composer").addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
    $("#prompt").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.send(); }
    });
    $("#stop").addEventListener("click", () => this.controller?.abort());
    $("#new-chat").addEventListener("click", () => { this.convs.create(); this.convs.save(); this.draw(); });
    $("#toggle-conversations").addEventListener("click", () => $("#conversations").classList.toggle("open"));
    this.draw();
  }

  // ---- settings ------------------------------------------------------------------------------------
  bindSettings() {
    const saved = loadSettings();
    for (const input of this.form.querySelectorAll("input, textarea")) {
      input.value = saved[input.name] ?? "";
      input.addEventListener("input", () => this.storeSettings());
    }
  }

  storeSettings() {
    const settings = {};
    for (const input of this.form.querySelectorAll("input, textarea")) settings[input.name] = input.value;
    saveSettings(settings);
    const error = $("#settings-error");
    try {
      this.extra(settings);
      error.hidden = true;
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    }
  }

  extra(settings) {
    if (!settings.extra?.trim()) return {};
    let value;
    try { value = JSON.parse(settings.extra); } catch (e) { throw new Error(`extra request JSON: ${e.message}`); }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new Error("extra request JSON must be an object");
    }
    return value;
  }

  showDefaults(params) {
    for (const name of NUMBERS) {
      const value = params?.[DEFAULT_NAMES[name] ?? name];
      const shown = name === "seed" && (value === 4294967295 || value === -1) ? "random" : value;
      if (value !== undefined) this.form.querySelector(`[name=${name}]`).placeholder = String(shown);
    }
  }

  requestBody(history) {
    const settings = loadSettings();
    const messages = history.map(({ role, content }) => ({ role, content }));
    if (settings.system?.trim()) messages.unshift({ role: "system", content: settings.system });
    const body = { messages, stream: true };
    for (const name of NUMBERS) {
      if (settings[name] !== undefined && settings[name] !== "") body[name] = Number(settings[name]);
    }
    return Object.assign(body, this.extra(settings));
  }

  // ---- conversations -------------------------------------------------------------------------------
  draw() {
    const list = $("#conversation-list");
    list.replaceChildren(...this.convs.list.map((conv) => el("li", { class: conv.id === this.convs.currentId ? "active" : "" },
      el("button", { type: "button", class: "title", text: conv.title, title: conv.title,
                     onclick: () => { this.convs.select(conv.id); $("#conversations").classList.remove("open"); this.draw(); } }),
      el("button", { type: "button", class: "ghost delete", text: "×", title: "delete this conversation",
                     "aria-label": "delete conversation",
                     onclick: () => { this.convs.remove(conv.id); this.draw(); } }))));
    this.drawMessages();
  }

  drawMessages() {
    const box = $("#messages");
    const conv = this.convs.current;
    if (!conv || !conv.messages.length) {
      box.replaceChildren(el("p", { class: "empty", text: "Start a conversation: type a message below." }));
      return;
    }
    const last = conv.messages.length - 1;
    box.replaceChildren(...conv.messages.map((msg, i) => this.messageNode(msg, i === last)));
    box.scrollTop = box.scrollHeight;
  }

  messageNode(msg, isLast) {
    const body = el("div", { class: "body" }, render(msg.content));
    const foot = el("div", { class: "foot" });
    if (msg.stopped) foot.append(el("span", { class: "badge", text: "stopped" }));
    if (msg.error) foot.append(el("span", { class: "error", text: msg.error }));
    if (msg.timings) foot.append(el("span", { class: "timings", text: timingsText(msg.timings) }));
    const streaming = this.live?.answer === msg;
    if (streaming) this.live.body = body;
    if (isLast && msg.role === "assistant" && !this.controller && msg.content) {
      foot.append(el("button", { type: "button", class: "ghost continue", text: "Continue",
                                 title: "send this answer back as the start of the reply and let the model go on",
                                 onclick: () => this.generate(msg, true) }));
    }
    return el("article", { class: `msg ${msg.role}${streaming ? " streaming" : ""}` },
      el("div", { class: "role", text: msg.role === "user" ? "You" : "Model" }), body, foot);
  }

  // ---- generating ----------------------------------------------------------------------------------
  send() {
    const input = $("#prompt");
    const text = input.value.trim();
    if (!text || this.controller) return;
    const conv = this.convs.current ?? this.convs.create();
    conv.messages.push({ role: "user", content: text });
    input.value = "";
    const answer = { role: "assistant", content: "" };
    conv.messages.push(answer);
    this.convs.save();
    this.draw();
    this.generate(answer, false);
  }

  async generate(answer, resume) {
    const conv = this.convs.list.find((c) => c.messages.includes(answer));
    // resuming sends the answer so far as an assistant prefill: the server continues that text
    const history = resume ? conv.messages : conv.messages.slice(0, -1);
    Object.assign(answer, { stopped: false, error: undefined, timings: undefined });
    this.controller = new AbortController();
    this.live = { answer, body: null };
    this.setBusy(true);
    this.drawMessages();
    try {
      const body = this.requestBody(history);
      for await (const chunk of stream("/v1/chat/completions", body, this.controller.signal)) {
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) {
          answer.content += delta;
          this.scheduleDraw();
        }
        if (chunk.timings) answer.timings = chunk.timings; // the last chunk of a llama-server stream has them
      }
    } catch (e) {
      if (e.name === "AbortError") answer.stopped = true;
      else answer.error = String(e);
    } finally {
      this.controller = null;
      this.live = null;
      this.setBusy(false);
      this.convs.save();
      this.drawMessages();
    }
  }

  scheduleDraw() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => {
      this.pending = 0;
      const live = this.live;
      if (!live?.body || !live.body.isConnected) return;
      live.body.replaceChildren(render(live.answer.content));
      const box = $("#messages");
      box.scrollTop = box.scrollHeight;
    });
  }

  setBusy(busy) {
    $("#send").hidden = busy;
    $("#stop").hidden = !busy;
  }
}
