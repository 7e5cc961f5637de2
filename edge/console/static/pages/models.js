// Models: list, import (progress streamed by the edge), delete; the generation engine's
// metrics at a glance, polled while the page is open (tokens/s from the counters' change).

import { api, sse } from "../api.js";
import {
  confirmThen, errorBox, field, fmtNum, fmtTime, h, input, select, showError, table, title, toast,
} from "../dom.js";

const POLL_MS = 5000;

function mib(bytes) {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

function percent(part, whole) {
  return whole ? `${Math.round((100 * part) / whole)}%` : "—";
}

function metricCards(summary, previous) {
  if (!summary.configured) {
    return [h("p", { class: "notice" }, "Engine metrics are off: run generation with GENERATION_METRICS_PORT and " +
      "give the edge EDGE_GENERATION_METRICS_URLS.")];
  }
  const seconds = previous ? (summary.sampled_at_ms - previous.sampled_at_ms) / 1000 : 0;
  const cards = Object.entries(summary.models).map(([model, m]) => {
    const before = previous?.models[model];
    const rate = before && seconds > 0 ? (m.generated_tokens - before.generated_tokens) / seconds : null;
    const facts = [
      ["Tokens / s", rate === null ? "measuring…" : rate.toFixed(1)],
      ["Running", fmtNum(m.running)],
      ["Queue", fmtNum(m.waiting)],
      ["KV slots", `${fmtNum(m.kv_slots_used)} / ${fmtNum(m.kv_slots)} (${percent(m.kv_slots_used, m.kv_slots)})`],
      ["KV tokens", fmtNum(m.kv_tokens)],
      ["Prefix cache", `${mib(m.prefix_cache_bytes || 0)}, ${percent(m.prefix_cache_hits || 0, m.prefix_cache_lookups || 0)} hits`],
      ["Tokens generated", fmtNum(m.generated_tokens)],
    ];
    return h("article", { class: "card metric", "aria-label": `Engine metrics of ${model}` }, h("h3", {}, model),
      h("dl", { class: "facts" }, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
  });
  const reach = h("p", { class: "muted" }, `${summary.reachable} of ${summary.replicas} generation replicas answered.`);
  return [reach, ...(cards.length ? cards : [h("p", { class: "muted" }, "No model loaded yet.")])];
}

function importForm(onImported) {
  const c = {
    name: input({ name: "model-name", required: true }),
    kind: select([["chat"], ["embedding"]], { name: "model-kind" }),
    source: input({ name: "model-source", required: true, placeholder: "/path/to/model.gguf or checkpoint dir" }),
    format: select([["", "infer from the path"], ["gguf", "GGUF file"], ["hf_directory", "Hugging Face directory"]], { name: "model-format" }),
    context: input({ type: "number", min: 0, step: 1, name: "model-context", placeholder: "from the checkpoint" }),
  };
  const bar = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Import progress" });
  const stage = h("p", { class: "muted", "aria-live": "polite" });
  const error = errorBox();
  const start = h("button", { type: "submit" }, "Import");
  const cancel = h("button", { type: "button", class: "secondary", disabled: true }, "Cancel");
  let abort = null;
  cancel.addEventListener("click", () => abort?.abort());
  const form = h("form", { class: "card", "aria-label": "Import a model" }, h("h2", {}, "Import a model"),
    h("div", { class: "grid" }, field("Name", c.name), field("Kind", c.kind),
      field("Source (on the registry's machine)", c.source), field("Format", c.format), field("Context length", c.context)),
    bar, stage, error, h("div", { class: "actions" }, start, cancel));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: c.name.value.trim(), kind: c.kind.value, source: c.source.value.trim() };
    if (c.format.value) body.source_format = c.format.value;
    if (c.context.value) body.context_length = Number(c.context.value);
    abort = new AbortController();
    start.disabled = true;
    cancel.disabled = false;
    bar.hidden = false;
    bar.value = 0;
    showError(error, null);
    try {
      for await (const step of sse("/admin/v1/models", { body, signal: abort.signal })) {
        bar.value = step.progress;
        stage.textContent = `${step.stage} (${Math.round(step.progress * 100)}%)`;
        if (step.model) toast(`Model ${step.model.name} imported`);
      }
      onImported();
    } catch (e) {
      stage.textContent = "";
      showError(error, e.name === "AbortError" ? "Import cancelled." : e);
    } finally {
      start.disabled = false;
      cancel.disabled = true;
      bar.hidden = true;
    }
  });
  return form;
}

export async function render(main, ctx) {
  main.append(title("Models"));
  const list = h("div");
  if (!ctx.admin) {
    const models = (await api("/v1/models")).data;
    main.append(h("p", { class: "notice" }, "Importing, deleting and engine metrics need the admin token."),
      table("Models this key may use", ["Name", "Kind", "Context length"],
        models.map((m) => [m.id, m.kind, fmtNum(m.context_length)])));
    return;
  }
  const metrics = h("section", { class: "metrics", "aria-labelledby": "engine-title" });
  const reload = async () => {
    const models = (await api("/admin/v1/models")).data;
    list.replaceChildren(table("Models", ["Name", "Kind", "Context", "Graph", "Source file", "Imported", ""],
      models.map((m) => [m.name, m.kind, fmtNum(m.context_length), m.graph, h("code", { class: "path" }, m.source),
        fmtTime(m.created_at), h("button", { type: "button", class: "danger", "aria-label": `Delete model ${m.name}`,
          onclick: confirmThen(`Delete model ${m.name}? (Its export stays cached.)`, async () => {
            try {
              await api(`/admin/v1/models/${encodeURIComponent(m.name)}`, { method: "DELETE" });
              toast(`Model ${m.name} deleted`);
              reload();
            } catch (e) {
              toast(e.message);
            }
          }) }, "Delete")])));
  };
  let previous = null;
  const poll = async () => {
    try {
      const summary = await api("/admin/v1/engine/metrics");
      metrics.replaceChildren(h("h2", { id: "engine-title" }, "Engine"), ...metricCards(summary, previous));
      previous = summary;
    } catch (e) {
      const box = errorBox();
      showError(box, e);
      metrics.replaceChildren(h("h2", { id: "engine-title" }, "Engine"), box);
    }
  };
  main.append(metrics, list, importForm(reload));
  await Promise.all([reload(), poll()]);
  const timer = setInterval(() => !document.hidden && poll(), POLL_MS);
  return () => clearInterval(timer);
}
