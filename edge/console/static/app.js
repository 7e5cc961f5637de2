// The console's shell: sign-in, navigation between pages (the URL's #/page) and what pages
// share (who is signed in, the servings it may act for).

import { api, auth } from "./api.js";
import { errorBox, field, h, showError } from "./dom.js";
import * as documents from "./pages/documents.js";
import * as keys from "./pages/keys.js";
import * as models from "./pages/models.js";
import * as playground from "./pages/playground.js";
import * as servings from "./pages/servings.js";
import * as usage from "./pages/usage.js";

const PAGES = { usage, servings, keys, documents, playground, models };
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signOut = document.getElementById("sign-out");
let cleanup = null;

// What every page gets. `handoff` carries a value from one page to the next in memory only
// (a freshly issued key for the playground), never into storage.
const ctx = {
  session: null,
  handoff: {},
  get admin() {
    return this.session?.role === "admin";
  },
  async servings() {
    if (this.admin) return (await api("/admin/v1/servings")).data;
    return this.session?.serving ? [this.session.serving] : [];
  },
  go(page) {
    location.hash = `#/${page}`;
  },
};

function signInPage(message) {
  const token = h("input", { type: "password", autocomplete: "off", required: true });
  const error = errorBox();
  const form = h(
    "form",
    { class: "card narrow", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    h("p", { class: "muted" },
      "With the admin token (everything) or a serving's API key (that serving: documents, " +
      "playground and models; the rest needs the admin token). It is kept for this tab only."),
    field("Admin token or API key", token),
    error,
    h("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      ctx.session = await api("/console/v1/session", { token: token.value.trim() });
      auth.token = token.value.trim();
      start();
    } catch (e) {
      showError(error, e.status === 401 ? "That token or key is not valid." : e);
    }
  });
  main.replaceChildren(form);
  if (message) showError(error, message);
  token.focus();
}

async function show() {
  if (cleanup) cleanup();
  cleanup = null;
  const name = location.hash.replace(/^#\//, "") || (ctx.admin ? "usage" : "playground");
  const page = PAGES[name] ? name : "usage";
  for (const link of nav.querySelectorAll("a")) {
    if (link.hash === `#/${page}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  main.replaceChildren();
  try {
    cleanup = (await PAGES[page].render(main, ctx)) || null;
  } catch (e) {
    if (e.status === 401) return signInPage("Your sign-in is no longer valid.");
    const error = errorBox();
    main.append(error);
    showError(error, e);
  }
  main.querySelector("h1")?.focus();
}

function start() {
  nav.hidden = false;
  signOut.hidden = false;
  const s = ctx.session;
  who.textContent = s.role === "admin" ? "admin" : s.role === "key" ? `key ${s.key.id} · serving ${s.key.serving_id}` : "open API";
  window.addEventListener("hashchange", show);
  show();
}

signOut.addEventListener("click", () => {
  auth.token = null;
  ctx.session = null;
  nav.hidden = true;
  signOut.hidden = true;
  who.textContent = "";
  window.removeEventListener("hashchange", show);
  signInPage();
});

async function boot() {
  if (!auth.token) return signInPage();
  try {
    ctx.session = await api("/console/v1/session");
    start();
  } catch {
    auth.token = null;
    signInPage();
  }
}

boot();
