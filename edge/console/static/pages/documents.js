// Documents of a serving: its collections, uploads into one (with progress), a collection's
// chunks (listed, or searched as grounded chat finds them), deleting a collection. Through the public API, so a serving's key can use it too.

import { api, servingBase, upload } from "../api.js";
import { confirmThen, errorBox, field, fmtNum, h, input, showError, table, title, toast } from "../dom.js";
import { emptyNotice, pickInitial, servingPicker } from "./common.js";

export async function render(main, ctx) {
  main.append(title("Documents"));
  const servings = await ctx.servings();
  if (!servings.length) {
    main.append(emptyNotice("No serving yet: create one on the Servings page."));
    return;
  }
  let servingId = pickInitial(servings, ctx.handoff.serving);
  // The serving's own collection (what its chat is grounded in) is the likely one.
  const usual = () => servings.find((sv) => sv.id === servingId).rag_collection || "default";
  const base = () => servingBase(servingId);
  const list = h("div");
  const names = h("datalist", { id: "collection-names" });

  const collection = input({ name: "collection", list: "collection-names", required: true, value: usual() });
  const file = h("input", { type: "file", name: "file", required: true });
  const progress = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const uploadError = errorBox();
  const result = h("p", { class: "muted", "aria-live": "polite" });
  const uploadForm = h("form", { class: "card", "aria-label": "Upload a document" },
    h("h2", {}, "Upload a document"),
    h("div", { class: "grid" }, field("Collection", collection, "A new name makes a new collection."),
      field("File (PDF, text, Markdown, HTML)", file)),
    progress, result, uploadError, names,
    h("button", { type: "submit" }, "Upload"));

  const query = input({ name: "chunk-query", required: true, placeholder: "What are you looking for?" });
  const searchIn = input({ name: "chunk-collection", list: "collection-names", value: usual() });
  const searchError = errorBox();
  const chunks = h("ol", { class: "chunks" });
  const searchForm = h("form", { class: "card", "aria-label": "Search chunks" },
    h("h2", {}, "Search chunks"),
    h("p", { class: "muted" }, "The chunks of a collection nearest to a query, as grounded chat retrieves them."),
    h("div", { class: "grid" }, field("Query", query), field("Collection", searchIn)),
    searchError, h("button", { type: "submit" }, "Search"), chunks);

  const listed = h("section", { class: "card", hidden: true, "aria-live": "polite", "aria-labelledby": "chunks-title" });
  const PAGE = 50;
  const showChunks = async (name, offset = 0) => {
    const page = await api(`${base()}/collections/${encodeURIComponent(name)}/chunks?offset=${offset}&limit=${PAGE}`);
    const items = page.data.map((c) =>
      h("li", {}, h("span", { class: "score" }, `${c.filename} #${c.index}`), " ", c.text));
    if (offset === 0) {
      listed.replaceChildren(h("h2", { id: "chunks-title" }, `Chunks of ${name}`),
        h("p", { class: "muted" }, `${page.total} chunks in stored order.`), h("ol", { class: "chunks" }));
    }
    listed.querySelector(".more")?.remove();
    listed.querySelector("ol").append(...items);
    const shown = offset + page.data.length;
    if (shown < page.total) {
      listed.append(h("button", { type: "button", class: "secondary more",
        onclick: () => showChunks(name, shown) }, `Show more (${shown} of ${page.total})`));
    }
    listed.hidden = false;
  };

  const reload = async () => {
    const data = (await api(`${base()}/collections`)).data;
    names.replaceChildren(...data.map((c) => h("option", { value: c.name })));
    list.replaceChildren(table(`Collections of serving ${servingId}`,
      ["Name", "Documents", "Chunks", "Chunk / overlap tokens", "Embedding model", ""],
      data.map((c) => [c.name, fmtNum(c.documents), fmtNum(c.chunks), `${c.chunk_tokens} / ${c.overlap_tokens}`,
        c.embedding_model, h("span", { class: "actions" },
          h("button", { type: "button", class: "secondary", "aria-label": `Show chunks of ${c.name}`,
            onclick: () => showChunks(c.name) }, "Chunks"),
          h("button", { type: "button", class: "danger", "aria-label": `Delete collection ${c.name}`,
          onclick: confirmThen(`Delete collection ${c.name} and its documents?`, async () => {
            await api(`${base()}/collections/${encodeURIComponent(c.name)}`, { method: "DELETE" });
            toast(`Collection ${c.name} deleted`);
            listed.hidden = true;
            reload();
          }) }, "Delete"))])));
  };

  uploadForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData();
    form.append("file", file.files[0]);
    form.append("vdb_collection_name", collection.value.trim());
    progress.hidden = false;
    progress.value = 0;
    result.textContent = "Uploading…";
    showError(uploadError, null);
    try {
      const done = await upload(`${base()}/create/rag`, form, (fraction) => {
        progress.value = fraction;
        if (fraction >= 1) result.textContent = "Uploaded; chunking and embedding…";
      });
      result.textContent = done.created
        ? `${done.filename}: ${done.chunks} chunks added to ${done.collection}.`
        : `${done.filename} was already in ${done.collection}.`;
      await reload();
    } catch (e) {
      result.textContent = "";
      showError(uploadError, e);
    } finally {
      progress.hidden = true;
    }
  });

  searchForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const found = await api(`${base()}/retrieve`, { method: "POST", body: {
        messages: [{ role: "user", content: query.value }],
        vdb_collection_name: searchIn.value.trim() || undefined, limit: 10, score_threshold: 0,
      } });
      showError(searchError, null);
      chunks.replaceChildren(...(found.points.length ? found.points.map((p) =>
        h("li", {}, h("span", { class: "score" }, p.score.toFixed(3)), " ", p.source))
        : [h("li", { class: "muted" }, "No chunk found.")]));
    } catch (e) {
      showError(searchError, e);
    }
  });

  if (servings.length > 1 || ctx.admin) {
    main.append(servingPicker(servings, servingId, (id) => {
      servingId = id;
      collection.value = searchIn.value = usual();
      listed.hidden = true;
      chunks.replaceChildren();
      reload();
    }));
  }
  main.append(list, listed, uploadForm, searchForm);
  await reload();
}
