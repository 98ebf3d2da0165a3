// genre-stream dashboard: one EventSource for live states, events and the mel spectrogram;
// the timeline starts from /api/history and grows with the live states.
"use strict";

const TIMELINE_SECONDS = 3600;
const MAX_GAP_SECONDS = 60; // same rule as the history's segments
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", // Tableau 10,
                 "#b07aa1", "#ff9da7", "#9c755f", "#a0cbe8", "#8cd17d", "#d37295"];  // grey left to silence

let labels = [];
const cards = new Map(); // source -> {el, segments, canvas, ctx, melTotal}

function colour(genre) {
  const i = labels.indexOf(genre);
  return i < 0 ? "#666" : PALETTE[i % PALETTE.length];
}

function card(source) {
  let c = cards.get(source);
  if (c) return c;
  const el = document.getElementById("source-template").content.firstElementChild.cloneNode(true);
  el.id = "source-" + source;
  el.dataset.source = source;
  el.querySelector(".name").textContent = source;
  const canvas = el.querySelector("canvas");
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  document.getElementById("empty")?.remove();
  document.getElementById("sources").appendChild(el);
  c = {el, segments: [], canvas, ctx, melTotal: 0};
  cards.set(source, c);
  buildBars(c);
  loadHistory(source, c);
  return c;
}

function buildBars(c) {
  const bars = c.el.querySelector(".bars");
  bars.replaceChildren();
  for (const label of labels) {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.label = label;
    row.innerHTML = '<span class="label"></span><span class="track"><span class="fill"></span></span>' +
                    '<span class="pct muted"></span>';
    row.querySelector(".label").textContent = label;
    bars.appendChild(row);
  }
}

function setStatus(c, status) {
  const badge = c.el.querySelector(".status");
  badge.textContent = status;
  badge.className = "badge status " + status;
  c.el.dataset.status = status;
}

function showState(c, state) {
  const genreEl = c.el.querySelector(".genre");
  if (state.state === "music" && state.genre) {
    genreEl.textContent = state.genre;
    c.el.querySelector(".confidence").textContent = Math.round(state.confidence * 100) + " %";
  } else if (state.state === "uncertain" && state.genre) {
    genreEl.textContent = "uncertain (" + state.genre + "?)";  // the best guess, marked as such
    c.el.querySelector(".confidence").textContent = Math.round(state.confidence * 100) + " %";
  } else {
    genreEl.textContent = state.state;
    c.el.querySelector(".confidence").textContent = "";
  }
  genreEl.dataset.genre = state.genre ?? "";
  let top = null;
  for (const row of c.el.querySelectorAll(".bar")) {
    const p = state.probabilities?.[row.dataset.label] ?? 0;
    row.querySelector(".fill").style.width = (p * 100).toFixed(1) + "%";
    row.querySelector(".pct").textContent = (p * 100).toFixed(1) + "%";
    row.querySelector(".fill").style.background = "";
    if (state.state === "music" && row.dataset.label === state.genre) top = row;
  }
  if (top) top.querySelector(".fill").style.background = colour(state.genre); // same colour as the timeline
  setStatus(c, state.state);
  c.el.querySelector(".error").textContent = "";
}

function showError(c, event) {
  setStatus(c, "error");
  c.el.querySelector(".error").textContent = event.reason + (event.path ? " (" + event.path + ")" : "");
}

// -- timeline ---------------------------------------------------------------------------
async function loadHistory(source, c) {
  try {
    const r = await fetch("api/history?kind=segments&since=-1h&source=" + encodeURIComponent(source));
    if (!r.ok) return;
    const body = await r.json();
    const earlier = body.items.map(s => ({state: s.state, genre: s.genre, start: Date.parse(s.start) / 1000,
                                          end: Date.parse(s.end) / 1000, windows: s.windows}));
    // Live states that arrived while the request was in flight are newer than the history.
    const firstLive = c.segments.length ? c.segments[0].start : Infinity;
    c.segments = earlier.filter(s => s.start < firstLive).concat(c.segments);
    renderTimeline(c);
  } catch (e) {
    console.warn("history unavailable", e);
  }
}

function addToTimeline(c, state) {
  const t = Date.parse(state.timestamp) / 1000;
  const genre = state.state === "music" ? state.genre : null;
  const last = c.segments[c.segments.length - 1];
  if (last && t - last.end <= MAX_GAP_SECONDS && last.state === state.state && last.genre === genre) {
    last.end = t;
    last.windows += 1;
  } else {
    if (last && t - last.end <= MAX_GAP_SECONDS) last.end = t; // segments meet, as in the history report
    c.segments.push({state: state.state, genre, start: t, end: t, windows: 1});
  }
  renderTimeline(c);
}

