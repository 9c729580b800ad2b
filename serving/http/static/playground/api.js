// The server's HTTP API as the page uses it: JSON requests with the API key when one is set,
// a key prompt on 401, the error message of each protocol's error shape, and an SSE reader for
// POST streams (EventSource only does GET).

const KEY = "rnnops.apiKey";
let keyPrompt = null; // one dialog for every request that got a 401 meanwhile

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
  document.getElementById("key-button").hidden = !key;
}

/** The message of any of the server's error bodies: native {error, type}, OpenAI
 * {error: {message}}, OIP {error}, or plain text. */
export function errorMessage(status, body) {
  if (body && typeof body === "object") {
    const e = body.error;
    if (typeof e === "string") return e;
    if (e && typeof e.message === "string") return e.message;
    if (body.detail) return String(body.detail);
  }
  if (typeof body === "string" && body.trim()) return body.trim().slice(0, 500);
  return `HTTP ${status}`;
}

function askForKey(reason) {
  if (!keyPrompt) {
    keyPrompt = new Promise((resolve) => {
      const dialog = document.getElementById("key-dialog");
      const input = document.getElementById("key-input");
      document.getElementById("key-reason").textContent = reason || "";
      input.value = "";
      dialog.addEventListener("close", () => {
        const ok = dialog.returnValue === "ok" && input.value.trim();
        if (ok) setApiKey(input.value.trim());
        keyPrompt = null;
        resolve(Boolean(ok));
      }, { once: true });
      dialog.showModal();
      input.focus();
    });
  }
  return keyPrompt;
}

async function readBody(resp) {
  const type = resp.headers.get("content-type") || "";
  const text = await resp.text();
  if (type.includes("json")) {
    try { return JSON.parse(text); } catch { return text; }
  }
  return text;
}

/** JSON with BigInt values written as exact integers (seeds up to 2**63 - 1). */
function toJSON(body) {
  return JSON.stringify(body, (k, v) => (typeof v === "bigint" ? `__bigint__${v}` : v)).replace(/"__bigint__(-?\d+)"/g, "$1");
}

/** fetch() with the key; a 401 asks for one (once for all requests waiting) and retries. */
export async function request(path, { method = "GET", body, signal, headers = {}, raw = false } = {}) {
  for (let attempt = 0; ; attempt++) {
    const h = { ...headers };
    if (body !== undefined) h["content-type"] = "application/json";
    const key = apiKey();
    if (key) h.authorization = `Bearer ${key}`;
    const resp = await fetch(path, { method, headers: h, signal,
      body: body === undefined ? undefined : toJSON(body) });
    if (resp.status === 401 && attempt < 3) {
      const b = await readBody(resp);
      if (key) setApiKey(null);
      if (await askForKey(errorMessage(401, b))) continue;
      throw new ApiError(401, errorMessage(401, b) + " (no key given)", b);
    }
    if (raw) {
      if (!resp.ok) {
        const b = await readBody(resp);
        throw new ApiError(resp.status, errorMessage(resp.status, b), b);
      }
      return resp;
    }
    const b = await readBody(resp);
    if (!resp.ok) throw new ApiError(resp.status, errorMessage(resp.status, b), b);
    return b;
  }
}

export const getJSON = (path, opts) => request(path, opts);
export const postJSON = (path, body, opts = {}) => request(path, { ...opts, method: "POST", body });

/** POST ``body`` and call ``onEvent(event, data, text)`` per Server-Sent Event (data parsed as
 * JSON when it is JSON; "[DONE]" stays a string). Resolves when the stream ends. */
export async function postSSE(path, body, onEvent, signal) {
  const resp = await request(path, { method: "POST", body, signal, raw: true,
    headers: { accept: "text/event-stream" } });
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue;
      const text = data.join("\n");
      let parsed = text;
      try { parsed = JSON.parse(text); } catch { /* [DONE] */ }
      onEvent(event, parsed, text);
    }
  }
  return resp;
}

/** An integer field of a JSON text as written (a 63-bit seed does not survive JSON.parse). */
export function rawInt(text, field) {
  const m = new RegExp(`"${field}"\\s*:\\s*(-?\\d+)`).exec(text || "");
  return m ? m[1] : null;
}
