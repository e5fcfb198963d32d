/* zray dashboard: one page, one tab shown at a time, one poll loop.
 *
 * Each tab has a refresh() that fetches its JSON from api/ and redraws its
 * section; the loop runs the shown tab's refresh every `every` ms and skips
 * the redraw when a reply is byte-for-byte the last one.  The page only
 * reads: it sends GETs and nothing else.  Everything shown from the server
 * goes through esc(), and no style is set inline (the server's CSP forbids
 * it), so bars are small SVGs whose rect widths are attributes.
 */
"use strict";

(function () {
  const view = { tab: "overview", job: "", jobChosen: false, jobs: [], gen: 0,
                 timer: null, last: {}, logFirst: true };

  /* ------------------------------------------------------------ helpers */

  const $ = (id) => document.getElementById(id);

  function esc(value) {
    return String(value === null || value === undefined ? "" : value)
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  function fmtNum(n) { return Number(n || 0).toLocaleString("en-US"); }

  function fmtAmount(n) {
    n = Number(n || 0);
    return Number.isInteger(n) ? String(n) : n.toFixed(2).replace(/\.?0+$/, "");
  }

  function fmtBytes(n) {
    n = Number(n || 0);
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
  }

  function fmtClock(sec) {
    if (sec === null || sec === undefined) return "—";
    return new Date(sec * 1000).toLocaleTimeString("en-GB", { hour12: false });
  }

  function fmtDur(sec) {
    if (sec === null || sec === undefined || !isFinite(sec)) return "—";
    if (sec < 0.001) return "<1 ms";
    if (sec < 1) return `${Math.round(sec * 1000)} ms`;
    if (sec < 60) return `${sec.toFixed(sec < 10 ? 2 : 1)} s`;
    if (sec < 3600) return `${Math.floor(sec / 60)}m ${Math.round(sec % 60)}s`;
    return `${Math.floor(sec / 3600)}h ${Math.round((sec % 3600) / 60)}m`;
  }

  function between(a, b) {
    return a === null || a === undefined || b === null || b === undefined ? null : b - a;
  }

  /* zray IDs are a per-process random prefix and a counter (ids.py), and an
   * object's ID is its task's ID and an index: a plain prefix would read the
   * same for every task of one driver, so show both ends (and the index). */
  function idText(hex) {
    const s = String(hex);
    if (s.length === 40) return `${s.slice(0, 6)}…${s.slice(26, 32)}/${parseInt(s.slice(32), 16)}`;
    return s.length > 14 ? `${s.slice(0, 6)}…${s.slice(-6)}` : s;
  }

  function shortId(hex) {
    return hex ? `<code title="${esc(hex)}">${esc(idText(hex))}</code>` : "—";
  }

  function badge(state) {
    const s = state || "UNKNOWN";
    return `<span class="badge st-${esc(s)}">${esc(s.replace(/_/g, " ").toLowerCase())}</span>`;
  }

  /* A bar as SVG: `parts` is [[fraction, class], ...], drawn side by side. */
  function bar(parts, title) {
    let x = 0;
    const rects = parts.map(([fraction, cls]) => {
      const w = Math.max(0, Math.min(1 - x, fraction || 0)) * 100;
      const r = `<rect class="${cls}" x="${x * 100}%" width="${w}%" height="100%"/>`;
      x += w / 100;
      return r;
    }).join("");
    return `<svg class="bar" role="img"><title>${esc(title || "")}</title>` +
      `<rect class="track" width="100%" height="100%"/>${rects}</svg>`;
  }

  function table(columns, rows, empty, rowClass) {
    if (!rows.length) return `<p class="empty">${esc(empty)}</p>`;
    const head = columns.map((c) => `<th class="${c.cls || ""}">${esc(c.title)}</th>`).join("");
    const body = rows.map((r) => `<tr class="${rowClass ? rowClass(r) : ""}">` + columns.map(
      (c) => `<td class="${c.cls || ""}">${c.cell(r)}</td>`).join("") + "</tr>").join("");
    return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
  }

  function legend(items) {
    return items.map(([cls, label]) =>
      `<span class="key"><span class="swatch ${cls}"></span>${esc(label)}</span>`).join("");
  }

  function setNote(id, text) {
    const note = $(id);
    note.textContent = text || "";
    note.hidden = !text;
  }

  /* GET api/<path>; `fresh` says whether the reply differs from the last one. */
  async function api(path, params) {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== "" && v !== null && v !== undefined) query.set(k, v);
    }
    const url = `api/${path}` + (query.toString() ? `?${query}` : "");
    const response = await fetch(url, { cache: "no-store", credentials: "same-origin" });
    const text = await response.text();
    if (!response.ok) {
      let message = text;
      try { message = JSON.parse(text).error || text; } catch (e) { /* not JSON */ }
      if (response.status === 401) message = "This dashboard needs the cluster token: reload with ?token=…";
      throw new Error(`${path}: ${message}`);
    }
    const fresh = view.last[url] !== text;
    view.last[url] = text;
    return { data: JSON.parse(text), fresh };
  }

  /* ----------------------------------------------------------- overview */

  function resourceCell(node) {
    const total = node.resources_total || {};
    const avail = node.resources_available || {};
    return Object.keys(total).sort().map((name) => {
      const used = Math.max(0, total[name] - (avail[name] === undefined ? total[name] : avail[name]));
      const fmt = name === "memory" || name.endsWith("_bytes") ? fmtBytes : fmtAmount;
      const text = `${fmt(used)} / ${fmt(total[name])}`;
      return `<div class="res"><span class="res-name">${esc(name)}</span>` +
        bar([[total[name] ? used / total[name] : 0, "used"]], `${name}: ${text}`) +
        `<span class="res-val">${esc(text)}</span></div>`;
    }).join("") || "—";
  }

  function storeCell(node) {
    const used = node.object_store_used || 0;
    const cap = node.object_store_capacity || 0;
    const text = `${fmtBytes(used)} / ${fmtBytes(cap)}`;
    return `<div class="res">${bar([[cap ? used / cap : 0, "used"]], text)}` +
      `<span class="res-val">${esc(text)}</span></div>`;
  }

  function card(label, value, detail) {
    return `<div class="card"><div class="card-label">${esc(label)}</div>` +
      `<div class="card-value">${esc(value)}</div><div class="card-detail">${esc(detail || "")}</div></div>`;
  }

  const overview = {
    every: 2000,
    async refresh() {
      const [{ data: cluster }, { data: jobs }] = await Promise.all([api("cluster"), api("jobs")]);
      const nodes = cluster.nodes || [];
      const alive = nodes.filter((n) => n.alive);
      const sum = (f) => alive.reduce((acc, n) => acc + f(n), 0);
      const cpuTotal = sum((n) => (n.resources_total || {}).CPU || 0);
      const cpuFree = sum((n) => (n.resources_available || {}).CPU || 0);
      const running = (jobs.jobs || []).filter((j) => j.status === "RUNNING").length;
      $("session").textContent = cluster.session || "";
      $("overview-cards").innerHTML = [
        card("Nodes alive", `${alive.length}`, nodes.length > alive.length ? `${nodes.length - alive.length} dead` : "all alive"),
        card("CPUs in use", `${fmtAmount(cpuTotal - cpuFree)} / ${fmtAmount(cpuTotal)}`, "on alive nodes"),
        card("Object store", fmtBytes(sum((n) => n.object_store_used || 0)),
             `of ${fmtBytes(sum((n) => n.object_store_capacity || 0))}`),
        card("Workers", fmtNum(sum((n) => n.workers || 0)), ""),
        card("Jobs running", `${running}`, `${(jobs.jobs || []).length} in all`),
      ].join("");
      $("overview-nodes").innerHTML = table([
        { title: "Node", cell: (n) => shortId(n.node_id) + (n.is_head ? ' <span class="tag">head</span>' : "") },
        { title: "Address", cell: (n) => esc(n.address) },
        { title: "State", cell: (n) => badge(n.alive ? "ALIVE" : "DEAD") },
        { title: "Resources (used / total)", cls: "wide", cell: resourceCell },
        { title: "Object store", cls: "mid", cell: storeCell },
        { title: "Workers", cls: "num", cell: (n) => fmtNum(n.workers) },
      ], nodes, "No nodes yet.", (n) => (n.alive ? "" : "dead"));
    },
  };

  /* --------------------------------------------------------------- jobs */

  const jobs = {
    every: 2000,
    async refresh() {
      const { data } = await api("jobs");
      $("jobs-table").innerHTML = table([
        { title: "Job", cell: (j) => `<a href="#tasks" data-job="${esc(j.job_id)}"><code>${esc(j.job_id)}</code></a>` },
        { title: "Status", cell: (j) => badge(j.status) },
        { title: "Driver PID", cls: "num", cell: (j) => esc(j.driver_pid) },
        { title: "Namespace", cell: (j) => esc(j.namespace) },
        { title: "Started", cell: (j) => fmtClock(j.start_time) },
        { title: "Duration", cell: (j) => fmtDur(between(j.start_time, j.end_time === null ? Date.now() / 1000 : j.end_time)) },
        { title: "Tasks", cls: "num", cell: (j) => fmtNum(j.tasks) },
      ], data.jobs || [], "No jobs yet.");
    },
  };

  /* -------------------------------------------------------------- tasks */

  const STATES = [["st-FINISHED", "finished"], ["st-RUNNING", "running"],
                  ["st-PENDING", "pending"], ["st-FAILED", "failed"]];

  function niceStep(span, target) {
    const raw = span / target;
    const base = Math.pow(10, Math.floor(Math.log10(raw)));
    return [1, 2, 5, 10].map((m) => m * base).find((s) => s >= raw) || base * 10;
  }

  function timelineRows(events) {
    const names = {};
    const nodes = new Map();
    for (const e of events) {
      if (e.ph === "M") names[`${e.name}:${e.pid}:${e.name === "thread_name" ? e.tid : ""}`] = (e.args || {}).name;
    }
    for (const e of events) {
      if (e.ph !== "X") continue;
      if (!nodes.has(e.pid)) nodes.set(e.pid, new Map());
      const threads = nodes.get(e.pid);
      if (!threads.has(e.tid)) threads.set(e.tid, []);
      threads.get(e.tid).push(e);
    }
    return [...nodes.keys()].sort((a, b) => a - b).map((pid) => ({
      name: names[`process_name:${pid}:`] || `node ${pid}`,
      threads: [...nodes.get(pid).entries()].sort((a, b) => a[0] - b[0]).map(([tid, boxes]) => ({
        name: names[`thread_name:${pid}:${tid}`] || `worker ${tid}`, boxes })),
    }));
  }

  function drawTimeline(reply) {
    const events = reply.events || [];
    const boxes = events.filter((e) => e.ph === "X");
    const host = $("timeline");
    if (!boxes.length) { host.innerHTML = '<p class="empty">No task has started yet.</p>'; return; }
    const right = Math.max(...boxes.map((e) => e.ts + (e.dur || 0)));
    const windowSec = Number($("timeline-window").value);
    let left = windowSec ? right - windowSec * 1e6 : Math.min(...boxes.map((e) => e.ts));
    if (right - left < 1000) left = right - 1000;
    const width = Math.max(600, host.clientWidth - 2);
    const labelW = 150;
    const plotW = width - labelW - 12;
    const x = (t) => labelW + ((t - left) / (right - left)) * plotW;
    const parts = [];
    const step = niceStep(right - left, 8);
    const fine = step < 1e6;
    for (let t = Math.ceil(left / step) * step; t <= right; t += step) {
      const label = new Date(t / 1000).toLocaleTimeString("en-GB", { hour12: false }) +
        (fine ? `.${String(Math.round((t / 1000) % 1000)).padStart(3, "0")}` : "");
      parts.push(`<line class="tick" x1="${x(t)}" x2="${x(t)}" y1="18" y2="100%"/>`,
                 `<text class="tick-label" x="${x(t)}" y="12">${label}</text>`);
    }
    let y = 24;
    for (const node of timelineRows(events)) {
      parts.push(`<text class="node-label" x="4" y="${y + 14}">${esc(node.name)}</text>`);
      y += 20;
      for (const thread of node.threads) {
        parts.push(`<rect class="lane" x="${labelW}" y="${y}" width="${plotW}" height="16"/>`,
                   `<text class="lane-label" x="14" y="${y + 12}">${esc(thread.name)}</text>`);
        for (const e of thread.boxes) {
          const x0 = Math.max(labelW, x(e.ts));
          const x1 = Math.min(labelW + plotW, x(e.ts + (e.dur || 0)));
          if (x1 < labelW) continue;
          const args = e.args || {};
          const state = args.state || "FINISHED";
          parts.push(`<rect class="box st-${esc(state)}" x="${x0}" y="${y + 2}" ` +
            `width="${Math.max(1.5, x1 - x0)}" height="12"><title>${esc(e.name)} · ` +
            `${esc(state.toLowerCase())} · ${fmtDur((e.dur || 0) / 1e6)}` +
            `${args.task_id ? " · task " + esc(String(args.task_id).slice(0, 12)) : ""}</title></rect>`);
        }
        y += 18;
      }
      y += 4;
    }
    host.innerHTML = `<svg width="${width}" height="${y + 4}" role="img">${parts.join("")}</svg>`;
  }

  function selectedJob() { return view.jobs.find((j) => j.job_id === view.job); }

  function drawTaskTable(data) {
    const rows = data.tasks || [];
    const state = $("task-state").value;
    const job = selectedJob();
    let note = "";
    if (data.capped) {
      note = `Showing the ${fmtNum(rows.length)} most recent of ${fmtNum(data.matched)} ${state.toLowerCase()} tasks found.`;
    } else if (!state && job && job.tasks > rows.length) {
      note = `Showing the ${fmtNum(rows.length)} most recent of ${fmtNum(job.tasks)} tasks in this job.`;
    }
    setNote("tasks-note", note);
    $("tasks-count").textContent = `${fmtNum(rows.length)} shown`;
    $("tasks-table").innerHTML = table([
      { title: "Task", cell: (t) => shortId(t.task_id) },
      { title: "Function", cell: (t) => esc(t.name) },
      { title: "State", cell: (t) => badge(t.state) },
      { title: "Node", cell: (t) => shortId(t.node_id) },
      { title: "Worker", cls: "num", cell: (t) => esc(t.worker_pid === null ? "—" : t.worker_pid) },
      { title: "Submitted", cell: (t) => fmtClock(t.submitted_at) },
      { title: "Waited", cls: "num", cell: (t) => fmtDur(between(t.submitted_at, t.started_at)) },
      { title: "Ran", cls: "num", cell: (t) => fmtDur(between(t.started_at, t.finished_at)) },
      { title: "Error", cls: "error", cell: (t) => (t.error ? `<span title="${esc(t.error)}">${esc(String(t.error).slice(0, 80))}</span>` : "") },
    ], rows, state ? `No ${state.toLowerCase()} tasks.` : "No tasks yet.");
  }

  const tasks = {
    every: 1000, needsJob: true,
    async refresh() {
      const job = view.job;
      $("timeline-download").href = "api/timeline?full=1" + (job ? `&job=${encodeURIComponent(job)}` : "");
      const [timeline, recent] = await Promise.all([
        api("timeline", { job }), api("tasks", { job, state: $("task-state").value })]);
      if (timeline.fresh || view.redrawTimeline) {
        view.redrawTimeline = false;
        const t = timeline.data;
        setNote("timeline-note", t.capped ? `Drawing the ${fmtNum(t.shown)} tasks that ended last, of ${fmtNum(t.total)}; download the trace for all of them.` : "");
        drawTimeline(t);
      }
      if (recent.fresh) drawTaskTable(recent.data);
    },
  };

  /* ----------------------------------------------------------- progress */

  const progress = {
    every: 1000, needsJob: true,
    async refresh() {
      const { data, fresh } = await api("progress", { job: view.job });
      if (!fresh) return;
      const fns = data.functions || [];
      const all = fns.reduce((acc, f) => {
        for (const k of ["finished", "running", "pending", "failed", "total"]) acc[k] += f[k];
        return acc;
      }, { name: "All functions", finished: 0, running: 0, pending: 0, failed: 0, total: 0 });
      setNote("progress-note", data.capped ? `Counting the ${fmtNum(data.tasks)} most recent tasks only.` : "");
      const row = (f, cls) => {
        const t = f.total || 1;
        const text = `${fmtNum(f.finished)} finished · ${fmtNum(f.running)} running · ` +
          `${fmtNum(f.pending)} pending · ${fmtNum(f.failed)} failed`;
        return `<div class="progress-row ${cls || ""}"><div class="progress-name">${esc(f.name)}</div>` +
          bar([[f.finished / t, "st-FINISHED"], [f.running / t, "st-RUNNING"],
               [f.pending / t, "st-PENDING"], [f.failed / t, "st-FAILED"]], text) +
          `<div class="progress-count"><b>${fmtNum(f.finished)}</b> / ${fmtNum(f.total)}</div>` +
          `<div class="progress-detail muted">${text}</div></div>`;
      };
      $("progress-list").innerHTML = fns.length
        ? row(all, "total") + `<p class="muted summary">${fmtNum(all.total)} tasks in ${fns.length} function(s)</p>` + fns.map((f) => row(f)).join("")
        : '<p class="empty">No tasks yet.</p>';
    },
  };

  /* ------------------------------------------------------------- actors */

  const actors = {
    every: 2000,
    async refresh() {
      const { data, fresh } = await api("actors");
      if (!fresh) return;
      $("actor-states").innerHTML = Object.entries(data.states || {}).sort().map(
        ([state, n]) => `<span class="chip">${badge(state)} ${fmtNum(n)}</span>`).join("");
      setNote("actors-note", data.capped ? `Showing ${fmtNum((data.actors || []).length)} of ${fmtNum(data.total)} actors.` : "");
      $("actors-table").innerHTML = table([
        { title: "Actor", cell: (a) => shortId(a.actor_id) },
        { title: "Class", cell: (a) => esc(a.class_name) },
        { title: "Name", cell: (a) => esc(a.name || "") },
        { title: "Namespace", cell: (a) => esc(a.namespace) },
        { title: "State", cell: (a) => badge(a.state) },
        { title: "Node", cell: (a) => shortId(a.node_id) },
        { title: "PID", cls: "num", cell: (a) => esc(a.pid === null ? "—" : a.pid) },
        { title: "Job", cell: (a) => shortId(a.job_id) },
      ], data.actors || [], "No actors.");
    },
  };

  /* ------------------------------------------------------------ objects */

  const objects = {
    every: 2000,
    async refresh() {
      const [{ data }, { data: cluster }] = await Promise.all([api("objects"), api("cluster")]);
      const capacity = {};
      for (const n of cluster.nodes || []) capacity[n.node_id] = n.object_store_capacity || 0;
      const spilled = (data.per_node || []).reduce((acc, r) => acc + r.spilled_bytes, 0);
      $("objects-cards").innerHTML = [
        card("Objects", fmtNum(data.total), ""),
        card("Bytes held", fmtBytes(data.total_bytes), "all nodes"),
        card("Spilled", fmtBytes(spilled), "to disk"),
      ].join("");
      $("objects-nodes").innerHTML = table([
        { title: "Node", cell: (r) => shortId(r.node_id) },
        { title: "Objects", cls: "num", cell: (r) => fmtNum(r.count) },
        { title: "In store", cls: "mid", cell: (r) => {
          const cap = capacity[r.node_id] || 0;
          const inMemory = r.bytes - r.spilled_bytes;
          const text = cap ? `${fmtBytes(inMemory)} / ${fmtBytes(cap)}` : fmtBytes(inMemory);
          return `<div class="res">${bar([[cap ? inMemory / cap : 0, "used"]], text)}<span class="res-val">${esc(text)}</span></div>`;
        } },
        { title: "Spilled", cls: "num", cell: (r) => `${fmtBytes(r.spilled_bytes)} (${fmtNum(r.spilled_count)})` },
      ], data.per_node || [], "No objects.");
      const rows = data.objects || [];
      const largest = rows.length ? rows[0].size || 1 : 1;
      setNote("objects-note", data.capped ? `The ${fmtNum(rows.length)} largest of ${fmtNum(data.total)} objects.` : "");
      $("objects-table").innerHTML = table([
        { title: "Object", cell: (o) => shortId(o.object_id) },
        { title: "Size", cls: "mid", cell: (o) => `<div class="res">${bar([[(o.size || 0) / largest, "used"]], fmtBytes(o.size))}<span class="res-val">${fmtBytes(o.size)}</span></div>` },
        { title: "Node", cell: (o) => shortId(o.node_id) },
        { title: "Kind", cell: (o) => esc(o.kind) },
        { title: "Spilled", cell: (o) => (o.spilled ? '<span class="tag warn">spilled</span>' : "") },
        { title: "Refs", cls: "num", cell: (o) => esc(o.ref_count) },
        { title: "Pins", cls: "num", cell: (o) => esc(o.pins) },
      ], rows, "No objects.");
    },
  };

  /* -------------------------------------------------------------- graph */

  function drawGraph(data) {
    const nodes = data.nodes || [];
    const host = $("graph");
    if (!nodes.length) { host.innerHTML = '<p class="empty">No graph for this job yet.</p>'; return; }
    const h = 26;
    const gapY = 12;
    const gapX = 64;
    const labelOf = (n) => { const s = String(n.label || n.id); return s.length > 24 ? s.slice(0, 23) + "…" : s; };
    const widthOf = (n) => Math.min(190, 24 + 6.6 * labelOf(n).length);
    const colW = [];
    for (const n of nodes) colW[n.layer] = Math.max(colW[n.layer] || 0, widthOf(n));
    const colX = [];
    let x = 12;
    for (let i = 0; i < colW.length; i += 1) { colX[i] = x; x += (colW[i] || 0) + gapX; }
    const at = {};
    const layerOf = {};
    let bottom = 0;
    for (const n of nodes) {
      const w = widthOf(n);
      const left = colX[n.layer] + ((colW[n.layer] || w) - w) / 2;
      const top = 12 + n.order * (h + gapY);
      at[n.id] = { left, top, w };
      layerOf[n.id] = n.layer;
      bottom = Math.max(bottom, top + h);
    }
    const parts = ['<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" ' +
      'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker></defs>'];
    for (const e of data.edges || []) {
      const a = at[e.from];
      const b = at[e.to];
      if (!a || !b) continue;
      const x1 = a.left + a.w; const y1 = a.top + h / 2;
      const x2 = b.left; const y2 = b.top + h / 2;
      const dx = Math.max(30, Math.abs(x2 - x1) / 2);
      // An edge that skips a column would run straight through what sits
      // between on its row: bow it up into the gap above instead.
      const lift = Math.abs(layerOf[e.to] - layerOf[e.from]) > 1 ? (h + gapY) * 0.9 : 0;
      parts.push(`<path class="edge${e.style === "dashed" ? " dashed" : ""}" marker-end="url(#arrow)" ` +
        `d="M${x1},${y1} C${x1 + dx},${y1 - lift} ${x2 - dx},${y2 - lift} ${x2},${y2}"/>`);
    }
    for (const n of nodes) {
      const p = at[n.id];
      const cls = n.shape === "ellipse" ? "object" : `task st-${esc(n.state || "UNKNOWN")}`;
      const shape = n.shape === "ellipse"
        ? `<ellipse class="gnode ${cls}" cx="${p.left + p.w / 2}" cy="${p.top + h / 2}" rx="${p.w / 2}" ry="${h / 2}"/>`
        : `<rect class="gnode ${cls}" x="${p.left}" y="${p.top}" width="${p.w}" height="${h}" rx="4"/>`;
      const onColour = n.shape !== "ellipse" && ["FINISHED", "RUNNING", "FAILED"].includes(n.state);
      parts.push(`<g>${shape}<text class="glabel${onColour ? " on-state" : ""}" x="${p.left + p.w / 2}" y="${p.top + h / 2 + 4}">` +
        `${esc(labelOf(n))}</text><title>${esc(n.label)}${n.state ? " · " + esc(n.state.toLowerCase()) : ""}\n${esc(n.id)}</title></g>`);
    }
    host.innerHTML = `<svg width="${x}" height="${bottom + 12}" role="img">${parts.join("")}</svg>`;
  }

  const graph = {
    every: 3000, needsJob: true,
    async refresh() {
      const { data, fresh } = await api("graph", { job: view.job });
      if (!fresh) return;
      setNote("graph-note", data.capped ? `Drawing the first ${fmtNum((data.nodes || []).length)} of ${fmtNum(data.total_nodes)} nodes: the graph is capped so the page stays quick.` : "");
      drawGraph(data);
    },
  };

  /* --------------------------------------------------------------- logs */

  function fillSelect(select, values, label) {
    const keep = select.value;
    const html = values.map((v) => `<option value="${esc(v)}">${esc(label ? label(v) : v)}</option>`).join("");
    if (select.dataset.options !== html) { select.innerHTML = html; select.dataset.options = html; }
    if (values.includes(keep)) select.value = keep;
  }

  const logs = {
    get every() { return $("log-follow").checked ? 2000 : 0; },
    async refresh() {
      const { data } = await api("logs");
      const listing = data.logs || {};
      fillSelect($("log-node"), Object.keys(listing).sort(), idText);
      const files = listing[$("log-node").value] || [];
      fillSelect($("log-file"), files.slice().sort());
      const pre = $("log-text");
      if (!$("log-node").value || !$("log-file").value) { pre.textContent = "No log files listed."; return; }
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      const { data: log, fresh } = await api("log", { node: $("log-node").value, file: $("log-file").value, tail: $("log-tail").value });
      if (!fresh) return;
      pre.textContent = log.text || "(empty)";
      if (atBottom || view.logFirst) pre.scrollTop = pre.scrollHeight;
      view.logFirst = false;
    },
  };

  /* ---------------------------------------------------------- the loop */

  const TABS = { overview, jobs, tasks, progress, actors, objects, graph, logs };

  function setBanner(text) {
    const banner = $("banner");
    banner.textContent = text;
    banner.hidden = !text;
  }

  async function refreshJobs() {
    const { data, fresh } = await api("jobs");
    view.jobs = data.jobs || [];
    if (!view.jobChosen && view.jobs.length) view.job = view.jobs[0].job_id;
    if (!fresh) return;
    const options = ['<option value="">All jobs</option>'].concat(view.jobs.map((j) =>
      `<option value="${esc(j.job_id)}">${esc(j.job_id.slice(0, 12))} · ${esc(j.status.toLowerCase())} · ${fmtNum(j.tasks)} tasks</option>`));
    $("job").innerHTML = options.join("");
    $("job").value = view.job;
  }

  async function tick() {
    clearTimeout(view.timer);
    const gen = ++view.gen;
    const tab = TABS[view.tab];
    try {
      if (tab.needsJob) await refreshJobs();
      await tab.refresh();
      if (gen !== view.gen) return;
      setBanner("");
      $("updated").textContent = `updated ${new Date().toLocaleTimeString("en-GB", { hour12: false })}`;
    } catch (err) {
      if (gen !== view.gen) return;
      setBanner(`Could not refresh: ${err.message}`);
    }
    if (gen === view.gen && tab.every && !document.hidden) view.timer = setTimeout(tick, tab.every);
  }

  function show(tabName) {
    view.tab = TABS[tabName] ? tabName : "overview";
    for (const section of document.querySelectorAll("section.tab")) section.hidden = section.id !== `tab-${view.tab}`;
    for (const link of document.querySelectorAll("#tabs a")) link.classList.toggle("active", link.dataset.tab === view.tab);
    $("job-picker").hidden = !TABS[view.tab].needsJob;
    view.last = {};  // a tab drawn before must draw again even if its data did not change
    view.redrawTimeline = true;
    tick();
  }

  function start() {
    $("timeline-legend").innerHTML = legend(STATES);
    $("progress-legend").innerHTML = legend(STATES);
    $("graph-legend").innerHTML = legend([["shape-box", "task"], ["shape-ellipse", "object"],
                                          ["edge-solid", "data"], ["edge-dashed", "submitted by"]]);
    window.addEventListener("hashchange", () => show(location.hash.slice(1)));
    document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
    $("job").addEventListener("change", () => { view.job = $("job").value; view.jobChosen = true; view.last = {}; tick(); });
    $("jobs-table").addEventListener("click", (event) => {
      const link = event.target.closest("a[data-job]");
      if (link) { view.job = link.dataset.job; view.jobChosen = true; }
    });
    $("task-state").addEventListener("change", tick);
    $("timeline-window").addEventListener("change", () => { view.redrawTimeline = true; tick(); });
    for (const id of ["log-node", "log-file", "log-tail"]) {
      $(id).addEventListener("change", () => { view.logFirst = true; tick(); });
    }
    $("log-refresh").addEventListener("click", () => { view.last = {}; tick(); });
    $("log-follow").addEventListener("change", tick);
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { view.redrawTimeline = true; view.last = {}; tick(); }, 200);
    });
    show(location.hash.slice(1));
  }

  start();
})();
