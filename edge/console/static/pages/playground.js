// Chat with a serving through its public API (streamed), with the serving's or a chosen key;
// usage, finish reason and `blocked` shown per answer, and the retrieved context when the
// answer is grounded in a collection.

import { api, servingBase, sse } from "../api.js";
import { errorBox, field, h, input, showError, title } from "../dom.js";
import { emptyNotice, pickInitial, servingPicker } from "./common.js";

function number(value) {
  return value === "" ? undefined : Number(value);
}

export async function render(main, ctx) {
  main.append(title("Playground"));
  const servings = await ctx.servings();
  if (!servings.length) {
    main.append(emptyNotice("No serving yet: create one on the Servings page."));
    return;
  }
  let serving = servings.find((sv) => sv.id === pickInitial(servings, ctx.handoff.serving));
  const c = {
    key: h("input", { type: "password", name: "playground-key", autocomplete: "off", value: ctx.handoff.key || "" }),
    user: input({ name: "playground-user", placeholder: "x-genos-user-id" }),
    system: h("textarea", { rows: 2, name: "playground-system" }),
    temperature: input({ type: "number", step: "0.1", min: 0, max: 2, name: "temperature", placeholder: "serving's" }),
    top_p: input({ type: "number", step: "0.05", min: 0, max: 1, name: "top_p", placeholder: "serving's" }),
    max_tokens: input({ type: "number", step: 1, min: 1, name: "max_tokens", placeholder: "serving's n_predict" }),
    collection: input({ name: "playground-collection" }),
    message: h("textarea", { rows: 3, name: "message", required: true }),
  };
  ctx.handoff = {};
  const describe = () => {
    c.system.placeholder = serving.system_prompt ? `Serving's: ${serving.system_prompt}` : "None";
    c.collection.value = serving.rag_collection || "";
  };
  describe();
  const history = [];
  const log = h("div", { class: "chat-log", "aria-live": "polite", "aria-label": "Conversation" });
  const error = errorBox();
  const send = h("button", { type: "submit" }, "Send");
  const stop = h("button", { type: "button", class: "secondary", disabled: true }, "Stop");
  let abort = null;
  stop.addEventListener("click", () => abort?.abort());

  const settings = h("details", { class: "card" }, h("summary", {}, "Settings"),
    h("div", { class: "grid" },
      field("API key", c.key, "Empty: your sign-in token."),
      field("User id", c.user),
      field("Temperature", c.temperature),
      field("Top p", c.top_p),
      field("Max tokens", c.max_tokens),
      field("Ground in collection", c.collection, "Empty: no retrieval.")),
    field("System prompt", c.system, "Sent as the first message when set."));
  if (c.key.value) settings.open = true;
  const form = h("form", { class: "card", "aria-label": "Send a message" },
    field("Message", c.message), error, h("div", { class: "actions" }, send, stop,
      h("button", { type: "button", class: "secondary", onclick: () => { history.length = 0; log.replaceChildren(); } }, "Clear")));
  c.message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });

  async function retrieved(messages, token, headers) {
    const found = await api(`${servingBase(serving.id)}/retrieve`, { method: "POST", token, extraHeaders: headers,
      body: { messages, vdb_collection_name: c.collection.value.trim() } });
    return h("details", { class: "context" }, h("summary", {}, `Retrieved context (${found.points.length})`),
      h("ol", { class: "chunks" }, found.points.map((p) =>
        h("li", {}, h("span", { class: "score" }, p.score.toFixed(3)), " ", p.source))));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = c.message.value.trim();
    if (!text) return;
    showError(error, null);
    history.push({ role: "user", content: text });
    c.message.value = "";
    const messages = [...(c.system.value.trim() ? [{ role: "system", content: c.system.value.trim() }] : []), ...history];
    const answer = h("p", { class: "content" });
    const meta = h("p", { class: "meta muted" }, "…");
    const turn = h("div", { class: "turn assistant" }, h("strong", {}, "Assistant"), answer, meta);
    log.append(h("div", { class: "turn user" }, h("strong", {}, "You"), h("p", { class: "content" }, text)), turn);
    const token = c.key.value.trim() || undefined;
    const headers = c.user.value.trim() ? { "x-genos-user-id": c.user.value.trim() } : {};
    const body = {
      model: serving.model, messages, stream: true, stream_options: { include_usage: true },
      temperature: number(c.temperature.value), top_p: number(c.top_p.value), max_tokens: number(c.max_tokens.value),
    };
    if (c.collection.value.trim()) {
      body.vdb_collection_name = c.collection.value.trim();
      retrieved(messages, token, headers).then((node) => turn.append(node), (e) => turn.append(h("p", { class: "error" }, `Retrieval: ${e.message}`)));
    }
    abort = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    let finish = "", usage = null, blocked = false;
    try {
      for await (const chunk of sse(`${servingBase(serving.id)}/chat/completions`, { body, token, extraHeaders: headers, signal: abort.signal })) {
        const choice = chunk.choices?.[0];
        if (choice?.delta?.content) answer.textContent += choice.delta.content;
        if (choice?.finish_reason) finish = choice.finish_reason;
        if (chunk.usage) usage = chunk.usage;
        if (chunk.blocked) blocked = true;
      }
    } catch (e) {
      if (e.name !== "AbortError") showError(error, e);
      finish = e.name === "AbortError" ? "stopped" : "error";
    } finally {
      send.disabled = false;
      stop.disabled = true;
    }
    history.push({ role: "assistant", content: answer.textContent });
    meta.replaceChildren(
      usage ? `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens` : "no usage",
      ` · finish: ${finish || "—"}`,
      blocked ? h("span", { class: "badge danger" }, "blocked") : "",
    );
    meta.classList.add("done");
  });

  if (servings.length > 1) {
    main.append(servingPicker(servings, serving.id, (id) => { serving = servings.find((sv) => sv.id === id); describe(); }));
  }
  main.append(settings, log, form);
}
