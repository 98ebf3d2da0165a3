// genre-stream dashboard: one EventSource for live states, source items, levels and the mel spectrogram;
// the timeline starts from /api/history (10 min / 1 h / 24 h / 7 d) and grows with the live states;
// "music per day" comes from /api/history/daily; "hear last 30 s" plays /api/sources/<id>/recent.wav.
// What the big label may claim (offline, error, a state) is decided by the daemon ("status");
// the page adds only what depends on the clock: a live source silent for "stale_after" seconds looks stale.
"use strict";

const RANGES = { // the history selector: seconds shown, and the timeline's axis labels
  "10m": {seconds: 600, axis: ["−10 min", "−7½", "−5", "−2½", "now"]},
  "1h": {seconds: 3600, axis: ["−60 min", "−45", "−30", "−15", "now"]},
  "24h": {seconds: 86400, axis: ["−24 h", "−18", "−12", "−6", "now"]},
  "7d": {seconds: 604800, axis: ["−7 d", "−5¼", "−3½", "−1¾", "now"]},
};
const MAX_GAP_SECONDS = 60; // same rule as the history's segments
const LEVEL_MIN_DBFS = -90, LEVEL_MAX_DBFS = 0; // the level meter's scale
const DAILY_DAYS = 7, DAILY_REFRESH_MS = 60000;
const STATE_WORDS = {not_music: "not music"}; // how a state reads on the page (others as they are)
const SUMMARY_CHARS = 90; // the visible part of an error; the rest is behind "details"
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", // Tableau 10,
                 "#b07aa1", "#ff9da7", "#9c755f", "#a0cbe8", "#8cd17d", "#d37295"];  // grey left to silence

let labels = [];
let corrections = false; // the daemon records "this file was X" (watch.library_db is set)
let axes = null; // the spectrogram's axes, from the hello document
let range = "1h";
let dailySource = ""; // the "music per day" table's source ("" = all)
const cards = new Map(); // source -> {el, segments, canvas, ctx, melTotal, item, lastState}

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
  c = {el, segments: [], canvas, ctx, melTotal: 0, item: null, lastState: null};
  cards.set(source, c);
  wirePlayer(source, el);
  addDailySource(source);
  buildBars(c);
  drawAxes(c);
  loadHistory(source, c);
  return c;
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit",
                                                          hour12: false});
}

function ago(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 90) return seconds + " s";
  if (seconds < 5400) return Math.round(seconds / 60) + " min";
  if (seconds < 172800) return Math.round(seconds / 3600) + " h";
  return Math.round(seconds / 86400) + " d";
}

function summary(reason) {
  // "stream X dropped: refused (ffmpeg: ...); reconnecting in 4 s" -> "stream X dropped: refused"
  let text = reason.split(" (")[0].split("; ")[0];
  return text.length > SUMMARY_CHARS ? text.slice(0, SUMMARY_CHARS - 1) + "…" : text;
}

function basename(path) {
  return path.split(/[\\/]/).pop();
}

function pct(p) {
  return Math.round(p * 100) + " %";
}

function stateWord(state) {
  return STATE_WORDS[state] ?? state;
}

// "hear last 30 s": the source's recent audio as a WAV the daemon builds on request (a fresh URL each time).
function wirePlayer(source, el) {
  const button = el.querySelector(".play"), audio = el.querySelector(".recent-audio");
  const note = el.querySelector(".play-note");
  const idle = button.textContent;
  button.addEventListener("click", () => {
    if (!audio.paused) {
      audio.pause();
      return;
    }
    note.textContent = "";
    audio.src = "api/sources/" + encodeURIComponent(source) + "/recent.wav?at=" + Date.now();
    audio.hidden = false;
    audio.controls = true;
    audio.play().catch(e => { if (!audio.error) note.textContent = "cannot play: " + e.message; });
  });
  audio.addEventListener("loadedmetadata", () => {
    el.dataset.audioSeconds = audio.duration.toFixed(2);
    note.textContent = "the last " + Math.round(audio.duration) + " s";
  });
  audio.addEventListener("play", () => { button.textContent = "■ stop"; });
  for (const ev of ["pause", "ended"]) audio.addEventListener(ev, () => { button.textContent = idle; });
  audio.addEventListener("error", () => {
    button.textContent = idle;
    audio.hidden = true;
    note.textContent = "no audio from this source yet";
  });
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
  // Down: the genre is what was last heard, not what is on air.
  c.el.classList.toggle("down", status === "offline" || status === "stale");
}

