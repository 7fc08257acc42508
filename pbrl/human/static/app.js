// pbrl labelling page: shows queries as synced looping clips and sends answers.
// Plain JS, no build step. Answers are queued in localStorage and re-sent until the server
// acknowledges them (it stores each answer once, however often it is sent).
"use strict";

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const S = {
  token: null,
  current: null,       // the query on screen (server object + .videos + .shownAt)
  upcoming: [],        // queries handed to us next, clips preloading
  videos: new Map(),   // clip url -> <video> (preloaded or on screen)
  answered: new Set(), // query ids answered in this page (never shown again)
  pending: [],         // answers not yet acknowledged: {payload, text}
  flushing: false,
  playing: true,
  speed: 1,
  rank: [],            // ranking queries: display positions picked so far, best first
  lastAnswerAt: 0,
  saved: 0,
  refreshTimer: null,
  scrubbing: false,
  waiting: 0,          // with no query: open queries others hold now (state "wait")
};

// --- talking to the server ---------------------------------------------------------------
async function api(path, opts = {}) {
  const headers = { Authorization: "Bearer " + S.token };
  if (opts.body) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { ...opts, headers, cache: "no-store" });
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  return { status: r.status, ok: r.ok, data };
}

function pendingKey() { return "pbrl-pending-" + S.token.slice(0, 12); }
function savePending() {
  try { localStorage.setItem(pendingKey(), JSON.stringify(S.pending)); } catch (e) { /* private mode */ }
}
function loadPending() {
  try { S.pending = JSON.parse(localStorage.getItem(pendingKey()) || "[]"); } catch (e) { S.pending = []; }
  for (const p of S.pending) S.answered.add(p.payload.query_id);
}

async function init() {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get("token");
  S.token = fromUrl || localStorage.getItem("pbrl-token");
  if (!S.token) return showLogin();
  let r;
  try { r = await api("/api/me"); } catch (e) { status("cannot reach the server — retrying…"); await sleep(2000); return init(); }
  if (r.status === 401) return showLogin(r.data && r.data.detail);
  if (!r.ok) { status("server error " + r.status + " — retrying…"); await sleep(2000); return init(); }
  try { localStorage.setItem("pbrl-token", S.token); } catch (e) { /* private mode */ }
  $("who").textContent = r.data.labeller;
  $("title").textContent = r.data.title || "";
  document.title = "pbrl · label · " + r.data.labeller;
  updateProgress(r.data.progress);
  loadPending();
  flush();
  refresh();
  setInterval(() => { if (S.current) refresh(); }, 20000); // keeps our leases and counts fresh
}

async function refresh() {
  clearTimeout(S.refreshTimer);
  let r;
  // With nothing on screen, long-poll: the server answers as soon as a new query exists.
  const wait = S.current || S.pending.length ? 0 : 25;
  try { r = await api("/api/next?wait=" + wait); } catch (e) {
    status("cannot reach the server — retrying…");
    S.refreshTimer = setTimeout(refresh, 2000);
    return;
  }
  if (r.status === 401) return showLogin(r.data && r.data.detail);
  if (!r.ok) { S.refreshTimer = setTimeout(refresh, 2000); return; }
  status("");
  apply(r.data);
}

function apply(data) {
  updateProgress(data.progress);
  // No query: "wait" (others hold the rest; one comes here if its lease lapses) or "done".
  // Either way the page keeps long-polling: a run may add queries, a lease may lapse.
  S.waiting = data.state === "wait" ? data.held_by_others || 0 : 0;
  let list = [data.query, ...data.upcoming].filter((q) => q && !S.answered.has(q.id));
  if (!S.current) {
    show(list.shift() || null);
  }
  if (S.current) list = list.filter((q) => q.id !== S.current.id);
  S.upcoming = list;
  // Preload the next query only: a browser opens ~6 connections per host, and clips still
  // rendering hold theirs; an answer must never queue behind them.
  if (list.length) preload(list[0]);
  if (!S.current) S.refreshTimer = setTimeout(refresh, 200); // and wait for new queries
}

