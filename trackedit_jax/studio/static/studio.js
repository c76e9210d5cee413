// trackedit studio: the page writes an edit spec; the server (the trackedit library) turns it into target
// tracks and a report. Positions are image pixels (OpenCV: pixel (i, j) has its centre at x = j, y = i);
// on a canvas scaled by s, pixel x is drawn at (x + 0.5) * s.
"use strict";

const TOKEN = document.querySelector('meta[name="studio-token"]').content;
const $ = (id) => document.getElementById(id);
const CAMERA_FIELDS = ["arc", "dolly", "pan", "tilt", "zoom"];

const S = {
  scene: null, scale: 1, frame: 0, images: [], mode: "box",
  objects: [], current: -1, loaded: null,
  camera: { arc: 0, dolly: 0, pan: 0, tilt: 0, zoom: 1, stabilize: false, static: false },
  preview: null, previewYaml: null, seq: 0, timer: null, drag: null,
  job: null, resultImages: [], playing: null, drawn: [],
};

// ------------------------------------------------------------------------------------------ server
async function api(method, path, body) {
  const opt = { method, headers: { "X-Studio-Token": TOKEN } };
  if (body !== undefined) { opt.body = JSON.stringify(body); opt.headers["Content-Type"] = "application/json"; }
  const r = await fetch(path, opt);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}
function loadImage(src) {
  return new Promise((ok, fail) => { const im = new Image(); im.onload = () => ok(im); im.onerror = fail; im.src = src; });
}
function showError(msg) { const e = $("error"); e.textContent = msg || ""; e.hidden = !msg; }

// ------------------------------------------------------------------------------------------ YAML
const YAML_WORDS = /^(y|n|yes|no|on|off|true|false|null|~)$/i;
function flow(v) {
  if (v === null || v === undefined) return "null";
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "number") { if (!Number.isFinite(v)) throw new Error(`not a finite number: ${v}`); return String(v); }
  if (typeof v === "string") return /^[A-Za-z_][A-Za-z0-9_]*$/.test(v) && !YAML_WORDS.test(v) ? v : JSON.stringify(v);
  if (Array.isArray(v)) return "[" + v.map(flow).join(", ") + "]";
  return "{" + Object.entries(v).map(([k, x]) => `${flow(k)}: ${flow(x)}`).join(", ") + "}";
}
function toYaml(spec) {
  const out = [];
  if (spec.camera && spec.camera.length) { out.push("camera:"); for (const op of spec.camera) out.push("  - " + flow(op)); }
  if (spec.objects && spec.objects.length) {
    out.push("objects:");
    for (const o of spec.objects) {
      out.push("  - select: " + flow(o.select));
      out.push("    ops:");
      for (const op of o.ops) out.push("      - " + flow(op));
    }
  }
  return out.join("\n") + (out.length ? "\n" : "");
}

// ------------------------------------------------------------------------------------------ the spec
const r4 = (x) => Math.round(x * 1e4) / 1e4;
function objectOps(o) {
  if (o.remove) return [{ op: "remove" }];
  const ops = [];
  const keys = [...o.keys].sort((a, b) => a.frame - b.frame);
  keys.forEach((k, i) => {
    // piecewise-linear offsets: the first key holds from frame 0, each next one ramps in between keys
    if (i === 0) ops.push({ op: "translate", offset: k.offset.map(r4), ease: "constant" });
    else ops.push({ op: "translate", offset: k.offset.map((x, j) => r4(x - keys[i - 1].offset[j])), start: keys[i - 1].frame, end: k.frame });
  });
  if (o.rotate) ops.push({ op: "rotate", degrees: o.rotate });
  if (o.scale !== 1) ops.push({ op: "scale", factor: o.scale });
  if (o.depth !== 1) ops.push({ op: "depth", factor: o.depth });
  if (o.retime !== 1) ops.push({ op: "retime", speed: o.retime });
  if (o.duplicate) ops.push({ op: "duplicate", offset: [o.dupX, 0, 0] });
  return ops;
}
function cameraOps() {
  const c = S.camera, ops = [];
  if (c.stabilize) ops.push({ op: "stabilize" });
  if (c.static) ops.push({ op: "static", frame: 0 });
  if (c.arc) ops.push({ op: "arc", degrees: c.arc });
  if (c.pan) ops.push({ op: "pan", degrees: c.pan });
  if (c.tilt) ops.push({ op: "tilt", degrees: c.tilt });
  if (c.dolly) ops.push({ op: "dolly", distance: c.dolly });
  if (c.zoom !== 1) ops.push({ op: "zoom", factor: c.zoom });
  return ops;
}
function buildSpec() {
  const base = S.loaded || {};
  const camera = [...(base.camera || []), ...cameraOps()];
  const objects = [...(base.objects || [])];
  for (const o of S.objects) { const ops = objectOps(o); if (ops.length) objects.push({ select: o.select, ops }); }
  const spec = {};
  if (camera.length) spec.camera = camera;
  if (objects.length) spec.objects = objects;
  return spec;
}

