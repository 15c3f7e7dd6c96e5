// Janus status page. Plain DOM, no framework; every value from the router goes in through
// textContent (never innerHTML), so nothing a client sent can run here.
"use strict";

const POLL_MS = 1000;
let selectedFault = null;
let lastData = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fmtRate(v) {
  if (v === null || v === undefined) return "–";
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}
function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 0.001) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1e3).toFixed(s < 0.01 ? 1 : 0) + " ms";
  return s.toFixed(2) + " s";
}
function fmtTime(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}
function fmtValue(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}
function bodyText(b) {
  if (b === null || b === undefined) return "";
  if (typeof b === "object" && b.base64 !== undefined) return "(binary, base64) " + b.base64;
  return String(b);
}
function outcomeClass(o) {
  if (!o) return "";
  if (/^(ok|match|2\d\d)/.test(o)) return "ok";
  return "bad";
}

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (r.status === 401) {
    window.location.reload(); // the cookie is gone or the token rotated: back to the sign-in form
    throw new Error("signed out");
  }
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return r.json();
}

// ---- cluster view -------------------------------------------------------------------------

const NODE_KNOWN = new Set(["id", "pool", "addr", "admin_addr", "weight", "state", "consecutive_failures",
  "ejections", "requests", "failures", "in_flight", "last_seq", "admin_token", "ejected_until_ms"]);
const POOL_KNOWN = new Set(["pool", "mix_weight", "ejected", "nodes"]);

function renderSplit(data) {
  const box = document.getElementById("split");
  const pools = data.pools.pools || [];
  const weights = {};
  let wsum = 0;
  for (const p of pools) { weights[p.pool] = p.mix_weight || 0; wsum += p.mix_weight || 0; }
  const eff = (data.rates && data.rates.split) || null;
  const row = (name, shares) => {
    const bar = el("div", { class: "bar" });
    let label = [];
    for (const pool of ["stable", "debug"]) {
      const s = shares ? (shares[pool] || 0) : 0;
      const seg = el("span", { class: pool, title: pool + " " + (s * 100).toFixed(1) + "%" });
      seg.style.width = (s * 100).toFixed(2) + "%";
      bar.append(seg);
      label.push(pool + " " + (shares ? (s * 100).toFixed(1) + "%" : "–"));
    }
    return el("div", { class: "splitrow" }, el("span", { class: "name", text: name }), bar,
      el("span", { class: "muted", text: label.join(" · ") }));
  };
  const configured = wsum > 0 ? Object.fromEntries(Object.entries(weights).map(([k, v]) => [k, v / wsum])) : null;
  box.replaceChildren(row("configured", configured), row("effective", eff));
  const extras = [];
  for (const p of pools) {
    for (const [k, v] of Object.entries(p)) if (!POOL_KNOWN.has(k)) extras.push(p.pool + " " + k + " " + fmtValue(v));
  }
  if (extras.length) box.append(el("div", { class: "splitrow muted", text: extras.join(" · ") }));
}

function renderPools(data) {
  const rates = (data.rates && data.rates.nodes) || {};
  const box = document.getElementById("pools");
  const sections = [];
  for (const p of data.pools.pools || []) {
    const extraKeys = new Set();
    for (const n of p.nodes) for (const k of Object.keys(n)) if (!NODE_KNOWN.has(k)) extraKeys.add(k);
    const extra = [...extraKeys].sort();
    const head = el("tr", {},
      ...["node", "flavour", "health", "ejected until"].map((h) => el("th", { text: h })),
      ...["in-flight", "req/s", "fail/s", "p99", "state seq", "weight", "requests", "failures"].map((h) => el("th", { class: "num", text: h })),
      ...extra.map((h) => el("th", { text: h.replace(/_/g, " ") })));
    const rows = p.nodes.map((n) => {
      const r = rates[n.id] || {};
      const flavor = r.flavor || (p.pool === "stable" ? "uk" : "unix");
      const until = n.ejected_until_ms ? fmtTime(n.ejected_until_ms) : (n.state === "ejected" ? "yes" : "–");
      const p99 = r.p99_over_last_bucket ? "> last bucket" : fmtSeconds(r.p99_s);
      return el("tr", { "data-node": n.id },
        el("td", {}, el("b", { text: n.id }), el("div", { class: "muted", text: n.addr })),
        el("td", {}, el("span", { class: "flavor " + flavor, text: flavor })),
        el("td", {}, el("span", { class: "badge " + n.state, text: n.state })),
        el("td", { text: until }),
        el("td", { class: "num", text: fmtValue(n.in_flight) }),
        el("td", { class: "num", text: fmtRate(r.req_per_s) }),
        el("td", { class: "num", text: fmtRate(r.failures_per_s) }),
        el("td", { class: "num", text: r.metrics_ok === false ? "no metrics" : p99 }),
        el("td", { class: "num", text: fmtValue(n.last_seq) }),
        el("td", { class: "num", text: fmtValue(n.weight) }),
        el("td", { class: "num", text: fmtValue(n.requests) }),
        el("td", { class: "num", text: fmtValue(n.failures) }),
        ...extra.map((k) => el("td", { text: fmtValue(n[k]) })));
    });
    const meta = "mix weight " + p.mix_weight + " · " + p.nodes.length + " node(s) · ejected " + p.ejected;
    sections.push(el("div", { class: "pool" },
      el("h2", {}, p.pool + " pool", el("span", { class: "meta", text: meta })),
      el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows))));
  }
  box.replaceChildren(...sections);
}

