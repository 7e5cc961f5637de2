// The usage log: charts of requests and tokens over time and per user first, then totals,
// filters, the newest records and a CSV export of every match (up to 10,000).

import { api } from "../api.js";
import { barChart, lineChart } from "../charts.js";
import { errorBox, field, fmtNum, fmtTime, h, input, select, showError, table, title } from "../dom.js";
import { emptyNotice } from "./common.js";

const RANGES = [["3600", "Last hour"], ["86400", "Last 24 hours"], ["604800", "Last 7 days"],
  ["2592000", "Last 30 days"], ["custom", "Custom…"]];
const BUCKETS = [60, 300, 900, 3600, 21600, 86400];
const STATUSES = [["", "Any status"], ["ok", "ok"], ["client_error", "client error"],
  ["server_error", "server error"], ["cancelled", "cancelled"]];
const REFRESH_MS = 5000;
const CSV_COLUMNS = ["request_id", "created_at_unix_ms", "serving_id", "model", "api_key_id", "user_id",
  "endpoint", "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms", "status", "blocked"];

function bucketFor(seconds) {
  return BUCKETS.find((b) => seconds / b <= 100) ?? BUCKETS[BUCKETS.length - 1];
}

function timeLabel(bucket) {
  return (t) => {
    const d = new Date(t * 1000);
    return bucket >= 86400 ? d.toLocaleDateString() : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  };
}

// Every bucket of the range, empty ones as zeros (the registry returns only non-empty ones).
function filled(byTime, since, until, bucket) {
  const found = new Map(byTime.map((b) => [b.start, b]));
  const out = [];
  for (let t = Math.floor(since / bucket) * bucket; t < until; t += bucket) {
    out.push(found.get(t) || { start: t, requests: 0, prompt_tokens: 0, completion_tokens: 0 });
  }
  return out;
}