function changed() {
  const yaml = toYaml(buildSpec());
  $("spec").value = yaml;
  clearTimeout(S.timer);
  S.timer = setTimeout(() => requestPreview(yaml), 120);
  document.body.dataset.previewState = "pending";
  renderObjects();
  draw();
}

async function requestPreview(yaml) {
  const seq = ++S.seq;
  if (!yaml) {
    S.preview = null; S.previewYaml = ""; showError(""); setReport(null);
    document.body.dataset.previewState = "ready"; draw(); return;
  }
  try {
    const res = await api("POST", "/api/preview", { spec: yaml });
    if (seq !== S.seq) return;
    S.preview = res; S.previewYaml = yaml; showError(""); setReport(res.report);
    document.body.dataset.previewState = "ready";
  } catch (e) {
    if (seq !== S.seq) return;
    S.preview = null; S.previewYaml = null; showError(e.message);
    document.body.dataset.previewState = "error";
  }
  draw();
}
function setReport(rep) {
  const el = $("report");
  el.textContent = rep ? rep.text : "no edit yet";
  el.className = rep && rep.warnings.length ? "warn" : "";
}

// ------------------------------------------------------------------------------------------ selections
function projected(i) { return S.scene.source.uv[S.frame][i]; }
function inFront(i) { return S.scene.source.front[S.frame][i] === 1; }
function selectedIds(sel) {
  const n = S.scene.num_points, out = [];
  const f = sel.frame || 0, src = S.scene.source;
  for (let i = 0; i < n; i++) {
    const [x, y] = src.uv[f][i];
    let ok = src.front[f][i] === 1;
    if (sel.box) ok = ok && x >= sel.box[0] && x <= sel.box[2] && y >= sel.box[1] && y <= sel.box[3];
    if (sel.ids) ok = sel.ids.includes(i);
    if (sel.group !== undefined) ok = S.scene.groups[i] === sel.group;
    if (ok) out.push(i);
  }
  return out;
}
function insidePolygon(x, y, poly) {
  let inside = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [xi, yi] = poly[i], [xj, yj] = poly[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}
function addObject(select) {
  S.objects.push({ select, ids: null, keys: [], rotate: 0, scale: 1, depth: 1, retime: 1, duplicate: false, dupX: 0.5, remove: false });
  S.current = S.objects.length - 1;
  S.objects[S.current].ids = selectedIds(select);
  changed();
}

// world offset of a drag (dx, dy) pixels at the selection's median depth on the current frame
function dragOffset(o, dx, dy) {
  const f = S.frame, K = S.scene.intrinsics[f], E = S.scene.extrinsics[f];
  const depths = o.ids.map((i) => S.scene.source.depth[f][i]).filter((z) => z > 1e-3).sort((a, b) => a - b);
  if (!depths.length) return null;
  const z = depths[Math.floor(depths.length / 2)];
  const yc = (dy * z) / K[1][1];
  const c = [(dx * z - K[0][1] * yc) / K[0][0], yc, 0];
  return [0, 1, 2].map((j) => E[0][j] * c[0] + E[1][j] * c[1] + E[2][j] * c[2]); // R^T c
}
function offsetAt(o, frame) {
  const keys = [...o.keys].sort((a, b) => a.frame - b.frame);
  if (!keys.length) return [0, 0, 0];
  if (frame <= keys[0].frame) return keys[0].offset;
  for (let i = 1; i < keys.length; i++) {
    if (frame <= keys[i].frame) {
      const t = (frame - keys[i - 1].frame) / (keys[i].frame - keys[i - 1].frame);
      return keys[i].offset.map((x, j) => keys[i - 1].offset[j] + t * (x - keys[i - 1].offset[j]));
    }
  }
  return keys[keys.length - 1].offset;
}

// ------------------------------------------------------------------------------------------ drawing
function canvasXY(ev) {
  const c = $("source"), r = c.getBoundingClientRect();
  const cx = ((ev.clientX - r.left) * c.width) / r.width, cy = ((ev.clientY - r.top) * c.height) / r.height;
  return [cx / S.scale - 0.5, cy / S.scale - 0.5]; // image pixels
}
const hex = (c) => "#" + c.toString(16).padStart(6, "0");
function dot(ctx, x, y, color, r, faint) {
  ctx.globalAlpha = faint ? 0.35 : 1;
  ctx.fillStyle = color;
  ctx.beginPath(); ctx.arc((x + 0.5) * S.scale, (y + 0.5) * S.scale, r, 0, 2 * Math.PI); ctx.fill();
  ctx.globalAlpha = 1;
}
function inImage(x, y) { return x >= -0.5 && x <= S.scene.width - 0.5 && y >= -0.5 && y <= S.scene.height - 0.5; }
const GROUP_COLORS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6"];

function drawSource() {
  const c = $("source"), ctx = c.getContext("2d"), f = S.frame, src = S.scene.source;
  ctx.clearRect(0, 0, c.width, c.height);
  if (S.images[f]) ctx.drawImage(S.images[f], 0, 0, c.width, c.height);
  const cur = S.objects[S.current];
  const sel = new Set(cur ? cur.ids : []);
  const groups = $("show-groups").checked;
  for (let i = 0; i < S.scene.num_points; i++) {
    if (src.front[f][i] !== 1) continue;
    let [x, y] = src.uv[f][i];
    if (S.drag && S.drag.kind === "move" && sel.has(i)) { x += S.drag.dx; y += S.drag.dy; }
    if (!inImage(x, y)) continue;
    const color = groups ? (S.scene.groups[i] >= 0 ? GROUP_COLORS[S.scene.groups[i] % 8] : "#888") : hex(src.color[f][i]);
    if (sel.has(i)) dot(ctx, x, y, "#fff", 3.5, false);
    dot(ctx, x, y, color, 2.2, src.visible[f][i] !== 1);
  }
  ctx.strokeStyle = "#fff"; ctx.lineWidth = 1.5;
  if (S.drag && S.drag.kind === "box") {
    const [x0, y0] = S.drag.start, [x1, y1] = S.drag.end;
    ctx.strokeRect((x0 + 0.5) * S.scale, (y0 + 0.5) * S.scale, (x1 - x0) * S.scale, (y1 - y0) * S.scale);
  }
  if (S.drag && S.drag.kind === "lasso") {
    ctx.beginPath();
    S.drag.poly.forEach(([x, y], k) => (k ? ctx.lineTo : ctx.moveTo).call(ctx, (x + 0.5) * S.scale, (y + 0.5) * S.scale));
    ctx.stroke();
  }
}

function drawPreview() {
  const c = $("preview"), ctx = c.getContext("2d"), f = S.frame;
  ctx.clearRect(0, 0, c.width, c.height);
  if (S.images[f]) ctx.drawImage(S.images[f], 0, 0, c.width, c.height);
  const P = S.preview ? S.preview.target : S.scene.source;
  const n = S.preview ? S.preview.num_points : S.scene.num_points;
  const drawn = [];
  for (let j = 0; j < n; j++) {
    if (P.front[f][j] !== 1) continue;
    const [x, y] = P.uv[f][j];
    if (!inImage(x, y)) continue;
    dot(ctx, x, y, hex(P.color[f][j]), 2.2, P.visible[f][j] !== 1);
    drawn.push([j, (x + 0.5) * S.scale, (y + 0.5) * S.scale]);
  }
  S.drawn = drawn;
  c.dataset.frame = String(f);
  c.dataset.scale = String(S.scale);
  c.dataset.drawn = JSON.stringify(drawn);
}

function drawResult() {
  if (!S.resultImages.length) return;
  const c = $("result"), ctx = c.getContext("2d");
  const im = S.resultImages[Math.min(S.frame, S.resultImages.length - 1)];
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(im, 0, 0, c.width, c.height);
}

function draw() {
  if (!S.scene) return;
  $("frame").value = S.frame;
  $("frame-label").textContent = `frame ${S.frame} / ${S.scene.frames - 1}`;
  drawSource(); drawPreview(); drawResult();
}

// ------------------------------------------------------------------------------------------ panels
function renderObjects() {
  const ul = $("objects");
  ul.innerHTML = "";
  S.objects.forEach((o, k) => {
    const li = document.createElement("li");
    li.className = k === S.current ? "current" : "";
    li.textContent = `#${k}: ${flow(o.select)} (${o.ids.length} points, ${o.keys.length} keys)`;
    const del = document.createElement("button");
    del.textContent = "delete";
    del.onclick = (ev) => { ev.stopPropagation(); S.objects.splice(k, 1); S.current = S.objects.length - 1; changed(); };
    li.appendChild(del);
    li.onclick = () => { S.current = k; renderObjects(); showObjectFields(); draw(); };
    ul.appendChild(li);
  });
  showObjectFields();
}
function showObjectFields() {
  const o = S.objects[S.current];
  $("object-fields").hidden = !o;
  if (!o) return;
  $("o-rotate").value = o.rotate; $("o-scale").value = o.scale; $("o-depth").value = o.depth;
  $("o-retime").value = o.retime; $("o-duplicate").checked = o.duplicate; $("o-dup-x").value = o.dupX;
  $("o-remove").checked = o.remove;
  $("keys").textContent = o.keys.length
    ? "path keys: " + o.keys.map((k) => `frame ${k.frame}: [${k.offset.map((x) => x.toFixed(2)).join(", ")}]`).join("; ")
    : "drag the selection (drag mode) to set its position at the current frame";
}
function bindObjectField(id, key, parse) {
  $(id).addEventListener("change", () => {
    const o = S.objects[S.current];
    if (!o) return;
    const v = parse($(id));
    if (typeof v === "number" && !Number.isFinite(v)) return;
    o[key] = v; changed();
  });
}

// ------------------------------------------------------------------------------------------ mouse
function onDown(ev) {
  const p = canvasXY(ev);
  if (S.mode === "box") S.drag = { kind: "box", start: p, end: p };
  else if (S.mode === "lasso") S.drag = { kind: "lasso", poly: [p] };
  else if (S.mode === "move" && S.objects[S.current]) S.drag = { kind: "move", start: p, dx: 0, dy: 0 };
  else if (S.mode === "group") pickGroup(p);
  draw();
}
function onMove(ev) {
  if (!S.drag) return;
  const p = canvasXY(ev);
  if (S.drag.kind === "box") S.drag.end = p;
  if (S.drag.kind === "lasso") S.drag.poly.push(p);
  if (S.drag.kind === "move") { S.drag.dx = p[0] - S.drag.start[0]; S.drag.dy = p[1] - S.drag.start[1]; }
  draw();
}
function onUp(ev) {
  if (!S.drag) return;
  const d = S.drag;
  S.drag = null;
  if (d.kind === "box") {
    const p = canvasXY(ev);
    const box = [Math.min(d.start[0], p[0]), Math.min(d.start[1], p[1]), Math.max(d.start[0], p[0]), Math.max(d.start[1], p[1])].map((x) => Math.round(x * 10) / 10);
    if (box[2] - box[0] >= 1 && box[3] - box[1] >= 1) addObject({ box, frame: S.frame });
  } else if (d.kind === "lasso" && d.poly.length > 2) {
    const ids = [];
    for (let i = 0; i < S.scene.num_points; i++) {
      const [x, y] = projected(i);
      if (inFront(i) && insidePolygon(x, y, d.poly)) ids.push(i);
    }
    if (ids.length) addObject({ ids, frame: S.frame });
  } else if (d.kind === "move" && (d.dx || d.dy)) {
    const o = S.objects[S.current];
    const delta = dragOffset(o, d.dx, d.dy);
    if (delta) {
      const base = offsetAt(o, S.frame);
      const offset = base.map((x, j) => x + delta[j]);
      const k = o.keys.findIndex((key) => key.frame === S.frame);
      if (k >= 0) o.keys[k].offset = offset; else o.keys.push({ frame: S.frame, offset });
      changed();
    }
  }
  draw();
}
function pickGroup([x, y]) {
  let best = -1, bestD = Infinity;
  for (let i = 0; i < S.scene.num_points; i++) {
    if (!inFront(i) || S.scene.groups[i] < 0) continue;
    const [u, v] = projected(i), dd = (u - x) ** 2 + (v - y) ** 2;
    if (dd < bestD) { bestD = dd; best = i; }
  }
  if (best >= 0) addObject({ group: S.scene.groups[best] });
}

// ------------------------------------------------------------------------------------------ spec files
async function adoptYaml(text) {
  try {
    const res = await api("POST", "/api/preview", { spec: text });
    S.loaded = res.spec; S.objects = []; S.current = -1;
    S.camera = { arc: 0, dolly: 0, pan: 0, tilt: 0, zoom: 1, stabilize: false, static: false };
    syncCameraInputs();
    showError("");
    changed();
  } catch (e) {
    showError(e.message);
    document.body.dataset.previewState = "error";
  }
}
function syncCameraInputs() {
  for (const k of CAMERA_FIELDS) { $("c-" + k).value = S.camera[k]; $("c-" + k).nextElementSibling.textContent = S.camera[k]; }
  $("c-stabilize").checked = S.camera.stabilize; $("c-static").checked = S.camera.static;
}
function download() {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([$("spec").value], { type: "text/yaml" }));
  a.download = "edit.yaml";
  document.body.appendChild(a); a.click(); a.remove();
}