async function flush() {
  if (S.flushing) return;
  S.flushing = true;
  let backoff = 500;
  try {
    while (S.pending.length) {
      const item = S.pending[0];
      showStatus();
      let r;
      try {
        r = await api("/api/label", { method: "POST", body: JSON.stringify(item.payload) });
      } catch (e) {
        status("offline — your answers are kept and will be sent when the server is back");
        await sleep(backoff); backoff = Math.min(backoff * 2, 5000);
        continue;
      }
      if (r.ok) {
        S.pending.shift(); savePending(); S.saved += 1; backoff = 500;
        toast("✓ Saved · " + item.text, "good");
        updateProgress(r.data.progress);
      } else if (r.status === 401) {
        showLogin(r.data && r.data.detail);
        return;
      } else if (r.status === 503 || r.status >= 500) {
        status("server busy — retrying…");
        await sleep(backoff); backoff = Math.min(backoff * 2, 5000);
      } else {
        S.pending.shift(); savePending();
        toast((r.data && r.data.detail) || ("not saved (error " + r.status + ")"), r.status === 409 ? "warn" : "bad");
      }
    }
  } finally {
    S.flushing = false;
    showStatus();
  }
  refresh();
}

// --- clips -------------------------------------------------------------------------------
function clipUrl(clip) { return clip.url + "?token=" + encodeURIComponent(S.token); }

function makeVideo(url) {
  let v = S.videos.get(url);
  if (v) return v;
  v = document.createElement("video");
  v.muted = true; v.loop = true; v.playsInline = true; v.preload = "auto";
  v.setAttribute("muted", ""); v.setAttribute("playsinline", "");
  v.dataset.tries = "0";
  v.addEventListener("error", () => {
    // 503 while a clip still renders, or a dropped connection: ask again shortly.
    const tries = Number(v.dataset.tries) + 1;
    v.dataset.tries = String(tries);
    if (tries <= 30) setTimeout(() => { v.src = url; v.load(); }, Math.min(500 * tries, 4000));
  });
  v.src = url;
  S.videos.set(url, v);
  return v;
}

function preload(q) {
  if (!q.renderable) return;
  for (const c of q.clips) makeVideo(clipUrl(c));
}

function forget(q) {
  if (!q || !q.clips) return;
  for (const c of q.clips) {
    const url = clipUrl(c);
    const v = S.videos.get(url);
    if (v) { v.pause(); v.removeAttribute("src"); v.load(); S.videos.delete(url); }
  }
}

function whenReady(v) {
  return new Promise((resolve) => {
    if (v.readyState >= 3) return resolve();
    const done = () => { v.removeEventListener("canplay", done); resolve(); };
    v.addEventListener("canplay", done);
  });
}

// --- showing a query ---------------------------------------------------------------------
const CAPTIONS = {
  pair: [["Left", "←"], ["Right", "→"]],
  triplet: [["Reference", ""], ["Left", "←"], ["Right", "→"]],
};