// A source's item (hello, or after an event / availability change): status, folded error, lists.
function showSource(c, item) {
  c.item = item;
  c.el.dataset.kind = item.kind ?? "";
  if (item.kind === "watch") { // a folder publishes files, not states: it has no minutes per day
    [...document.getElementById("daily-source").options].find(o => o.value === item.source)?.remove();
  }
  if (item.state) showState(c, item.state);
  setStatus(c, item.status);
  const problem = c.el.querySelector(".problem");
  const error = item.error;
  problem.hidden = !error && item.status !== "offline";
  c.el.querySelector(".problem-summary").textContent =
    error ? summary(error.reason) : "no audio: the source is offline";
  const detail = c.el.querySelector(".problem-detail");
  detail.hidden = !error; // offline without an error: the summary says it all
  detail.textContent = error ? error.reason + (error.path ? "\n" + error.path : "") + "\n" + error.timestamp : "";
  c.el.querySelector(".changes").hidden = item.changes.length === 0;
  const changes = c.el.querySelector(".changes .recent");
  changes.replaceChildren(...item.changes.slice().reverse().map(ev => {
    const li = document.createElement("li");
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = clock(Date.parse(ev.timestamp) / 1000);
    li.append(when, " " + (ev.from ?? "–") + " → " + ev.to);
    return li;
  }));
  const tracks = c.el.querySelector(".tracks");
  tracks.hidden = item.kind !== "watch" && item.tracks.length === 0;
  tracks.querySelector(".recent").replaceChildren(...item.tracks.slice().reverse().map(ev => trackRow(item, ev)));
  tick(c);
}

function trackRow(item, ev) {
  const li = document.createElement("li");
  const t = Date.parse(ev.timestamp) / 1000;
  let verdict;
  if (ev.type === "error") {
    li.className = "failed";  // fades with age (CSS): one bad file is not the folder's state
    li.style.animationDelay = -(Date.now() / 1000 - t) + "s";
    verdict = "skipped: " + summary(ev.reason.replace(ev.path + ": ", "")); // the name is shown already
    li.title = ev.reason;
  } else if (ev.state === "uncertain") {
    li.className = "uncertain";
    verdict = "uncertain (" + ev.genre + "?) " + Math.round(ev.confidence * 100) + " %";
  } else if (ev.state === "silence" || ev.state === "not_music") {
    li.className = ev.state;
    verdict = ev.state === "silence" ? "silence" : "not music";
  } else {
    verdict = ev.genre + " " + Math.round(ev.confidence * 100) + " %";
  }
  li.dataset.state = ev.type === "error" ? "failed" : ev.state;
  for (const [cls, text] of [["when", clock(t)], ["file", basename(ev.path ?? "")], ["verdict", verdict]]) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    li.append(span, " ");
  }
  if (ev.type === "track_tagged") li.append(correction(item.source, ev.path, item.corrected?.[ev.path]));
  return li;
}

// "This was …": the user's genre for a tagged file, recorded in the library for genre-trainer finetune.
function correction(source, path, given) {
  const span = document.createElement("span");
  span.className = "correction muted";
  const note = document.createElement("span");
  note.className = "note";
  if (given) {
    note.textContent = "you said: " + given;
    span.dataset.genre = given;
  }
  span.append(note);
  if (!corrections) return span;
  const select = document.createElement("select");
  select.className = "correct";
  select.title = "tell genre-stream the right genre (stored for fine-tuning)";
  select.append(new Option(given ? "change…" : "correct…", ""));
  for (const label of labels) select.append(new Option(label, label));
  select.addEventListener("change", async () => {
    const genre = select.value;
    if (!genre) return;
    select.disabled = true;
    let message;
    try {
      const r = await fetch("api/label", {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify({source, path, genre})});
      const body = await r.json();
      message = r.ok ? null : body.error;
    } catch (e) {
      message = "the daemon did not answer";
    }
    select.disabled = false;
    select.value = "";
    if (message) { // the row keeps its verdict; the reason shows next to it
      note.textContent = "not saved: " + message;
      span.classList.add("refused");
    } // on success the daemon sends the source item again, which redraws the row with "you said"
  });
  span.append(" ", select);
  return span;
}

