// The explorer page: reads the service's JSON routes and draws lists and an SVG map.
// No framework, no build step; every number shown comes from the API as returned.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let mapData = null; // {points, ...} from /v1/map
let currentUser = null;

// User lists and histories need a key unless the service makes them public. The page
// takes it from its address (/explorer#key=...: a fragment never reaches a server or
// its logs), keeps it for this tab only and removes it from the address bar.
const KEY_STORE = "recsys-explorer-key";
(() => {
  const m = location.hash.match(/(?:^#|&)key=([^&]*)/);
  if (!m) return;
  sessionStorage.setItem(KEY_STORE, decodeURIComponent(m[1]));
  history.replaceState(null, "", location.pathname + location.search);
})();

async function getJSON(url, options) {
  const key = sessionStorage.getItem(KEY_STORE);
  const opts = { ...(options || {}) };
  if (key) opts.headers = { ...(opts.headers || {}), "X-API-Key": key };
  const r = await fetch(url, opts);
  const body = await r.json();
  if (r.status === 401 || r.status === 403) {
    throw new Error(`${body.detail} (open the page as /explorer#key=YOUR_KEY)`);
  }
  if (!r.ok) throw new Error(body.detail || `HTTP ${r.status}`);
  return body;
}

function fmt(x) {
  return x === null || x === undefined ? "-" : Number(x).toFixed(3);
}

function videoItem(videoId, details) {
  const li = document.createElement("li");
  li.dataset.videoId = videoId;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "video";
  button.textContent = videoId;
  button.setAttribute("aria-label", `Show videos similar to ${videoId}`);
  button.addEventListener("click", () => showSimilar(videoId));
  li.appendChild(button);
  if (details) {
    const span = document.createElement("span");
    span.className = "details";
    span.textContent = details;
    li.appendChild(span);
  }
  return li;
}

function fill(list, items) {
  list.replaceChildren(...items);
  if (items.length === 0) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "none";
    list.appendChild(li);
  }
}

async function showSimilar(videoId) {
  $("similar").dataset.ready = "false";
  $("similar-to").textContent = `to ${videoId}`;
  const body = await getJSON(`/v1/videos/${encodeURIComponent(videoId)}/similar?k=10`);
  fill(
    $("similar"),
    body.similar.map((s) => {
      const li = videoItem(s.video_id, `similarity ${fmt(s.similarity)}`);
      li.dataset.similarity = s.similarity;
      return li;
    }),
  );
  $("similar").dataset.ready = "true";
  highlight({ selected: [videoId], similar: body.similar.map((s) => s.video_id) });
}

let highlighted = { history: [], recommended: [], selected: [], similar: [] };

async function highlight(update) {
  highlighted = { ...highlighted, ...update };
  const ids = [...new Set(Object.values(highlighted).flat())];
  let extra = [];
  if (ids.length) {
    extra = (await getJSON("/v1/map/positions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ video_ids: ids.slice(0, 1000) }),
    })).points;
  }
  drawMap(extra);
}