function renderFaults(data) {
  const tbody = document.querySelector("#faults-table tbody");
  const faults = data.faults || [];
  document.getElementById("faults-empty").hidden = faults.length > 0;
  tbody.replaceChildren(...faults.map((f) => {
    const tr = el("tr", { onclick: () => showFault(f.id), "data-fault": f.id },
      el("td", { text: f.id }),
      el("td", { text: fmtTime(f.time_ms) }),
      el("td", {}, el("span", { class: "badge " + (f.kind === "divergence" ? "warn" : "bad"), text: f.kind })),
      el("td", { text: f.method + " " + f.path }),
      el("td", {}, f.stable_node || "–", " ", el("span", { class: "badge " + outcomeClass(f.stable_outcome), text: f.stable_outcome || "–" })),
      el("td", {}, f.debug_node || "–", " ", el("span", { class: "badge " + outcomeClass(f.debug_outcome), text: f.debug_outcome || "–" })));
    if (f.id === selectedFault) tr.classList.add("selected");
    return tr;
  }));
}

function render(data) {
  lastData = data;
  document.getElementById("cluster").textContent = data.cluster ? "· cluster " + data.cluster : "· router";
  document.getElementById("where").textContent =
    "clients " + data.router.listen + " · admin " + data.router.admin + " · faults " + data.router.faults_path;
  const rates = data.rates || {};
  let fps = 0;
  for (const r of Object.values(rates.nodes || {})) fps += r.failures_per_s || 0;
  document.getElementById("total-rps").textContent = fmtRate(rates.total_req_per_s);
  document.getElementById("total-fps").textContent = fmtRate(fps);
  document.getElementById("faults-minute").textContent = String(data.faults_last_minute);
  document.getElementById("budget").textContent = fmtValue(data.pools.retry_budget_tokens);
  document.getElementById("window").textContent = rates.window_s ? "(last " + rates.window_s.toFixed(0) + " s)" : "";
  renderSplit(data);
  renderPools(data);
  renderFaults(data);
}

// ---- one fault ----------------------------------------------------------------------------

function lineDiff(a, b) {
  // Longest common subsequence over lines; bodies are capped by the router, so this stays small.
  const x = a.split("\n"), y = b.split("\n");
  if (x.length * y.length > 250000) return null;
  const dp = Array.from({ length: x.length + 1 }, () => new Uint32Array(y.length + 1));
  for (let i = x.length - 1; i >= 0; i--)
    for (let j = y.length - 1; j >= 0; j--)
      dp[i][j] = x[i] === y[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
  const out = el("pre", { class: "diff" });
  let i = 0, j = 0;
  const line = (cls, prefix, t) => out.append(el("div", { class: cls, text: prefix + t }));
  while (i < x.length && j < y.length) {
    if (x[i] === y[j]) { line("", "  ", x[i]); i++; j++; }
    else if (dp[i + 1][j] >= dp[i][j + 1]) { line("del", "- ", x[i]); i++; }
    else { line("add", "+ ", y[j]); j++; }
  }
  while (i < x.length) line("del", "- ", x[i++]);
  while (j < y.length) line("add", "+ ", y[j++]);
  return out;
}

function headersText(h) {
  if (!h) return "";
  try {
    const obj = typeof h === "string" ? JSON.parse(h) : h;
    return Object.entries(obj).map(([k, vs]) => (Array.isArray(vs) ? vs : [vs]).map((v) => k + ": " + v).join("\n")).join("\n");
  } catch (_) { return String(h); }
}

function answer(title, node, status, outcome, headers, body) {
  return el("div", {},
    el("h3", { text: title }),
    el("div", {}, (node || "–") + " · HTTP " + (status === null || status === undefined ? "–" : status) + " ",
      el("span", { class: "badge " + outcomeClass(outcome), text: outcome || "–" })),
    el("pre", { text: (headersText(headers) + "\n\n" + bodyText(body)).trim() || "(no answer)" }));
}

function command(text) {
  const code = el("code", { text });
  const btn = el("button", { type: "button", class: "quiet", text: "Copy" });
  btn.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(text); btn.textContent = "Copied"; }
    catch (_) {
      const r = document.createRange(); r.selectNodeContents(code);
      const s = window.getSelection(); s.removeAllRanges(); s.addRange(r);
      btn.textContent = "Selected: Ctrl-C";
    }
  });
  return el("div", { class: "cmd" }, code, btn);
}