// ------------------------------------------------------------------------------------------ edit jobs
async function runJob() {
  showError("");
  try {
    const job = await api("POST", "/api/jobs", { spec: $("spec").value, steps: $("steps").value === "" ? null : Number($("steps").value), seed: Number($("seed").value) });
    S.job = job; $("run").disabled = true; $("cancel").disabled = false;
    pollJob();
  } catch (e) { showError(e.message); }
}
async function pollJob() {
  if (!S.job) return;
  const j = await api("GET", `/api/jobs/${S.job.id}`);
  S.job = j;
  if (j.state !== "done") document.body.dataset.jobState = j.state;
  $("progress").max = Math.max(j.total, 1); $("progress").value = j.done;
  $("job-status").textContent = `job ${j.id}: ${j.state} - ${j.stage}` + (j.total ? ` ${j.done}/${j.total}` : "") + ` (${j.elapsed_s.toFixed(1)} s)` + (j.error ? `: ${j.error}` : "");
  if (j.state === "queued" || j.state === "running") { setTimeout(pollJob, 400); return; }
  $("run").disabled = false; $("cancel").disabled = true;
  if (j.error) showError(j.error);
  if (j.state === "done") {
    S.resultImages = await Promise.all([...Array(S.scene.frames).keys()].map((i) => loadImage(`/api/jobs/${j.id}/frame/${i}.png?token=${TOKEN}`).catch(() => null)));
    S.resultImages = S.resultImages.filter(Boolean);
    $("result-view").hidden = false;
    $("result-links").innerHTML = j.files.map((f) => `<a href="/api/jobs/${j.id}/file/${f}?token=${TOKEN}" download>${f}</a>`).join(" ");
    $("job-status").textContent += ` -> ${j.out_dir}`;
    draw();
    document.body.dataset.jobState = "done";
  }
}