function drawMap(extra) {
  const svg = $("embedding-map");
  if (!mapData) return;
  const all = mapData.points.concat(extra);
  const xs = all.map((p) => p.x);
  const ys = all.map((p) => p.y);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const W = 600, H = 420, pad = 12;
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (W - 2 * pad);
  const sy = (y) => H - pad - ((y - y0) / (y1 - y0 || 1)) * (H - 2 * pad);
  const role = new Map();
  for (const [name, list] of Object.entries(highlighted)) for (const v of list) role.set(v, name);
  const nodes = [];
  const point = (p, cls) => {
    const shape = document.createElementNS(SVG, p.cold_start ? "rect" : "circle");
    if (p.cold_start) {
      shape.setAttribute("x", sx(p.x) - 3.5);
      shape.setAttribute("y", sy(p.y) - 3.5);
      shape.setAttribute("width", 7);
      shape.setAttribute("height", 7);
    } else {
      shape.setAttribute("cx", sx(p.x));
      shape.setAttribute("cy", sy(p.y));
      shape.setAttribute("r", cls === "catalogue" ? 2 : 5);
    }
    shape.setAttribute("class", `${cls}${p.cold_start ? " cold" : ""}`);
    shape.dataset.videoId = p.video_id;
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${p.video_id}${p.cold_start ? " (cold-start upload)" : ""}`;
    shape.appendChild(title);
    return shape;
  };
  for (const p of mapData.points) if (!role.has(p.video_id)) nodes.push(point(p, "catalogue"));
  for (const p of extra) nodes.push(point(p, role.get(p.video_id) || "catalogue"));
  svg.replaceChildren(...nodes);
}

async function loadUser(userId) {
  const t0 = performance.now();
  document.body.dataset.ready = "false";
  currentUser = userId;
  $("status").textContent = `Loading ${userId} ...`;
  const enc = encodeURIComponent(userId);
  try {
    const [hist, recs] = await Promise.all([
      getJSON(`/v1/users/${enc}/history`),
      getJSON(`/v1/users/${enc}/recommendations?k=10`),
    ]);
    if (currentUser !== userId) return;
    fill($("history"), hist.history.map((h) => videoItem(h.video_id)));
    fill(
      $("recommendations"),
      recs.recommendations.map((r) => {
        const li = videoItem(
          r.video_id,
          `p(watch) ${fmt(r.watch_probability)} | max ${fmt(r.max_similarity)} | avg ${fmt(r.avg_similarity)}`,
        );
        li.dataset.watchProbability = r.watch_probability;
        if (r.max_similarity !== undefined && r.max_similarity !== null) li.dataset.maxSimilarity = r.max_similarity;
        if (r.avg_similarity !== undefined && r.avg_similarity !== null) li.dataset.avgSimilarity = r.avg_similarity;
        return li;
      }),
    );
    await highlight({
      history: hist.history.map((h) => h.video_id),
      recommended: recs.recommendations.map((r) => r.video_id),
      selected: [],
      similar: [],
    });
    $("status").textContent =
      `${userId}: ${hist.history.length} watched, ${recs.recommendations.length} recommended`;
  } catch (err) {
    $("status").textContent = `${userId}: ${err.message}`;
  }
  document.body.dataset.renderMs = String(Math.round(performance.now() - t0));
  document.body.dataset.ready = "true";
}

let suggestTimer = null;
$("user-input").addEventListener("input", (e) => {
  clearTimeout(suggestTimer);
  const prefix = e.target.value;
  suggestTimer = setTimeout(async () => {
    const body = await getJSON(`/v1/users?prefix=${encodeURIComponent(prefix)}&limit=20`);
    $("user-suggestions").replaceChildren(
      ...body.users.map((u) => Object.assign(document.createElement("option"), { value: u })),
    );
  }, 150);
});

$("user-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const user = $("user-input").value.trim();
  if (!user) return;
  history.pushState(null, "", `?user=${encodeURIComponent(user)}`);
  loadUser(user);
});

async function start() {
  const t0 = performance.now();
  const [info, map] = await Promise.all([getJSON("/v1/explorer/info"), getJSON("/v1/map")]);
  mapData = map;
  $("report-link").hidden = !info.report;
  const ev = map.explained_variance_ratio.map((r) => `${(100 * r).toFixed(0)}%`).join(" + ");
  const t = map.trustworthiness;
  const how =
    map.projection === "tsne" && t
      ? `t-SNE of the co-watch embeddings: neighbours stay together, so topics form regions ` +
        `(trustworthiness ${t.tsne.toFixed(2)}, a PCA would score ${t.pca.toFixed(2)}); `
      : `PCA of the co-watch embeddings (${ev} of the variance); `;
  $("map-caption").textContent =
    how + `${map.points.length} of ${info.videos} videos drawn, hover a point for its id.`;
  drawMap([]);
  const user = new URLSearchParams(location.search).get("user");
  if (user) {
    $("user-input").value = user;
    await loadUser(user);
    document.body.dataset.renderMs = String(Math.round(performance.now() - t0));
  } else {
    $("status").textContent = "Pick a user to see their history and recommendations.";
    document.body.dataset.ready = "true";
  }
}

start();
