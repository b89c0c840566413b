// SOAT endless panorama viewer: streams tiles from /api/stream and scrolls them across a canvas.
// Wire format (serve/protocol.py): a JSON "hello", then binary frames with a 24-byte header
// (magic "SOAT", uint32 seq, uint64 first column, uint32 width, uint8 format) + an image.
// Page query (kept up to date as the view moves): ?seed=S&x=COLUMN[&speed=COLUMNS_PER_S][&width=CANVAS_COLUMNS].
//
// Flow control: credit ({"credit": n}) is granted only while less than BUFFER_VIEWS canvases of
// columns are ahead of the view. Tiles land in a buffer as they arrive, however unevenly (one
// at a time every few seconds on a CPU, dozens at once on a GPU), and are decoded off the main
// thread; each requestAnimationFrame callback moves the view and draws it from the buffer, and
// does nothing else (readouts are updated on a timer), so frames come at the display rate.
// Playback never outruns the buffer: the speed eases towards min(target, decoded columns ahead /
// LEAD_S), so it slows down smoothly before the buffer runs dry instead of jumping. In auto mode
// (speed 0) the target is AUTO_SHARE of what the server delivers to this page while it has credit
// (first from /api/info's batch time).
// While tiles are owed, the page asks /api/info for the next tile's ETA (the server's measured
// batch times and its queue) after each tile and every ETA_POLL_MS, and counts it down. A lost connection is retried with backoff and
// resumes at the first column not yet received.
//
// Where the stream goes (serve/direct.py): where /api/info says the server has a direct route (Ray Serve),
// /api/route ranks the replicas for the seed, with their own addresses, and the page streams from the first, so
// its frames bypass Serve's proxy. When that connection closes (the replica died, drains or is busy), the page
// resumes on the next replica of the ranking, without asking the proxy, which may not know yet; once none is left
// it asks again, excluding the replicas it lost. If a direct connection does not open at all (a port this browser
// cannot reach), the page streams through its own address from then on. Without a route (plain soat serve; 503: no
// replica takes direct streams), or on a page loaded over https (a replica's port serves plain ws), the stream
// goes through the page's own address.
// The page asks for one tile a message, not batch frames: at the fastest pan (3,000 columns/s, 12 tiles/s of
// 256 px) one page sends a proxy little, and a batch of k tiles arrives only once all k are done, which delays
// the first tile of every connection k-fold on a server that computes one span at a time (a CPU).
"use strict";

const BUFFER_VIEWS = 2;
const LEAD_S = 1.5; // seconds of decoded columns kept ahead of the right edge at full speed
const RATE_WINDOW_S = 5; // readouts and the auto speed average over this many seconds ...
const RATE_MIN_TILES = 3; // ... or over the last few tiles where tiles come slower (a CPU)
const AUTO_SHARE = 0.9; // auto speed: this share of the delivery rate, so the buffer fills rather than drains
const FRAME_BUDGET_MS = 8; // a requestAnimationFrame callback longer than this counts as a slow frame
const ETA_POLL_MS = 1000; // /api/info while tiles are owed (their ETA) ...
const INFO_POLL_MS = 3000; // ... and otherwise;
const ETA_GAP_MS = 250; // after a tile, the next one's ETA is asked for at once, but not more often than this
const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const MIME = ["image/png", "image/jpeg", "image/webp"];
const NO_RETRY = new Set([1003, 1008, 1009]); // the page's own mistake: retrying cannot help
const canvas = document.getElementById("view");
const ctx = canvas.getContext("2d");
const el = (id) => document.getElementById(id);

