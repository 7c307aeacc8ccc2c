// The service's web page: upload a crop or a tracklet's crops, search the gallery, show ranked thumbnails
// with the calibrated match probability and marks when the service has a calibration.
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

function percent(value) {
  return (100 * value).toFixed(value < 0.01 ? 2 : 1) + "%";
}

function renderCalibration(body) {
  const el = $("calibration");
  const cal = body.calibration;
  el.hidden = false;
  if (!cal) {
    el.className = "calibration none";
    el.textContent = "No calibration loaded: scores are similarities, not probabilities (run clipmc calibrate).";
    return;
  }
  el.className = "calibration";
  el.textContent =
    "Match threshold " + cal.threshold.toFixed(4) +
    " (false-match rate " + percent(cal.target_fmr) + ", true-match rate " + percent(cal.tmr_at_threshold) +
    " on validation identities)";
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
    card.append(rank, img, score);
    if (hit.match_probability !== undefined) {
      const probability = document.createElement("div");
      probability.className = "probability";
      probability.textContent = "match probability " + percent(hit.match_probability);
      card.append(probability);
    }
    if (hit.is_match !== undefined) {
      card.classList.add(hit.is_match ? "match" : "no-match");
      const mark = document.createElement("div");
      mark.className = "mark";
      mark.textContent = hit.is_match ? "✔ match" : "below threshold";
      card.append(mark);
    }
    if (hit.rerank_distance !== undefined) card.append(field("re-ranked distance", hit.rerank_distance.toFixed(4)));
    const camera = field("camera", hit.camera);
    camera.classList.add("camera");
    const when = formatTime(hit.timestamp);
    card.append(camera, field("modality", hit.modality), field("id", hit.external_id || hit.id), field("time", when));
    if (hit.track_id) {
      const crops = hit.track_crops === undefined ? "" : " (" + hit.track_crops + " crops)";
      card.append(field("track", hit.track_id + crops));
    }
    if (hit.identity) card.append(field("identity", hit.identity));
    list.append(card);
    loadThumbnail(img, hit.id);
  });
  const what = body.query_crops ? " (a tracklet of " + body.query_crops + " crops)" : "";
  const grouped = body.group_by === "track" ? ", one per track" : "";
  const reranked = body.rerank ? ", " + body.rerank.label + " over " + body.rerank.candidates + " candidates" : "";
  $("summary").textContent =
    body.results.length + " result(s)" + grouped + " for the " + body.query_modality + " query" + what + reranked +
    " in " + body.took_ms.toFixed(1) + " ms";
  renderCalibration(body);
}

async function search(event) {
  event.preventDefault();
  showError("");
  const files = Array.from($("file").files);
  if (!files.length) {
    showError("choose a crop first");
    return;
  }
  const form = new FormData();
  files.forEach((file) => form.append("image", file));
  form.append("modality", $("modality").value);
  form.append("target_modality", $("target").value);
  form.append("top_k", $("topk").value);
  form.append("group_by", $("group-by").value);
  form.append("rerank", $("rerank").value);
  if ($("cameras").value.trim()) form.append("cameras", $("cameras").value.trim());
  if ($("exclude-cameras").value.trim()) form.append("exclude_cameras", $("exclude-cameras").value.trim());
  // datetime-local gives a time without a zone; the service reads such a time as UTC, as the labels say
  if ($("since").value) form.append("since", $("since").value);
  if ($("until").value) form.append("until", $("until").value);
  $("search").disabled = true;
  try {
    const response = await fetch("/query", { method: "POST", body: form, headers: authHeaders() });
    if (!response.ok) {
      $("results").replaceChildren();
      $("summary").textContent = "";
      $("calibration").hidden = true;
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

const previewUrls = [];

function preview() {
  const box = $("previews");
  while (previewUrls.length) URL.revokeObjectURL(previewUrls.pop());
  box.replaceChildren();
  Array.from($("file").files).forEach((file) => {
    const img = document.createElement("img");
    img.className = "preview";
    img.alt = file.name;
    const url = URL.createObjectURL(file);
    previewUrls.push(url);
    img.src = url;
    box.append(img);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const saved = sessionStorage.getItem("clipmc-api-key");
  if (saved) $("apikey").value = saved;
  $("apikey").addEventListener("change", () => sessionStorage.setItem("clipmc-api-key", apiKey()));
  $("file").addEventListener("change", preview);
  $("query-form").addEventListener("submit", search);
  checkStatus();
});
