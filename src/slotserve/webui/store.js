// Conversations and settings, kept in this browser's localStorage (nothing about them is on the server).

const CONVERSATIONS = "slotserve.conversations";
const CURRENT = "slotserve.current";
const SETTINGS = "slotserve.settings";

function read(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback; // a damaged entry must not stop the page
  }
}

export class Conversations {
  constructor() {
    this.list = read(CONVERSATIONS, []);
    this.currentId = localStorage.getItem(CURRENT);
    if (!this.current) this.currentId = this.list[0]?.id ?? null;
  }

  get current() { return this.list.find((c) => c.id === this.currentId) ?? null; }

  create() {
    const conv = { id: crypto.randomUUID?.() ?? String(Date.now() + Math.random()), title: "New chat",
                   created: Date.now(), messages: [] };
    this.list.unshift(conv);
    this.select(conv.id);
    return conv;
  }

  select(id) {
    this.currentId = id;
    localStorage.setItem(CURRENT, id);
  }

  remove(id) {
    this.list = this.list.filter((c) => c.id !== id);
    if (this.currentId === id) this.currentId = this.list[0]?.id ?? null;
    this.save();
  }

  save() {
    for (const conv of this.list) {
      const first = conv.messages.find((m) => m.role === "user");
      if (first) conv.title = first.content.slice(0, 48);
    }
    localStorage.setItem(CONVERSATIONS, JSON.stringify(this.list));
    if (this.currentId) localStorage.setItem(CURRENT, this.currentId);
  }
}

export const loadSettings = () => read(SETTINGS, {});
export const saveSettings = (settings) => localStorage.setItem(SETTINGS, JSON.stringify(settings));
