// Try-the-model page: choose a model and version, upload an image, POST it to /models/NAME/predict,
// draw what the model's task returns:
// boxes, mask outlines (segment), keypoints and skeleton (pose), rotated boxes (obb), a top-k list (classify).
// Plain browser JavaScript on purpose: no build step, no CDN, works on an offline machine.
"use strict";

const KEY_STORAGE = "yolo-gateway-api-key";
// Ultralytics' skeleton for the 17 COCO keypoints (1-based pairs); other keypoint sets are drawn as named dots.
const COCO_SKELETON = [
  [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
  [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
];
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
  model: $("model"),
  version: $("version"),
  apiKey: $("api-key"),
  modelsStatus: $("models-status"),
  driftStatus: $("drift-status"),
  error: $("error"),
  summary: $("summary"),
  stage: $("stage"),
  photo: $("photo"),
  overlay: $("overlay"),
  table: $("detections"),
  compare: $("compare"),
};

const state = { file: null, photoUrl: null, body: null, controller: null, runs: [], task: null, models: [] };

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
    ui.modelsStatus.textContent = "Gateway unreachable: could not list the models.";
    ui.modelsStatus.className = "bad";
    return;
  }
  if (!response.ok) {
    const { title, message } = await errorOf(response);
    ui.modelsStatus.textContent = `Models unavailable. ${title} ${message}`;
    ui.modelsStatus.className = "bad";
    return;
  }
  const body = await response.json();
  state.models = body.models;
  const chosen = ui.model.value || body.default_model;
  ui.model.replaceChildren(
    ...body.models.map((m) => new Option(`${m.name} (${m.task ?? "task unknown"})${m.serves_predict ? " · default" : ""}`, m.name)),
  );
  ui.model.value = body.models.some((m) => m.name === chosen) ? chosen : body.default_model;
  showModel();
}

// The chosen model's versions and task: the version list, which settings apply, the status line.
function showModel() {
  const model = state.models.find((m) => m.name === ui.model.value);
  if (!model) return;
  state.task = model.task;
  // A classifier takes no confidence or IoU threshold (the gateway would refuse them with 422).
  for (const field of document.querySelectorAll(".box-only")) field.hidden = model.task === "classify";
  const pinned = ui.version.value;
  const options = [new Option(`Not pinned (default v${model.default_version ?? "?"})`, "")];
  for (const v of model.versions) {
    options.push(new Option(`v${v.version}${v.is_default ? " (default)" : ""}`, v.version));
  }
  ui.version.replaceChildren(...options);
  ui.version.value = model.versions.some((v) => v.version === pinned) ? pinned : "";
  const described = model.versions.map(
    (v) => `v${v.version}${v.is_default ? " (default)" : ""}: ${v.workers_ready} worker${v.workers_ready === 1 ? "" : "s"} ready`,
  );
  ui.modelsStatus.textContent = `Model ${model.name} (${model.task ?? "task unknown"}) · ${described.join(" · ")}`;
  ui.modelsStatus.className = "muted";
  showDrift(model.name);
}

