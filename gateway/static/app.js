// Try-the-model page: upload an image, POST it to /predict, draw the returned boxes.
// Plain browser JavaScript on purpose: no build step, no CDN, works on an offline machine.
"use strict";

const KEY_STORAGE = "yolo-gateway-api-key";
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#0e9aa7", "#f032e6", "#9a6324"];
const TITLES = {
  400: "Bad request",
  401: "API key needed",
  404: "Not found",
  413: "Too large",
  415: "Not an image",
  422: "Invalid setting",
  503: "Backend unavailable",
  504: "Backend timed out",
};

const $ = (id) => document.getElementById(id);
const ui = {
  file: $("file"),
  drop: $("drop"),
  conf: $("conf"),
  confValue: $("conf-value"),
  iou: $("iou"),
  iouValue: $("iou-value"),
  version: $("version"),
  apiKey: $("api-key"),
  modelsStatus: $("models-status"),
  error: $("error"),
  summary: $("summary"),
  stage: $("stage"),
  photo: $("photo"),
  overlay: $("overlay"),
  table: $("detections"),
  compare: $("compare"),
};

const state = { file: null, photoUrl: null, body: null, controller: null, runs: [] };

function setStatus(value) {
  document.body.dataset.state = value;
}

function showError(title, message) {
  ui.error.replaceChildren(Object.assign(document.createElement("strong"), { textContent: title }), ` ${message}`);
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.error.replaceChildren();
}

function apiHeaders() {
  const key = ui.apiKey.value.trim();
  return key ? { "X-API-Key": key } : {};
}

// Non-2xx answers carry {"status": "error", "error": {"code", "message"}}; anything else gets a generic line.
async function errorOf(response) {
  const detail = await response.json().then(
    (body) => body.error,
    () => null,
  );
  const title = `${TITLES[response.status] || "Request failed"} (${response.status}${detail ? ` ${detail.code}` : ""}):`;
  return { title, message: detail?.message || response.statusText || "the gateway gave no reason" };
}

async function loadModels() {
  let response;
  try {
    response = await fetch("models", { headers: apiHeaders() });
  } catch {
    ui.modelsStatus.textContent = "Gateway unreachable: could not list the model versions.";
    ui.modelsStatus.className = "bad";
    return;
  }
  if (!response.ok) {
    const { title, message } = await errorOf(response);
    ui.modelsStatus.textContent = `Model versions unavailable. ${title} ${message}`;
    ui.modelsStatus.className = "bad";
    return;
  }
  const body = await response.json();
  const pinned = ui.version.value;
  const options = [new Option(`Not pinned (default v${body.default_version ?? "?"})`, "")];
  for (const v of body.versions) {
    options.push(new Option(`v${v.version}${v.is_default ? " (default)" : ""}`, v.version));
  }
  ui.version.replaceChildren(...options);
  ui.version.value = body.versions.some((v) => v.version === pinned) ? pinned : "";
  const described = body.versions.map(
    (v) => `v${v.version}${v.is_default ? " (default)" : ""}: ${v.workers_ready} worker${v.workers_ready === 1 ? "" : "s"} ready`,
  );
  ui.modelsStatus.textContent = `Model ${body.model} · ${described.join(" · ")}`;
  ui.modelsStatus.className = "muted";
}

function chooseFile(file) {
  if (!file) return;
  state.file = file;
  state.runs = [];
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photoUrl = URL.createObjectURL(file);
  ui.photo.src = state.photoUrl;
  clearResult();
  predict();
}

async function predict() {
  if (!state.file) return;
  state.controller?.abort();
  const controller = new AbortController();
  state.controller = controller;
  const params = new URLSearchParams({ conf: ui.conf.value, iou: ui.iou.value });
  if (ui.version.value) params.set("version", ui.version.value);
  const form = new FormData();
  form.append("file", state.file, state.file.name);
  setStatus("busy");
  ui.summary.textContent = `Detecting defects in ${state.file.name}…`;
  const started = performance.now();
  let response;
  try {
    response = await fetch(`predict?${params}`, {
      method: "POST",
      body: form,
      headers: apiHeaders(),
      signal: controller.signal,
    });
  } catch {
    if (controller.signal.aborted) return;
    fail("Gateway unreachable:", "the request did not reach the gateway. Is it running?");
    return;
  }
  if (controller.signal.aborted) return;
  if (!response.ok) {
    const { title, message } = await errorOf(response);
    if (!controller.signal.aborted) fail(title, message);
    return;
  }
  const body = await response.json().catch(() => null);
  if (controller.signal.aborted) return;
  if (!body?.detections) {
    fail("Unexpected answer:", "the gateway did not send detections (is something else answering on this address?)");
    return;
  }
  const roundTrip = performance.now() - started;
  show(body, roundTrip, { conf: ui.conf.value, iou: ui.iou.value });
}

// Forget the previous picture's boxes so they are never shown over another image.
function clearResult() {
  state.body = null;
  ui.overlay.getContext("2d").clearRect(0, 0, ui.overlay.width, ui.overlay.height);
  ui.overlay.dataset.boxCount = "0";
  ui.table.tBodies[0].replaceChildren();
  ui.table.hidden = true;
  fillCompare();
}

