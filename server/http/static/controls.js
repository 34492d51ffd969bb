// The request controls, shaped by what the server declares: OpenAI's bounds and choices from
// /openapi.json, each model's own knobs from its `capabilities` in /v1/models. Nothing here
// restates a bound; a control a model does not read is hidden and not sent.

const $ = (id) => document.getElementById(id);

/** The sizes offered besides "auto" (the common OpenAI values plus a few squares), kept when
 * the chosen model's declared side range and multiple allow them. */
const SIZES = ["256x256", "512x512", "768x768", "1024x1024", "1536x1024", "1024x1536"];

function option(value, label = value) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label;
  return o;
}

function fill(select, options, keep = true) {
  const previous = select.value;
  select.replaceChildren(...options);
  if (keep && [...select.options].some((o) => o.value === previous)) select.value = previous;
}

function bound(input, schema = {}) {
  for (const [attr, key] of [["min", "minimum"], ["max", "maximum"]]) {
    if (schema[key] === undefined) input.removeAttribute(attr);
    else input.setAttribute(attr, schema[key]);
  }
}

/** The edit form's field schemas in the server's /openapi.json ({} when unavailable). */
export function editSchema(doc) {
  try {
    return doc.paths["/v1/images/edits"].post.requestBody.content["multipart/form-data"].schema
      .properties;
  } catch {
    return {};
  }
}

export class Controls {
  constructor(onChange) {
    this.onChange = onChange;
    this.schema = {};
    this.models = [];
    const form = $("form");
    form.addEventListener("input", () => this.onChange());
    form.addEventListener("change", (e) => {
      if (e.target.id === "model") this.apply();
      if (e.target.id === "output_format") this.#showLossy();
      this.onChange();
    });
    this.nextSeed = randomSeed();
    $("seed").placeholder = `random: ${this.nextSeed}`;
    $("seed-roll").addEventListener("click", () => {
      $("seed").value = "";
      this.rollSeed();
    });
  }

  /** OpenAI-side bounds and choices (n, formats, quality tiers, previews) from /openapi.json. */
  setSchema(fields) {
    this.schema = fields;
    bound($("n"), fields.n);
    bound($("output_compression"), fields.output_compression);
    $("output_compression").placeholder = String(fields.output_compression?.default ?? "");
    const formats = fields.output_format?.enum || ["png"];
    fill($("output_format"), formats.map((f) => option(f)));
    const p = fields.partial_images || { minimum: 0, maximum: 0 };
    const counts = [];
    for (let i = p.minimum ?? 0; i <= (p.maximum ?? 0); i++) counts.push(i);
    fill($("partial_images"), counts.map((i) => option(String(i), i ? `${i} per image` : "none")));
    $("partial_images").value = String(p.maximum ?? 0); // the finest progress the API offers
    this.#showLossy();
  }

  /** The model list (GET /v1/models `data`); selects the server's default model. */
  setModels(cards) {
    this.models = cards;
    const labels = cards.map((m) => {
      const prompt = m.capabilities?.reads_prompt ? "reads the prompt" : "ignores the prompt";
      return option(m.id, `${m.id} (${prompt})`);
    });
    fill($("model"), labels);
    const preferred = cards.find((m) => m.default) || cards[0];
    if (preferred && !cards.some((m) => m.id === $("model").dataset.chosen)) {
      $("model").value = preferred.id;
    }
    this.apply();
  }

  /** The chosen model's card (or undefined before the list loads). */
  card() {
    return this.models.find((m) => m.id === $("model").value);
  }