// For tests and curious users: the overlay's states, the last /api/info, the last save, connections, resumed
// columns, each tile's ETA as shown and when it came (etaChecks, the last 100), where each connection went (routes:
// {url, replica}, the last 100), and rAF frame counts.
const viewer = { states: [], info: null, saved: null, connections: 0, resumes: [], etaChecks: [], routes: [],
                 frameStats: { frames: 0, slow: 0, panning: 0, stalled: 0, worst_ms: 0, budget_ms: FRAME_BUDGET_MS } };
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
  const state = `${text} ${detail}`.trim();
  if (viewer.states[viewer.states.length - 1] !== state) viewer.states.push(state);
  if (viewer.states.length > 100) viewer.states.shift();
}
function describe(i) {
  const name = String(i.model).startsWith("random") ? `${i.model} (random weights: colored noise)` : i.model;
  return `${name} · ${i.size} px · ${i.backend} on ${i.device} · ${i.dtype}`;
}
// /api/info; with a session, first_tile_eta_s is the ETA of the tile at its next column (kept as s.eta).
async function fetchInfo() {
  const s = session;
  const col = s ? s.nextCol : 0;
  const where = s ? `?seed=${s.seed}&x=${col}` + (s.tile ? `&tile=${s.tile}` : "") : "";
  const r = await fetch(`/api/info${where}`, { cache: "no-store" });
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  viewer.info = await r.json();
  if (s && session === s && s.nextCol === col) s.eta = { col, s: viewer.info.first_tile_eta_s, at: performance.now() };
  el("model").textContent = describe(viewer.info);
  el("server-cps").textContent = Math.round(viewer.info.generated_columns_per_s).toLocaleString();
  return viewer.info;
}
let infoTimer = null;
let infoInFlight = false;
let lastInfoAt = 0;
function pollInfo() {
  clearTimeout(infoTimer);
  infoInFlight = true;
  lastInfoAt = performance.now();
  fetchInfo().catch(() => {}).finally(() => {
    infoInFlight = false;
    const s = session;
    if (s && s.unspent > 0 && !(s.eta && s.eta.col === s.nextCol)) pollSoon(); // a tile came meanwhile
    else infoTimer = setTimeout(pollInfo, s && s.unspent > 0 ? ETA_POLL_MS : INFO_POLL_MS);
  });
}
function pollSoon() { // the next tile's ETA, as soon as ETA_GAP_MS after the last request
  if (infoInFlight) return; // its end asks again if the next tile changed meanwhile
  clearTimeout(infoTimer);
  infoTimer = setTimeout(pollInfo, Math.max(0, ETA_GAP_MS - (performance.now() - lastInfoAt)));
}
// Seconds until the next tile, counted down from the server's estimate (null: none for this tile yet).
function etaLeft(s, now) {
  const e = s.eta;
  if (!e || e.col !== s.nextCol || e.s == null) return null;
  return e.s - (now - e.at) / 1000;
}
function etaText(s, now, what) {
  const left = etaLeft(s, now);
  if (left === null) return s.eta && s.eta.s == null ? `${what}: measuring…` : `${what}: estimating…`;
  return left >= 0 ? `${what} in about ${left.toFixed(1)} s` : `${what}: ${(-left).toFixed(1)} s later than estimated`;
}

// ---- one viewing session (seed + start column), across reconnections -----------------------------
let session = null;
let ws = null;
let retryTimer = null;

function start(seed, x) {
  if (session) session.tiles.forEach((t) => t.bitmap && t.bitmap.close());
  session = { seed, view: x, nextCol: x, nextSeq: 0, tiles: [], unspent: 0, maxCredit: 0, tile: 0, frames: 0,
              v: 0, attempts: 0, arrivals: [], busy: [], busyMark: 0, shownHist: [], firstShown: false, eta: null,
              ranked: [], lost: [], viaPage: false, connecting: 0 };
  el("seed").value = String(seed);
  el("frames").textContent = "0";
  status("");
  connect(session);
}

function connect(s) {
  clearTimeout(retryTimer);
  if (ws) { ws.onclose = ws.onmessage = null; ws.close(); ws = null; }
  s.unspent = 0;
  s.nextSeq = 0;
  s.eta = null;
  if (!s.firstShown) loading(s, performance.now());
  fetchInfo().then(() => { if (session === s && !s.firstShown) loading(s, performance.now()); }).catch(() => {});
  viewer.connections += 1;
  const attempt = ++s.connecting; // a later connect() (a seed change, a jump) overtakes this one
  whereTo(s).then((where) => { if (session === s && s.connecting === attempt) open(s, where); });
}

