// The playground page: wires the image, the mask editor, the controls, the streamed run, the
// gallery and the code panel together. Only the public API is used (api.js).

import { ApiError, MIME, apiKey, b64ToBlob, getJSON, streamEdit } from "./api.js";
import { curlCommand, pythonCode } from "./code.js";
import { Controls, editSchema } from "./controls.js";
import { Gallery } from "./gallery.js";
import { MaskEditor } from "./mask.js";

const $ = (id) => document.getElementById(id);
const SENDABLE = new Set(Object.values(MIME)); // the formats the API decodes
const EXT = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" };

const state = {
  source: null, // {blob, url, width, height, name}: the image as it will be sent
  running: null, // AbortController of the request in flight
  authOff: false, // /v1/models answered without a key
};

// ------------------------------------------------------------------ errors and progress

function showError(err) {
  const box = $("error");
  const where = err instanceof ApiError && err.param ? ` (field: ${err.param})` : "";
  box.textContent = `${err.message}${where}`;
  box.dataset.kind = "";
  box.hidden = false;
  setProgress({ state: "error", text: "Failed." });
}

function hideError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setProgress({ value, state: s, text, partials, completed, steps }) {
  const bar = $("progress");
  if (value !== undefined) bar.value = value;
  if (s) bar.dataset.state = s;
  if (partials !== undefined) bar.dataset.partials = String(partials);
  if (completed !== undefined) bar.dataset.completed = String(completed);
  if (steps !== undefined) bar.dataset.steps = steps;
  if (text) $("progress-text").textContent = text;
}

// ------------------------------------------------------------------ the image

const mask = new MaskEditor($("mask-canvas"), { onChange: updateTools });

/** Decode `blob` and make it the image being edited. Formats the API does not read (GIF, BMP,
 * AVIF...) are re-encoded as PNG; the others are sent as they are, at full resolution. */
async function loadSource(blob, name = "image") {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch {
    showError(new Error(`Cannot read '${name}' as an image. Use a PNG, JPEG or WebP file.`));
    return;
  }
  let sent = blob;
  if (!SENDABLE.has(blob.type)) {
    const c = new OffscreenCanvas(bitmap.width, bitmap.height);
    c.getContext("2d").drawImage(bitmap, 0, 0);
    sent = await c.convertToBlob({ type: "image/png" });
  }
  if (state.source) URL.revokeObjectURL(state.source.url);
  state.source = { blob: sent, url: URL.createObjectURL(sent), width: bitmap.width, height: bitmap.height, name };
  bitmap.close();
  $("source-view").src = state.source.url;
  await $("source-view").decode().catch(() => {}); // shown before the overlay is sized on it
  $("layers").hidden = false;
  $("drop-hint").hidden = true;
  $("save-image").href = state.source.url;
  $("save-image").download = imageName();
  mask.reset(state.source.width, state.source.height);
  $("mask-input").value = "";
  hideError();
  describeImage();
  updateCode();
  $("stage").dataset.image = `${state.source.width}x${state.source.height}`;
}

function imageName() {
  return `image.${EXT[state.source?.blob.type] || "png"}`;
}

function describeImage() {
  const s = state.source;
  if (!s) return;
  const shown = $("source-view").getBoundingClientRect().width;
  const pct = shown ? Math.round((100 * shown) / s.width) : 100;
  $("image-info").textContent =
    `${s.name}: ${s.width}×${s.height} px` + (pct < 100 ? `, shown at ${pct}% (sent at full size).` : ".");
}

new ResizeObserver(describeImage).observe($("stage"));

$("image-input").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) loadSource(file, file.name);
});

$("mask-input").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  if (!state.source) return showError(new Error("Open the image first, then its mask."));
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    return showError(new Error(`Cannot read '${file.name}' as an image.`));
  }
  const { width, height } = state.source;
  if (bitmap.width !== width || bitmap.height !== height) {
    showError(new Error(
      `The mask is ${bitmap.width}×${bitmap.height} px but the image is ${width}×${height} px: ` +
      "load a mask of the image's size."));
  } else {
    hideError();
    mask.load(bitmap);
  }
  bitmap.close();
});

// drag and drop anywhere on the stage, paste anywhere on the page
$("stage").addEventListener("dragover", (e) => {
  e.preventDefault();
  $("stage").classList.add("dragging");
});
$("stage").addEventListener("dragleave", () => $("stage").classList.remove("dragging"));
$("stage").addEventListener("drop", (e) => {
  e.preventDefault();
  $("stage").classList.remove("dragging");
  const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/"));
  if (file) loadSource(file, file.name);
});
document.addEventListener("paste", (e) => {
  const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) {
    e.preventDefault();
    loadSource(file, file.name || "pasted image");
  }
});

// ------------------------------------------------------------------ mask tools