// ------------------------------------------------------------------------------------------ start
async function main() {
  S.scene = await api("GET", "/api/scene");
  const sc = S.scene;
  $("scene-name").textContent = `${sc.name}: ${sc.frames} frames, ${sc.width} x ${sc.height}, ${sc.num_points} tracks`;
  S.scale = 448 / Math.max(sc.width, sc.height);
  for (const id of ["source", "preview", "result"]) { $(id).width = Math.round(sc.width * S.scale); $(id).height = Math.round(sc.height * S.scale); }
  $("frame").max = sc.frames - 1;
  S.images = await Promise.all([...Array(sc.frames).keys()].map((i) => loadImage(`/api/frame/${i}.png?token=${TOKEN}`)));
  const c = $("source");
  c.addEventListener("mousedown", onDown);
  window.addEventListener("mousemove", onMove);
  window.addEventListener("mouseup", onUp);
  $("frame").addEventListener("input", () => { S.frame = Number($("frame").value); draw(); });
  $("play").onclick = () => {
    if (S.playing) { clearInterval(S.playing); S.playing = null; return; }
    S.playing = setInterval(() => { S.frame = (S.frame + 1) % sc.frames; draw(); }, 1000 / (sc.fps || 8));
  };
  for (const r of document.querySelectorAll('input[name="mode"]')) r.addEventListener("change", () => { S.mode = r.value; });
  $("show-groups").addEventListener("change", draw);
  for (const k of CAMERA_FIELDS) {
    $("c-" + k).addEventListener("input", () => { S.camera[k] = Number($("c-" + k).value); $("c-" + k).nextElementSibling.textContent = S.camera[k]; changed(); });
  }
  $("c-stabilize").addEventListener("change", () => { S.camera.stabilize = $("c-stabilize").checked; changed(); });
  $("c-static").addEventListener("change", () => { S.camera.static = $("c-static").checked; changed(); });
  bindObjectField("o-rotate", "rotate", (e) => Number(e.value));
  bindObjectField("o-scale", "scale", (e) => Number(e.value));
  bindObjectField("o-depth", "depth", (e) => Number(e.value));
  bindObjectField("o-retime", "retime", (e) => Number(e.value));
  bindObjectField("o-dup-x", "dupX", (e) => Number(e.value));
  bindObjectField("o-duplicate", "duplicate", (e) => e.checked);
  bindObjectField("o-remove", "remove", (e) => e.checked);
  $("apply-yaml").onclick = () => adoptYaml($("spec").value);
  $("load").addEventListener("change", async () => { const f = $("load").files[0]; if (f) adoptYaml(await f.text()); $("load").value = ""; });
  $("download").onclick = download;
  $("reset").onclick = () => { S.loaded = null; S.objects = []; S.current = -1; S.camera = { arc: 0, dolly: 0, pan: 0, tilt: 0, zoom: 1, stabilize: false, static: false }; syncCameraInputs(); changed(); };
  $("run").onclick = runJob;
  $("cancel").onclick = async () => { if (S.job) await api("POST", `/api/jobs/${S.job.id}/cancel`); };
  syncCameraInputs();
  $("status").textContent = `model: ${sc.checkpoint}`;
  document.body.dataset.ready = "1";
  changed();
}

// what the tests read: the spec, the YAML shown and the drawn preview positions (canvas pixels)
window.studio = {
  state: S,
  spec: buildSpec,
  yaml: () => $("spec").value,
  previewYaml: () => S.previewYaml,
  drawnTarget: () => S.drawn,
  setFrame: (f) => { S.frame = f; draw(); },
};
main().catch((e) => showError(String(e.message || e)));