  /** Show the controls the chosen model reads, with its ranges and defaults. */
  apply() {
    const card = this.card();
    $("model").dataset.chosen = card ? card.id : "";
    const caps = card?.capabilities || {};
    const params = caps.parameters;
    const needs = {
      sampling: Boolean(params),
      "prompt-sampling": Boolean(params) && caps.reads_prompt,
      quality: Boolean(caps.quality_presets),
      previews: Boolean(caps.streams_previews),
      lossy: $("output_format").value !== "png",
    };
    for (const el of document.querySelectorAll("[data-needs]")) el.hidden = !needs[el.dataset.needs];
    const says = caps.reads_prompt
      ? "Reads the prompt: describe what the painted region should show."
      : "Ignores the prompt: it fills the painted region from its surroundings.";
    $("model-note").textContent = card ? card.description || says : "No model loaded.";
    this.#sizes(caps.sizes);
    if (params) {
      for (const [id, name] of [["steps", "steps"], ["guidance_scale", "guidance_scale"], ["strength", "strength"]]) {
        bound($(id), params[name]);
        $(id).placeholder = `default ${params[name]?.default ?? ""}`;
      }
      const def = caps.default_scheduler;
      fill($("scheduler"), [
        option("", `model default${def ? ` (${def})` : ""}`),
        ...(caps.schedulers || []).map((s) => option(s)),
      ]);
    }
    if (caps.quality_presets) {
      const tiers = Object.entries(caps.quality_presets);
      const asked = this.schema.quality?.enum;
      fill($("quality"), [
        option("auto", `auto · ${caps.quality_presets.medium?.steps ?? "?"} steps`),
        ...tiers
          .filter(([t]) => !asked || asked.includes(t))
          .map(([t, p]) => option(t, `${t} · ${p.steps} steps`)),
      ]);
    }
    this.#showLossy();
  }

  /** The model's sizes: "auto" (the input's size) plus the listed ones it accepts. */
  #sizes(sizes) {
    const lo = sizes?.min_side ?? 1;
    const hi = sizes?.max_side ?? Infinity;
    const mult = sizes?.multiple ?? 8;
    const ok = SIZES.filter((s) =>
      s.split("x").map(Number).every((v) => v >= lo && v <= hi && v % mult === 0),
    );
    fill($("size"), [option("auto", "auto"), ...ok.map((s) => option(s))]);
  }

  #showLossy() {
    const lossy = document.querySelector('[data-needs="lossy"]');
    if (lossy) lossy.hidden = $("output_format").value === "png";
  }

  rollSeed() {
    this.nextSeed = randomSeed();
    $("seed").placeholder = `random: ${this.nextSeed}`;
    this.onChange();
  }

  /** The seed the next run sends: the typed one, else the pre-drawn random one. */
  seed() {
    const typed = $("seed").value.trim();
    return typed === "" ? this.nextSeed : Number(typed);
  }

  /** The request's text fields, in order, as [name, value] pairs: exactly what is sent (and
   * what the code panel shows). Empty optional controls are left out (= the model's default). */
  fields() {
    const card = this.card();
    const caps = card?.capabilities || {};
    const out = [["prompt", $("prompt").value]];
    if (card) out.push(["model", card.id]);
    const text = (id) => $(id).value.trim();
    if (text("n") && text("n") !== "1") out.push(["n", text("n")]);
    if ($("size").value && $("size").value !== "auto") out.push(["size", $("size").value]);
    if (caps.quality_presets && $("quality").value !== "auto") out.push(["quality", $("quality").value]);
    if (caps.parameters) {
      if (caps.reads_prompt && text("negative_prompt")) out.push(["negative_prompt", $("negative_prompt").value]);
      out.push(["seed", String(this.seed())]);
      for (const id of ["steps", "guidance_scale", "strength"]) if (text(id)) out.push([id, text(id)]);
      if ($("scheduler").value) out.push(["scheduler", $("scheduler").value]);
    }
    const format = $("output_format").value;
    if (format && format !== "png") {
      out.push(["output_format", format]);
      if (text("output_compression")) out.push(["output_compression", text("output_compression")]);
    }
    out.push(["stream", "true"]);
    out.push(["stream_progress", "true"]); // this server's step events: the progress bar
    if (caps.streams_previews && $("partial_images").value !== "0") {
      out.push(["partial_images", $("partial_images").value]);
    }
    return out;
  }
}

function randomSeed() {
  return Math.floor(Math.random() * 2 ** 31);
}
