// SOAT endless panorama viewer: streams tiles from /api/stream and scrolls them across a canvas.
// Wire format (serve/protocol.py): a JSON "hello", then binary frames with a 24-byte header
// (magic "SOAT", uint32 seq, uint64 first column, uint32 width, uint8 format) + an image.
// Page query (kept up to date as the view moves): ?seed=S&x=COLUMN[&speed=COLUMNS_PER_S][&width=CANVAS_COLUMNS].
//
// Flow control: credit ({"credit": n}) is granted only while less than BUFFER_VIEWS canvases of
// columns are ahead of the view. Playback never outruns the buffer: the speed eases towards
// min(target, decoded columns ahead / LEAD_S), so it slows down smoothly before the buffer runs
// dry instead of jumping. In auto mode (speed 0) the target is what the server delivers to
// this page while it has credit (measured over RATE_WINDOW_S; first from /api/info).
// A lost connection is retried with backoff and resumes at the first column not yet received.
"use strict";

const BUFFER_VIEWS = 2;
const LEAD_S = 1.5; // seconds of decoded columns kept ahead of the right edge at full speed
const RATE_WINDOW_S = 5; // readouts and the auto speed average over this many seconds
const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const MIME = ["image/png", "image/jpeg", "image/webp"];
const NO_RETRY = new Set([1003, 1008, 1009]); // the page's own mistake: retrying cannot help
const canvas = document.getElementById("view");
const ctx = canvas.getContext("2d");
const el = (id) => document.getElementById(id);

const viewer = { states: [], info: null, saved: null, connections: 0, resumes: [] }; // for tests and curious users
window.soatViewer = viewer;

// ---- page query ---------------------------------------------------------------------------------
function parseWhole(text, lo, hi) {
  const t = String(text).trim();
  if (!/^\d{1,16}$/.test(t)) return null;
  const v = Number(t);
  return Number.isSafeInteger(v) && v >= lo && v <= hi ? v : null;
}
const params = new URLSearchParams(location.search);
const fromQuery = (name, lo, hi, fallback) => (params.has(name) ? parseWhole(params.get(name), lo, hi) ?? fallback : fallback);
canvas.width = fromQuery("width", 16, 8192, canvas.width);
el("seed").value = fromQuery("seed", 0, MAX_SAFE, 0);
el("speed").value = fromQuery("speed", 0, 3000, 0);

// ---- messages -----------------------------------------------------------------------------------
function status(text, kind = "") {
  el("status").textContent = text;
  el("status").className = kind;
}
function overlay(text, detail = "") {
  if (text === null) {
    el("overlay").classList.add("hidden");
    return;
  }
  el("overlay").classList.remove("hidden");
  el("overlay-text").textContent = text;
  el("overlay-detail").textContent = detail;
  viewer.states.push(`${text} ${detail}`.trim());
}
function describe(i) {
  const name = String(i.model).startsWith("random") ? `${i.model} (random weights: colored noise)` : i.model;
  return `${name} · ${i.size} px · ${i.backend} on ${i.device} · ${i.dtype}`;
}
async function fetchInfo() {
  const r = await fetch("/api/info", { cache: "no-store" });
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  viewer.info = await r.json();
  el("model").textContent = describe(viewer.info);
  el("server-cps").textContent = Math.round(viewer.info.generated_columns_per_s).toLocaleString();
  return viewer.info;
}
function eta(i) {
  return i.first_tile_eta_s == null ? "first tile: measuring…" : `first tile in about ${Math.max(0.1, i.first_tile_eta_s).toFixed(1)} s`;
}

// ---- one viewing session (seed + start column), across reconnections -----------------------------
let session = null;
let ws = null;
let retryTimer = null;

function start(seed, x) {
  if (session) session.tiles.forEach((t) => t.bitmap && t.bitmap.close());
  session = { seed, view: x, nextCol: x, nextSeq: 0, tiles: [], unspent: 0, maxCredit: 0, tile: 0, frames: 0,
              v: 0, attempts: 0, arrivals: [], busy: [], busyMark: 0, shownHist: [], firstShown: false };
  el("seed").value = String(seed);
  el("frames").textContent = "0";
  status("");
  connect(session);
}

