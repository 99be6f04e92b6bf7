"use strict";
// The page for trying the service by hand. One request per click: POST /api/remove asking for
// multipart/form-data, which brings the result and its mask together (one model run).
const $ = (id) => document.getElementById(id);
let chosen = null;
let urls = [];

// -- what is on screen ---------------------------------------------------------------------------

function show(id, blob) {
  const url = URL.createObjectURL(blob);
  urls.push(url);
  $(id).src = url;
  return url;
}
// The previous outcome goes as soon as it no longer belongs to what is chosen (a new file, an
// error): nothing stale stays on screen, and its object URLs are released.
function clearOutcome() {
  for (const id of ["mask", "result"]) $(id).removeAttribute("src");
  $("download").hidden = true;
  $("download").removeAttribute("href");
  const keep = $("original").src;
  urls.filter((u) => u !== keep).forEach((u) => URL.revokeObjectURL(u));
  urls = urls.filter((u) => u === keep);
}
function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}
function setProgress(fraction) { // a number: determinate; null: working, length unknown
  const bar = $("progress");
  bar.hidden = false;
  if (fraction === null) bar.removeAttribute("value"); else bar.value = fraction;
}

function choose(file) {
  if (!file) return;
  chosen = file;
  clearOutcome();
  urls.forEach((u) => URL.revokeObjectURL(u));
  urls = [];
  show("original", file);
  $("go").disabled = false;
  setStatus(file.name);
  document.body.dataset.state = "idle";
}

$("file").addEventListener("change", (e) => choose(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files[0]);
});

// -- the controls --------------------------------------------------------------------------------

function syncControls() {
  $("threshold").disabled = $("mode").value !== "threshold";
  $("padding").disabled = !$("crop").checked;
  const background = $("background").value;
  for (const kind of ["color", "image", "blur"]) {
    // a picture may be blurred too; contain's margins take the colour
    const wanted = background === kind || (kind === "blur" && background === "image")
      || (kind === "color" && background === "image" && $("bg_fit").value === "contain");
    document.querySelectorAll(".for-" + kind).forEach((el) => { el.hidden = !wanted; });
  }
  // untouched, the blur starts where each choice looks right: none on a picture, 20 on the original
  if ($("bg_blur").dataset.touched !== "1") $("bg_blur").value = background === "image" ? 0 : 20;
}
for (const id of ["mode", "crop", "background", "bg_fit"]) $(id).addEventListener("change", syncControls);
$("bg_blur").addEventListener("input", () => { $("bg_blur").dataset.touched = "1"; });
syncControls();

// The options, as the upload endpoint names them (see /docs).
function options() {
  const params = new URLSearchParams({ mode: $("mode").value, format: "auto" });
  if ($("model").value) params.set("model", $("model").value);
  if ($("mode").value === "threshold") params.set("threshold", $("threshold").value);
  if ($("subject_filter").checked) params.set("subject_filter", "1");
  if ($("crop").checked) {
    params.set("crop", "1");
    if ($("padding").value.trim()) params.set("padding", $("padding").value.trim());
  }
  const background = $("background").value;
  if (background === "color" || (background === "image" && $("bg_fit").value === "contain")) {
    params.set("bg_color", $("bg_color").value);
  }
  if (background === "image") params.set("bg_fit", $("bg_fit").value);
  if (background === "blur") { // "original, blurred" always blurs (0 would mean transparent)
    params.set("bg_blur", String(Math.max(1, Number($("bg_blur").value))));
  } else if (background === "image" && Number($("bg_blur").value) > 0) {
    params.set("bg_blur", $("bg_blur").value);
  }
  return params;
}

// When the service has an access token (U2NET_API_TOKEN), every call but /health and /ready must
// carry it: the page asks for it once, and keeps it for this tab only.
const TOKEN_KEY = "u2net-api-token";
$("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
$("token").addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, $("token").value.trim()));
function authorization() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}
function askForToken() {
  $("token-row").hidden = false;
  document.body.dataset.token = "needed";
}
// The served models (U2NET_MODELS), the default first; the select shows only when there is a choice.
function listModels(info) {
  const names = Object.keys(info.models || {});
  $("model").replaceChildren(...names.map((name) => new Option(name, name)));
  $("model-row").hidden = names.length < 2;
}
async function describeService() {
  const response = await fetch("/model-info", { headers: authorization() });
  if (response.status === 401) { askForToken(); return; }
  if (response.ok) listModels(await response.json());
}
describeService();
$("token").addEventListener("change", describeService);

// -- the request ---------------------------------------------------------------------------------

// XMLHttpRequest rather than fetch: it reports the upload's progress. Resolves with a Response
// (so that the multipart answer is read with formData()); rejects with the service's message.
function send(form) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/remove?" + options());
    xhr.responseType = "blob";
    xhr.setRequestHeader("Accept", "multipart/form-data");
    for (const [name, value] of Object.entries(authorization())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) setProgress(e.loaded / e.total); };
    xhr.upload.onload = () => { setProgress(null); setStatus("Cutting out..."); };
    xhr.onerror = () => reject(new Error("the service could not be reached"));
    xhr.onload = async () => {
      const headers = new Headers();
      for (const line of xhr.getAllResponseHeaders().trim().split(/[\r\n]+/)) {
        const at = line.indexOf(":");
        if (at > 0) headers.append(line.slice(0, at).trim(), line.slice(at + 1).trim());
      }
      const response = new Response(xhr.response, { status: xhr.status, headers });
      if (xhr.status === 401) askForToken();
      if (response.ok) { resolve(response); return; }
      let message = xhr.statusText || "HTTP " + xhr.status;
      try { message = (await response.json()).error; } catch (_) { /* not JSON: keep the status */ }
      reject(new Error(message));
    };
    xhr.send(form);
  });
}

$("controls").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!chosen || $("go").disabled) return;
  const form = new FormData();
  form.append("file", chosen);
  if ($("background").value === "image") {
    const picture = $("bg_image").files[0];
    if (!picture) { setStatus("Choose a background picture first", true); return; }
    form.append("bg_image", picture);
  }
  clearOutcome();
  document.body.dataset.state = "working";
  $("go").disabled = true;
  setStatus("Uploading...");
  setProgress(0);
  const started = performance.now();
  try {
    const response = await send(form);
    const parts = await response.formData();
    const image = parts.get("image");
    const url = show("result", image);
    show("mask", parts.get("mask"));
    const link = $("download");
    link.href = url;
    link.download = chosen.name.replace(/\.[^.]+$/, "") + "-nobg." + image.name.split(".").pop();
    link.hidden = false;
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    setStatus(`Done in ${seconds} s (${response.headers.get("X-Image-Size")}, ` +
      `mode ${response.headers.get("X-Mode")}, model ${response.headers.get("X-Model")})`);
    document.body.dataset.state = "done";
  } catch (err) {
    clearOutcome();
    setStatus("Error: " + err.message, true);
    document.body.dataset.state = "error";
  } finally {
    $("progress").hidden = true;
    $("go").disabled = false;
  }
});
