// The server's public API as the page uses it: JSON GETs, the streamed edit, OpenAI error bodies.
// Only this origin is called (the page's Content-Security-Policy allows nothing else).

const KEY_STORE = "inpaint-playground.api-key";

/** The API key of this browser tab: sessionStorage only, never localStorage (a shared machine
 * must not keep it after the tab closes). */
export const apiKey = {
  get: () => sessionStorage.getItem(KEY_STORE) || "",
  set(value) {
    if (value) sessionStorage.setItem(KEY_STORE, value);
    else sessionStorage.removeItem(KEY_STORE);
  },
};

/** An error the page shows as is: the API's own message when there is one. */
export class ApiError extends Error {
  constructor(message, { status = 0, param = null, code = null } = {}) {
    super(message);
    this.status = status;
    this.param = param;
    this.code = code;
  }
}

function headers() {
  const key = apiKey.get();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** An OpenAI error body ({"error": {message, param, code}}) -> ApiError; anything else (a proxy's
 * HTML page, an empty body) -> a message naming the status. */
async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: fall through to the status line
  }
  const err = body && body.error;
  if (err && typeof err.message === "string") {
    return new ApiError(err.message, { status: response.status, param: err.param, code: err.code });
  }
  return new ApiError(`The server answered ${response.status} ${response.statusText}.`, {
    status: response.status,
  });
}

function unreachable(exc) {
  return new ApiError(`Could not reach the server (${exc.message}). Is it still running?`);
}

/** GET a JSON document of this server (with the key when one is set). */
export async function getJSON(path) {
  let response;
  try {
    response = await fetch(path, { headers: headers(), cache: "no-store" });
  } catch (exc) {
    throw unreachable(exc);
  }
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

/** Split a text/event-stream into {event, data} records (data lines joined with "\n"; comment
 * lines, the server's keep-alives, skipped). EventSource cannot POST, hence this parser. */
export async function* readSSE(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        const record = parseBlock(block);
        if (record) yield record;
      }
    }
    const last = parseBlock(buffer);
    if (last) yield last;
  } finally {
    reader.releaseLock();
  }
}

function parseBlock(block) {
  let event = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { event, data: data.join("\n") } : null;
}

/** POST /v1/images/edits with stream=true and call onEvent(type, payload) for each SSE event.
 * `form` is a FormData; `signal` aborts the request, which closes the connection (the server
 * then drops the work at its next denoising step). Throws ApiError on any API error, including an
 * `error` event that arrives after the stream started. */
export async function streamEdit(form, signal, onEvent) {
  let response;
  try {
    response = await fetch("/v1/images/edits", {
      method: "POST",
      headers: headers(),
      body: form,
      signal,
      cache: "no-store",
    });
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw unreachable(exc);
  }
  if (!response.ok) throw await errorFrom(response);
  for await (const { event, data } of readSSE(response.body)) {
    let payload;
    try {
      payload = JSON.parse(data);
    } catch {
      throw new ApiError(`The server sent an unreadable '${event}' event.`);
    }
    if (event === "error" || payload.error) {
      const err = payload.error || {};
      throw new ApiError(err.message || "The server reported an error.", {
        param: err.param,
        code: err.code,
      });
    }
    onEvent(payload.type || event, payload);
  }
}

/** base64 (an event's b64_json) -> Blob of the given MIME type. */
export function b64ToBlob(b64, type) {
  const raw = atob(b64);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return new Blob([bytes], { type });
}

export const MIME = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp" };