function show(q) {
  S.current = q;
  S.rank = [];
  const stage = $("stage");
  stage.replaceChildren();
  document.body.dataset.query = q ? q.id : "";
  if (!q) {
    $("main").hidden = true;
    $("empty").hidden = false;
    $("empty-text").textContent = S.pending.length
      ? "Saving your last answer…"
      : S.waiting
        ? `${S.waiting} ${S.waiting === 1 ? "query is" : "queries are"} being labelled by someone else. ` +
          "If one is left unanswered it comes to you here by itself."
        : "No queries are waiting for you. New ones appear here by themselves.";
    document.body.dataset.state = "empty";
    return;
  }
  $("main").hidden = false;
  $("empty").hidden = true;
  document.body.dataset.state = "loading";
  $("prompt").textContent = q.prompt;
  stage.className = "stage " + q.kind;
  // Rankings: one row of up to four clips, then wrap.
  stage.style.gridTemplateColumns =
    q.kind === "ranking" ? `repeat(${Math.min(q.k, 4)}, minmax(160px, 300px))` : "";
  const ranking = q.kind === "ranking";
  $("answers").hidden = ranking;
  $("rank-answers").hidden = !ranking;
  $("keys").hidden = ranking;
  $("keys-rank").hidden = !ranking;
  $("rank-submit").disabled = true;
  const closer = q.kind === "triplet";
  $("lbl-left").textContent = closer ? "Left is closer" : "Left is better";
  $("lbl-right").textContent = closer ? "Right is closer" : "Right is better";

  q.videos = [];
  q.cards = [];
  // A triplet shows [left, reference, right] so the arrow keys point at their clips.
  const positions = q.kind === "triplet" ? [1, 0, 2] : q.clips.map((c) => c.position);
  for (const pos of positions) {
    const clip = q.clips[pos];
    const card = document.createElement("div");
    card.className = "clip";
    card.dataset.position = String(pos);
    card.dataset.role = clip.role;
    const isRef = q.kind === "triplet" && pos === 0;
    if (isRef) card.classList.add("reference");
    if (q.renderable) {
      const v = makeVideo(clipUrl(clip));
      v.playbackRate = S.speed;
      card.appendChild(v);
      const spin = document.createElement("div");
      spin.className = "spinner";
      card.appendChild(spin);
      q.videos[pos] = v;
    } else {
      const nv = document.createElement("div");
      nv.className = "novideo";
      nv.textContent = q.reason || "no video for this query";
      card.appendChild(nv);
      card.classList.add("loaded");
    }
    const badge = document.createElement("div");
    badge.className = "rank-badge";
    card.appendChild(badge);
    const cap = document.createElement("div");
    cap.className = "caption";
    const names = CAPTIONS[q.kind];
    const [name, key] = names ? names[pos] : [clip.role, String(pos + 1)];
    const left = document.createElement("span");
    left.textContent = name;
    cap.appendChild(left);
    if (key) {
      const k = document.createElement("kbd");
      k.textContent = key;
      cap.appendChild(k);
    }
    card.appendChild(cap);
    if (!isRef) card.addEventListener("click", () => clickCard(pos));
    stage.appendChild(card);
    q.cards[pos] = card;
  }
  const plan = q.plan;
  $("scrub").max = plan ? String(plan.frames - 1) : "0";
  $("scrub").value = "0";
  $("scrub").disabled = !plan;
  $("player").hidden = !plan;
  updateRealtime();
  if (!q.renderable) {
    q.shownAt = performance.now();
    document.body.dataset.state = "ready";
    return;
  }
  const vids = q.videos.filter(Boolean);
  Promise.all(vids.map(whenReady)).then(() => {
    if (S.current !== q) return;
    for (const v of vids) { v.currentTime = 0; v.playbackRate = S.speed; }
    for (const c of q.cards) if (c) c.classList.add("loaded");
    if (S.playing) playAll(); else setPlayIcon();
    q.shownAt = performance.now(); // response time counts from here
    document.body.dataset.state = "ready";
  });
}

function videosOf(q) { return q && q.videos ? q.videos.filter(Boolean) : []; }
function master() { return videosOf(S.current)[0] || null; }

function playAll() {
  const vids = videosOf(S.current);
  const t = vids.length ? vids[0].currentTime : 0;
  for (const v of vids) {
    if (Math.abs(v.currentTime - t) > 0.03) v.currentTime = t;
    const p = v.play();
    if (p) p.catch(() => {});
  }
  S.playing = true;
  setPlayIcon();
}
function pauseAll() {
  for (const v of videosOf(S.current)) v.pause();
  S.playing = false;
  setPlayIcon();
}
function togglePlay() { if (S.playing) pauseAll(); else playAll(); }
function setPlayIcon() { $("play").textContent = S.playing ? "❚❚" : "▶"; }

function setFrame(i) {
  const q = S.current;
  if (!q || !q.plan) return;
  const n = q.plan.frames;
  i = ((i % n) + n) % n;
  const t = (i + 0.5) / q.plan.fps;
  for (const v of videosOf(q)) v.currentTime = Math.min(t, Math.max(0, (v.duration || t) - 0.001));
  $("scrub").value = String(i);
  showFrame(i);
}
function stepFrame(d) {
  pauseAll();
  setFrame(Number($("scrub").value) + d);
}
function showFrame(i) {
  const plan = S.current && S.current.plan;
  if (!plan) { $("frame").textContent = ""; return; }
  const step = Math.min(plan.horizon - 1, i * plan.stride);
  $("frame").textContent = `frame ${i + 1}/${plan.frames} · step ${step + 1}/${plan.horizon}`;
}
function changeSpeed(d) {
  const sel = $("speed");
  sel.selectedIndex = Math.max(0, Math.min(sel.options.length - 1, sel.selectedIndex + d));
  setSpeed(Number(sel.value));
}
function setSpeed(x) {
  S.speed = x;
  for (const v of videosOf(S.current)) v.playbackRate = x;
  updateRealtime();
}
function updateRealtime() {
  const plan = S.current && S.current.plan;
  $("realtime").textContent = plan ? `= ${(plan.speed * S.speed).toFixed(plan.speed * S.speed < 1 ? 2 : 1)}× real time` : "";
}