// Once a second: what depends on the clock (age of the last window, stale look, countdown, on air).
function tick(c) {
  const now = Date.now() / 1000;
  const item = c.item, state = c.lastState;
  const age = state ? now - Date.parse(state.timestamp) / 1000 : null;
  const live = ["music", "uncertain", "not_music", "silence"].includes(item?.status);
  if (item && live) {
    setStatus(c, item.stale_after != null && age != null && age > item.stale_after ? "stale" : item.status);
  }
  c.el.querySelector(".age").textContent = age == null ? "" : "last window " + ago(age) + " ago";
  const retry = c.el.querySelector(".retry");
  const retryIn = item?.retry_at != null && (item.status === "offline" || item.status === "error")
    ? item.retry_at - now : null;
  retry.textContent = retryIn == null ? "" : retryIn > 0 ? "reconnecting in " + Math.ceil(retryIn) + " s"
                                                         : "reconnecting…";
  const down = c.el.classList.contains("down");
  c.el.querySelector(".lastheard").textContent = down && state ? "last heard " + ago(age) + " ago:" : "";
  const onair = c.el.querySelector(".onair");
  const seg = c.segments[c.segments.length - 1];
  if (!down && state?.state === "music" && seg && seg.genre === state.genre) {
    onair.textContent = "on air since " + clock(seg.start) + " (" + ago(now - seg.start) + ")";
    onair.dataset.since = seg.start;
  } else {
    onair.textContent = "";
    delete onair.dataset.since;
  }
}

// The announced genre with its own probability (what its bar shows); when the smoothed favourite is another
// genre (held back by the hysteresis, or too unsure to announce), "leading: jazz 72 %" says why the bars differ.
function showState(c, state) {
  const genreEl = c.el.querySelector(".genre");
  const named = (state.state === "music" || state.state === "uncertain") && state.genre;
  if (state.state === "music" && state.genre) {
    genreEl.textContent = state.genre;
  } else if (named) {
    genreEl.textContent = "uncertain (" + state.genre + "?)";  // the best guess, marked as such
  } else {
    genreEl.textContent = stateWord(state.state);  // silence, or speech, talk or noise: no genre, no percentage
  }
  c.el.querySelector(".confidence").textContent = named ? pct(state.confidence) : "";
  genreEl.dataset.genre = state.genre ?? "";
  const leading = c.el.querySelector(".leading");
  const leader = named && state.leading && state.leading !== state.genre ? state.leading : null;
  leading.hidden = !leader;
  leading.textContent = leader ? "leading: " + leader + " " + pct(state.leading_confidence ?? 0) : "";
  leading.dataset.genre = leader ?? "";
  let top = null;
  for (const row of c.el.querySelectorAll(".bar")) {
    const p = state.probabilities?.[row.dataset.label] ?? 0;
    row.querySelector(".fill").style.width = (p * 100).toFixed(1) + "%";
    row.querySelector(".pct").textContent = (p * 100).toFixed(1) + "%";
    row.querySelector(".fill").style.background = "";
    row.classList.toggle("announced", Boolean(named) && row.dataset.label === state.genre);
    row.classList.toggle("leading", row.dataset.label === leader);
    if (state.state === "music" && row.dataset.label === state.genre) top = row;
  }
  if (top) top.querySelector(".fill").style.background = colour(state.genre); // same colour as the timeline
  c.lastState = state;
  tick(c);
}

