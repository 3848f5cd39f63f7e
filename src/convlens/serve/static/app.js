// convlens web view: plain JavaScript over the JSON API (see /openapi.json).
"use strict";

const $ = (id) => document.getElementById(id);
// image and explanation count the image changes and explain() calls: an answer is shown
// only while no newer one has started (see explain and predict).
const state = {
  file: null, sample: "", methods: {}, layers: null, running: null, image: 0, explanation: 0,
};

async function getJson(url, options, answered) {
  const response = await fetch(url, options);
  if (answered) answered();
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function option(select, value, text, selected) {
  const item = document.createElement("option");
  item.value = value;
  item.textContent = text;
  item.selected = Boolean(selected);
  select.appendChild(item);
}

function setStatus(element, text, isError) {
  element.textContent = text;
  element.classList.toggle("error", Boolean(isError));
}

function imageForm() {
  const form = new FormData();
  if (state.file) form.append("image", state.file, state.file.name);
  else if (state.sample) form.append("sample", state.sample);
  else return null;
  return form;
}

async function init() {
  const [health, methods, layers, samples, classes] = await Promise.all([
    getJson("/api/health"), getJson("/api/methods"), getJson("/api/layers"),
    getJson("/api/samples"), getJson("/api/classes"),
  ]);
  $("model-name").textContent = `model: ${health.model}`;
  for (const m of methods) {
    state.methods[m.name] = m;
    option($("method"), m.name, `${m.name} (${m.family}${m.slow ? ", slow" : ""})`,
      m.name === "gradcam");
  }
  state.layers = layers;
  fillLayerLists();
  for (const layer of layers.layers.filter((l) => l.filters != null)) {  // the nn.Conv2d layers
    option($("filter-layer"), layer.name, `${layer.name} (${layer.filters} filters)`);
  }
  for (const name of samples) option($("sample"), name, name);
  const list = $("class-list");
  for (const c of classes) option(list, c.name, `${c.class_id}`);
  updateLayerChoice();
  setStatus($("status"), "Upload an image or pick a sample.");
}

// The spatial layers a user would pick (convolutions, pooling, blocks, stages), or with
// "all layers" ticked every spatial layer; the current choices are kept where listed,
// others go back to the default CAM layer.
function fillLayerLists() {
  const all = $("all-layers").checked;
  const rows = state.layers.layers.filter((l) => l.spatial && (all || l.pickable));
  const listed = (name) => rows.some((layer) => layer.name === name);
  for (const id of ["layer", "browse-layer"]) {
    const select = $(id);
    const chosen = listed(select.value) ? select.value : state.layers.default;
    select.replaceChildren();
    for (const layer of rows) {
      option(select, layer.name, `${layer.name} ${layer.output_shape.slice(1).join("x")}`,
        layer.name === chosen);
    }
  }
}

function updateLayerChoice() {
  const method = state.methods[$("method").value];
  $("layer").disabled = !(method && method.uses_layer);
}

async function predict() {
  const form = imageForm();
  if (!form) return;
  const image = state.image;
  form.append("top", "5");
  const list = $("predictions");
  list.replaceChildren();
  try {
    const result = await getJson("/api/predict", { method: "POST", body: form });
    if (image !== state.image) return;  // the image changed meanwhile
    for (const p of result.predictions) {
      const item = document.createElement("li");
      item.textContent = `${p.label} (${p.class_id}) ${p.probability.toFixed(3)}`;
      list.appendChild(item);
    }
  } catch (error) {
    if (image === state.image) setStatus($("status"), error.message, true);
  }
}

async function explain() {
  const call = ++state.explanation;
  const image = state.image;
  const superseded = () => call !== state.explanation || image !== state.image;
  const form = imageForm();
  if (!form) { setStatus($("status"), "Choose an image first.", true); return; }
  if (state.running) await cancel();
  const method = $("method").value;
  form.append("method", method);
  form.append("target", $("target").value.trim() || "top1");
  if ($("contrast").value.trim()) form.append("contrast", $("contrast").value.trim());
  if (state.methods[method].uses_layer) form.append("layer", $("layer").value);
  let job;
  try {
    job = await getJson("/api/jobs", { method: "POST" });  // its id, and the token cancelling it
  } catch (error) {
    if (!superseded()) setStatus($("status"), error.message, true);
    return;
  }
  if (superseded()) return;  // a newer explanation started while this one got its job id
  form.append("job", job.job);
  const controller = new AbortController();
  const running = { job: job.job, token: job.token, controller, answered: false };
  state.running = running;
  $("cancel-button").disabled = false;
  setStatus($("status"), `Running ${method}...`);
  try {
    const result = await getJson("/api/explain", { method: "POST", body: form,
      signal: controller.signal }, () => { running.answered = true; });
    if (state.running === running && !superseded()) show(result);
  } catch (error) {
    if (state.running === running && !superseded()) {
      const aborted = controller.signal.aborted;
      if (!aborted) clearResult();  // what is shown belongs to an earlier request
      setStatus($("status"), aborted ? "Cancelled." : error.message, true);
    }
  } finally {
    if (state.running === running) {
      state.running = null;
      $("cancel-button").disabled = true;
    }
  }
}

async function cancel() {
  const running = state.running;
  if (!running) return;
  state.running = null;
  $("cancel-button").disabled = true;
  running.controller.abort();  // first: the page never sees the stopped request's 409
  if (!running.answered) {  // the server may still hold the job: stop it there too
    const body = new FormData();
    body.append("token", running.token);
    await fetch(`/api/cancel/${encodeURIComponent(running.job)}`, { method: "POST", body })
      .catch(() => null);
  }
  setStatus($("status"), "Cancelled.", true);
}

function show(result) {
  const overlay = $("overlay");
  overlay.src = result.overlay;
  overlay.hidden = false;
  $("class-name").textContent = result.title ?? "(no class)";
  $("explained").textContent =
    `${result.method}${result.layer ? " at " + result.layer : ""}: ${scoreText(result)}; ` +
    `${result.seconds.toFixed(2)} s (${result.total_seconds.toFixed(2)} s in the server)`;
  $("colour-bar").src = result.scale.bar;
  $("colour-bar").hidden = false;
  $("scale-text").textContent = result.scale.signed
    ? `${result.scale.cmap}: blue < 0 < red, raw values ${fmt(result.scale.low)} .. ${fmt(result.scale.high)}`
    : `${result.scale.cmap}: raw values ${fmt(result.scale.low)} (blue) .. ${fmt(result.scale.high)} (red)`;
  placeBox(result.box, result.size);
  setStatus($("status"), `Done: ${result.title ?? result.method}.`);
}

// Feature maps belong to the image they were computed for (filters do not): a new image
// takes the old image's grid off the page.
function clearImageFeatures() {
  const grid = $("browse-image");
  if (grid.dataset.kind !== "features") return;
  grid.hidden = true;
  grid.removeAttribute("src");
  delete grid.dataset.kind;
  setStatus($("browse-status"), "");
}

function clearResult() {
  for (const id of ["overlay", "colour-bar"]) {
    $(id).hidden = true;
    $(id).removeAttribute("src");
  }
  for (const id of ["class-name", "explained", "scale-text"]) $(id).textContent = "";
  placeBox(null);
}

function probabilityText(name, probability) {
  return probability == null ? "" : `p(${name}) = ${probability.toFixed(3)}`;
}

// "logit difference 4.142, p(espresso) = 0.951, p(cup) = 0.012" for a contrast
function scoreText(result) {
  const parts = [`${result.score_kind} ${result.score.toPrecision(4)}`];
  if (result.probability != null) parts.push(probabilityText(result.class_name, result.probability));
  const other = result.rather_than;
  if (other && other.probability != null) parts.push(probabilityText(other.class_name, other.probability));
  return parts.join(", ");
}

function fmt(value) { return Number(value).toPrecision(3); }

// Places the result's box (null: none) whether or not "show box" is ticked, so that
// ticking it shows this result's box, never an earlier one.
function placeBox(box, size) {
  const element = $("box");
  element.dataset.box = box ? box.map((v) => Math.round(v)).join(",") : "";
  if (box) {
    const [height, width] = size;
    element.style.left = `${(100 * box[0]) / width}%`;
    element.style.top = `${(100 * box[1]) / height}%`;
    element.style.width = `${(100 * (box[2] - box[0])) / width}%`;
    element.style.height = `${(100 * (box[3] - box[1])) / height}%`;
  }
  showBoxIfTicked();
}

function showBoxIfTicked() {
  $("box").hidden = !($("show-box").checked && $("box").dataset.box);
}

async function browse(kind) {
  const layer = $(kind === "features" ? "browse-layer" : "filter-layer").value;
  const image = state.image;
  setStatus($("browse-status"), `Loading ${kind}...`);
  try {
    let result;
    if (kind === "features") {
      const form = imageForm();
      if (!form) throw new Error("Choose an image first.");
      form.append("layer", layer);
      result = await getJson("/api/features", { method: "POST", body: form });
    } else {
      result = await getJson(`/api/filters?layer=${encodeURIComponent(layer)}`);
    }
    if (kind === "features" && image !== state.image) return;  // the image changed meanwhile
    $("browse-image").src = result.grid;
    $("browse-image").hidden = false;
    $("browse-image").dataset.kind = kind;
    setStatus($("browse-status"), `${kind} of ${result.layer}`);
  } catch (error) {
    setStatus($("browse-status"), error.message, true);
  }
}

const ATLAS_THUMBS = 60;  // pictures shown per folder at once

function showAtlasGroup(atlas, group) {
  const thumbs = $("atlas-thumbs");
  thumbs.replaceChildren();
  const images = atlas.images.filter((image) => image.group === group);
  for (const image of images.slice(0, ATLAS_THUMBS)) {
    const button = document.createElement("button");
    button.type = "button";
    button.title = image.path;
    const thumb = document.createElement("img");
    thumb.src = image.url;
    thumb.alt = image.path;
    thumb.loading = "lazy";
    button.appendChild(thumb);
    button.addEventListener("click", () => {
      $("atlas-image").src = image.url;
      $("atlas-image").alt = image.path;
      $("atlas-image").hidden = false;
      setStatus($("atlas-status"), image.path);
    });
    thumbs.appendChild(button);
  }
  const more = images.length > ATLAS_THUMBS ? ` (first ${ATLAS_THUMBS} shown)` : "";
  setStatus($("atlas-status"), `${images.length} pictures in ${group || "the top folder"}${more}`);
}

async function initAtlas() {
  const atlas = await getJson("/api/atlas");
  if (!atlas.enabled) return;
  $("atlas").hidden = false;
  $("atlas-name").textContent = `${atlas.name} (${atlas.kind})`;
  const pages = $("atlas-pages");
  for (const page of atlas.pages) {
    const link = document.createElement("a");
    link.href = page.url;
    link.target = "_blank";
    link.rel = "noopener";
    link.textContent = page.path;
    pages.appendChild(link);
  }
  for (const group of atlas.groups) option($("atlas-group"), group, group || "(top folder)");
  $("atlas-group").addEventListener("change", (e) => showAtlasGroup(atlas, e.target.value));
  if (atlas.groups.length) showAtlasGroup(atlas, atlas.groups[0]);
  else setStatus($("atlas-status"), "no pictures in this folder");
}

async function imageChanged() {
  state.image += 1;  // answers still due for the previous image are not shown
  await cancel();  // first: predict() would wait for the model behind the old explanation
  clearResult();
  clearImageFeatures();
  await predict();
  await explain();
}

function wire() {
  $("image-file").addEventListener("change", (event) => {
    state.file = event.target.files[0] || null;
    if (state.file) { state.sample = ""; $("sample").value = ""; imageChanged(); }
  });
  $("sample").addEventListener("change", (event) => {
    state.sample = event.target.value;
    if (state.sample) { state.file = null; $("image-file").value = ""; imageChanged(); }
  });
  $("method").addEventListener("change", () => { updateLayerChoice(); if (imageForm()) explain(); });
  $("layer").addEventListener("change", () => { if (imageForm()) explain(); });
  $("all-layers").addEventListener("change", () => { if (state.layers) fillLayerLists(); });
  for (const id of ["target", "contrast"]) {
    $(id).addEventListener("change", () => { if (imageForm()) explain(); });
  }
  $("explain-button").addEventListener("click", explain);
  $("cancel-button").addEventListener("click", cancel);
  $("show-box").addEventListener("change", showBoxIfTicked);
  $("features-button").addEventListener("click", () => browse("features"));
  $("filters-button").addEventListener("click", () => browse("filters"));
}

document.addEventListener("DOMContentLoaded", () => {
  wire();
  init().catch((error) => setStatus($("status"), error.message, true));
  initAtlas().catch((error) => setStatus($("atlas-status"), error.message, true));
});
