"use strict";
const $ = (id) => document.getElementById(id);
let chosen = null;
const urls = [];

function choose(file) {
  if (!file) return;
  chosen = file;
  $("original").src = remember(URL.createObjectURL(file));
  $("go").disabled = false;
  $("status").textContent = file.name;
  $("status").className = "";
}
function remember(url) { urls.push(url); return url; }

$("file").addEventListener("change", (e) => choose(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files[0]);
});
$("mode").addEventListener("change", () => {
  $("threshold").disabled = $("mode").value !== "threshold";
});

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

async function cutOut(extra) {
  const params = new URLSearchParams({ mode: $("mode").value, ...extra });
  if ($("model").value) params.set("model", $("model").value);
  if ($("mode").value === "threshold") params.set("threshold", $("threshold").value);
  if ($("subject_filter").checked) params.set("subject_filter", "1");
  const form = new FormData();
  form.append("file", chosen);
  const response = await fetch("/api/remove?" + params,
                               { method: "POST", body: form, headers: authorization() });
  if (response.status === 401) askForToken();
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error; } catch (_) {}
    throw new Error(message);
  }
  return response;
}

$("go").addEventListener("click", async () => {
  if (!chosen) return;
  document.body.dataset.state = "working";
  $("go").disabled = true;
  $("status").className = "";
  $("status").textContent = "Working...";
  const started = performance.now();
  try {
    const [result, mask] = await Promise.all([cutOut({}), cutOut({ only_mask: "1" })]);
    const blob = await result.blob();
    const url = remember(URL.createObjectURL(blob));
    $("result").src = url;
    $("mask").src = remember(URL.createObjectURL(await mask.blob()));
    const link = $("download");
    link.href = url;
    link.download = chosen.name.replace(/\.[^.]+$/, "") + "-nobg.png";
    link.hidden = false;
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    $("status").textContent = `Done in ${seconds} s (${result.headers.get("X-Image-Size")}, ` +
      `mode ${result.headers.get("X-Mode")}, model ${result.headers.get("X-Model")})`;
    document.body.dataset.state = "done";
  } catch (err) {
    $("status").textContent = "Error: " + err.message;
    $("status").className = "error";
    document.body.dataset.state = "error";
  } finally {
    $("go").disabled = false;
  }
});
