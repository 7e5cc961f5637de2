// What several pages share: choosing a serving, and how to call it from code.

import { servingBase } from "../api.js";
import { field, h, select } from "../dom.js";

export function servingPicker(servings, selected, onChange) {
  const control = select(
    servings.map((sv) => [String(sv.id), `${sv.id} · ${sv.name} (${sv.model})`]),
    { name: "serving" },
  );
  if (selected != null) control.value = String(selected);
  control.addEventListener("change", () => onChange(Number(control.value)));
  return field("Serving", control);
}

export function endpointUrl(serving) {
  return `${location.origin}${servingBase(serving.id)}`;
}

// The enterprise gateway's `requests` example, for this serving.
export function requestsSnippet(serving) {
  return [
    "import requests",
    "",
    `url = "${endpointUrl(serving)}/chat/completions"`,
    'headers = {"Authorization": "Bearer YOUR_API_KEY", "x-genos-user-id": "YOUR_USER_ID"}',
    "body = {",
    `    "model": "${serving.model}",`,
    '    "messages": [{"role": "user", "content": "Hello!"}],',
    "}",
    "reply = requests.post(url, headers=headers, json=body, timeout=120).json()",
    'print(reply["choices"][0]["message"]["content"])',
  ].join("\n");
}

export function pickInitial(servings, wanted) {
  const ids = servings.map((sv) => sv.id);
  return ids.includes(wanted) ? wanted : ids[0];
}

export function emptyNotice(text) {
  return h("p", { class: "notice" }, text);
}
