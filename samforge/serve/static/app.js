// samforge annotate: the page. Plain JS, no build step. Talks to the JSON API of samforge/serve/app.py.
"use strict";

const PALETTE = [[230, 25, 75], [60, 180, 75], [255, 225, 25], [245, 130, 48], [145, 30, 180], [70, 240, 240],
  [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128]];
const MASK_COLOR = [30, 144, 255, 150];     // the mask of the current prompts
const PROPOSAL_ALPHA = 90;
const DRAG_PIXELS = 6;                       // a press that moves further draws a box

const S = {
  config: null, images: [], index: -1, name: null, image: null,
  points: [], box: null, history: [],        // prompts, and the order they were added (for undo)
  mask: null, seq: 0,                        // current mask {id, rle, canvas, score, area}
  objects: [], proposals: [], selected: null, label: 0, drag: null,
  engine: null,                              // the data engine: {round, stage} (samforge engine annotate)
  retrainModeChosen: false,                  // the person picked the retrain mode (else the server's default shows)
};

const $ = (id) => document.getElementById(id);
const imageCanvas = $("image-canvas"), overlay = $("overlay");

function setStatus(text) { $("status").textContent = text; }
function enc(name) { return encodeURIComponent(name); }

// the server's token, which requests that change anything must carry (serve/guard.py)
const TOKEN = document.querySelector('meta[name="samforge-token"]').content;

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (method !== "GET") { opts.headers["Content-Type"] = "application/json"; opts.headers["X-Samforge-Token"] = TOKEN; }
  if (body !== undefined) opts.body = JSON.stringify(body);
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({ detail: res.statusText }));
  if (!res.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
  return data;
}

// ------------------------------------------------------------------------------------ COCO RLE
// pycocotools' compressed counts string -> run lengths (column-major, starting with background)
function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = true, c = 0;
    while (more) {
      c = s.charCodeAt(p) - 48;
      x += (c & 0x1f) * Math.pow(32, k);
      more = (c & 0x20) !== 0;
      p++; k++;
    }
    if (c & 0x10) x -= Math.pow(32, k);       // sign bit of the last 5-bit group
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// an RLE -> a canvas of the image's size with the mask painted in `color` (r, g, b, a)
function maskCanvas(rle, color) {
  const [h, w] = rle.size;
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  const d = img.data;
  let idx = 0, value = 0, area = 0;
  for (const run of rleCounts(rle.counts)) {
    if (value) {
      for (let i = idx; i < idx + run; i++) {
        const row = i % h, col = (i - row) / h, o = 4 * (row * w + col);
        d[o] = color[0]; d[o + 1] = color[1]; d[o + 2] = color[2]; d[o + 3] = color[3];
      }
      area += run;
    }
    idx += run; value = 1 - value;
  }
  ctx.putImageData(img, 0, 0);
  canvas.area = area;
  return canvas;
}

function labelColor(label, alpha) {
  let i = S.config.labels.indexOf(label);
  if (i < 0) i = S.config.labels.length;
  return [...PALETTE[i % PALETTE.length], alpha];
}

// --------------------------------------------------------------------------------------- drawing
function scale() { return overlay.width / overlay.getBoundingClientRect().width; }   // image px per CSS px

function fitStage() {
  if (!S.image) return;
  const wrap = $("stage-wrap").getBoundingClientRect();
  const k = Math.min((wrap.width - 16) / S.image.width, (wrap.height - 16) / S.image.height);
  for (const c of [imageCanvas, overlay]) {
    c.style.width = `${Math.floor(S.image.width * k)}px`;
    c.style.height = `${Math.floor(S.image.height * k)}px`;
  }
  redraw();
}