// The address to stream from: {url: ws(s)://host:port, replica: its name or null for the page's own address}.
async function whereTo(s) {
  const page = { url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`, replica: null };
  if (location.protocol !== "http:" || s.viaPage || !(viewer.info && viewer.info.direct_route)) return page;
  if (!s.ranked.length) {
    const q = new URLSearchParams({ seed: String(s.seed) });
    if (s.lost.length) q.set("exclude", s.lost.join(","));
    try {
      const r = await fetch(`/api/route?${q}`, { cache: "no-store" });
      if (r.ok) s.ranked = (await r.json()).replicas; // else none takes direct streams now (or too many were lost)
    } catch {} // the page's address
  }
  if (!s.ranked.length) return page;
  return { url: s.ranked[0].url.replace(/^http/, "ws"), replica: s.ranked[0].replica };
}

function open(s, where) {
  const sock = new WebSocket(`${where.url}/api/stream?seed=${s.seed}&x=${s.nextCol}&format=jpeg`);
  sock.binaryType = "arraybuffer";
  sock.replica = where.replica;
  ws = sock;
  viewer.routes.push(where);
  if (viewer.routes.length > 100) viewer.routes.shift();
  sock.onopen = () => { sock.opened = true; };
  sock.onmessage = (ev) => (typeof ev.data === "string" ? onText(s, JSON.parse(ev.data)) : onFrame(s, ev.data));
  sock.onclose = (ev) => onClose(s, sock, ev);
}

function loading(s, now) {
  const where = `Streaming seed ${s.seed}` + (s.nextCol ? ` from column ${s.nextCol.toLocaleString()}` : "");
  overlay(`${where}…`, viewer.info ? `${describe(viewer.info)} · ${etaText(s, now, "first tile")}` : "");
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
  if (sock.replica !== null && !sock.opened) s.viaPage = true; // this browser cannot reach the replicas' ports
  else if (sock.replica !== null && ev.code !== 1000) { // the replica died, drains or is busy: on to the next
    s.ranked = s.ranked.filter((r) => r.replica !== sock.replica);
    s.lost.push(sock.replica);
  }
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
  if (s.eta && s.eta.col === col && s.eta.s != null) {
    viewer.etaChecks.push({ seq, col, eta_s: s.eta.s, shown_at: s.eta.at, arrived_at: now });
    if (viewer.etaChecks.length > 100) viewer.etaChecks.shift();
  }
  s.nextSeq = seq + 1;
  s.nextCol = col + width;
  s.busy.push([now - s.busyMark, width]); // delivery time while the server had our credit
  s.busyMark = now;
  s.unspent -= 1;
  s.frames += 1;
  s.arrivals.push([now, width]);
  el("frames").textContent = String(s.frames);
  if (s.unspent > 0) pollSoon();
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

// Arrivals [time, columns]: those of the last RATE_WINDOW_S, or the last RATE_MIN_TILES.
function recent(list, now) {
  while (list.length > RATE_MIN_TILES && now - list[0][0] > RATE_WINDOW_S * 1000) list.shift();
  return list;
}
// Columns/s of arrivals: the columns after the first over the time since it, less one mean interval while the
// next may still be on its way, so the rate holds between tiles that come slowly and falls once they stop.
function arrivalRate(list, now) {
  const a = recent(list, now);
  if (a.length < 2) return 0;
  const stretch = a[a.length - 1][0] - a[0][0];
  const elapsed = Math.max(stretch, now - a[0][0] - stretch / (a.length - 1));
  return (1000 * a.slice(1).reduce((sum, e) => sum + e[1], 0)) / Math.max(elapsed, 1);
}
// Columns/s the server delivers to this page while it has credit: tiles over the time they were owed, over the
// last RATE_WINDOW_S of such time; the tile being computed counts once it takes longer than the mean.
function deliveryRate(s, now) {
  const b = s.busy; // [ms the tile was owed, columns]
  while (b.length > RATE_MIN_TILES && b.slice(1).reduce((sum, e) => sum + e[0], 0) >= RATE_WINDOW_S * 1000) b.shift();
  const ms = b.reduce((sum, e) => sum + e[0], 0);
  if (b.length >= 2 && ms > 0) {
    const late = s.unspent > 0 ? Math.max(0, now - s.busyMark - ms / b.length) : 0;
    return (1000 * b.reduce((sum, e) => sum + e[1], 0)) / (ms + late);
  }
  const i = viewer.info; // before two tiles: what the server's batches make, shared among its streams
  return i && i.batch_ms ? (1000 * i.size * i.batch_size) / i.batch_ms / Math.max(1, i.streams) : 0;
}
function targetSpeed(s, now) {
  const manual = Number(el("speed").value);
  return manual > 0 ? manual : AUTO_SHARE * deliveryRate(s, now);
}

// One display frame: move the view, draw it from the buffer, ask for more tiles. Nothing else runs here.
let last = performance.now();
function frame(now) {
  const began = performance.now();
  const dt = Math.min((now - last) / 1000, 0.25);
  last = now;
  const s = session;
  if (s) {
    const ahead = readyEnd(s) - (s.view + canvas.width); // decoded columns beyond the right edge
    const want = paused ? 0 : Math.min(targetSpeed(s, now), Math.max(0, ahead) / LEAD_S);
    s.v += (want - s.v) * Math.min(1, dt / 0.35); // ease: no jumps when tiles arrive or run out
    const x0 = Math.floor(s.view);
    s.view = Math.max(s.view, Math.min(s.view + s.v * dt, readyEnd(s) - canvas.width));
    while (s.tiles.length && s.tiles[0].bitmap && s.tiles[0].col + s.tiles[0].width <= s.view) {
      s.tiles.shift().bitmap.close();
    }
    draw(s);
    topUp(s);
    if (s.v * dt >= 1) { // panning by a column or more this frame: the canvas must move
      viewer.frameStats.panning += 1;
      if (Math.floor(s.view) === x0) viewer.frameStats.stalled += 1;
    }
  }
  const took = performance.now() - began;
  const stats = viewer.frameStats;
  stats.frames += 1;
  if (took > FRAME_BUDGET_MS) stats.slow += 1;
  stats.worst_ms = Math.max(stats.worst_ms, took);
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
  const hist = recent(s.shownHist, now);
  hist.push([now, s.view]);
  const shown = hist.length > 1 ? (1000 * (s.view - hist[0][1])) / Math.max(1, now - hist[0][0]) : 0;
  const ahead = Math.max(0, readyEnd(s) - (s.view + canvas.width));
  el("cps").textContent = Math.round(arrivalRate(s.arrivals, now)).toLocaleString();
  el("shown").textContent = Math.round(shown).toLocaleString();
  el("buffer").textContent = s.v > 1 ? (ahead / s.v).toFixed(1) : ahead > 0 ? "full" : "0";
  el("eta").textContent = s.unspent > 0 ? etaText(s, now, "next tile") : "next tile: not asked for (buffer full)";
  el("column").textContent = Math.floor(s.view).toLocaleString();
  el("speed-value").textContent = Number(el("speed").value) > 0 ? `${el("speed").value} col/s`
    : `auto (${Math.round(targetSpeed(s, now))})`;
  if (!s.firstShown) loading(s, now);
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
setInterval(() => { if (session) readout(session, performance.now()); }, 500);

overlay("Connecting to the server…");
const first = () => start(parseWhole(el("seed").value, 0, MAX_SAFE) ?? 0, fromQuery("x", 0, MAX_SAFE - 8192, 0));
fetchInfo().then(first, first).finally(pollInfo); // the loading state names the model and device from the start
requestAnimationFrame(frame);