// -- timeline ---------------------------------------------------------------------------
async function loadHistory(source, c) {
  const query = "since=-" + range + "&source=" + encodeURIComponent(source);
  c.el.querySelector(".csv").href = "api/history.csv?" + query;
  c.el.querySelector(".axis").replaceChildren(...RANGES[range].axis.map(text => {
    const span = document.createElement("span");
    span.textContent = text;
    return span;
  }));
  try {
    const asked = range;
    const r = await fetch("api/history?kind=segments&" + query);
    if (!r.ok || asked !== range) return;
    const body = await r.json();
    const earlier = body.items.map(s => {
      const music = s.state === "music";  // only music has a genre and a confidence (the history says so too)
      return {state: s.state, genre: music ? s.genre : null, start: Date.parse(s.start) / 1000,
              end: Date.parse(s.end) / 1000, windows: s.windows, sum: music ? (s.confidence ?? 0) * s.windows : 0};
    });
    // Live states that arrived while the request was in flight are newer than the history.
    const live = c.segments.filter(s => s.live);
    const firstLive = live.length ? live[0].start : Infinity;
    c.segments = earlier.filter(s => s.start < firstLive).concat(live);
    c.el.querySelector(".timeline").dataset.range = range;
    renderTimeline(c);
    tick(c);
  } catch (e) {
    console.warn("history unavailable", e);
  }
}

function addToTimeline(c, state) {
  const t = Date.parse(state.timestamp) / 1000;
  const genre = state.state === "music" ? state.genre : null;
  const last = c.segments[c.segments.length - 1];
  const conf = genre ? state.confidence : 0;
  if (last && t - last.end <= MAX_GAP_SECONDS && last.state === state.state && last.genre === genre) {
    last.end = t;
    last.windows += 1;
    last.sum += conf;
  } else {
    if (last && t - last.end <= MAX_GAP_SECONDS) last.end = t; // segments meet, as in the history report
    c.segments.push({state: state.state, genre, start: t, end: t, windows: 1, sum: conf, live: true});
  }
  renderTimeline(c);
}

function renderTimeline(c) {
  const span = RANGES[range].seconds;
  const now = Date.now() / 1000;
  const t0 = now - span;
  c.segments = c.segments.filter(s => s.end >= t0);
  const box = c.el.querySelector(".timeline");
  box.replaceChildren();
  let windows = 0;
  for (const s of c.segments) {
    const div = document.createElement("div");
    div.className = "seg " + s.state;
    div.dataset.genre = s.genre ?? "";
    div.dataset.windows = s.windows;
    div.style.left = (Math.max(0, s.start - t0) / span * 100) + "%";
    div.style.width = ((s.end - Math.max(s.start, t0)) / span * 100) + "%";
    div.style.background = colour(s.genre);
    // "jazz 78 %" for music; a state without a genre is named by its state, with no made-up confidence
    div.title = (s.genre ? s.genre + " " + pct(s.sum / s.windows) : stateWord(s.state)) + ", " +
                new Date(s.start * 1000).toLocaleTimeString() + "–" + new Date(s.end * 1000).toLocaleTimeString();
    box.appendChild(div);
    windows += s.windows;
  }
  box.dataset.windows = windows;
  const legend = c.el.querySelector(".legend");
  legend.replaceChildren();
  for (const g of [...new Set(c.segments.map(s => s.genre ?? s.state))]) {
    const item = document.createElement("span");
    item.innerHTML = '<i></i>';
    item.firstChild.className = "seg-key " + (labels.includes(g) ? "" : g);
    item.firstChild.style.background = colour(g);
    item.append(labels.includes(g) ? g : stateWord(g));
    legend.appendChild(item);
  }
}