// Keep followers on the first clip's clock, and the scrubber on the playing frame.
function tick() {
  const q = S.current;
  const vids = videosOf(q);
  if (vids.length && q.plan) {
    const m = vids[0];
    if (!m.paused) {
      for (const v of vids.slice(1)) {
        const gap = Math.abs(v.currentTime - m.currentTime);
        const dur = m.duration || 0;
        if (!v.seeking && gap > 0.08 && gap < dur - 0.15) v.currentTime = m.currentTime;
        if (v.paused && S.playing) { const p = v.play(); if (p) p.catch(() => {}); }
      }
    }
    if (!S.scrubbing && !m.seeking) {
      const i = Math.min(q.plan.frames - 1, Math.floor(m.currentTime * q.plan.fps));
      $("scrub").value = String(i);
      showFrame(i);
    }
  }
  requestAnimationFrame(tick);
}

// --- answering ---------------------------------------------------------------------------
const TEXT = { left: "left", right: "right", equal: "about the same", skip: "skipped", rank: "ranking" };

function clickCard(pos) {
  const q = S.current;
  if (!q) return;
  if (q.kind === "pair") answer(pos === 0 ? "left" : "right", null, pos);
  else if (q.kind === "triplet") answer(pos === 1 ? "left" : "right", null, pos);
  else rankPick(pos);
}

function answer(choice, ranking = null, pos = null) {
  const q = S.current;
  if (!q || S.answered.has(q.id)) return;
  if (performance.now() - S.lastAnswerAt < 150) return; // a bounce, not a second answer
  if (q.kind === "ranking" && (choice === "left" || choice === "right")) return;
  if (q.kind !== "ranking" && choice === "rank") return;
  S.answered.add(q.id);
  S.lastAnswerAt = performance.now();
  const rt = q.shownAt ? (performance.now() - q.shownAt) / 1000 : 0;
  const payload = {
    query_id: q.id,
    choice,
    client_time: Date.now() / 1000,
    response_time: Math.max(0, Math.min(86400, rt)),
  };
  if (ranking) payload.ranking = ranking;
  S.pending.push({ payload, text: TEXT[choice] });
  savePending();
  if (pos === null && q.kind === "pair" && (choice === "left" || choice === "right")) pos = choice === "left" ? 0 : 1;
  if (pos === null && q.kind === "triplet" && (choice === "left" || choice === "right")) pos = choice === "left" ? 1 : 2;
  if (pos !== null && q.cards[pos]) q.cards[pos].classList.add("chosen");
  pressButton(choice);
  showStatus();
  setTimeout(() => advance(q), 140); // long enough to see the choice, short enough to flow
  flush();
}

function advance(q) {
  if (S.current !== q) return;
  forget(q);
  const next = S.upcoming.shift() || null;
  show(next);
  if (S.upcoming.length) preload(S.upcoming[0]);
  if (!next) refresh();
}

function pressButton(choice) {
  for (const b of document.querySelectorAll(`[data-choice="${choice}"]`)) {
    b.classList.add("pressed");
    setTimeout(() => b.classList.remove("pressed"), 160);
  }
}

function rankPick(pos) {
  const q = S.current;
  if (!q || q.kind !== "ranking" || pos >= q.k || S.rank.includes(pos)) return;
  S.rank.push(pos);
  if (S.rank.length === q.k - 1) {
    for (let i = 0; i < q.k; i++) if (!S.rank.includes(i)) S.rank.push(i); // the last is implied
  }
  drawRank();
}
function drawRank() {
  const q = S.current;
  q.cards.forEach((card, pos) => {
    const r = S.rank.indexOf(pos);
    card.classList.toggle("ranked", r >= 0);
    card.querySelector(".rank-badge").textContent = r >= 0 ? "#" + (r + 1) : "";
  });
  $("rank-submit").disabled = S.rank.length !== q.k;
}
function resetRank() { S.rank = []; if (S.current) drawRank(); }
function submitRanking() {
  const q = S.current;
  if (q && q.kind === "ranking" && S.rank.length === q.k) answer("rank", S.rank.slice());
}

