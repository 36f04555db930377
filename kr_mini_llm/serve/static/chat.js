// The chat page: keeps the conversation, streams each answer from /v1/chat/completions
// (server-sent events), stops it on demand, and shows the speed of the last answer.
// The server fits the conversation to the model's context (truncation: "auto"): when it leaves
// the oldest turns out, the page drops them from its history too and says so.
"use strict";

const $ = (id) => document.getElementById(id);
const log = $("log"), input = $("input"), sendBtn = $("send"), stopBtn = $("stop"), stats = $("stats");
const keyInput = $("api-key");
let messages = [];      // the conversation sent with every request: {role, content, div}
let contextLength = null;
let modelId = null;
let controller = null;  // aborts the answer in flight

keyInput.value = localStorage.getItem("kr-mini-llm-key") || "";
keyInput.addEventListener("change", () => { localStorage.setItem("kr-mini-llm-key", keyInput.value); loadModel(); });

function headers() {
  const h = { "Content-Type": "application/json" };
  if (keyInput.value) h["Authorization"] = "Bearer " + keyInput.value;
  return h;
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;  // text only: the model's output is never parsed as HTML
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

function note(div, text) {
  const span = document.createElement("span");
  span.className = "note";
  span.textContent = text;
  div.appendChild(span);
}

async function errorText(resp) {
  try { return (await resp.json()).error.message; } catch (_) { return resp.status + " " + resp.statusText; }
}

async function loadModel() {
  const resp = await fetch("/v1/models", { headers: headers() });
  if (!resp.ok) { $("model").textContent = await errorText(resp); return; }
  modelId = (await resp.json()).data[0].id;
  $("model").textContent = modelId;
  // Keep the default answer length within the model's context (the prompt needs room too).
  const health = await (await fetch("/health")).json();
  contextLength = health.context_length;
  const maxTokens = $("max-tokens");
  maxTokens.max = health.context_length - 1;
  if (Number(maxTokens.value) > health.context_length / 2) maxTokens.value = Math.floor(health.context_length / 2);
}

function busy(on) {
  sendBtn.disabled = on;
  stopBtn.disabled = !on;
}

// Yields the parsed `data:` payloads of a server-sent event stream.
async function* events(body) {
  const reader = body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

// The server left out the `dropped` oldest messages (system messages always stay): so does the page.
function forget(dropped, before) {
  const gone = messages.filter((m) => m.role !== "system").slice(0, dropped);
  for (const m of gone) m.div.classList.add("dropped");
  messages = messages.filter((m) => !gone.includes(m));
  const context = contextLength ? ` context of ${contextLength} tokens` : " context";
  const info = bubble("info", `${dropped} earlier message${dropped === 1 ? "" : "s"} no longer fit the model's` +
    `${context} and ${dropped === 1 ? "was" : "were"} left out of the conversation.`);
  log.insertBefore(info, before);  // where it is seen: just above the question that needed the room
}

async function send(text) {
  if (!modelId) await loadModel();
  if (!modelId) { bubble("error", "No model: " + $("model").textContent); return; }
  const question = { role: "user", content: text, div: bubble("user", text) };
  messages.push(question);
  const div = bubble("assistant streaming", "");
  const asked = Number($("max-tokens").value);
  let answer = "", chunks = 0, usage = null, finish = null, firstAt = null, failed = false, capped = null;
  const start = performance.now();
  controller = new AbortController();
  busy(true);
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({
        model: modelId, messages: messages.map(({ role, content }) => ({ role, content })), stream: true,
        stream_options: { include_usage: true }, truncation: "auto",
        temperature: Number($("temperature").value), max_tokens: asked,
      }),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    const dropped = Number(resp.headers.get("X-Dropped-Messages") || 0);
    if (dropped > 0) forget(dropped, question.div);
    const allowed = Number(resp.headers.get("X-Max-Tokens") || asked);
    if (allowed < asked) capped = allowed;
    for await (const ev of events(resp.body)) {
      if (ev.error) throw new Error(ev.error.message);
      if (ev.usage) usage = ev.usage;
      for (const choice of ev.choices || []) {
        if (choice.delta && choice.delta.content) {
          if (firstAt === null) firstAt = performance.now();
          answer += choice.delta.content;
          chunks += 1;
          div.textContent = answer;
          log.scrollTop = log.scrollHeight;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  } catch (err) {
    if (err.name === "AbortError") finish = "stopped";
    else { failed = true; bubble("error", String(err.message || err)); }
  } finally {
    controller = null;
    busy(false);
    div.classList.remove("streaming");
  }
  if (failed) {  // a failed exchange stays out of the conversation, so it cannot fail the next one too
    messages = messages.filter((m) => m !== question);
    question.div.classList.add("dropped");
    note(question.div, "(not part of the conversation: it failed)");
    if (!answer) div.remove();  // the error says why
  } else if (answer) messages.push({ role: "assistant", content: answer, div });
  else if (finish !== "stopped" && finish !== "stop" && finish !== "length") div.remove();
  if (finish === "stopped") note(div, "(stopped)");
  else if (finish === "length") note(div, capped !== null ? `(max tokens reached: only ${capped} fit the context)` :
    "(max tokens reached)");
  const seconds = (performance.now() - start) / 1000;
  const tokens = usage ? usage.completion_tokens : chunks;
  stats.textContent = `last answer: ${tokens} tokens in ${seconds.toFixed(2)} s · ${(tokens / seconds).toFixed(1)} tok/s` +
    (firstAt !== null ? ` · first token ${Math.round(firstAt - start)} ms` : "");
  stats.dataset.tokensPerSecond = (tokens / seconds).toFixed(3);
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text || controller) return;
  input.value = "";
  send(text);
});
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
});
stopBtn.addEventListener("click", () => { if (controller) controller.abort(); });
$("clear").addEventListener("click", () => {
  if (controller) controller.abort();
  messages = [];
  log.textContent = "";
  stats.textContent = "";
});

loadModel();
