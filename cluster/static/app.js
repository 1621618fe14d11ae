// bscluster dashboard: plain JS, no build step, no external code.
// Polls the JSON API (docs/MONITORING.md) once per poll interval and redraws.
// Every value from the server goes into the page with textContent, never as HTML.
"use strict";

const STATES = ["ready", "reserved", "delayed", "buried"];
const COLORS = {ready: "#2f9e44", reserved: "#2f6fde", delayed: "#e8a317", buried: "#d9480f",
                puts: "#2f6fde", reserves: "#2f9e44", deletes: "#868e96", ops: "#ae3ec9"};
const TOKEN_KEY = "bscluster-token";
const ARM_MS = 4000;  // a dangerous button must be clicked again within this time

let overview = null;      // the last /api/overview
let actionsEnabled = false;
let timer = null;

// --- small helpers -----------------------------------------------------------
function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = dv;
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
  return v >= 100 ? v.toFixed(0) : v.toFixed(1);
}

function fmtNum(v) { return v === null || v === undefined ? "–" : String(v); }

function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
}

function tubeHref(name) { return "#/tube/" + encodeURIComponent(name); }

function apiTube(name) { return encodeURIComponent(name); }

async function getJSON(url) {
  const r = await fetch(url, {cache: "no-store"});
  const doc = await r.json();
  if (!r.ok) throw new Error(doc.error || r.statusText);
  return doc;
}

async function post(url, body) {
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  const r = await fetch(url, {
    method: "POST", cache: "no-store",
    headers: {"Content-Type": "application/json", "Authorization": "Bearer " + token},
    body: JSON.stringify(body || {}),
  });
  const doc = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(doc.error || r.statusText);
  return doc;
}

function flash(text, isError) {
  const f = $("flash");
  f.textContent = text;
  f.className = isError ? "flash error" : "flash";
  f.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { f.hidden = true; }, 6000);
}

async function act(label, url, body) {
  try {
    const result = await post(url, body);
    flash(label + ": " + describe(result), false);
  } catch (e) {
    flash(label + " failed: " + e.message, true);
  }
  refresh();
}

function describe(result) {
  if ("kicked" in result) return typeof result.kicked === "number" ? result.kicked + " job(s) kicked" : "kicked " + result.kicked;
  if ("deleted" in result) return typeof result.deleted === "number"
    ? result.deleted + " job(s) deleted" + (result.complete ? "" : " (stopped at the limit; run again)")
    : "deleted " + result.deleted;
  if ("moved" in result) return result.moved + " job(s) moved to " + result.to + (result.complete ? "" : " (stopped at the time limit)");
  if ("paused" in result) return result.paused ? "paused for " + result.paused + "s on " + result.nodes.join(", ") : "resumed on " + result.nodes.join(", ");
  return JSON.stringify(result);
}

// a button that needs a second click to do something destructive
function armed(button, run) {
  button.addEventListener("click", (ev) => {
    ev.preventDefault();
    if (button.classList.contains("armed")) {
      button.classList.remove("armed");
      button.textContent = button.dataset.label;
      run();
      return;
    }
    button.dataset.label = button.textContent;
    button.classList.add("armed");
    button.textContent = "Click again to confirm";
    setTimeout(() => {
      if (button.classList.contains("armed")) {
        button.classList.remove("armed");
        button.textContent = button.dataset.label;
      }
    }, ARM_MS);
  });
}

// --- charts ----------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function drawChart(svgEl, legendEl, points, keys) {
  const W = 600, H = 180, L = 40, B = 18, T = 8;
  svgEl.replaceChildren();
  legendEl.replaceChildren(...keys.map((k) => {
    const s = el("span", {}, k);
    s.style.setProperty("--c", COLORS[k]);
    return s;
  }));
  let max = 1;
  for (const p of points) for (const k of keys) if (p[k] > max) max = p[k];
  const t1 = points.length ? points[points.length - 1].t : 0;
  const t0 = points.length ? Math.min(points[0].t, t1 - 10) : 0;
  const x = (t) => L + (W - L - 4) * (t - t0) / Math.max(t1 - t0, 1);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  svgEl.append(svg("line", {x1: L, y1: H - B, x2: W, y2: H - B, class: "axis"}));
  svgEl.append(svg("line", {x1: L, y1: T, x2: W, y2: T, class: "axis"}));
  const top = svg("text", {x: 2, y: T + 10}); top.textContent = max >= 100 ? max.toFixed(0) : +max.toFixed(1);
  const zero = svg("text", {x: 2, y: H - B}); zero.textContent = "0";
  const span = svg("text", {x: L, y: H - 3}); span.textContent = points.length ? "-" + fmtDuration(Math.round(t1 - t0)) : "";
  const now = svg("text", {x: W - 30, y: H - 3}); now.textContent = "now";
  svgEl.append(top, zero, span, now);
  for (const k of keys) {
    const pts = points.filter((p) => p[k] !== null && p[k] !== undefined)
      .map((p) => x(p.t).toFixed(1) + "," + y(p[k]).toFixed(1)).join(" ");
    if (pts) svgEl.append(svg("polyline", {points: pts, stroke: COLORS[k], "data-series": k}));
  }
}

