"""The search page: plain HTML, one script and one style sheet, nothing from another site (works offline).

INPUT  -> nothing (constants)
OUTPUT -> HTML (GET /), JS (GET /app.js), CSS (GET /app.css)

The page reads /config.json (indices, defaults), posts clip-retrieval requests to /knn-service and shows
each result's thumbnail (the result's `thumbnail`, served from images=, else its web URL), caption and
similarity. Near-duplicate images, duplicate URLs and safe mode are toggles; changing one searches
again. Captions come from the web: they are set as text (textContent), never parsed as HTML, and a link
is made only from an http(s) URL. The script is a file of its own so that the page's
Content-Security-Policy can forbid inline script.
"""

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>laion-spark search</title>
<link rel="stylesheet" href="app.css">
</head>
<body>
<header>
  <h1>laion-spark search</h1>
  <form id="search-form" role="search">
    <input id="q" name="q" type="search" placeholder="a red circle" autocomplete="off" autofocus>
    <button id="go" type="submit">Search</button>
    <label class="file">or search with an image <input id="image-file" type="file" accept="image/*"></label>
  </form>
  <div class="controls">
    <label>index <select id="indice"></select></label>
    <label>search <select id="modality">
      <option value="image">image embeddings</option>
      <option value="text">text embeddings</option>
    </select></label>
    <label>results <input id="k" type="number" min="1" value="10"></label>
    <label><input id="dedup" type="checkbox" checked> hide near-duplicate images</label>
    <label><input id="urls" type="checkbox" checked> hide duplicate URLs</label>
    <label><input id="safe" type="checkbox" checked> safe mode</label>
  </div>
</header>
<p id="status" role="status"></p>
<main id="results"></main>
<script src="app.js"></script>
</body>
</html>
"""

JS = r""""use strict";
const $ = (id) => document.getElementById(id);
let config = null;
let lastQuery = null;

function safeUrl(text) {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch (e) {
    return null;
  }
}

function showStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

function render(results) {
  const grid = $("results");
  grid.replaceChildren();
  for (const r of results) {
    const figure = document.createElement("figure");
    figure.className = "result";
    const img = document.createElement("img");
    img.alt = r.caption || "";
    const link = safeUrl(r.url);
    const src = r.thumbnail || link;
    if (src) img.src = src;
    if (link) {
      const a = document.createElement("a");
      a.href = link;
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      a.appendChild(img);
      figure.appendChild(a);
    } else {
      figure.appendChild(img);
    }
    const caption = document.createElement("figcaption");
    const text = document.createElement("span");
    text.className = "caption";
    text.textContent = r.caption == null ? "" : String(r.caption);
    const similarity = document.createElement("span");
    similarity.className = "similarity";
    similarity.textContent = typeof r.similarity === "number" ? r.similarity.toFixed(3) : "";
    caption.append(text, similarity);
    figure.appendChild(caption);
    grid.appendChild(figure);
  }
}

async function search(query) {
  lastQuery = query;
  const body = Object.assign({}, query, {
    modality: $("modality").value,
    indice_name: $("indice").value,
    num_images: parseInt($("k").value, 10) || config.default_k,
    deduplicate: $("dedup").checked,
    unique_urls: $("urls").checked,
    use_safety_model: $("safe").checked,
  });
  showStatus("searching\u2026", false);
  const started = performance.now();
  let response, data;
  try {
    response = await fetch("knn-service", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify(body),
    });
    data = await response.json();
  } catch (e) {
    showStatus("the server did not answer: " + e, true);
    return;
  }
  if (!response.ok) {
    $("results").replaceChildren();
    showStatus(data && data.error ? data.error : "HTTP " + response.status, true);
    return;
  }
  render(data);
  let text = data.length + " results from " + (response.headers.get("X-Index") || body.indice_name) +
    " in " + Math.round(performance.now() - started) + " ms";
  const unhonoured = response.headers.get("X-Unhonoured-Fields");
  if (unhonoured) text += " (not applied: " + unhonoured + ")";
  showStatus(text, false);
}

function syncModality() {
  const info = config.indices[$("indice").value];
  if (info) $("modality").value = info.field;
}

async function start() {
  try {
    config = await (await fetch("config.json")).json();
  } catch (e) {
    showStatus("could not read config.json: " + e, true);
    return;
  }
  const select = $("indice");
  for (const [name, info] of Object.entries(config.indices)) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name + " (" + info.field + ", " + info.nb_vectors + " vectors)";
    select.appendChild(option);
  }
  select.addEventListener("change", syncModality);
  syncModality();
  $("k").value = config.default_k;
  $("k").max = config.max_k;
  $("dedup").checked = config.deduplicate;
  $("urls").checked = config.unique_urls;
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search({text: $("q").value});
  });
  $("image-file").addEventListener("change", () => {
    const file = $("image-file").files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => search({image: reader.result});
    reader.readAsDataURL(file);
  });
  for (const id of ["dedup", "urls", "safe", "modality", "indice"]) {
    $(id).addEventListener("change", () => { if (lastQuery) search(lastQuery); });
  }
  document.body.dataset.ready = "true";
}

start();
"""

CSS = """body { font-family: system-ui, sans-serif; margin: 0 1.5rem 2rem; color: #222; }
header { position: sticky; top: 0; background: #fff; padding: 0.8rem 0; border-bottom: 1px solid #ddd; }
h1 { font-size: 1.2rem; margin: 0 0 0.6rem; }
form { display: flex; gap: 0.5rem; align-items: center; flex-wrap: wrap; }
#q { flex: 1 1 20rem; font-size: 1rem; padding: 0.4rem; }
.controls { display: flex; gap: 1.2rem; flex-wrap: wrap; margin-top: 0.6rem; font-size: 0.9rem; }
#k { width: 5rem; }
#status { color: #555; font-size: 0.9rem; }
#status.error { color: #b00020; }
#results { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 1rem; }
figure.result { margin: 0; }
figure.result img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #f4f4f4; }
figcaption { display: flex; justify-content: space-between; gap: 0.5rem; font-size: 0.85rem; }
.similarity { color: #777; font-variant-numeric: tabular-nums; }
"""
