// What an agent does with the official Node SDK, against gpushare: run by tests/proxy/test_clients_vllm.py, which
// checks every answer it prints. Reads OPENAI_BASE_URL, OPENAI_API_KEY and MODEL from the environment.
import OpenAI from "openai";

const client = new OpenAI({ maxRetries: 0 });
const model = process.env.MODEL;
const weather = { type: "function", function: {
  name: "get_weather", description: "The weather in a city.",
  parameters: { type: "object", properties: { city: { type: "string", enum: ["Paris", "Rome"] } },
                required: ["city"] } } };
const named = { type: "function", function: { name: "get_weather" } };
const ask = [{ role: "user", content: "What is the weather in Paris?" }];
const out = {};

async function chunks(stream) {
  const all = [];
  for await (const chunk of stream) all.push(chunk);
  return all;
}

async function error(promise) {
  try {
    await promise;
    return null;
  } catch (e) {
    return { status: e.status, code: e.code, type: e.constructor.name };
  }
}

out.chat = await client.chat.completions.create({ model, messages: ask, max_tokens: 5 });
out.stream = await chunks(await client.chat.completions.create({
  model, messages: ask, max_tokens: 5, stream: true, stream_options: { include_usage: true } }));
out.text_parts = await client.chat.completions.create({ model, max_tokens: 5, messages: [
  { role: "developer", content: "Be brief." },
  { role: "user", content: [{ type: "text", text: "Weather" }, { type: "text", text: "in Paris?" }] }] });
out.named = await client.chat.completions.create({
  model, messages: ask, tools: [weather], tool_choice: named, max_tokens: 300, seed: 1 });
out.required = [];
for (const seed of [0, 1, 2, 3]) {
  out.required.push(await client.chat.completions.create({
    model, messages: ask, tools: [weather], tool_choice: "required", max_tokens: 300, seed }));
}
out.auto = await client.chat.completions.create({
  model, messages: ask, tools: [weather], tool_choice: "auto", max_tokens: 5 });
out.streamed_tools = await chunks(await client.chat.completions.create({
  model, messages: ask, tools: [weather], tool_choice: named, max_tokens: 300, seed: 2, stream: true,
  stream_options: { include_usage: true } }));

const first = out.named.choices[0].message;
const call = first.tool_calls[0];
out.final = await client.chat.completions.create({ model, tools: [weather], max_tokens: 5, temperature: 0, messages: [
  ...ask, first, { role: "tool", tool_call_id: call.id, content: "21 C and sunny" }] });

out.structured = await client.chat.completions.create({ model, messages: ask, max_tokens: 200, seed: 4,
  response_format: { type: "json_schema", json_schema: { name: "verdict", strict: true, schema: {
    type: "object", properties: { answer: { type: "string", enum: ["yes", "no"] } }, required: ["answer"],
    additionalProperties: false } } } });

out.response = await client.responses.create({ model, input: "What is the weather in Paris?", max_output_tokens: 5,
  temperature: 0 });
out.response_text = out.response.output_text;
out.response_tool = await client.responses.create({ model, input: "Weather?", max_output_tokens: 300,
  tools: [{ type: "function", ...weather.function }], tool_choice: { type: "function", name: "get_weather" } });
out.response_events = await chunks(await client.responses.create({
  model, input: "Hi", max_output_tokens: 5, stream: true }));

out.embeddings = await client.embeddings.create({
  model: process.env.EMBEDDING_MODEL, input: ["Paris", "Rome is warm"], encoding_format: "float" });
out.embeddings_default = await client.embeddings.create({ model: process.env.EMBEDDING_MODEL, input: "Oslo" });

const refused = JSON.parse(process.env.REFUSED_KEYS);
const as = (key) => new OpenAI({ apiKey: key, maxRetries: 0 });
await as(refused.rate_limited).chat.completions.create({ model, messages: ask, max_tokens: 1 });

out.errors = {
  not_found: await error(client.chat.completions.create({ model: "no/such-model", messages: ask })),
  bad_key: await error(new OpenAI({ apiKey: "gpsk_wrong", maxRetries: 0 }).models.list()),
  image: await error(client.chat.completions.create({ model, messages: [{ role: "user", content: [
    { type: "image_url", image_url: { url: "data:image/png;base64,AA==" } }] }] })),
  too_long: await error(client.chat.completions.create({ model, messages: ask, max_tokens: 100000 })),
  unknown: await error(client.chat.completions.create({ model, messages: ask, upstream: "x" })),
  endpoint: await error(client.images.generate({ prompt: "a cat" })),
};
for (const name of ["no_credit", "spend_limit", "not_allowed", "rate_limited"]) {
  out.errors[name] = await error(as(refused[name]).chat.completions.create({ model, messages: ask, max_tokens: 5 }));
}
console.log(JSON.stringify(out));