async function showFault(id) {
  selectedFault = id;
  const panel = document.getElementById("detail");
  const bodyBox = document.getElementById("detail-body");
  panel.hidden = false;
  document.getElementById("detail-title").textContent = "Fault " + id;
  bodyBox.replaceChildren(el("p", { class: "muted", text: "loading…" }));
  for (const tr of document.querySelectorAll("#faults-table tbody tr"))
    tr.classList.toggle("selected", tr.dataset.fault === String(id));
  let f;
  try { f = await getJSON("/faults/" + encodeURIComponent(id)); }
  catch (e) { bodyBox.replaceChildren(el("p", { class: "error", text: String(e) })); return; }
  if (selectedFault !== id) return;
  const cluster = lastData && lastData.cluster && lastData.cluster !== "default" ? " --cluster " + lastData.cluster : "";
  const parts = [];
  parts.push(el("div", {}, el("span", { class: "badge " + (f.kind === "divergence" ? "warn" : "bad"), text: f.kind }),
    " " + fmtTime(f.time_ms) + " · route " + f.route + " · trace " + f.trace_id + (f.detail ? " · " + f.detail : "")));
  parts.push(el("h3", { text: "Request" }));
  parts.push(el("pre", { text: (f.method + " " + f.path + "\n" + headersText(f.request_headers) + "\n\n" +
    bodyText(f.request_body) + (f.request_body_truncated ? "\n(body truncated)" : "")).trim() }));
  parts.push(el("div", { class: "sides" },
    answer("Stable build (uk)", f.stable_node, f.stable_status, f.stable_outcome, f.stable_response_headers, f.stable_response_body),
    answer("Debug build (unix)", f.debug_node, f.debug_status, f.debug_outcome, f.debug_response_headers, f.debug_response_body)));
  const sb = bodyText(f.stable_response_body), db = bodyText(f.debug_response_body);
  if (sb && db && sb !== db) {
    const d = lineDiff(sb, db);
    if (d) { parts.push(el("h3", { text: "Answer bodies: stable (-) vs debug (+)" })); parts.push(d); }
  }
  parts.push(el("h3", { text: "State" }));
  parts.push(el("div", { text: "seq " + fmtValue(f.stable_state_seq) + (f.stable_state_seq_source ? " (" + f.stable_state_seq_source + ")" : "") +
    " · snapshot " + (f.stable_state ? "captured" : "none") + (f.stable_state_error ? " · " + f.stable_state_error : "") }));
  parts.push(el("h3", { text: "Debug trace" + (f.debug_trace_id ? " " + f.debug_trace_id : "") }));
  let trace = f.debug_trace || f.debug_trace_error || "(none)";
  try { if (f.debug_trace) trace = JSON.stringify(JSON.parse(f.debug_trace), null, 2); } catch (_) { /* keep the text */ }
  parts.push(el("pre", { text: trace }));
  parts.push(el("h3", { text: "Reproduce" }));
  parts.push(command("janus faults repro " + f.id + cluster));
  parts.push(command("janus faults export " + f.id + cluster + " --as-test tests/fault-" + f.id));
  parts.push(command("janus faults show " + f.id + cluster));
  bodyBox.replaceChildren(...parts);
}

// ---- loop ---------------------------------------------------------------------------------

async function tick() {
  const dot = document.getElementById("live-dot");
  try {
    const data = await getJSON("/status/data");
    render(data);
    dot.className = "dot on";
    document.getElementById("updated").textContent = "live · " + fmtTime(data.now_ms);
  } catch (e) {
    dot.className = "dot off";
    document.getElementById("updated").textContent = "no answer from the router (" + e.message + ")";
  }
  if (!document.hidden) setTimeout(tick, POLL_MS);
}

document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("detail-close").addEventListener("click", () => {
    selectedFault = null;
    document.getElementById("detail").hidden = true;
    for (const tr of document.querySelectorAll("#faults-table tbody tr.selected")) tr.classList.remove("selected");
  });
  tick();
});