function connect(s) {
  clearTimeout(retryTimer);
  if (ws) { ws.onclose = ws.onmessage = null; ws.close(); }
  s.unspent = 0;
  s.nextSeq = 0;
  const loading = `Streaming seed ${s.seed}` + (s.nextCol ? ` from column ${s.nextCol.toLocaleString()}` : "");
  if (!s.firstShown) overlay(`${loading}…`, viewer.info ? `${describe(viewer.info)} · ${eta(viewer.info)}` : "");
  fetchInfo().then((i) => { if (session === s && !s.firstShown) overlay(`${loading}…`, `${describe(i)} · ${eta(i)}`); })
    .catch(() => {});
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const sock = new WebSocket(`${proto}://${location.host}/api/stream?seed=${s.seed}&x=${s.nextCol}&format=jpeg`);
  sock.binaryType = "arraybuffer";
  ws = sock;
  viewer.connections += 1;
  sock.onmessage = (ev) => (typeof ev.data === "string" ? onText(s, JSON.parse(ev.data)) : onFrame(s, ev.data));
  sock.onclose = (ev) => onClose(s, sock, ev);
}

function onText(s, msg) {
  if (msg.type === "hello") {
    if (s.attempts > 0) {
      viewer.resumes.push(msg.x);
      status(`reconnected: resumed at column ${msg.x.toLocaleString()}`, "info");
      if (s.firstShown) overlay(null);
    }
    s.attempts = 0;
    s.maxCredit = msg.max_credit;
    s.tile = msg.tile;
    if (canvas.height !== msg.size) canvas.height = msg.size;
    topUp(s);
  } else if (msg.type === "error") {
    status(msg.error, "error");
  }
}

function onClose(s, sock, ev) {
  if (sock !== ws || session !== s) return;
  ws = null;
  if (NO_RETRY.has(ev.code)) {
    status(`stream closed: ${ev.reason || ev.code}`, "error");
    return;
  }
  const delay = Math.min(10, 0.5 * 2 ** s.attempts) * (0.8 + 0.4 * Math.random());
  s.attempts += 1;
  const why = ev.code === 1013 ? "the server is busy" : ev.code === 1000 ? "closed while idle"
    : ev.code === 1012 ? "the server is restarting" : "connection lost"; // 1012: it drained; resume at nextCol
  const text = `${why} — reconnecting in ${delay.toFixed(1)} s (attempt ${s.attempts}); will resume at column ${s.nextCol.toLocaleString()}`;
  status(text, "error");
  if (!s.firstShown) overlay("Waiting for the server…", text);
  retryTimer = setTimeout(() => { if (session === s) connect(s); }, delay * 1000);
}

function onFrame(s, data) {
  const head = new DataView(data, 0, 24);
  const magic = String.fromCharCode(...new Uint8Array(data, 0, 4));
  const seq = head.getUint32(4, true);
  const col = Number(head.getBigUint64(8, true));
  const width = head.getUint32(16, true);
  if (magic !== "SOAT" || seq !== s.nextSeq || col !== s.nextCol) {
    status(`unexpected frame seq=${seq} col=${col} (expected ${s.nextSeq}, ${s.nextCol})`, "error");
  }
  const now = performance.now();
  s.nextSeq = seq + 1;
  s.nextCol = col + width;
  s.busy.push([now, now - s.busyMark, width]); // delivery time while the server had our credit
  s.busyMark = now;
  s.unspent -= 1;
  s.frames += 1;
  s.arrivals.push([now, width]);
  el("frames").textContent = String(s.frames);
  const tile = { col, width, bitmap: null };
  s.tiles.push(tile); // in arrival order = column order; decoded asynchronously
  createImageBitmap(new Blob([data.slice(24)], { type: MIME[head.getUint8(20)] }))
    .then((bmp) => { if (session === s) tile.bitmap = bmp; else bmp.close(); })
    .catch((err) => status(`cannot decode frame ${seq}: ${err}`, "error"));
  topUp(s);
}

