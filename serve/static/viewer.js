// SOAT endless panorama viewer: streams tiles from /api/stream and scrolls them across a canvas.
// Wire format (serve/protocol.py): a JSON "hello", then binary frames with a 24-byte header
// (magic "SOAT", uint32 seq, uint64 first column, uint32 width, uint8 format) + an image.
// Optional page query: ?seed=S&speed=COLUMNS_PER_S&width=CANVAS_COLUMNS.
// The viewer grants credit ({"credit": n}) only while it has less than BUFFER_VIEWS canvases
// of columns ahead of the view, so the server never sends more than the page can use.
"use strict";

const BUFFER_VIEWS = 2;
const MIME = ["image/png", "image/jpeg", "image/webp"];
const canvas = document.getElementById("view");
const ctx = canvas.getContext("2d");
const el = (id) => document.getElementById(id);

const params = new URLSearchParams(location.search);
function intParam(name, lo, hi, fallback) {
  const v = Number(params.get(name));
  return params.has(name) && Number.isSafeInteger(v) && v >= lo && v <= hi ? v : fallback;
}
canvas.width = intParam("width", 16, 8192, canvas.width);
el("seed").value = intParam("seed", 0, Number.MAX_SAFE_INTEGER, 0);
el("speed").value = intParam("speed", 0, 2000, Number(el("speed").value));
el("speed-value").textContent = el("speed").value;

let ws = null;
let stream = null; // per-connection state

function connect(seed) {
  if (ws) { ws.onclose = null; ws.close(); }
  if (stream) stream.tiles.forEach((t) => t.bitmap && t.bitmap.close());
  stream = { seed, view: 0, tiles: [], unspent: 0, maxCredit: 0, tile: 0, nextSeq: 0, nextCol: 0,
             frames: 0, arrivals: [] };
  el("status").textContent = "";
  el("frames").textContent = "0";
  const proto = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${proto}://${location.host}/api/stream?seed=${seed}&x=0&format=jpeg`);
  ws.binaryType = "arraybuffer";
  const mine = stream;
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onText(mine, JSON.parse(ev.data)) : onFrame(mine, ev.data));
  ws.onclose = (ev) => { el("status").textContent = `stream closed (${ev.code}) ${ev.reason}`; };
}

function onText(s, msg) {
  if (msg.type === "hello") {
    s.maxCredit = msg.max_credit;
    s.tile = msg.tile;
    s.view = s.nextCol = msg.x;
    if (canvas.height !== msg.size) canvas.height = msg.size;
    topUp(s);
  } else if (msg.type === "error") {
    el("status").textContent = msg.error;
  }
}

function onFrame(s, data) {
  const head = new DataView(data, 0, 24);
  const magic = String.fromCharCode(...new Uint8Array(data, 0, 4));
  const seq = head.getUint32(4, true);
  const col = Number(head.getBigUint64(8, true));
  const width = head.getUint32(16, true);
  if (magic !== "SOAT" || seq !== s.nextSeq || col !== s.nextCol) {
    el("status").textContent = `unexpected frame seq=${seq} col=${col}`;
  }
  s.nextSeq = seq + 1;
  s.nextCol = col + width;
  s.unspent -= 1;
  s.frames += 1;
  s.arrivals.push([performance.now(), width]);
  el("frames").textContent = String(s.frames);
  const tile = { col, width, bitmap: null };
  s.tiles.push(tile); // in arrival order = column order; decoded asynchronously
  createImageBitmap(new Blob([data.slice(24)], { type: MIME[head.getUint8(20)] }))
    .then((bmp) => { if (stream === s) tile.bitmap = bmp; else bmp.close(); })
    .catch((err) => { el("status").textContent = `cannot decode frame ${seq}: ${err}`; });
  topUp(s);
}

// Columns decoded without a gap, from the first kept tile on.
function readyEnd(s) {
  let end = s.view;
  for (const t of s.tiles) {
    if (!t.bitmap) break;
    end = t.col + t.width;
  }
  return end;
}

function topUp(s) {
  if (!ws || ws.readyState !== WebSocket.OPEN || !s.tile) return;
  const ahead = s.nextCol + s.unspent * s.tile - s.view;
  const want = Math.ceil((BUFFER_VIEWS * canvas.width + canvas.width - ahead) / s.tile);
  const n = Math.min(want, s.maxCredit - s.unspent);
  if (n > 0) {
    ws.send(JSON.stringify({ credit: n }));
    s.unspent += n;
  }
}

let last = performance.now();
let lastReadout = 0;
function frame(now) {
  const dt = Math.min((now - last) / 1000, 0.25);
  last = now;
  const s = stream;
  if (s) {
    const speed = Number(el("speed").value);
    s.view = Math.max(s.view, Math.min(s.view + speed * dt, readyEnd(s) - canvas.width));
    while (s.tiles.length && s.tiles[0].bitmap && s.tiles[0].col + s.tiles[0].width <= s.view) {
      s.tiles.shift().bitmap.close();
    }
    draw(s);
    topUp(s);
    if (now - lastReadout > 250) readout(s, now);
  }
  requestAnimationFrame(frame);
}

function draw(s) {
  const x0 = Math.floor(s.view);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (const t of s.tiles) {
    if (t.col >= x0 + canvas.width) break;
    if (t.bitmap) ctx.drawImage(t.bitmap, t.col - x0, 0);
  }
}

function readout(s, now) {
  lastReadout = now;
  while (s.arrivals.length && now - s.arrivals[0][0] > 1000) s.arrivals.shift();
  el("cps").textContent = String(s.arrivals.reduce((sum, a) => sum + a[1], 0));
  el("column").textContent = String(Math.floor(s.view));
}

function save() {
  const s = stream;
  canvas.toBlob((blob) => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `soat-seed${s ? s.seed : 0}-x${s ? Math.floor(s.view) : 0}.png`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }, "image/png");
}

function seedValue() {
  const v = Number(el("seed").value);
  return Number.isSafeInteger(v) && v >= 0 ? v : 0;
}

el("go").addEventListener("click", () => connect(seedValue()));
el("seed").addEventListener("change", () => connect(seedValue()));
el("speed").addEventListener("input", () => { el("speed-value").textContent = el("speed").value; });
el("save").addEventListener("click", save);
connect(seedValue());
requestAnimationFrame(frame);