// --- header, status, toasts ---------------------------------------------------------------
const fmt = (x) => Number(x).toLocaleString("en-US");
const plural = (n, one, many = one + "s") => `${fmt(n)} ${Number(n) === 1 ? one : many}`;

function updateProgress(p) {
  if (!p) return;
  if (p.done !== undefined) $("done").textContent = fmt(p.done);
  if (p.left !== undefined) $("left").textContent = fmt(p.left);
  const run = p.run || {};
  const parts = [];
  let frac = null;
  if (run.step != null && run.total_steps) {
    parts.push(`run step ${fmt(run.step)} / ${fmt(run.total_steps)}`);
    frac = run.step / run.total_steps;
  }
  if (run.max_feedback) {
    parts.push(`labels used ${fmt(run.queries_used || 0)} / ${fmt(run.max_feedback)}`);
    frac = (run.queries_used || 0) / run.max_feedback;
  }
  if (run.accuracy != null && isFinite(run.accuracy)) parts.push(`learned reward accuracy ${(100 * run.accuracy).toFixed(0)}%`);
  parts.push(`${plural(p.labels, "label")} on ${plural(p.queries, "query", "queries")}` + (p.overlap > 1 ? ` (×${p.overlap} overlap)` : ""));
  $("run").hidden = false;
  $("run-text").textContent = parts.join(" · ");
  $("run-meter").parentElement.hidden = frac === null;
  if (frac !== null) $("run-meter").style.width = `${Math.max(0, Math.min(1, frac)) * 100}%`;
}

function status(text) { $("status").textContent = text; }
function showStatus() {
  const n = S.pending.length;
  status(n ? `${S.saved} saved · ${n} sending…` : (S.saved ? `${S.saved} saved` : ""));
}

let toastTimer = null;
function toast(text, kind = "good") {
  const t = $("toast");
  t.textContent = text;
  t.className = "toast show " + kind;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.className = "toast " + kind; }, kind === "good" ? 1100 : 3500);
}

function showLogin(msg) {
  $("main").hidden = true;
  $("empty").hidden = true;
  $("login").hidden = false;
  document.body.dataset.state = "login";
  if (msg) $("login-text").textContent = msg + ". Open the link you were given, or paste a token:";
}

// --- wiring ------------------------------------------------------------------------------
$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = $("login-token").value.trim();
  if (!t) return;
  const url = new URL(location.href);
  url.searchParams.set("token", t);
  location.href = url.toString();
});

for (const b of document.querySelectorAll("[data-choice]")) {
  b.addEventListener("click", (e) => { e.currentTarget.blur(); answer(b.dataset.choice); });
}
$("rank-submit").addEventListener("click", submitRanking);
$("rank-reset").addEventListener("click", resetRank);
$("play").addEventListener("click", (e) => { e.currentTarget.blur(); togglePlay(); });
$("speed").addEventListener("change", (e) => { setSpeed(Number(e.target.value)); e.target.blur(); });
$("scrub").addEventListener("pointerdown", () => { S.scrubbing = true; pauseAll(); });
$("scrub").addEventListener("pointerup", (e) => { S.scrubbing = false; e.target.blur(); });
$("scrub").addEventListener("input", (e) => { pauseAll(); setFrame(Number(e.target.value)); });

document.addEventListener("keydown", (e) => {
  if (!$("login").hidden || e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key;
  const q = S.current;
  const ranking = q && q.kind === "ranking";
  const answerKey = ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "=", "s", "S", "Enter"].includes(k);
  let handled = true;
  if (answerKey && e.repeat) { e.preventDefault(); return; } // holding a key answers once
  if (k === "ArrowLeft") answer("left");
  else if (k === "ArrowRight") answer("right");
  else if (k === "ArrowUp" || k === "=") answer("equal");
  else if (k === "ArrowDown" || k === "s" || k === "S") answer("skip");
  else if (k === " ") togglePlay();
  else if (k === ",") stepFrame(-1);
  else if (k === ".") stepFrame(1);
  else if (k === "[") changeSpeed(-1);
  else if (k === "]") changeSpeed(1);
  else if (ranking && /^[1-9]$/.test(k)) rankPick(Number(k) - 1);
  else if (ranking && k === "Enter") submitRanking();
  else if (ranking && k === "Backspace") resetRank();
  else handled = false;
  if (handled) { e.preventDefault(); e.stopPropagation(); }
}, true);

requestAnimationFrame(tick);
init();