function fail(title, message) {
  clearResult();
  showError(title, message);
  ui.stage.hidden = true;
  ui.summary.textContent = `No result for ${state.file.name}.`;
  setStatus("error");
}

function show(body, roundTrip, params) {
  clearError();
  state.body = body;
  const version = body.model.version;
  const serverMs = body.timing_ms?.total;
  const count = body.detections.length;
  ui.summary.replaceChildren(
    `${state.file.name} (${body.image.width} × ${body.image.height}): ${count} detection${count === 1 ? "" : "s"} · answered by ${body.model.name} `,
    Object.assign(document.createElement("strong"), { id: "answered-version", textContent: `v${version}` }),
    ` · server ${serverMs?.toFixed(0) ?? "?"} ms · round trip ${roundTrip.toFixed(0)} ms`,
  );
  ui.stage.hidden = false;
  fillTable(body.detections);
  state.runs.unshift({ version, ...params, count, serverMs, roundTrip });
  state.runs.length = Math.min(state.runs.length, 10);
  fillCompare();
  draw();
  setStatus("done");
}

function cell(text) {
  return Object.assign(document.createElement("td"), { textContent: text });
}

function fillTable(detections) {
  const rows = detections.map((d, i) => {
    const row = document.createElement("tr");
    const swatch = Object.assign(document.createElement("span"), { className: "swatch" });
    swatch.style.background = colorOf(d.class_id);
    const name = cell(d.class);
    name.prepend(swatch);
    const [x1, y1, x2, y2] = d.bbox;
    row.append(
      cell(String(i + 1)),
      name,
      cell(d.confidence.toFixed(3)),
      cell(d.bbox.map((v) => Math.round(v)).join(", ")),
      cell(`${Math.round(x2 - x1)} × ${Math.round(y2 - y1)}`),
    );
    return row;
  });
  ui.table.tBodies[0].replaceChildren(...rows);
  ui.table.hidden = rows.length === 0;
}

function fillCompare() {
  const rows = state.runs.map((r) => {
    const row = document.createElement("tr");
    row.append(
      cell(`v${r.version}`),
      cell(Number(r.conf).toFixed(2)),
      cell(Number(r.iou).toFixed(2)),
      cell(String(r.count)),
      cell(r.serverMs?.toFixed(0) ?? "?"),
      cell(r.roundTrip.toFixed(0)),
    );
    return row;
  });
  ui.compare.querySelector("tbody").replaceChildren(...rows);
  ui.compare.hidden = rows.length === 0;
}

function colorOf(classId) {
  return COLORS[((classId % COLORS.length) + COLORS.length) % COLORS.length];
}

// The canvas uses the image's own pixel grid (bbox coordinates as returned) and CSS stretches it over the
// displayed picture; line width and font are scaled so labels stay legible however large the photo is.
function draw() {
  const body = state.body;
  if (!body) return;
  const canvas = ui.overlay;
  canvas.width = body.image.width;
  canvas.height = body.image.height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const scale = canvas.width / Math.max(1, ui.photo.clientWidth || canvas.width);
  const fontPx = Math.round(13 * scale);
  ctx.lineWidth = Math.max(1, 2 * scale);
  ctx.font = `600 ${fontPx}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  let drawn = 0;
  for (const d of body.detections) {
    const [x1, y1, x2, y2] = d.bbox;
    const color = colorOf(d.class_id);
    ctx.strokeStyle = color;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const label = `${d.class} ${(d.confidence * 100).toFixed(0)}%`;
    const pad = Math.round(3 * scale);
    const width = ctx.measureText(label).width + 2 * pad;
    const height = fontPx + 2 * pad;
    const top = y1 - height >= 0 ? y1 - height : y1;
    const left = Math.min(x1, canvas.width - width);
    ctx.fillStyle = color;
    ctx.fillRect(left, top, width, height);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, left + pad, top + pad);
    drawn += 1;
  }
  canvas.dataset.boxCount = String(drawn);
}

function bindSlider(input, output) {
  input.addEventListener("input", () => {
    output.textContent = Number(input.value).toFixed(2);
  });
  input.addEventListener("change", predict);
}

function init() {
  ui.apiKey.value = localStorage.getItem(KEY_STORAGE) || "";
  ui.apiKey.addEventListener("input", () => {
    const key = ui.apiKey.value.trim();
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  });
  ui.apiKey.addEventListener("change", predict);
  $("settings").addEventListener("submit", (event) => {
    event.preventDefault();
    predict();
  });
  ui.file.addEventListener("change", () => {
    chooseFile(ui.file.files[0]);
    ui.file.value = ""; // choosing the same file again still fires "change"
  });
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (event) => {
      event.preventDefault();
      ui.drop.classList.add("over");
    });
  }
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) ui.drop.classList.remove("over");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    ui.drop.classList.remove("over");
    chooseFile(event.dataTransfer.files[0]);
  });
  bindSlider(ui.conf, ui.confValue);
  bindSlider(ui.iou, ui.iouValue);
  ui.version.addEventListener("change", predict);
  new ResizeObserver(draw).observe(ui.photo);
  setStatus("idle");
  loadModels();
}

init();
