// The console's only way to the server: the token from sign-in, kept in sessionStorage (it
// dies with the tab), sent as a Bearer header; failures raised with the OpenAI envelope's
// message.

const TOKEN = "llmserve.console.token";

export const auth = {
  get token() {
    return sessionStorage.getItem(TOKEN);
  },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN, value);
    else sessionStorage.removeItem(TOKEN);
  },
};

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.type = error?.type;
  }
}

async function failure(response) {
  let error = null;
  try {
    error = (await response.json()).error;
  } catch {
    // Not JSON: the status says enough.
  }
  return new ApiError(response.status, error);
}

function headers(token, json) {
  const out = { Authorization: `Bearer ${token ?? auth.token}` };
  if (json) out["Content-Type"] = "application/json";
  return out;
}

export async function api(path, { method = "GET", body, token, extraHeaders, signal } = {}) {
  const response = await fetch(path, {
    method,
    headers: { ...headers(token, body !== undefined), ...extraHeaders },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// POSTs `body` and yields each `data:` event of the SSE reply as parsed JSON, until [DONE].
export async function* sse(path, { body, token, extraHeaders, signal } = {}) {
  const response = await fetch(path, {
    method: "POST",
    headers: { ...headers(token, true), ...extraHeaders },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new ApiError(200, parsed.error);
        yield parsed;
      }
    }
  }
}

// A multipart upload with progress (fetch cannot report upload progress; XHR can).
export function upload(path, form, onProgress, token) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("Authorization", `Bearer ${token ?? auth.token}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body?.error));
    };
    xhr.onerror = () => reject(new ApiError(0, { message: "Network error" }));
    xhr.send(form);
  });
}

// Where a serving's public API lives (the enterprise gateway's route).
export function servingBase(servingId) {
  return `/api/gateway/rep/serving/${servingId}/v1`;
}