// -- mel spectrogram ----------------------------------------------------------------------
function drawAxes(c) {
  if (!axes) return;
  const yaxis = c.el.querySelector(".yaxis");
  yaxis.replaceChildren(...axes.freq_ticks.map(t => {
    const span = document.createElement("span");
    span.textContent = t.hz >= 1000 ? t.hz / 1000 + " kHz" : t.hz + " Hz";
    span.style.bottom = (t.at * 100) + "%";
    return span;
  }));
  const xaxis = c.el.querySelector(".xaxis");
  const ticks = [];
  for (let s = Math.floor(axes.seconds / 10) * 10; s > 0; s -= 10) ticks.push(s);
  xaxis.replaceChildren(...ticks.concat([0]).map(s => {
    const span = document.createElement("span");
    span.textContent = s ? "−" + s + " s" : "now";
    span.style.left = ((1 - s / axes.seconds) * 100) + "%";
    return span;
  }));
}

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

// -- level: the window's RMS level in dBFS, the measure pipeline.silence_dbfs is compared with -------------
function showLevel(c, msg) {
  const at = db => Math.min(100, Math.max(0, (db - LEVEL_MIN_DBFS) / (LEVEL_MAX_DBFS - LEVEL_MIN_DBFS) * 100));
  const box = c.el.querySelector(".level-box");
  const level = c.el.querySelector(".level");
  box.hidden = false;
  level.dataset.dbfs = msg.level_dbfs;
  level.setAttribute("aria-valuenow", msg.level_dbfs);
  const floor = msg.level_dbfs <= msg.floor_dbfs;
  c.el.querySelector(".level-db").textContent = (floor ? "≤ " : "") + minus(Math.round(msg.level_dbfs)) + " dBFS";
  const fill = c.el.querySelector(".level-fill");
  fill.style.width = at(msg.level_dbfs) + "%";
  const silent = msg.silence_dbfs != null && msg.level_dbfs < msg.silence_dbfs;
  fill.classList.toggle("below", silent);
  const mark = c.el.querySelector(".level-mark"), threshold = c.el.querySelector(".level-threshold");
  mark.hidden = msg.silence_dbfs == null;
  if (msg.silence_dbfs != null) {
    mark.style.left = at(msg.silence_dbfs) + "%";
    mark.dataset.dbfs = msg.silence_dbfs;
    mark.title = "silence below " + minus(msg.silence_dbfs) + " dBFS (pipeline.silence_dbfs)";
    threshold.textContent = "silence < " + minus(msg.silence_dbfs);
  }
  box.title = "RMS level of the last window: " + minus(msg.level_dbfs.toFixed(1)) + " dBFS" +
              (msg.silence_dbfs != null ? "; a window below " + minus(msg.silence_dbfs) + " dBFS is silence" : "");
}

function minus(value) { // a typographic minus, as on the axes
  return String(value).replace("-", "−");
}

// -- live stream --------------------------------------------------------------------------
function connect() {
  const conn = document.getElementById("connection");
  const es = new EventSource("api/live");
  es.addEventListener("hello", e => {
    const doc = JSON.parse(e.data);
    labels = doc.labels;
    corrections = doc.corrections === true;
    axes = doc.spectrogram;
    showModel(doc);
    conn.textContent = "live"; conn.className = "badge online";
    showMqtt(doc.mqtt_connected);
    for (const s of doc.sources) {
      const c = card(s.source);
      buildBars(c);
      drawAxes(c);
      showSource(c, s);
      if (doc.levels?.[s.source]) showLevel(c, doc.levels[s.source]);
    }
    loadDaily();
  });
  es.addEventListener("level", e => {
    const msg = JSON.parse(e.data);
    showLevel(card(msg.source), msg);
  });
  es.addEventListener("state", e => {
    const state = JSON.parse(e.data);
    const c = card(state.source);
    // A new state replaces a state-like status; offline and error change only with a "source" item.
    const stateLike = !c.item || ["music", "uncertain", "not_music", "silence", "waiting"].includes(c.item.status);
    if (stateLike && c.item) c.item.status = state.state;
    if (stateLike && !c.item) setStatus(c, state.state); // a source the page has no item for yet
    showState(c, state);
    addToTimeline(c, state);
  });
  es.addEventListener("source", e => {
    const item = JSON.parse(e.data);
    showSource(card(item.source), item);
  });
  es.addEventListener("health", e => showMqtt(JSON.parse(e.data).mqtt_connected));
  es.addEventListener("mel", e => {
    const msg = JSON.parse(e.data);
    drawMel(card(msg.source), msg);
  });
  es.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "badge offline"; };
}