// --- overview ----------------------------------------------------------------------
function card(label, value, cls, id) {
  return el("div", {class: "card " + (cls || ""), id: id || ""},
            el("div", {class: "value"}, value), el("div", {class: "label"}, label));
}

function renderTotals(t) {
  $("totals").replaceChildren(
    card("nodes up", t.nodes_up + " / " + t.nodes, t.nodes_up < t.nodes ? "buried" : "", "total-nodes"),
    ...STATES.map((s) => card(s, fmtNum(t[s]), s, "total-" + s)),
    card("urgent", fmtNum(t.urgent), "", "total-urgent"),
    card("tubes", fmtNum(t.tubes), "", "total-tubes"),
    card("workers", fmtNum(t.workers), "", "total-workers"),
    card("waiting", fmtNum(t.waiting), "", "total-waiting"),
    card("ops/s", fmtRate(t.ops), "", "total-ops"),
  );
}

function headRow(cols) {
  return el("tr", {}, ...cols.map(([label, num]) => el("th", {class: num ? "num" : ""}, label)));
}

// bsnode's opt-in caps: "jobs 730 / 1000, bodies 1.2 MB / 10 MB" (0 = no cap)
function fullTitle(f) {
  if (!f) return "";
  const part = (name, now, max) => max ? name + " " + fmtNum(now) + " / " + fmtNum(max) : "";
  return [part("jobs", f.jobs, f.max_jobs), part("body bytes", f.job_bytes, f.max_job_bytes)]
    .filter(Boolean).join(", ");
}

function renderNodes(nodes) {
  const cols = [["node"], ["address"], ["state"], ...STATES.map((s) => [s, 1]), ["urgent", 1],
                ["connections", 1], ["workers", 1], ["waiting", 1], ["tubes", 1], ["ops/s", 1], ["uptime", 1]];
  const rows = nodes.map((n) => {
    const sup = n.supervisor || {};  // the supervisor's view, when one runs the cluster
    if (!n.up) {
      const why = sup.reason || n.error || "not answering";
      return el("tr", {class: "down", data: {node: n.name}},
        el("td", {}, n.name), el("td", {}, n.address),
        el("td", {}, el("span", {class: "pill down", title: sup.state ? "supervisor: " + sup.state : ""},
                        (sup.state && sup.state !== "RUNNING" ? sup.state : n.state).toLowerCase())),
        el("td", {colspan: cols.length - 3}, why));
    }
    return el("tr", {data: {node: n.name}},
      el("td", {}, n.name), el("td", {}, n.address),
      el("td", {}, el("span", {class: "pill up", title: fullTitle(n.full)},
                      n.state + (n.full ? " · " + Math.round(100 * n.full.fraction) + "% full" : ""))),
      ...STATES.map((s) => el("td", {class: "num", data: {field: s}}, fmtNum(n[s]))),
      el("td", {class: "num"}, fmtNum(n.urgent)), el("td", {class: "num"}, fmtNum(n.connections)),
      el("td", {class: "num"}, fmtNum(n.workers)), el("td", {class: "num"}, fmtNum(n.waiting)),
      el("td", {class: "num"}, fmtNum(n.tubes)), el("td", {class: "num"}, fmtRate(n.ops)),
      el("td", {class: "num"}, fmtDuration(n.uptime)));
  });
  $("nodes").replaceChildren(el("thead", {}, headRow(cols)), el("tbody", {}, ...rows));
}