function renderTimeline(c) {
  const now = Date.now() / 1000;
  const t0 = now - TIMELINE_SECONDS;
  c.segments = c.segments.filter(s => s.end >= t0);
  const box = c.el.querySelector(".timeline");
  box.replaceChildren();
  let windows = 0;
  for (const s of c.segments) {
    const div = document.createElement("div");
    div.className = "seg " + s.state;
    div.dataset.genre = s.genre ?? "";
    div.dataset.windows = s.windows;
    div.style.left = (Math.max(0, s.start - t0) / TIMELINE_SECONDS * 100) + "%";
    div.style.width = ((s.end - Math.max(s.start, t0)) / TIMELINE_SECONDS * 100) + "%";
    div.style.background = colour(s.genre);
    div.title = (s.genre ?? s.state) + ", " + new Date(s.start * 1000).toLocaleTimeString() + "–" +
                new Date(s.end * 1000).toLocaleTimeString();
    box.appendChild(div);
    windows += s.windows;
  }
  box.dataset.windows = windows;
  const legend = c.el.querySelector(".legend");
  legend.replaceChildren();
  for (const g of [...new Set(c.segments.map(s => s.genre ?? s.state))]) {
    const item = document.createElement("span");
    item.innerHTML = '<i></i>';
    item.firstChild.style.background = colour(g);
    item.append(g);
    legend.appendChild(item);
  }
}

// -- mel spectrogram ----------------------------------------------------------------------
const LUT = (() => { // black -> purple -> orange -> yellow, indexed by byte value
  const stops = [[0, 0, 0, 4], [0.35, 87, 16, 110], [0.65, 221, 81, 58], [1, 252, 255, 164]];
  const lut = new Uint8ClampedArray(256 * 3);
  for (let v = 0; v < 256; v++) {
    const t = Math.min(1, Math.max(0, (v - 80) / 160)); // -40 dB .. +40 dB
    let i = 0;
    while (i < stops.length - 2 && t > stops[i + 1][0]) i++;
    const [a, b] = [stops[i], stops[i + 1]];
    const f = (t - a[0]) / (b[0] - a[0]);
    for (let k = 0; k < 3; k++) lut[v * 3 + k] = a[k + 1] + f * (b[k + 1] - a[k + 1]);
  }
  return lut;
})();

function drawMel(c, msg) {
  const bytes = Uint8Array.from(atob(msg.frames), ch => ch.charCodeAt(0));
  const n = msg.count, mels = msg.n_mels, {canvas, ctx} = c;
  if (n === 0 || mels === 0) return;
  let frames = n, offset = 0;
  if (!msg.full) {
    const fresh = msg.total - c.melTotal; // skip frames this page already drew
    if (fresh <= 0) return;
    offset = Math.max(0, n - fresh);
    frames = n - offset;
    ctx.drawImage(canvas, -frames, 0); // scroll left
  } else {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }
  const img = ctx.createImageData(frames, canvas.height);
  for (let x = 0; x < frames; x++) {
    for (let y = 0; y < canvas.height; y++) {
      const bin = Math.floor((canvas.height - 1 - y) * mels / canvas.height); // low frequencies at the bottom
      const v = bytes[(offset + x) * mels + bin];
      const p = (y * frames + x) * 4;
      img.data[p] = LUT[v * 3]; img.data[p + 1] = LUT[v * 3 + 1]; img.data[p + 2] = LUT[v * 3 + 2];
      img.data[p + 3] = 255;
    }
  }
  ctx.putImageData(img, canvas.width - frames, 0);
  c.melTotal = msg.total;
  canvas.dataset.total = msg.total;
}

// -- live stream --------------------------------------------------------------------------
function connect() {
  const conn = document.getElementById("connection");
  const es = new EventSource("api/live");
  es.addEventListener("hello", e => {
    const doc = JSON.parse(e.data);
    labels = doc.labels;
    document.getElementById("model").textContent = "model " + doc.model;
    conn.textContent = "live"; conn.className = "badge online";
    for (const s of doc.sources) {
      const c = card(s.source);
      buildBars(c);
      setStatus(c, s.status);
      if (s.state) showState(c, s.state);
      if (s.error) showError(c, s.error);
    }
  });
  es.addEventListener("state", e => {
    const state = JSON.parse(e.data);
    const c = card(state.source);
    showState(c, state);
    addToTimeline(c, state);
  });
  es.addEventListener("event", e => {
    const ev = JSON.parse(e.data);
    if (ev.type === "error") showError(card(ev.source), ev);
  });
  es.addEventListener("mel", e => {
    const msg = JSON.parse(e.data);
    drawMel(card(msg.source), msg);
  });
  es.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "badge offline"; };
}

setInterval(() => cards.forEach(renderTimeline), 10000);
connect();