// Each version's drift state (GET /models/NAME/drift): ok, warning (the pictures changed), critical (the
// answers changed) or no reference, with the signal of the newest alarm.
async function showDrift(name) {
  let body;
  try {
    const response = await fetch(`models/${encodeURIComponent(name)}/drift`);
    if (!response.ok) throw new Error(String(response.status));
    body = await response.json();
  } catch {
    ui.driftStatus.textContent = "Drift: unavailable";
    return;
  }
  if (name !== ui.model.value) return; // another model was chosen meanwhile
  const described = body.versions.map((v) => {
    const state = v.state === "no_reference" ? "no reference" : v.state;
    const last = v.alarms.at(-1);
    const alarm = last ? `: ${last.signal} at request ${last.at_request}` : "";
    return `v${v.version} ${state}${alarm} (${v.requests} requests watched)`;
  });
  ui.driftStatus.textContent = `Drift: ${described.join(" · ")}`;
  const worst = body.versions.some((v) => v.state === "critical") ? "critical" : body.versions.some((v) => v.state === "warning") ? "warning" : "";
  ui.driftStatus.className = worst ? `drift-${worst}` : "muted";
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
  const params = new URLSearchParams(state.task === "classify" ? {} : { conf: ui.conf.value, iou: ui.iou.value });
  if (ui.version.value) params.set("version", ui.version.value);
  const form = new FormData();
  form.append("file", state.file, state.file.name);
  setStatus("busy");
  ui.summary.textContent = `Running the model on ${state.file.name}…`;
  const started = performance.now();
  let response;
  try {
    // Until the model list has loaded (or when it cannot), the default model answers.
    const route = ui.model.value ? `models/${encodeURIComponent(ui.model.value)}/predict` : "predict";
    response = await fetch(`${route}?${params}`, {
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
  if (!body?.detections && !body?.classifications) {
    fail("Unexpected answer:", "the gateway sent no prediction (is something else answering on this address?)");
    return;
  }
  const roundTrip = performance.now() - started;
  const sent = state.task === "classify" ? { conf: null, iou: null } : { conf: ui.conf.value, iou: ui.iou.value };
  show(body, roundTrip, sent);
}

// Forget the previous picture's boxes so they are never shown over another image.
function clearResult() {
  state.body = null;
  ui.overlay.getContext("2d").clearRect(0, 0, ui.overlay.width, ui.overlay.height);
  for (const key of ["boxCount", "polygonCount", "keypointCount", "rotatedCount", "classCount"]) {
    ui.overlay.dataset[key] = "0";
  }
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
  const items = body.detections ?? body.classifications;
  const count = items.length;
  const noun = body.classifications ? "class" : "detection";
  const plural = count === 1 ? noun : `${noun}${noun === "class" ? "es" : "s"}`;
  ui.summary.replaceChildren(
    `${state.file.name} (${body.image.width} × ${body.image.height}): ${count} ${plural} · ${body.task} · answered by ${body.model.name} `,
    Object.assign(document.createElement("strong"), { id: "answered-version", textContent: `v${version}` }),
    ` · server ${serverMs?.toFixed(0) ?? "?"} ms · round trip ${roundTrip.toFixed(0)} ms`,
  );
  ui.stage.hidden = false;
  fillTable(items);
  state.runs.unshift({ model: body.model.name, version, ...params, count, serverMs, roundTrip });
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
    const [x1, y1, x2, y2] = d.bbox ?? [];
    row.append(
      cell(String(i + 1)),
      name,
      cell(d.confidence.toFixed(3)),
      cell(d.bbox ? d.bbox.map((v) => Math.round(v)).join(", ") : "—"),
      cell(d.bbox ? `${Math.round(x2 - x1)} × ${Math.round(y2 - y1)}` : "—"),
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
      cell(`${r.model} v${r.version}`),
      cell(r.conf === null ? "—" : Number(r.conf).toFixed(2)),
      cell(r.iou === null ? "—" : Number(r.iou).toFixed(2)),
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

// The canvas uses the image's own pixel grid (coordinates as returned) and CSS stretches it over the
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
  const counts = { boxCount: 0, polygonCount: 0, keypointCount: 0, rotatedCount: 0, classCount: 0 };
  // A box's label sits above its anchor when there is room; a list's (below = true) starts at it.
  const label = (text, x, y, color, below = false) => {
    const pad = Math.round(3 * scale);
    const width = ctx.measureText(text).width + 2 * pad;
    const height = fontPx + 2 * pad;
    const top = !below && y - height >= 0 ? y - height : y;
    const left = Math.max(0, Math.min(x, canvas.width - width));
    ctx.fillStyle = color;
    ctx.fillRect(left, top, width, height);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, left + pad, top + pad);
    return height;
  };
  for (const d of body.detections ?? []) {
    const color = colorOf(d.class_id);
    ctx.strokeStyle = color;
    let anchor = d.bbox;
    for (const polygon of d.polygons ?? []) {
      outline(ctx, polygon, color, 0.25);
      counts.polygonCount += 1;
    }
    if (d.corners) {
      outline(ctx, d.corners, color, 0);
      anchor = d.corners.reduce((a, p) => (p[1] < a[1] ? p : a));
      counts.rotatedCount += 1;
    } else {
      const [x1, y1, x2, y2] = d.bbox;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    }
    if (d.keypoints) counts.keypointCount += drawKeypoints(ctx, d.keypoints, color, scale);
    label(`${d.class} ${(d.confidence * 100).toFixed(0)}%`, anchor[0], anchor[1], color);
    counts.boxCount += 1;
  }
  let y = 0;
  for (const c of body.classifications ?? []) {
    y += label(`${c.class} ${(c.confidence * 100).toFixed(1)}%`, 0, y, colorOf(c.class_id), true) + 2;
    counts.classCount += 1;
  }
  Object.assign(canvas.dataset, Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, String(v)])));
}

function outline(ctx, points, color, fillAlpha) {
  if (points.length < 2) return;
  ctx.beginPath();
  ctx.moveTo(points[0][0], points[0][1]);
  for (const [x, y] of points.slice(1)) ctx.lineTo(x, y);
  ctx.closePath();
  if (fillAlpha > 0) {
    ctx.globalAlpha = fillAlpha;
    ctx.fillStyle = color;
    ctx.fill();
    ctx.globalAlpha = 1;
  }
  ctx.stroke();
}

// Visible keypoints as named dots, joined by the COCO skeleton when there are 17; returns how many were drawn.
function drawKeypoints(ctx, keypoints, color, scale) {
  const shown = (k) => k.confidence === null || k.confidence >= 0.5;
  const visible = keypoints.filter(shown);
  if (keypoints.length === 17) {
    ctx.beginPath();
    for (const [a, b] of COCO_SKELETON) {
      const [p, q] = [keypoints[a - 1], keypoints[b - 1]];
      if (shown(p) && shown(q)) {
        ctx.moveTo(p.x, p.y);
        ctx.lineTo(q.x, q.y);
      }
    }
    ctx.stroke();
  }
  const radius = Math.max(2, 3 * scale);
  for (const k of visible) {
    ctx.beginPath();
    ctx.arc(k.x, k.y, radius, 0, 2 * Math.PI);
    ctx.fillStyle = "#fff";
    ctx.fill();
    ctx.stroke();
    ctx.fillStyle = color;
    ctx.fillText(k.name, k.x + radius + 1, k.y + radius + 1);
  }
  return visible.length;
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
  ui.model.addEventListener("change", () => {
    ui.version.value = ""; // versions belong to one model
    clearResult();
    showModel();
    predict();
  });
  ui.version.addEventListener("change", predict);
  new ResizeObserver(draw).observe(ui.photo);
  setStatus("idle");
  loadModels();
}

init();