function updateTools() {
  $("undo").disabled = !mask.canUndo();
  $("redo").disabled = !mask.canRedo();
}

function setBrush(size) {
  const input = $("brush-size");
  input.value = String(size);
  mask.brush = Number(input.value);
  $("brush-size-out").textContent = `${input.value} px`;
}

function setMode(mode) {
  mask.mode = mode;
  $("mode-paint").setAttribute("aria-pressed", String(mode === "paint"));
  $("mode-erase").setAttribute("aria-pressed", String(mode === "erase"));
}

$("brush-size").addEventListener("input", (e) => setBrush(e.target.value));
$("mode-paint").addEventListener("click", () => setMode("paint"));
$("mode-erase").addEventListener("click", () => setMode("erase"));
$("undo").addEventListener("click", () => mask.undo());
$("redo").addEventListener("click", () => mask.redo());
$("clear").addEventListener("click", () => mask.clear());
$("invert").addEventListener("click", () => mask.invert());
setBrush($("brush-size").value);

// the brush outline follows the pointer, at the size it paints
const ring = $("brush-ring");
$("mask-canvas").addEventListener("pointermove", (e) => {
  const box = $("layers").getBoundingClientRect();
  const d = mask.brush;
  ring.style.width = ring.style.height = `${d}px`;
  ring.style.transform = `translate(${e.clientX - box.left - d / 2}px, ${e.clientY - box.top - d / 2}px)`;
  ring.hidden = e.pointerType === "touch";
});
$("mask-canvas").addEventListener("pointerleave", () => (ring.hidden = true));

// ------------------------------------------------------------------ key, models, code

const controls = new Controls(updateCode);

function updateCode() {
  const args = {
    origin: location.origin,
    fields: controls.fields(),
    imageName: imageName(),
    hasMask: true,
    auth: !state.authOff || apiKey.get() !== "",
  };
  $("code-curl").textContent = curlCommand(args);
  $("code-python").textContent = pythonCode(args);
}

async function loadModels() {
  try {
    const list = await getJSON("/v1/models");
    state.authOff = apiKey.get() === "";
    controls.setModels(list.data || []);
    if (!$("error").hidden && $("error").dataset.kind === "models") hideError();
  } catch (err) {
    controls.setModels([]);
    if (err.status === 401) {
      err.message += " Enter the API key above (`make serve` prints it at start).";
    }
    showError(err);
    $("error").dataset.kind = "models";
    $("model-note").textContent = "Could not list the models.";
  }
  updateCode();
}

async function loadSchema() {
  try {
    controls.setSchema(editSchema(await getJSON("/openapi.json")));
  } catch (err) {
    controls.setSchema({});
    showError(new ApiError(`Could not read the server's /openapi.json: ${err.message}`));
  }
}

// a key handed over in the address (#key=...: never sent to the server) moves into this tab's
// sessionStorage and out of the address bar
if (location.hash.startsWith("#key=")) {
  apiKey.set(decodeURIComponent(location.hash.slice(5)));
  history.replaceState(null, "", location.pathname + location.search);
}
$("api-key").value = apiKey.get();
$("key-form").addEventListener("submit", (e) => e.preventDefault()); // Enter: nothing to post
let keyTimer = 0;
$("api-key").addEventListener("input", (e) => {
  apiKey.set(e.target.value.trim());
  clearTimeout(keyTimer);
  keyTimer = setTimeout(loadModels, 300);
});

for (const button of document.querySelectorAll("button.copy")) {
  button.addEventListener("click", async () => {
    const text = $(button.dataset.copy).textContent;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      // no clipboard API (plain http on another host): select the text for Ctrl+C
      getSelection().selectAllChildren($(button.dataset.copy));
      button.textContent = "Selected: Ctrl+C";
    }
    setTimeout(() => (button.textContent = "Copy"), 2000);
  });
}

$("save-mask").addEventListener("click", async (e) => {
  e.preventDefault();
  if (!state.source) return;
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await mask.toBlob());
  a.download = "mask.png";
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
});

// ------------------------------------------------------------------ the run

const gallery = new Gallery($("gallery"), $("result-template"), {
  onReuse: (blob, name) => {
    loadSource(blob, name);
    $("editor-title").scrollIntoView({ behavior: "smooth" });
  },
});
let previewUrl = null;

let runs = 0;