// Columns decoded without a gap, from the first kept tile on.
function readyEnd(s) {
  let end = s.view;
  for (const t of s.tiles) {
    if (!t.bitmap) break;
    end = t.col + t.width;
  }
  return Math.max(end, s.view);
}

function topUp(s) {
  if (!ws || ws.readyState !== WebSocket.OPEN || !s.tile) return;
  const ahead = s.nextCol + s.unspent * s.tile - s.view;
  const want = Math.ceil((BUFFER_VIEWS * canvas.width + canvas.width - ahead) / s.tile);
  const n = Math.min(want, s.maxCredit - s.unspent);
  if (n > 0) {
    if (s.unspent === 0) s.busyMark = performance.now(); // the server has work for us from now on
    ws.send(JSON.stringify({ credit: n }));
    s.unspent += n;
  }
}

// ---- playback -----------------------------------------------------------------------------------
let paused = false;

function windowed(list, now) {
  while (list.length && now - list[0][0] > RATE_WINDOW_S * 1000) list.shift();
  return list;
}
function deliveryRate(s, now) { // columns/s the server delivers to this page while it has credit
  const b = windowed(s.busy, now);
  const ms = b.reduce((sum, e) => sum + e[1], 0);
  if (b.length >= 2 && ms > 0) return (1000 * b.reduce((sum, e) => sum + e[2], 0)) / ms;
  const i = viewer.info; // before two frames: what the server says one batch takes
  return i && i.batch_ms ? (1000 * i.size) / i.batch_ms / Math.max(1, i.streams) : 0;
}
function targetSpeed(s, now) {
  const manual = Number(el("speed").value);
  return manual > 0 ? manual : 0.9 * deliveryRate(s, now);
}

let last = performance.now();
let lastReadout = 0;
function frame(now) {
  const dt = Math.min((now - last) / 1000, 0.25);
  last = now;
  const s = session;
  if (s) {
    const ahead = readyEnd(s) - (s.view + canvas.width); // decoded columns beyond the right edge
    const want = paused ? 0 : Math.min(targetSpeed(s, now), Math.max(0, ahead) / LEAD_S);
    s.v += (want - s.v) * Math.min(1, dt / 0.35); // ease: no jumps when tiles arrive or run out
    s.view = Math.max(s.view, Math.min(s.view + s.v * dt, readyEnd(s) - canvas.width));
    while (s.tiles.length && s.tiles[0].bitmap && s.tiles[0].col + s.tiles[0].width <= s.view) {
      s.tiles.shift().bitmap.close();
    }
    draw(s);
    topUp(s);
    if (now - lastReadout > 500) readout(s, now);
  }
  requestAnimationFrame(frame);
}

function draw(s) {
  const x0 = Math.floor(s.view);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  let drawn = false;
  for (const t of s.tiles) {
    if (t.col >= x0 + canvas.width) break;
    if (t.bitmap) { ctx.drawImage(t.bitmap, t.col - x0, 0); drawn = true; }
  }
  if (drawn && !s.firstShown) {
    s.firstShown = true;
    overlay(null);
  }
}

function readout(s, now) {
  lastReadout = now;
  const span = Math.min(RATE_WINDOW_S, Math.max(0.5, (now - (s.arrivals[0] ? s.arrivals[0][0] : now)) / 1000));
  const got = windowed(s.arrivals, now).reduce((sum, a) => sum + a[1], 0);
  const hist = windowed(s.shownHist, now);
  hist.push([now, s.view]);
  const shown = hist.length > 1 ? (1000 * (s.view - hist[0][1])) / Math.max(1, now - hist[0][0]) : 0;
  const ahead = Math.max(0, readyEnd(s) - (s.view + canvas.width));
  el("cps").textContent = Math.round(got / span).toLocaleString();
  el("shown").textContent = Math.round(shown).toLocaleString();
  el("buffer").textContent = s.v > 1 ? (ahead / s.v).toFixed(1) : ahead > 0 ? "full" : "0";
  el("column").textContent = Math.floor(s.view).toLocaleString();
  el("speed-value").textContent = Number(el("speed").value) > 0 ? `${el("speed").value} col/s`
    : `auto (${Math.round(targetSpeed(s, now))})`;
  keepUrl(s);
}

