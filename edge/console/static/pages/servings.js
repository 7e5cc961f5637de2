// Servings: list, create, edit, delete; each with its endpoint URL and a `requests` snippet.

import { api } from "../api.js";
import {
  confirmThen, copyButton, errorBox, field, h, input, select, showError, title, toast,
} from "../dom.js";
import { emptyNotice, endpointUrl, requestsSnippet } from "./common.js";

const SAMPLING = [
  ["n_predict", "Max new tokens (n_predict)", "1"],
  ["temperature", "Temperature", "0.01"],
  ["top_p", "Top p", "0.01"],
  ["top_k", "Top k", "1"],
  ["presence_penalty", "Presence penalty", "0.01"],
  ["frequency_penalty", "Frequency penalty", "0.01"],
  ["repetition_penalty", "Repetition penalty", "0.01"],
];
const LIMITS = [
  ["requests_per_minute", "Requests / minute"],
  ["tokens_per_minute", "Tokens / minute"],
  ["max_concurrent_requests", "Concurrent requests"],
  ["key_requests_per_minute", "Per key: requests / minute"],
  ["key_tokens_per_minute", "Per key: tokens / minute"],
  ["key_max_concurrent_requests", "Per key: concurrent requests"],
];

function splitList(text) {
  return text.split(",").map((t) => t.trim()).filter(Boolean);
}

function servingForm(serving, models, onSaved, onCancel) {
  const sv = serving || { default_sampling: {}, moderation: {}, limits: {} };
  const controls = {
    name: input({ value: sv.name || "" }),
    model: select(models.map((m) => [m.name])),
    system_prompt: h("textarea", { rows: 3 }, sv.system_prompt || ""),
    rag_collection: input({ value: sv.rag_collection || "" }),
    stop: input({ value: (sv.default_sampling.stop || []).join(", ") }),
    moderation_enabled: h("input", { type: "checkbox", checked: !!sv.moderation.enabled }),
    blocked_terms: input({ value: (sv.moderation.blocked_terms || []).join(", ") }),
    action: select([["cut", "cut (keep text before the term)"], ["withhold", "withhold (no text)"]]),
  };
  if (sv.model) controls.model.value = sv.model;
  controls.action.value = sv.moderation.action || "cut";
  const sampling = Object.fromEntries(SAMPLING.map(([key, , step]) => [
    key, input({ type: "number", step, value: sv.default_sampling[key] ?? "", placeholder: "model default" }),
  ]));
  const limits = Object.fromEntries(LIMITS.map(([key]) => [
    key, input({ type: "number", min: 0, step: 1, value: sv.limits[key] ?? 0 }),
  ]));
  const error = errorBox();
  const form = h(
    "form",
    { class: "card", "aria-label": serving ? `Edit serving ${sv.id}` : "New serving" },
    h("h2", {}, serving ? `Edit serving ${sv.id}` : "New serving"),
    h("div", { class: "grid" },
      field("Name", controls.name),
      field("Model", controls.model),
      field("RAG collection", controls.rag_collection, "Grounds every chat in this collection; empty: none."),
    ),
    field("System prompt", controls.system_prompt),
    h("fieldset", {}, h("legend", {}, "Default sampling (used where a request sets nothing)"),
      h("div", { class: "grid" },
        SAMPLING.map(([key, label]) => field(label, sampling[key])),
        field("Stop sequences", controls.stop, "Comma separated, up to 4."))),
    h("fieldset", {}, h("legend", {}, "Moderation"),
      h("div", { class: "grid" },
        h("div", { class: "field check" }, controls.moderation_enabled,
          h("label", { for: (controls.moderation_enabled.id = `mod-${sv.id ?? "new"}`) }, "Enabled")),
        field("Blocked terms", controls.blocked_terms, "Comma separated; empty: the edge's defaults."),
        field("Action", controls.action))),
    h("fieldset", {}, h("legend", {}, "Limits (0 = unlimited)"),
      h("div", { class: "grid" }, LIMITS.map(([key, label]) => field(label, limits[key])))),
    error,
    h("div", { class: "actions" },
      h("button", { type: "submit" }, serving ? "Save" : "Create serving"),
      h("button", { type: "button", class: "secondary", onclick: onCancel }, "Cancel")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const defaults = { stop: splitList(controls.stop.value) };
    for (const [key] of SAMPLING) {
      if (sampling[key].value !== "") defaults[key] = Number(sampling[key].value);
    }
    const body = {
      name: controls.name.value,
      model: controls.model.value,
      system_prompt: controls.system_prompt.value,
      rag_collection: controls.rag_collection.value.trim(),
      default_sampling: defaults,
      moderation: {
        enabled: controls.moderation_enabled.checked,
        blocked_terms: splitList(controls.blocked_terms.value),
        action: controls.action.value,
      },
      limits: Object.fromEntries(LIMITS.map(([key]) => [key, Number(limits[key].value || 0)])),
    };
    try {
      const saved = serving
        ? await api(`/admin/v1/servings/${sv.id}`, { method: "PUT", body })
        : await api("/admin/v1/servings", { method: "POST", body });
      toast(`Serving ${saved.id} saved`);
      onSaved();
    } catch (e) {
      showError(error, e);
    }
  });
  return form;
}

