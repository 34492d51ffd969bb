// One images.edit call through the official openai-node SDK with its default retries
// (maxRetries 2), expected to fail: prints what the SDK raised, so that the test can check
// how many requests the server saw for this one call.
// Usage: node edit_once.js <base URL>/v1 <API key> <image path> <mask path>
// Prints one JSON object: {"status": <HTTP status>, "should_retry": <x-should-retry or null>,
// "message": "<the error's message>"}; exits 1 if the call succeeded or failed otherwise.
"use strict";
const fs = require("node:fs");
const OpenAI = require("openai");

async function main() {
  const [baseURL, apiKey, image, mask] = process.argv.slice(2);
  const client = new OpenAI({ baseURL, apiKey, timeout: 60000 });
  try {
    // files in memory (toFile), not read streams: the SDK never retries a streaming body
    await client.images.edit({
      image: await OpenAI.toFile(fs.readFileSync(image), "a.png", { type: "image/png" }),
      mask: await OpenAI.toFile(fs.readFileSync(mask), "m.png", { type: "image/png" }),
      prompt: "remove the red square",
    });
  } catch (err) {
    if (!(err instanceof OpenAI.APIError) || err.status === undefined) throw err;
    const headers = err.headers;
    const shouldRetry = headers && typeof headers.get === "function"
      ? headers.get("x-should-retry")
      : (headers || {})["x-should-retry"];
    process.stdout.write(
      JSON.stringify({ status: err.status, should_retry: shouldRetry ?? null, message: err.message }),
    );
    return;
  }
  throw new Error("the edit succeeded; the test expected an error");
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