function csv(records) {
  const cell = (v) => (/[",\n]/.test(String(v)) ? `"${String(v).replaceAll('"', '""')}"` : String(v));
  return [CSV_COLUMNS.join(","), ...records.map((r) => CSV_COLUMNS.map((c) => cell(r[c] ?? "")).join(","))].join("\n");
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  const link = h("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export async function render(main, ctx) {
  main.append(title("Usage"));
  if (!ctx.admin) {
    main.append(emptyNotice("The usage log needs the admin token."));
    return;
  }
  const servings = await ctx.servings();
  const f = {
    range: select(RANGES, { name: "range" }),
    serving: select([["", "Every serving"], ...servings.map((sv) => [String(sv.id), `${sv.id} · ${sv.name}`])], { name: "serving" }),
    key: input({ name: "api_key_id", placeholder: "key_…" }),
    user: input({ name: "user_id" }),
    route: input({ name: "route", placeholder: "/v1/chat/completions", list: "known-routes" }),
    status: select(STATUSES, { name: "status" }),
    since: input({ type: "datetime-local", name: "since" }),
    until: input({ type: "datetime-local", name: "until" }),
    live: h("input", { type: "checkbox", checked: true, id: "usage-live" }),
  };
  f.range.value = "86400";
  const routes = h("datalist", { id: "known-routes" });
  const custom = h("div", { class: "grid", hidden: true }, field("Since", f.since), field("Until", f.until));
  const error = errorBox();
  const charts = h("div", { class: "charts", "aria-live": "off" });
  const totals = h("div", { class: "totals" });
  const records = h("div");
  const filters = h("form", { class: "card filters", "aria-label": "Usage filters" },
    h("div", { class: "grid" }, field("Time range", f.range), field("Serving", f.serving), field("Status", f.status)),
    h("details", {}, h("summary", {}, "More filters"),
      h("div", { class: "grid" }, field("API key id", f.key), field("User id", f.user), field("Route", f.route)),
      custom),
    routes,
    h("div", { class: "actions" },
      h("button", { type: "submit" }, "Apply"),
      h("button", { type: "button", class: "secondary", onclick: () => exportCsv() }, "Export CSV"),
      h("span", { class: "check" }, f.live, h("label", { for: "usage-live" }, `Refresh every ${REFRESH_MS / 1000} s`))),
    error);
  main.append(totals, charts, filters, records);

  function query(limit) {
    const now = Math.floor(Date.now() / 1000);
    let since, until;
    if (f.range.value === "custom") {
      since = f.since.value ? Math.floor(new Date(f.since.value).getTime() / 1000) : now - 86400;
      until = f.until.value ? Math.floor(new Date(f.until.value).getTime() / 1000) : now + 1;
    } else {
      until = now + 1;
      since = until - Number(f.range.value);
    }
    const params = new URLSearchParams({ since, until, limit, bucket: bucketFor(until - since) });
    for (const [name, control] of [["serving_id", f.serving], ["api_key_id", f.key], ["user_id", f.user],
      ["route", f.route], ["status", f.status]]) {
      if (control.value.trim()) params.set(name, control.value.trim());
    }
    return { params, since, until, bucket: Number(params.get("bucket")) };
  }

  async function load() {
    const q = query(100);
    let data;
    try {
      data = await api(`/admin/v1/usage?${q.params}`);
      showError(error, null);
    } catch (e) {
      showError(error, e);
      return;
    }
    const label = timeLabel(q.bucket);
    const buckets = filled(data.by_time, q.since, q.until, q.bucket);
    const users = data.by_user.slice(0, 10);
    totals.replaceChildren(
      ...[["Requests", data.total_requests], ["Prompt tokens", data.total_prompt_tokens],
        ["Completion tokens", data.total_completion_tokens]].map(([name, value]) =>
        h("div", { class: "total" }, h("span", { class: "muted" }, name), h("strong", {}, fmtNum(value)))));
    charts.replaceChildren(
      lineChart("Requests over time", [{ name: "requests", points: buckets.map((b) => [b.start, b.requests]) }], label),
      lineChart("Tokens over time", [
        { name: "prompt tokens", points: buckets.map((b) => [b.start, b.prompt_tokens]) },
        { name: "completion tokens", points: buckets.map((b) => [b.start, b.completion_tokens]) },
      ], label),
      barChart("Per user (top 10)", ["requests", "tokens"],
        users.map((u) => ({ label: u.user_id || "(no user id)", values: [u.requests, u.prompt_tokens + u.completion_tokens] }))),
    );
    routes.replaceChildren(...data.by_route.map((r) => h("option", { value: r.route })));
    records.replaceChildren(
      table("Requests by route", ["Route", "Requests", "Prompt tokens", "Completion tokens"],
        data.by_route.map((r) => [r.route, fmtNum(r.requests), fmtNum(r.prompt_tokens), fmtNum(r.completion_tokens)])),
      table(`Newest requests (${data.data.length} of ${fmtNum(data.total_requests)})`,
        ["Time", "Serving", "Route", "Model", "Key", "User", "Prompt", "Completion", "Latency ms", "Status"],
        data.data.map((r) => [fmtTime(r.created_at_unix_ms / 1000), r.serving_id || "—", r.endpoint, r.model,
          r.api_key_id || "—", r.user_id || "—", fmtNum(r.prompt_tokens), fmtNum(r.completion_tokens),
          fmtNum(r.latency_ms), r.blocked ? `${r.status} (blocked)` : r.status])),
    );
  }

  async function exportCsv() {
    try {
      const data = await api(`/admin/v1/usage?${query(10000).params}`);
      download(`usage-${new Date().toISOString().slice(0, 19)}.csv`, csv(data.data));
    } catch (e) {
      showError(error, e);
    }
  }

  f.range.addEventListener("change", () => { custom.hidden = f.range.value !== "custom"; });
  filters.addEventListener("submit", (event) => { event.preventDefault(); load(); });
  await load();
  const timer = setInterval(() => f.live.checked && !document.hidden && load(), REFRESH_MS);
  return () => clearInterval(timer);
}