async function run() {
  if (state.running) return;
  if (!state.source) {
    showError(new Error("Open an image first (file picker, drag and drop, or paste)."));
    return;
  }
  hideError();
  // busy from the first moment, before anything is awaited: a second click does nothing
  const abort = new AbortController();
  state.running = abort;
  $("submit").disabled = true;
  $("cancel").disabled = false;
  runs += 1;
  $("progress").dataset.run = String(runs);
  setProgress({ value: 0, state: "running", text: "Sending…", partials: 0, completed: 0, steps: "" });
  gallery.clear();
  $("preview-box").hidden = true;

  const card = controls.card();
  const fields = controls.fields();
  const value = (name) => (fields.find(([n]) => n === name) || [])[1];
  const n = Number(value("n") || 1);
  const seed = value("seed") === undefined ? null : Number(value("seed"));
  const partialsEach = Number(value("partial_images") || 0);
  const total = n * (1 + (card?.capabilities?.streams_previews ? partialsEach : 0));
  const before = state.source.url;
  let partials = 0;
  let completed = 0;
  let steps = null; // {done, total} from image_edit.progress (stream_progress=true)
  const started = performance.now();
  const describe = () =>
    (steps && completed < n ? `Step ${steps.done} of ${steps.total}, ` : "") +
    `${completed} of ${n} image${n > 1 ? "s" : ""} done` + (partials ? `, ${partials} previews` : "") + "…";

  const onEvent = (type, ev) => {
    if (type === "image_edit.progress") {
      // steps over all n images; the bar keeps its last 10% for encoding and delivery
      steps = { done: ev.steps_done, total: Math.max(1, ev.steps_total) };
      setProgress({ value: 0.9 * (steps.done / steps.total), text: describe(), steps: `${steps.done}/${steps.total}` });
      return;
    }
    const blob = b64ToBlob(ev.b64_json, MIME[ev.output_format] || "image/png");
    if (type === "image_edit.partial_image") {
      partials += 1;
      if (previewUrl) URL.revokeObjectURL(previewUrl);
      previewUrl = URL.createObjectURL(blob);
      $("preview").src = previewUrl;
      $("preview-box").hidden = false;
      const which = n > 1 ? ` of image ${(ev.image_index ?? 0) + 1}` : "";
      // "of k" would mislead: with fewer steps than k the server sends fewer (distinct) previews
      $("preview-caption").textContent = `Preview ${ev.partial_image_index + 1}${which}`;
    } else if (type === "image_edit.completed") {
      // image_index (this server's extension) says which of the n images it is: image i was
      // made with seed + i
      const index = ev.image_index ?? completed;
      gallery.add({ blob, before, seed: seed === null ? null : seed + index, index });
      completed += 1;
      if (completed === n) $("preview-box").hidden = true;
    }
    setProgress({
      // with step events the bar follows the steps; without them (older servers), the events
      value: steps ? 0.9 * (steps.done / steps.total) + 0.1 * (completed / n) : Math.min(1, (partials + completed) / total),
      text: describe(),
      partials,
      completed,
    });
  };

  try {
    const form = new FormData();
    form.append("image", state.source.blob, imageName());
    form.append("mask", await mask.toBlob(), "mask.png");
    for (const [name, v] of fields) form.append(name, v);
    await streamEdit(form, abort.signal, onEvent);
    const s = ((performance.now() - started) / 1000).toFixed(1);
    setProgress({ value: 1, state: "done", text: `Done: ${completed} image${completed === 1 ? "" : "s"} in ${s} s.` });
  } catch (err) {
    if (err.name === "AbortError") setProgress({ state: "cancelled", text: "Cancelled: the server stops at its next step." });
    else showError(err);
  } finally {
    state.running = null;
    $("submit").disabled = false;
    $("cancel").disabled = true;
    if ($("seed").value.trim() === "") controls.rollSeed(); // a fresh random seed next time
  }
}

function cancel() {
  if (state.running) state.running.abort();
}

$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  run();
});
$("cancel").addEventListener("click", cancel);

// keyboard: B/E brush mode, [ ] brush size, I invert, Ctrl+Z / Ctrl+Shift+Z (Ctrl+Y) undo/redo,
// Ctrl+Enter generate, Esc cancel. Letter keys are left alone while typing in a field.
document.addEventListener("keydown", (e) => {
  const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName) && e.target.type !== "range";
  const mod = e.ctrlKey || e.metaKey;
  if (mod && e.key === "Enter") {
    e.preventDefault();
    run();
  } else if (e.key === "Escape" && state.running) {
    cancel();
  } else if (typing) {
    return;
  } else if (mod && (e.key === "y" || (e.key.toLowerCase() === "z" && e.shiftKey))) {
    e.preventDefault();
    mask.redo();
  } else if (mod && e.key === "z") {
    e.preventDefault();
    mask.undo();
  } else if (!mod && e.key === "b") setMode("paint");
  else if (!mod && e.key === "e") setMode("erase");
  else if (!mod && e.key === "i") mask.invert();
  else if (!mod && e.key === "[") setBrush(mask.brush - 4);
  else if (!mod && e.key === "]") setBrush(mask.brush + 4);
});

await loadSchema();
await loadModels();
setProgress({ value: 0, state: "idle", text: "Idle.", partials: 0, completed: 0 });
document.documentElement.dataset.ready = "true"; // tests wait for this