function renderTubes(tubes, omitted) {
  const cols = [["tube"], ...STATES.map((s) => [s, 1]), ["waiting", 1], ["watching", 1],
                ["put/s", 1], ["delete/s", 1], ["nodes"], ["attention"]];
  const rows = tubes.map((t) => el("tr", {
      class: t.attention >= 3 ? "attention" : t.attention >= 1 ? "warn" : "", data: {tube: t.name}},
    el("td", {}, el("a", {href: tubeHref(t.name)}, t.name)),
    ...STATES.map((s) => el("td", {class: "num", data: {field: s}}, fmtNum(t[s]))),
    el("td", {class: "num"}, fmtNum(t.waiting)), el("td", {class: "num"}, fmtNum(t.watching)),
    el("td", {class: "num"}, fmtRate(t.puts)), el("td", {class: "num"}, fmtRate(t.deletes)),
    el("td", {}, t.nodes.join(", ")),
    el("td", {}, t.paused ? el("span", {class: "pill paused"}, "paused " + t.paused + "s") : null,
       t.paused && t.why && t.why !== "paused" ? " " : null, t.why === "paused" ? null : t.why)));
  if (!rows.length) rows.push(el("tr", {}, el("td", {colspan: cols.length, class: "muted"}, "no tubes")));
  if (omitted) rows.push(el("tr", {}, el("td", {colspan: cols.length, class: "muted"},
    fmtNum(omitted) + " more quiet tubes (no jobs, no traffic) not listed: the dashboard " +
    "lists web_max_tubes tubes, busiest first")));
  $("tubes").replaceChildren(el("thead", {}, headRow(cols)), el("tbody", {}, ...rows));
}

async function refreshOverview() {
  const h = await getJSON("/api/history");
  drawChart($("chart-depth"), $("legend-depth"), h.points, STATES);
  drawChart($("chart-rate"), $("legend-rate"), h.points, ["puts", "reserves", "deletes"]);
  renderTotals(overview.totals);
  renderNodes(overview.nodes);
  renderTubes(overview.tubes, overview.tubes_omitted);
}

// --- one tube ------------------------------------------------------------------------
function jobCard(state, job, node) {
  const box = el("div", {class: "job", data: {state: state, node: node}});
  box.append(el("h3", {}, "next " + state + " ", job ? el("span", {class: "muted"}, job.handle) : null));
  if (!job) { box.append(el("div", {class: "muted"}, "none")); return box; }
  box.dataset.job = job.handle;
  const body = job.body;
  box.append(el("pre", {}, body.text + (body.truncated ? " …" : "")));
  box.append(el("div", {class: "muted small"}, body.size + " bytes" + (body.binary ? ", binary (escaped)" : "")));
  if (job.stats) {
    const dl = el("dl");
    for (const k of ["pri", "age", "delay", "ttr", "time-left", "reserves", "timeouts", "releases", "buries", "kicks"]) {
      dl.append(el("dt", {}, k), el("dd", {}, fmtNum(job.stats[k])));
    }
    box.append(dl);
  }
  const buttons = el("div", {class: "buttons"});
  const del = el("button", {class: "danger", "data-action": "delete"}, "Delete");
  del.disabled = !actionsEnabled;
  armed(del, () => act("delete " + job.handle, "/api/jobs/" + encodeURIComponent(node) + "/" + job.id + "/delete"));
  buttons.append(del);
  if (state !== "ready") {
    const kick = el("button", {"data-action": "kick"}, "Kick");
    kick.disabled = !actionsEnabled;
    kick.addEventListener("click", () => act("kick " + job.handle, "/api/jobs/" + encodeURIComponent(node) + "/" + job.id + "/kick"));
    buttons.append(kick);
  }
  box.append(buttons);
  return box;
}

function renderTubeDetail(name, detail) {
  if (document.querySelector("#tube-nodes button.armed")) return;  // waiting for a confirm click
  const blocks = [];
  for (const [node, entry] of Object.entries(detail.nodes)) {
    const block = el("div", {class: "node-block", data: {node: node}});
    if (!entry.up) {
      block.append(el("h3", {}, node + " "), el("span", {class: "pill down"}, "down"), " ", entry.error);
    } else {
      const st = entry.stats;
      block.append(el("h3", {}, node + " ",
        el("span", {class: "muted small"}, STATES.map((s) => s + " " + st["current-jobs-" + s]).join(" · ") +
           " · watching " + st["current-watching"] + " · waiting " + st["current-waiting"] +
           (st["pause-time-left"] ? " · paused " + st["pause-time-left"] + "s left" : ""))));
      block.append(el("div", {class: "jobs"}, ...["ready", "delayed", "buried"].map((s) => jobCard(s, entry.next[s], node))));
    }
    blocks.push(block);
  }
  if (!blocks.length) blocks.push(el("p", {class: "muted"}, "No node has this tube now (tubes exist while they hold jobs or are used or watched)."));
  $("tube-nodes").replaceChildren(...blocks);
}

