// Every call to the server goes through here: the API key, and errors in llama-server's shape
// ({"error": {"code", "message", "type"}}) turned into ApiError with the server's own message.

const KEY = "slotserve.apiKey";

export class ApiError extends Error {
  constructor(status, message, type = "") {
    super(message);
    this.status = status;
    this.type = type;
  }
  toString() {
    return this.status ? `${this.status} ${this.message}` : this.message;
  }
}

let onUnauthorized = () => {};
export function whenUnauthorized(callback) { onUnauthorized = callback; }

export function apiKey() { return localStorage.getItem(KEY) || ""; }
export function setApiKey(key) { localStorage.setItem(KEY, key); }

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function failure(res) {
  let message = res.statusText || "request failed", type = "";
  try {
    const body = await res.json();
    if (body && body.error) ({ message, type } = body.error);
  } catch { /* not JSON: keep the status text */ }
  const err = new ApiError(res.status, message, type);
  if (res.status === 401) onUnauthorized(err);
  return err;
}

async function send(method, path, body, signal) {
  const init = { method, headers: headers(body !== undefined), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `cannot reach the server: ${e.message}`);
  }
  if (!res.ok) throw await failure(res);
  return res;
}

export async function request(method, path, body) {
  const text = await (await send(method, path, body)).text();
  return text ? JSON.parse(text) : null;
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);
export const del = (path) => request("DELETE", path);

// Server-sent events over fetch (EventSource cannot POST or send the key): yields each `data:` JSON
// object, stops at [DONE]; an error event mid-stream (llama-server sends those) is thrown.
export async function* stream(path, body, signal) {
  const res = await send("POST", path, body, signal);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r/g, "");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (!data) continue; // a ": ping" comment
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(chunk.error.code || 500, chunk.error.message, chunk.error.type);
      yield chunk;
    }
  }
}