function redraw() {
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  for (const p of S.proposals) ctx.drawImage(p.canvas, 0, 0);
  for (const o of S.objects) {
    ctx.globalAlpha = S.selected === null || S.selected === o.id ? 1 : 0.5;
    ctx.drawImage(o.canvas, 0, 0);
  }
  ctx.globalAlpha = 1;
  if (S.mask) ctx.drawImage(S.mask.canvas, 0, 0);
  const k = scale();
  ctx.lineWidth = 2 * k;
  const box = S.drag && S.drag.box ? S.drag.box : S.box;
  if (box) {
    ctx.strokeStyle = "rgb(30,144,255)";
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
  for (const p of S.points) {
    ctx.beginPath();
    ctx.arc(p.x, p.y, 5 * k, 0, 2 * Math.PI);
    ctx.fillStyle = p.label ? "rgb(0,200,0)" : "rgb(230,0,0)";
    ctx.fill();
    ctx.strokeStyle = "#fff";
    ctx.stroke();
  }
}

// ------------------------------------------------------------------------------------- the lists
function renderImageList() {
  const list = $("image-list");
  list.replaceChildren();
  S.images.forEach((im, i) => {
    const b = document.createElement("button");
    b.className = "thumb" + (i === S.index ? " current" : "");
    b.dataset.name = im.name;
    b.title = `${im.name} (${im.width}x${im.height})`;
    const img = document.createElement("img");
    img.loading = "lazy"; img.alt = im.name;
    img.src = `/api/images/${enc(im.name)}/thumbnail`;
    const badge = document.createElement("span");
    badge.className = "badge" + (im.done ? "" : " todo");
    badge.textContent = (im.done ? "✓ " : "") + im.objects;
    const caption = document.createElement("div");
    caption.textContent = im.name;
    b.append(img, badge, caption);
    b.onclick = () => openImage(i);
    list.append(b);
  });
  const cur = list.querySelector(".current");
  if (cur) cur.scrollIntoView({ block: "nearest" });
}

function renderLabels() {
  const box = $("labels");
  box.replaceChildren();
  S.config.labels.forEach((name, i) => {
    const row = document.createElement("label");
    const input = document.createElement("input");
    input.type = "radio"; input.name = "label"; input.value = name; input.checked = i === S.label;
    input.onchange = () => { S.label = i; };
    const sw = document.createElement("span");
    sw.className = "swatch"; sw.style.background = `rgb(${labelColor(name, 255).slice(0, 3)})`;
    row.append(input, sw, document.createTextNode(`${name}${i < 9 ? ` (${i + 1})` : ""}`));
    box.append(row);
  });
}

function renderObjects() {
  const ul = $("objects");
  ul.replaceChildren();
  for (const o of S.objects) {
    const li = document.createElement("li");
    li.dataset.id = o.id;
    if (o.id === S.selected) li.className = "selected";
    const sw = document.createElement("span");
    sw.className = "swatch"; sw.style.background = `rgb(${labelColor(o.label, 255).slice(0, 3)})`;
    const sel = document.createElement("select");
    const names = S.config.labels.includes(o.label) ? S.config.labels : [...S.config.labels, o.label];
    for (const n of names) sel.append(new Option(n, n, false, n === o.label));
    sel.onchange = () => relabel(o.id, sel.value);
    const info = document.createElement("span");
    info.textContent = `#${o.id} ${o.area}px`;
    const del = document.createElement("button");
    del.textContent = "×"; del.title = "delete this object"; del.className = "delete";
    del.onclick = (e) => { e.stopPropagation(); deleteObject(o.id); };
    li.onclick = (e) => { if (e.target.tagName !== "SELECT") { S.selected = S.selected === o.id ? null : o.id; renderObjects(); redraw(); } };
    li.append(sw, sel, info, del);
    ul.append(li);
  }
  $("object-count").textContent = `(${S.objects.length})`;
  const im = S.images[S.index];
  if (im) { im.objects = S.objects.length; updateThumb(); }
}

function renderProposals() {
  const ul = $("proposals");
  ul.replaceChildren();
  $("proposals-box").hidden = S.proposals.length === 0;
  $("proposal-count").textContent = `(${S.proposals.length})`;
  S.proposals.forEach((p, i) => {
    const li = document.createElement("li");
    if (i === 0) li.className = "current";
    li.dataset.id = p.pid || p.mask_id;
    const info = document.createElement("span");
    info.textContent = `${p.area}px, iou ${p.score.toFixed(2)}`;
    info.style.flex = "1";
    const ok = document.createElement("button"); ok.textContent = "✓"; ok.title = "accept with the current label";
    ok.onclick = () => acceptProposal(p);
    const no = document.createElement("button"); no.textContent = "✗"; no.title = "reject";
    no.onclick = () => rejectProposal(p);
    li.onmouseenter = () => { p.canvas = p.strong; redraw(); };
    li.onmouseleave = () => { p.canvas = p.faint; redraw(); };
    li.append(info, ok, no);
    ul.append(li);
  });
}

function updateThumb() {
  const im = S.images[S.index];
  const b = document.querySelector(`.thumb[data-name="${CSS.escape(im.name)}"] .badge`);
  if (b) { b.className = "badge" + (im.done ? "" : " todo"); b.textContent = (im.done ? "✓ " : "") + im.objects; }
  $("done").textContent = im.done ? "Not done (d)" : "Done (d)";
}

// --------------------------------------------------------------------------------------- actions
function setObjects(doc) {
  S.objects = doc.objects.map((o) => ({ ...o, canvas: maskCanvas(o.segmentation, labelColor(o.label, 120)) }));
  if (!S.objects.some((o) => o.id === S.selected)) S.selected = null;
  const im = S.images[S.index];
  im.done = doc.done;
  renderObjects(); redraw();
}

async function openImage(i) {
  if (i < 0 || i >= S.images.length) { setStatus(i < 0 ? "this is the first image" : "this is the last image"); return; }
  S.index = i; S.name = S.images[i].name;
  S.points = []; S.box = null; S.history = []; S.mask = null; S.proposals = []; S.selected = null;
  document.body.dataset.embedState = "computing"; document.body.dataset.maskState = "none";
  document.body.dataset.proposalState = "none";
  history.replaceState(null, "", `#${enc(S.name)}`);
  $("image-name").textContent = `${S.name} (${i + 1}/${S.images.length})`;
  renderImageList(); renderProposals();
  const name = S.name;
  const img = new Image();
  img.src = `/api/images/${enc(name)}/image`;
  await img.decode();
  if (name !== S.name) return;
  S.image = img;
  for (const c of [imageCanvas, overlay]) { c.width = img.naturalWidth; c.height = img.naturalHeight; }
  imageCanvas.getContext("2d").drawImage(img, 0, 0);
  fitStage();
  setObjects(await api("GET", `/api/images/${enc(name)}/annotations`));
  setStatus("computing the image embedding…");
  try {
    const r = await api("POST", `/api/images/${enc(name)}/embed`);
    if (name !== S.name) return;
    document.body.dataset.embedState = "ready";
    setStatus(`ready${r.embedding_seconds ? ` (embedding ${r.embedding_seconds.toFixed(1)} s)` : ""}: click an object`);
  } catch (e) { setStatus(`embedding failed: ${e.message}`); return; }
  if (S.engine && S.engine.stage === "semi") loadProposals(name);
}

function proposalCanvases(p, i) {
  const c = PALETTE[(i + 3) % PALETTE.length];
  const faint = maskCanvas(p.mask, [...c, PROPOSAL_ALPHA]);
  return { ...p, faint, strong: maskCanvas(p.mask, [...c, 200]), canvas: faint };
}

// the data engine's semi-automatic stage: the model's confident masks, to accept or reject
async function loadProposals(name) {
  document.body.dataset.proposalState = "computing";
  setStatus("computing the model's proposals…");
  try {
    const r = await api("POST", `/api/images/${enc(name)}/proposals`, {});
    if (name !== S.name) return;
    S.proposals = r.proposals.map((p, i) => ({ ...proposalCanvases(p, i), pid: p.id }));
    renderProposals(); redraw();
    document.body.dataset.proposalState = "ready";
    const took = r.cached ? "" : ` in ${r.seconds.toFixed(1)} s`;
    setStatus(`${S.proposals.length} proposals${took}: y accept, x reject, Y accept all`);
  } catch (e) { document.body.dataset.proposalState = "error"; setStatus(`proposals failed: ${e.message}`); }
}

async function predict() {
  const seq = ++S.seq, name = S.name;
  if (!S.points.length && !S.box) { S.mask = null; document.body.dataset.maskState = "none"; redraw(); return; }
  document.body.dataset.maskState = "pending";
  const t0 = performance.now();
  try {
    const r = await api("POST", `/api/images/${enc(name)}/predict`,
      { points: S.points, box: S.box });
    if (seq !== S.seq || name !== S.name) return;        // a newer click already asked
    S.mask = { id: r.mask_id, rle: r.mask, score: r.score, area: r.area, canvas: maskCanvas(r.mask, MASK_COLOR) };
    redraw();
    document.body.dataset.maskState = "shown";
    document.body.dataset.maskArea = String(r.area);
    setStatus(`mask: score ${r.score.toFixed(2)}, ${r.area} px, model ${r.ms.toFixed(0)} ms, ` +
      `click to mask ${(performance.now() - t0).toFixed(0)} ms`);
  } catch (e) { if (seq === S.seq) { document.body.dataset.maskState = "error"; setStatus(`predict failed: ${e.message}`); } }
}

function clearPrompts() {
  S.points = []; S.box = null; S.history = []; S.mask = null; S.seq++;
  document.body.dataset.maskState = "none";
  redraw();
}

function currentLabel() { return S.config.labels[S.label]; }

async function accept() {
  if (!S.mask) { setStatus("no mask to accept: click an object first"); return; }
  try {
    const r = await api("POST", `/api/images/${enc(S.name)}/objects`, { label: currentLabel(), mask_id: S.mask.id });
    S.objects.push({ ...r.object, canvas: maskCanvas(r.object.segmentation, labelColor(r.object.label, 120)) });
    clearPrompts(); renderObjects(); redraw();
    document.body.dataset.objects = String(S.objects.length);
    setStatus(`accepted object #${r.object.id} as ${r.object.label}`);
  } catch (e) { setStatus(`accept failed: ${e.message}`); }
}

function dropProposal(p) { S.proposals = S.proposals.filter((q) => q !== p); renderProposals(); redraw(); }

async function acceptProposal(p) {
  try {
    const r = p.pid
      ? await api("POST", `/api/images/${enc(S.name)}/proposals/${enc(p.pid)}/accept`, { label: currentLabel() })
      : await api("POST", `/api/images/${enc(S.name)}/objects`, { label: currentLabel(), mask_id: p.mask_id });
    S.objects.push({ ...r.object, canvas: maskCanvas(r.object.segmentation, labelColor(r.object.label, 120)) });
    dropProposal(p); renderObjects();
    document.body.dataset.objects = String(S.objects.length);
    setStatus(`accepted the proposal as object #${r.object.id} (${r.object.label})`);
  } catch (e) { if (p.pid) dropProposal(p); setStatus(`accept failed: ${e.message}`); }
}

async function rejectProposal(p) {
  dropProposal(p);
  if (!p.pid) return;
  try {
    await api("POST", `/api/images/${enc(S.name)}/proposals/${enc(p.pid)}/reject`, {});
    setStatus("proposal rejected");
  }
  catch (e) { setStatus(`reject failed: ${e.message}`); }
}

async function undo() {
  if (S.history.length) {
    const last = S.history.pop();
    if (last.kind === "point") S.points.pop(); else S.box = last.previous;
    predict(); redraw();
    return;
  }
  try {
    setObjects(await api("POST", `/api/images/${enc(S.name)}/undo`));
    setStatus("undone"); updateThumb();
  } catch (e) { setStatus(e.message); }
}

async function deleteObject(id) {
  try { setObjects(await api("DELETE", `/api/images/${enc(S.name)}/objects/${id}`)); setStatus(`deleted #${id}`); }
  catch (e) { setStatus(`delete failed: ${e.message}`); }
}

async function relabel(id, label) {
  try {
    const r = await api("PATCH", `/api/images/${enc(S.name)}/objects/${id}`, { label });
    const o = S.objects.find((x) => x.id === id);
    o.label = r.object.label; o.canvas = maskCanvas(o.segmentation, labelColor(o.label, 120));
    renderObjects(); redraw();
  } catch (e) { setStatus(`relabel failed: ${e.message}`); }
}

async function toggleDone() {
  const im = S.images[S.index];
  try { setObjects(await api("PUT", `/api/images/${enc(S.name)}/done`, { done: !im.done })); updateThumb(); }
  catch (e) { setStatus(e.message); }
}

async function everything() {
  if (!S.config.everything) { setStatus("segment everything needs a SAM v1 model"); return; }
  const name = S.name;
  setStatus("segmenting everything… (this takes a while)");
  try {
    const r = await api("POST", `/api/images/${enc(name)}/everything`);
    if (name !== S.name) return;
    S.proposals = r.proposals.map(proposalCanvases);
    renderProposals(); redraw();
    setStatus(`${S.proposals.length} proposals in ${r.seconds.toFixed(1)} s: accept (✓) or reject (✗) them`);
  } catch (e) { setStatus(`segment everything failed: ${e.message}`); }
}

async function acceptAll() {
  if (!S.proposals.some((p) => p.pid)) { for (const p of [...S.proposals]) await acceptProposal(p); return; }
  try {
    const r = await api("POST", `/api/images/${enc(S.name)}/proposals/accept-all`, { label: currentLabel() });
    for (const o of r.accepted) S.objects.push({ ...o, canvas: maskCanvas(o.segmentation, labelColor(o.label, 120)) });
    S.proposals = []; renderObjects(); renderProposals(); redraw();
    document.body.dataset.objects = String(S.objects.length);
    const skipped = r.skipped.length ? ` (${r.skipped.length} overlapped an object)` : "";
    setStatus(`accepted ${r.accepted.length} proposals${skipped}`);
  } catch (e) { setStatus(`accept all failed: ${e.message}`); }
}

async function rejectAll() { for (const p of [...S.proposals]) await rejectProposal(p); }

// ------------------------------------------------------------------------------- data engine: retrain
function showEngine(engine, modelName) {
  const changed = S.engine && S.engine.round !== engine.round;
  S.engine = { ...S.engine, ...engine };
  $("round").hidden = false; $("engine-box").hidden = false;
  $("round").textContent = `round ${engine.round}`;
  $("round-label").textContent = `(round ${engine.round}, ${S.engine.stage})`;
  document.body.dataset.round = String(engine.round);
  if (engine.retrain_mode && !S.retrainModeChosen) $("retrain-mode").value = engine.retrain_mode;  // the server's default
  if (modelName) $("model").textContent = `${modelName} · ${S.config.images} images`;
  if (changed && S.index >= 0) {            // a new model: new embeddings, new proposals
    setStatus(`switched to round ${engine.round}'s model`);
    clearPrompts(); openImage(S.index);
  }
}

function showRetrain(st) {
  document.body.dataset.retrainState = st.state;
  $("retrain").disabled = st.state === "running";
  $("retrain-progress").hidden = st.state !== "running";
  $("retrain-progress").value = st.progress || 0;
  $("retrain-message").textContent = st.state === "failed" ? `retrain failed: ${st.error}` : st.message;
}

async function pollEngine() {
  try {
    const e = await api("GET", "/api/engine");
    showRetrain(e.retrain);
    showEngine(e, e.model);
    if (e.swap_error && e.swap_error !== S.swapError) { S.swapError = e.swap_error; setStatus(e.swap_error); }
    return e;
  } catch (err) { setStatus(`cannot reach the server: ${err.message}`); return null; }
}

async function retrain() {
  try {
    const mode = $("retrain-mode").value;
    showRetrain(await api("POST", "/api/engine/retrain", { mode }));
    setStatus(`retraining the model on your labels (${mode})…`);
  } catch (e) { setStatus(`retrain refused: ${e.message}`); return; }
  let e;
  do {
    await new Promise((r) => setTimeout(r, 500));
    e = await pollEngine();
  } while (e && e.retrain.state === "running");
  if (e && e.retrain.state === "failed") {
    setStatus(`retrain failed, the model stays round ${e.round}: ${e.retrain.error}`);
  }
  else if (e) setStatus(`retrained: now round ${e.round}`);
}

async function exportAll() {
  try {
    const r = await api("POST", "/api/export");
    document.body.dataset.exportState = "done";
    setStatus(`exported ${r.objects} objects on ${r.images} images to ${r.folder}`);
  } catch (e) { setStatus(`export failed: ${e.message}`); }
}

// ----------------------------------------------------------------------------------------- input
function imagePoint(e) {
  const r = overlay.getBoundingClientRect();
  const x = Math.min(Math.max((e.clientX - r.left) * overlay.width / r.width, 0), overlay.width);
  const y = Math.min(Math.max((e.clientY - r.top) * overlay.height / r.height, 0), overlay.height);
  return [x, y];
}

overlay.addEventListener("contextmenu", (e) => e.preventDefault());
overlay.addEventListener("mousedown", (e) => {
  if (!S.image) return;
  e.preventDefault(); overlay.focus();
  S.drag = { start: imagePoint(e), client: [e.clientX, e.clientY], button: e.button, shift: e.shiftKey, box: null };
});
window.addEventListener("mousemove", (e) => {
  if (!S.drag || S.drag.button !== 0) return;
  const moved = Math.hypot(e.clientX - S.drag.client[0], e.clientY - S.drag.client[1]);
  if (moved < DRAG_PIXELS && !S.drag.box) return;
  const [x0, y0] = S.drag.start, [x1, y1] = imagePoint(e);
  S.drag.box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
  redraw();
});
window.addEventListener("mouseup", (e) => {
  const d = S.drag;
  if (!d) return;
  S.drag = null;
  if (d.box) {
    if (d.box[2] - d.box[0] >= 1 && d.box[3] - d.box[1] >= 1) {
      S.history.push({ kind: "box", previous: S.box }); S.box = d.box;
    }
  } else if (d.button === 0 || d.button === 2) {
    const [x, y] = d.start;
    if (S.points.length >= S.config.max_points) { setStatus(`at most ${S.config.max_points} points`); return; }
    S.points.push({ x, y, label: d.button === 2 || d.shift ? 0 : 1 });
    S.history.push({ kind: "point" });
  } else return;
  redraw(); predict();
});

document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" && e.target.type !== "radio" || e.target.tagName === "SELECT"
      || e.target.tagName === "TEXTAREA") return;
  if (e.altKey || e.metaKey || (e.ctrlKey && e.key !== "z")) return;
  const k = e.key;
  if (k >= "1" && k <= "9") {
    const i = Number(k) - 1;
    if (i < S.config.labels.length) { S.label = i; renderLabels(); setStatus(`label: ${currentLabel()}`); }
  } else if (k === "a") accept();
  else if (k === "z") undo();
  else if (k === "n") openImage(S.index + 1);
  else if (k === "p") openImage(S.index - 1);
  else if (k === "Escape") {
    if (S.points.length || S.box) clearPrompts(); else { S.proposals = []; renderProposals(); redraw(); }
  }
  else if (k === "d") toggleDone();
  else if (k === "y" && S.proposals.length) acceptProposal(S.proposals[0]);
  else if (k === "x" && S.proposals.length) rejectProposal(S.proposals[0]);
  else if (k === "Y" && S.proposals.length) acceptAll();
  else if (k === "s") everything();
  else if (k === "e") exportAll();
  else if ((k === "Delete" || k === "Backspace") && S.selected !== null) deleteObject(S.selected);
  else return;
  e.preventDefault();
});

