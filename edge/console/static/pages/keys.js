// API keys of a serving: issue (the secret shown once), list, revoke.

import { api } from "../api.js";
import {
  confirmThen, copyButton, errorBox, field, fmtTime, h, input, showError, table, title, toast,
} from "../dom.js";
import { emptyNotice, pickInitial, servingPicker } from "./common.js";

function keyStatus(key) {
  if (key.revoked_at) return "revoked";
  if (key.expires_at && key.expires_at * 1000 <= Date.now()) return "expired";
  return "active";
}

function secretPanel(issued, ctx) {
  const secret = h("input", { type: "text", readonly: true, value: issued.secret, class: "secret", "aria-label": "New API key" });
  return h("section", { class: "card highlight", "aria-labelledby": "secret-title" },
    h("h2", { id: "secret-title" }, `Key ${issued.id} issued`),
    h("p", {}, "Copy the key now: it is shown only once and cannot be recovered."),
    secret,
    h("div", { class: "actions" },
      copyButton(() => issued.secret, "Copy key"),
      h("button", { type: "button", class: "secondary", onclick: () => {
        ctx.handoff = { serving: issued.serving_id, key: issued.secret };
        ctx.go("playground");
      } }, "Use in playground")));
}

export async function render(main, ctx) {
  main.append(title("API keys"));
  if (!ctx.admin) {
    main.append(emptyNotice("Issuing, listing and revoking keys needs the admin token."));
    return;
  }
  const servings = await ctx.servings();
  if (!servings.length) {
    main.append(emptyNotice("No serving yet: create one on the Servings page."));
    return;
  }
  let servingId = pickInitial(servings, ctx.handoff.serving);
  const panel = h("div");
  const list = h("div");
  const name = input({ name: "key-name", placeholder: "e.g. team-a" });
  const expires = input({ type: "date", name: "key-expires" });
  const error = errorBox();
  const form = h("form", { class: "card", "aria-label": "Issue a key" },
    h("h2", {}, "Issue a key"),
    h("div", { class: "grid" }, field("Name", name), field("Expires (optional)", expires, "Never when empty.")),
    error,
    h("button", { type: "submit" }, "Issue key"));
  const reload = async () => {
    const keys = (await api(`/admin/v1/servings/${servingId}/keys`)).data;
    list.replaceChildren(table(`Keys of serving ${servingId}`,
      ["Name", "Key", "Key id", "Created", "Expires", "Last used", "Status", ""],
      keys.map((key) => [
        key.name || "—", h("code", {}, key.prefix ? `${key.prefix}…` : "—"), h("code", {}, key.id), fmtTime(key.created_at), fmtTime(key.expires_at),
        fmtTime(key.last_used_at), keyStatus(key),
        key.revoked_at ? "" : h("button", { type: "button", class: "danger", "aria-label": `Revoke key ${key.id}`,
          onclick: confirmThen(`Revoke key ${key.name || key.id}? Calls with it will fail.`, async () => {
            await api(`/admin/v1/keys/${key.id}`, { method: "DELETE" });
            toast(`Key ${key.id} revoked`);
            reload();
          }) }, "Revoke"),
      ])));
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: name.value.trim() };
    if (expires.value) body.expires_at = Math.floor(new Date(`${expires.value}T23:59:59`).getTime() / 1000);
    try {
      const issued = await api(`/admin/v1/servings/${servingId}/keys`, { method: "POST", body });
      showError(error, null);
      panel.replaceChildren(secretPanel(issued, ctx));
      panel.querySelector(".secret").select();
      name.value = "";
      await reload();
    } catch (e) {
      showError(error, e);
    }
  });
  main.append(
    servingPicker(servings, servingId, (id) => { servingId = id; panel.replaceChildren(); reload(); }),
    form, panel, list);
  await reload();
}
