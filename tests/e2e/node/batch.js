// The Batch API through the official openai-node SDK, as a user would call it:
// files.create (purpose "batch") -> batches.create -> poll batches.retrieve -> files.content.
// Usage: node batch.js <base URL>/v1 <API key> <input .jsonl path>
// Prints one JSON object: {"batch": <the final batch>, "output": "<the output file's text>"}.
"use strict";
const fs = require("node:fs");
const OpenAI = require("openai");

async function main() {
  const [baseURL, apiKey, input] = process.argv.slice(2);
  const client = new OpenAI({ baseURL, apiKey, timeout: 60000 });
  const file = await client.files.create({ file: fs.createReadStream(input), purpose: "batch" });
  let batch = await client.batches.create({
    input_file_id: file.id,
    endpoint: "/v1/images/edits",
    completion_window: "24h",
  });
  const deadline = Date.now() + 120000;
  while (!["completed", "failed", "cancelled", "expired"].includes(batch.status)) {
    if (Date.now() > deadline) throw new Error(`batch ${batch.id} still ${batch.status}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
    batch = await client.batches.retrieve(batch.id);
  }
  let output = null;
  if (batch.output_file_id) {
    output = await (await client.files.content(batch.output_file_id)).text();
  }
  process.stdout.write(JSON.stringify({ batch, output }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