// The model in use: its id, precision (fp32 / int8) and how it was chosen ("auto -> int8 (why)", "named: FILE").
function showModel(doc) {
  document.getElementById("model").textContent = doc.model;
  const precision = document.getElementById("precision");
  precision.hidden = !doc.precision;
  precision.textContent = doc.precision ?? "";
  const chosen = document.getElementById("chosen");
  chosen.textContent = doc.chosen ?? "";
  chosen.title = doc.chosen ?? "";
}

// -- music per day ---------------------------------------------------------------------------
function addDailySource(source) {
  const select = document.getElementById("daily-source");
  if (![...select.options].some(o => o.value === source)) select.append(new Option(source, source));
}

async function loadDaily() {
  const box = document.getElementById("daily");
  const asked = dailySource;
  try {
    const r = await fetch("api/history/daily?days=" + DAILY_DAYS + "&source=" + encodeURIComponent(asked));
    if (asked !== dailySource) return;
    if (!r.ok) { // no history in this daemon (404), or it cannot be read
      box.hidden = true;
      return;
    }
    showDaily(await r.json());
    box.hidden = false;
  } catch (e) {
    console.warn("daily summary unavailable", e);
  }
}

function minutesText(minutes) {
  return minutes > 0 && minutes < 1 ? "<1" : String(Math.round(minutes));
}

function showDaily(doc) {
  document.getElementById("daily-zone").textContent = doc.timezone || "local time";
  const most = Math.max(1, ...doc.days.map(d => d.total));
  const rows = doc.days.slice().reverse().map(day => { // today first
    const tr = document.createElement("tr");
    tr.dataset.date = day.date;
    tr.dataset.total = day.total;
    const when = document.createElement("th");
    const [y, m, d] = day.date.split("-").map(Number);
    when.textContent = new Date(y, m - 1, d).toLocaleDateString([], {weekday: "short", day: "numeric", month: "short"});
    const bar = document.createElement("td");
    bar.className = "daybar";
    for (const [genre, minutes] of Object.entries(day.minutes)) {
      const part = document.createElement("span");
      part.className = "part";
      part.dataset.genre = genre;
      part.dataset.minutes = minutes;
      part.style.width = (minutes / most * 100) + "%";
      part.style.background = colour(genre);
      part.title = genre + " " + minutesText(minutes) + " min";
      bar.append(part);
    }
    const total = document.createElement("td");
    total.className = "total";
    total.textContent = day.total ? minutesText(day.total) + " min" : "–";
    const top = document.createElement("td");
    top.className = "top muted";
    top.textContent = Object.entries(day.minutes).slice(0, 3).map(([g, m]) => g + " " + minutesText(m)).join(" · ");
    tr.append(when, bar, total, top);
    return tr;
  });
  document.querySelector("#daily-table tbody").replaceChildren(...rows);
  const genres = [...new Set(doc.days.flatMap(d => Object.keys(d.minutes)))];
  document.getElementById("daily-legend").replaceChildren(...genres.map(g => {
    const item = document.createElement("span");
    item.innerHTML = "<i></i>";
    item.firstChild.style.background = colour(g);
    item.append(g);
    return item;
  }));
}

function showMqtt(connected) {
  const badge = document.getElementById("mqtt");
  badge.hidden = connected == null; // no MQTT sink configured
  badge.textContent = connected ? "MQTT connected" : "MQTT disconnected";
  badge.className = "badge " + (connected ? "online" : "offline");
}

document.getElementById("range").addEventListener("change", e => {
  range = e.target.value;
  cards.forEach((c, source) => loadHistory(source, c));
});
document.getElementById("daily-source").addEventListener("change", e => {
  dailySource = e.target.value;
  loadDaily();
});
setInterval(() => cards.forEach(renderTimeline), 10000);
setInterval(loadDaily, DAILY_REFRESH_MS);
setInterval(() => cards.forEach(tick), 1000);
connect();
