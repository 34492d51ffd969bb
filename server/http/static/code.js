// The request the page is about to send, written as a curl command and as OpenAI Python SDK
// code, both ready to copy: same fields, same order, same files (saved from the page's links).

const NUMBERS = new Set([
  "n", "output_compression", "partial_images", "seed", "steps", "guidance_scale", "strength",
]);

/** Parameters the OpenAI Python SDK's images.edit() takes by name; the rest are this server's
 * extensions and travel in extra_body. */
const SDK_PARAMS = new Set([
  "model", "n", "size", "quality", "output_format", "output_compression", "stream",
  "partial_images", "background", "response_format", "user",
]);

/** POSIX shell single-quoting. */
function sq(text) {
  return `'${String(text).replace(/'/g, "'\\''")}'`;
}

/** curl -F reads a file for values starting with @ or <: text goes through --form-string
 * unless it is plainly safe. */
function curlField(name, value) {
  return /^[A-Za-z0-9._-]+$/.test(value) ? `-F ${name}=${value}` : `--form-string ${sq(`${name}=${value}`)}`;
}

/** The curl command. fields: [name, value] pairs; auth: whether to send the key header. */
export function curlCommand({ origin, fields, imageName, hasMask, auth }) {
  const lines = [`curl -sN ${origin}/v1/images/edits`];
  if (auth) lines.push(`-H "Authorization: Bearer $INPAINT_API_KEY"`);
  lines.push(`-F image=@${imageName}`);
  if (hasMask) lines.push("-F mask=@mask.png");
  for (const [name, value] of fields) lines.push(curlField(name, value));
  return lines.join(" \\\n  ");
}

const BOOLEANS = new Set(["stream", "stream_progress"]);

function pyValue(name, value) {
  if (BOOLEANS.has(name)) return value === "true" ? "True" : "False";
  if (NUMBERS.has(name) && value !== "" && Number.isFinite(Number(value))) return String(Number(value));
  return JSON.stringify(value); // a JSON string literal is a valid Python one
}

/** The OpenAI Python SDK code: streams, then writes each finished image to edited-<i>.<ext>. */
export function pythonCode({ origin, fields, imageName, hasMask, auth }) {
  const args = [`image=open(${JSON.stringify(imageName)}, "rb"),`];
  if (hasMask) args.push('mask=open("mask.png", "rb"),');
  const extra = [];
  for (const [name, value] of fields) {
    if (name === "prompt" || SDK_PARAMS.has(name)) args.push(`${name}=${pyValue(name, value)},`);
    else extra.push(`${JSON.stringify(name)}: ${pyValue(name, value)}`);
  }
  if (extra.length) args.push(`extra_body={${extra.join(", ")}},`);
  const format = (fields.find(([n]) => n === "output_format") || [])[1] || "png";
  const key = auth ? 'os.environ["INPAINT_API_KEY"]' : '"no-key"';
  return [
    "import base64",
    "import os",
    "",
    "from openai import OpenAI",
    "",
    ...(auth ? [] : ["# the server runs --no-auth: any key will do"]),
    `client = OpenAI(base_url=${JSON.stringify(`${origin}/v1`)}, api_key=${key})`,
    "stream = client.images.edit(",
    ...args.map((a) => `    ${a}`),
    ")",
    "done = 0",
    "for event in stream:",
    '    if event.type == "image_edit.completed":',
    `        with open(f"edited-{done}.${format === "jpeg" ? "jpg" : format}", "wb") as f:`,
    "            f.write(base64.b64decode(event.b64_json))",
    "        done += 1",
  ].join("\n");
}