function servingCard(sv, ctx, actions) {
  const snippet = requestsSnippet(sv);
  const sampling = Object.entries(sv.default_sampling || {})
    .filter(([, v]) => v !== null && !(Array.isArray(v) && !v.length))
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join("|") : v}`).join(", ") || "model defaults";
  return h("article", { class: "card", "aria-labelledby": `serving-${sv.id}` },
    h("h2", { id: `serving-${sv.id}` }, `${sv.id} · ${sv.name}`),
    h("dl", { class: "facts" },
      h("dt", {}, "Model"), h("dd", {}, sv.model),
      h("dt", {}, "Endpoint"), h("dd", {}, h("code", {}, endpointUrl(sv)), " ", copyButton(() => endpointUrl(sv), "Copy URL")),
      h("dt", {}, "System prompt"), h("dd", {}, sv.system_prompt || "—"),
      h("dt", {}, "Sampling"), h("dd", {}, sampling),
      h("dt", {}, "RAG collection"), h("dd", {}, sv.rag_collection || "—"),
      h("dt", {}, "Moderation"), h("dd", {}, sv.moderation.enabled
        ? `${sv.moderation.action}: ${(sv.moderation.blocked_terms || []).join(", ") || "default terms"}` : "off"),
      h("dt", {}, "Limits"), h("dd", {}, Object.entries(sv.limits).filter(([, v]) => v)
        .map(([k, v]) => `${k}=${v}`).join(", ") || "none")),
    h("details", {}, h("summary", {}, "Python requests snippet"),
      h("pre", {}, h("code", {}, snippet)), copyButton(() => snippet, "Copy snippet")),
    actions,
  );
}

export async function render(main, ctx) {
  main.append(title("Servings"));
  const list = h("div", { class: "cards" });
  const editor = h("div");
  main.append(editor, list);
  if (!ctx.admin) {
    main.insertBefore(h("p", { class: "notice" },
      "Signed in with an API key: your serving, read-only (editing needs the admin token)."), editor);
    for (const sv of await ctx.servings()) list.append(servingCard(sv, ctx, null));
    return;
  }
  const models = (await api("/admin/v1/models")).data.filter((m) => m.kind === "chat");
  const reload = async () => {
    editor.replaceChildren(h("button", { type: "button", onclick: () => edit(null) }, "New serving"));
    const servings = (await api("/admin/v1/servings")).data;
    list.replaceChildren(...servings.map((sv) => servingCard(sv, ctx, h("div", { class: "actions" },
      h("button", { type: "button", class: "secondary", onclick: () => edit(sv) }, "Edit"),
      h("button", { type: "button", class: "secondary", onclick: () => { ctx.handoff.serving = sv.id; ctx.go("keys"); } }, "API keys"),
      h("button", { type: "button", class: "secondary", onclick: () => { ctx.handoff.serving = sv.id; ctx.go("playground"); } }, "Playground"),
      h("button", { type: "button", class: "danger", onclick: confirmThen(`Delete serving ${sv.id} and its keys?`, async () => {
        await api(`/admin/v1/servings/${sv.id}`, { method: "DELETE" });
        toast(`Serving ${sv.id} deleted`);
        reload();
      }) }, "Delete")))));
  };
  const edit = (sv) => {
    const form = servingForm(sv, models, reload, reload);
    editor.replaceChildren(form);
    form.querySelector("input, select")?.focus();
  };
  await reload();
  if (!models.length) list.before(emptyNotice("No chat model yet: import one on the Models page."));
}