async function refreshTube(name) {
  $("tube-name").textContent = name;
  const row = overview.tubes.find((t) => t.name === name);
  const t = row || Object.fromEntries(STATES.map((s) => [s, 0]));
  $("tube-totals").replaceChildren(
    ...STATES.map((s) => card(s, fmtNum(t[s]), s, "tube-" + s)),
    card("watching", fmtNum(t.watching || 0), "", "tube-watching"),
    card("waiting", fmtNum(t.waiting || 0), "", "tube-waiting"),
    card("put/s", fmtRate(row ? row.puts : null), "", "tube-puts"),
    card("delete/s", fmtRate(row ? row.deletes : null), "", "tube-deletes"),
    card("paused", row && row.paused ? row.paused + "s" : "no", "", "tube-paused"),
  );
  const [h, detail] = await Promise.all([getJSON("/api/history?tube=" + encodeURIComponent(name)),
                                         getJSON("/api/tubes/" + apiTube(name))]);
  drawChart($("chart-tube-depth"), $("legend-tube-depth"), h.points, STATES);
  drawChart($("chart-tube-rate"), $("legend-tube-rate"), h.points, ["puts", "deletes"]);
  renderTubeDetail(name, detail);
}

function currentTube() {
  const m = location.hash.match(/^#\/tube\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

function wireTubeActions() {
  const base = () => "/api/tubes/" + apiTube(currentTube());
  $("kick-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("kick", base() + "/kick", {bound: parseInt($("kick-bound").value, 10)});
  });
  $("pause-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("pause", base() + "/pause", {seconds: parseInt($("pause-seconds").value, 10)});
  });
  $("resume-button").addEventListener("click", () => act("resume", base() + "/resume"));
  $("move-form").addEventListener("submit", (ev) => ev.preventDefault());
  armed($("move-button"), () => act("move", base() + "/move", {
    to: $("move-to").value.trim(), state: $("move-state").value,
    limit: parseInt($("move-limit").value, 10)}));
  $("clear-form").addEventListener("submit", (ev) => ev.preventDefault());
  armed($("clear-button"), () => act("clear", base() + "/clear"));
}

function setActionsEnabled(on) {
  actionsEnabled = on;
  $("readonly").hidden = on;
  $("token-form").hidden = !on;
  for (const b of document.querySelectorAll("#tube-actions button, .job button")) b.disabled = !on;
}

// --- the loop --------------------------------------------------------------------------
async function refresh() {
  clearTimeout(timer);
  let interval = 1000;
  try {
    overview = await getJSON("/api/overview");
    interval = Math.max(200, (overview.poll_interval || 1) * 1000);
    $("offline").hidden = true;
    setActionsEnabled(overview.actions);
    const t = overview.totals;
    $("summary").textContent = t.nodes_up + "/" + t.nodes + " nodes up · " + t.tubes + " tubes · " +
      (t.ready + t.reserved + t.delayed + t.buried) + " jobs · " + fmtRate(t.ops) + " ops/s";
    $("updated").textContent = "updated " + new Date(overview.time * 1000).toLocaleTimeString();
    const tube = currentTube();
    $("overview").hidden = tube !== null;
    $("tube").hidden = tube === null;
    if (tube === null) await refreshOverview(); else await refreshTube(tube);
    document.body.dataset.ready = "1";  // tests wait for this
  } catch (e) {
    $("offline").hidden = false;
    $("offline").textContent = "The dashboard server is not answering: " + e.message;
  }
  timer = setTimeout(refresh, interval);
}

function start() {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    $("token").placeholder = "token set";
  });
  if (sessionStorage.getItem(TOKEN_KEY)) $("token").placeholder = "token set";
  $("job-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const [node, id] = $("job-handle").value.trim().split("/");
    try {
      const job = await getJSON("/api/jobs/" + encodeURIComponent(node) + "/" + encodeURIComponent(id || ""));
      $("job-found").replaceChildren(el("div", {class: "jobs"}, jobCard(job.stats ? job.stats.state : "job", job, node)));
    } catch (e) {
      $("job-found").replaceChildren(el("p", {class: "muted"}, e.message));
    }
  });
  wireTubeActions();
  window.addEventListener("hashchange", refresh);
  refresh();
}

document.addEventListener("DOMContentLoaded", start);
