// The service's web page: upload a crop, search the gallery, show ranked thumbnails.
// Plain JavaScript, no build step and nothing loaded from elsewhere (the service may run offline).
"use strict";

const $ = (id) => document.getElementById(id);
const blobUrls = [];

function apiKey() {
  return $("apikey").value.trim();
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: "Bearer " + key } : {};
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error.message + " (" + body.error.code + ")";
  } catch (_) {
    // not JSON: fall through
  }
  return "HTTP " + response.status;
}

function showError(text) {
  const el = $("error");
  el.textContent = text;
  el.hidden = !text;
}

async function checkStatus() {
  try {
    const response = await fetch("/readyz");
    $("status").textContent = response.ok ? "ready" : "not ready: " + (await errorMessage(response));
  } catch (err) {
    $("status").textContent = "service unreachable";
  }
}

function field(label, value) {
  const div = document.createElement("div");
  div.className = "meta";
  div.textContent = label + ": " + (value === null || value === undefined || value === "" ? "–" : value);
  return div;
}

async function loadThumbnail(img, id) {
  const response = await fetch("/gallery/items/" + id + "/thumbnail", { headers: authHeaders() });
  if (!response.ok) {
    img.alt = "no thumbnail";
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  blobUrls.push(url);
  img.src = url;
}

function renderResults(body) {
  while (blobUrls.length) URL.revokeObjectURL(blobUrls.pop());
  const list = $("results");
  list.replaceChildren();
  body.results.forEach((hit, index) => {
    const card = document.createElement("li");
    card.className = "card " + hit.modality;
    card.dataset.id = hit.id;
    const rank = document.createElement("div");
    rank.className = "rank";
    rank.textContent = "#" + (index + 1);
    const img = document.createElement("img");
    img.alt = "item " + hit.id;
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = hit.score.toFixed(4);
    const camera = field("camera", hit.camera);
    camera.classList.add("camera");
    const when = formatTime(hit.timestamp);
    card.append(rank, img, score, camera, field("modality", hit.modality), field("id", hit.external_id || hit.id), field("time", when));
    if (hit.identity) card.append(field("identity", hit.identity));
    list.append(card);
    loadThumbnail(img, hit.id);
  });
  $("summary").textContent =
    body.results.length + " result(s) for the " + body.query_modality + " query in " + body.took_ms.toFixed(1) + " ms";
}

async function search(event) {
  event.preventDefault();
  showError("");
  const file = $("file").files[0];
  if (!file) {
    showError("choose a crop first");
    return;
  }
  const form = new FormData();
  form.append("image", file);
  form.append("modality", $("modality").value);
  form.append("target_modality", $("target").value);
  form.append("top_k", $("topk").value);
  if ($("cameras").value.trim()) form.append("cameras", $("cameras").value.trim());
  $("search").disabled = true;
  try {
    const response = await fetch("/query", { method: "POST", body: form, headers: authHeaders() });
    if (!response.ok) {
      $("results").replaceChildren();
      $("summary").textContent = "";
      showError(await errorMessage(response));
      return;
    }
    renderResults(await response.json());
  } catch (err) {
    showError("request failed: " + err);
  } finally {
    $("search").disabled = false;
  }
}

function preview() {
  const file = $("file").files[0];
  const img = $("preview");
  if (!file) {
    img.hidden = true;
    return;
  }
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  img.hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  const saved = sessionStorage.getItem("clipmc-api-key");
  if (saved) $("apikey").value = saved;
  $("apikey").addEventListener("change", () => sessionStorage.setItem("clipmc-api-key", apiKey()));
  $("file").addEventListener("change", preview);
  $("query-form").addEventListener("submit", search);
  checkStatus();
});