$("accept").onclick = accept;
$("clear").onclick = clearPrompts;
$("undo").onclick = undo;
$("prev").onclick = () => openImage(S.index - 1);
$("next").onclick = () => openImage(S.index + 1);
$("done").onclick = toggleDone;
$("everything").onclick = everything;
$("export").onclick = exportAll;
$("accept-all").onclick = acceptAll;
$("reject-all").onclick = rejectAll;
$("retrain").onclick = retrain;
$("retrain-mode").onchange = () => { S.retrainModeChosen = true; };
window.addEventListener("resize", fitStage);

async function start() {
  try {
    S.config = await api("GET", "/api/config");
    S.images = (await api("GET", "/api/images")).images;
  } catch (e) { setStatus(`cannot reach the server: ${e.message}`); return; }
  $("model").textContent = `${S.config.model} · ${S.config.images} images`;
  $("everything").disabled = !S.config.everything;
  if (S.config.engine) {
    showEngine(S.config.engine); showRetrain(S.config.engine.retrain);
    setInterval(() => { if (document.body.dataset.retrainState !== "running") pollEngine(); }, 5000);
  }
  renderLabels();
  const wanted = decodeURIComponent(location.hash.slice(1));
  let i = S.images.findIndex((im) => im.name === wanted);
  if (i < 0) i = Math.max(0, S.images.findIndex((im) => !im.done));
  openImage(i);
}
start();