let lastUrl = "";
function keepUrl(s) {
  const q = new URLSearchParams({ seed: String(s.seed), x: String(Math.floor(s.view)) });
  if (Number(el("speed").value) > 0) q.set("speed", el("speed").value);
  if (params.has("width")) q.set("width", String(canvas.width));
  const url = `?${q}`;
  if (url !== lastUrl) { history.replaceState(null, "", url); lastUrl = url; }
}

// ---- controls -----------------------------------------------------------------------------------
function checkedSeed() {
  const seed = parseWhole(el("seed").value, 0, MAX_SAFE);
  el("seed").setAttribute("aria-invalid", seed === null ? "true" : "false");
  if (seed === null) {
    status(`"${el("seed").value}" is not a seed: give a whole number from 0 to ${MAX_SAFE} (still showing seed ${session ? session.seed : 0})`, "error");
  }
  return seed;
}

function go(x = 0) {
  const seed = checkedSeed();
  if (seed !== null) start(seed, x);
}

async function save() {
  const s = session;
  if (!s) return;
  const x = Math.floor(s.view);
  const w = Math.min(canvas.width, viewer.info ? viewer.info.max_width : canvas.width);
  status(`saving columns ${x.toLocaleString()}–${(x + w).toLocaleString()} of seed ${s.seed}…`, "info");
  for (let attempt = 0; attempt < 5; attempt++) {
    const r = await fetch(`/api/panorama.png?seed=${s.seed}&x=${x}&w=${w}`);
    if (r.status === 503) { await new Promise((ok) => setTimeout(ok, 1000 * (attempt + 1))); continue; }
    if (!r.ok) { status(`save failed: HTTP ${r.status} ${(await r.text()).slice(0, 200)}`, "error"); return; }
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await r.blob());
    a.download = `soat-seed${s.seed}-x${x}-w${w}.png`;
    viewer.saved = { seed: s.seed, x, w };
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 5000);
    status(`saved ${a.download} (exact pixels)`, "info");
    return;
  }
  status("save failed: the server stayed busy; try again", "error");
}

el("controls").addEventListener("submit", (ev) => { ev.preventDefault(); go(0); });
el("seed").addEventListener("input", () => el("seed").setAttribute("aria-invalid", "false"));
const stepSeed = (d) => { const v = parseWhole(el("seed").value, 0, MAX_SAFE) ?? (session ? session.seed : 0);
                          el("seed").value = String(Math.min(MAX_SAFE, Math.max(0, v + d))); go(0); };
el("prev").addEventListener("click", () => stepSeed(-1));
el("next").addEventListener("click", () => stepSeed(1));
el("random").addEventListener("click", () => { el("seed").value = String(Math.floor(Math.random() * 2 ** 32)); go(0); });
el("jump").addEventListener("click", () => {
  const x = parseWhole(el("jump-to").value, 0, MAX_SAFE - 8192);
  el("jump-to").setAttribute("aria-invalid", x === null ? "true" : "false");
  if (x === null) { status(`"${el("jump-to").value}" is not a column: give a whole number from 0`, "error"); return; }
  if (session) { session.firstShown = false; start(session.seed, x); }
});
el("speed").addEventListener("input", () => { if (session) readout(session, performance.now()); });
el("pause").addEventListener("click", () => { paused = !paused; el("pause").textContent = paused ? "play" : "pause"; });
el("save").addEventListener("click", save);
document.addEventListener("keydown", (ev) => {
  if (ev.target instanceof HTMLInputElement) return;
  if (ev.key === " ") { ev.preventDefault(); el("pause").click(); }
  else if (ev.key === "n") el("next").click();
  else if (ev.key === "r") el("random").click();
});
setInterval(() => fetchInfo().catch(() => {}), 3000);

overlay("Connecting to the server…");
const first = () => start(parseWhole(el("seed").value, 0, MAX_SAFE) ?? 0, fromQuery("x", 0, MAX_SAFE - 8192, 0));
fetchInfo().then(first, first); // the loading state names the model and device from the start
requestAnimationFrame(frame);
