// modalbench pages: metric charts, and live updates of a run page while it trains.
"use strict";

const COLORS = ["#2f6fdb", "#e07b39", "#23864a", "#9b51e0", "#c0392b"];

// Draws the series named in the svg's data-keys as lines over the step axis.
function drawChart(svg, series) {
  const keys = svg.dataset.keys.split(",");
  const W = 480, H = 240, L = 44, R = 10, T = 10, B = 44;
  const lines = keys.map((k) => ({ key: k, pts: series[k] || [] })).filter((s) => s.pts.length);
  const ns = "http://www.w3.org/2000/svg";
  const el = (name, attrs, text) => {
    const e = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.appendChild(e);
    return e;
  };
  svg.replaceChildren();
  if (!lines.length) {
    el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no points yet");
    return;
  }
  const all = lines.flatMap((s) => s.pts);
  let x0 = Math.min(...all.map((p) => p.step)), x1 = Math.max(...all.map((p) => p.step));
  let y0, y1;
  if (svg.dataset.range) {
    [y0, y1] = svg.dataset.range.split(",").map(Number);
  } else {
    y0 = Math.min(0, ...all.map((p) => p.value));
    y1 = Math.max(...all.map((p) => p.value));
  }
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) y1 = y0 + 1;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = y0 + ((y1 - y0) * i) / 4;
    el("line", { class: "grid", x1: L, x2: W - R, y1: sy(v), y2: sy(v) });
    el("text", { x: L - 4, y: sy(v) + 3, "text-anchor": "end" }, v.toFixed(2));
  }
  el("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B });
  el("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B });
  el("text", { x: L, y: H - B + 14, "text-anchor": "middle" }, String(x0));
  el("text", { x: W - R, y: H - B + 14, "text-anchor": "end" }, String(x1));
  el("text", { x: (L + W - R) / 2, y: H - B + 14, "text-anchor": "middle" }, "step");
  lines.forEach((s, i) => {
    const color = COLORS[keys.indexOf(s.key) % COLORS.length];
    const d = s.pts.map((p, j) => (j ? "L" : "M") + sx(p.step).toFixed(1) + "," + sy(p.value).toFixed(1)).join("");
    el("path", { class: "series", d, stroke: color, "data-key": s.key });
    if (s.pts.length === 1) el("circle", { cx: sx(s.pts[0].step), cy: sy(s.pts[0].value), r: 3, fill: color });
    el("rect", { x: L + i * 110, y: H - 16, width: 10, height: 10, fill: color });
    el("text", { x: L + i * 110 + 14, y: H - 7 }, s.key);
  });
}

const fmt = (v, d) => (v === undefined || v === null ? "–" : Number(v).toFixed(d));

// Rebuilds the dev-evaluation table from the metric series: one row per step of its first
// key (`data-keys` on its body), one column per key.
function fillEvalTable(series) {
  const body = document.querySelector("#eval-table tbody");
  if (!body) return;
  const keys = body.dataset.keys.split(",");
  const rows = series[keys[0]] || [];
  if (!rows.length) return;
  const at = (k, step) => ((series[k] || []).find((p) => p.step === step) || {}).value;
  body.replaceChildren();
  for (const p of rows) {
    const tr = document.createElement("tr");
    const cells = [p.step, fmt(p.epoch, 2), ...keys.map((k) => fmt(at(k, p.step), 4))];
    for (const c of cells) {
      const td = document.createElement("td");
      td.className = "num";
      td.textContent = c;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function showMetrics(series) {
  document.querySelectorAll("svg.chart").forEach((svg) => drawChart(svg, series));
  fillEvalTable(series);
}

async function refreshMetrics(runId, maxPoints) {
  const res = await fetch(`/api/v1/runs/${runId}/metrics?max_points=${maxPoints}`);
  if (!res.ok) return;
  const { series } = await res.json();
  showMetrics(series);
}

function initRunPage(root) {
  const runId = root.dataset.runId;
  const maxPoints = root.dataset.maxPoints;
  // the page carries its series when the server keeps them current; else they are fetched
  const inline = document.getElementById("run-curves");
  if (inline) showMetrics(JSON.parse(inline.textContent).series);
  else refreshMetrics(runId, maxPoints);
  if (root.dataset.active !== "true") return;
  const src = new EventSource(`/api/v1/runs/${runId}/events`);
  let pending = null;
  const soon = () => {
    if (!pending) pending = setTimeout(() => { pending = null; refreshMetrics(runId, maxPoints); }, 400);
  };
  const log = document.getElementById("run-log");
  const appendLog = (line) => {
    if (!log) return;
    log.textContent += line + "\n";
    log.scrollTop = log.scrollHeight;
  };
  src.addEventListener("metric", soon);
  src.addEventListener("progress", (e) => {
    const p = JSON.parse(e.data);
    const pct = Math.round((100 * p.step) / Math.max(1, p.total_steps));
    document.getElementById("run-progress").value = pct;
    document.getElementById("run-progress-text").textContent =
      `${pct}% · epoch ${p.epoch.toFixed(2)} · ${p.samples_per_second.toFixed(1)} samples/s`;
  });
  src.addEventListener("log", (e) => appendLog(JSON.parse(e.data).message));
  src.addEventListener("status", (e) => {
    const s = JSON.parse(e.data);
    const badge = document.getElementById("run-status");
    badge.textContent = s.status;
    badge.className = "status " + s.status;
    if (!["queued", "running", "interrupted"].includes(s.status)) {
      src.close();
      // the finished page carries the summary and the final log
      setTimeout(() => window.location.reload(), 300);
    }
  });
}

function initStudyPage(root) {
  if (root.dataset.active !== "true") return;
  const src = new EventSource(`/api/v1/studies/${root.dataset.studyId}/events`);
  const counts = () => {
    const n = { waiting: 0, running: 0, succeeded: 0, failed: 0, cancelled: 0 };
    root.querySelectorAll("a.cell-run .status").forEach((b) => {
      const s = b.textContent === "queued" || b.textContent === "interrupted" ? "waiting" : b.textContent;
      if (s in n) n[s] += 1;
    });
    for (const [k, v] of Object.entries(n)) {
      const el = document.getElementById(`count-${k}`);
      if (el) el.textContent = v;
    }
    return n;
  };
  src.addEventListener("status", (e) => {
    const s = JSON.parse(e.data);
    const badge = root.querySelector(`a.cell-run[data-run-id="${s.run_id}"] .status`);
    if (!badge) return;
    badge.textContent = s.status;
    badge.className = "status " + s.status;
    const n = counts();
    if (n.waiting + n.running === 0) {
      src.close();
      setTimeout(() => window.location.reload(), 300);
    }
  });
  src.addEventListener("finished", () => setTimeout(() => window.location.reload(), 500));
}

// The compare page: one uPlot chart per metric key, a line per run, on the chosen x axis
// (step, epoch or seconds since the run started); redrawn when a running run reports points.
function initComparePage(root) {
  const runs = JSON.parse(root.dataset.runs);
  const box = document.getElementById("compare-charts");
  const series = {}; // run id -> {key: [points]}
  const charts = [];
  const axis = () => (document.querySelector('input[name="x-axis"]:checked') || {}).value || "step";
  const xOf = (run, p) => {
    const a = axis();
    if (a === "epoch") return p.epoch;
    if (a === "time") {
      const t0 = Date.parse(run.started || "") || Date.parse(((series[run.id] || {})._first) || "");
      return (Date.parse(p.time) - t0) / 1000;
    }
    return p.step;
  };
  const unit = { step: "step", epoch: "epoch", time: "seconds" };
  const draw = () => {
    charts.splice(0).forEach((c) => c.destroy());
    const keys = [...new Set(runs.flatMap((r) => Object.keys(series[r.id] || {})))]
      .filter((k) => !k.startsWith("_")).sort();
    box.replaceChildren();
    if (!keys.length) {
      box.innerHTML = '<p class="empty">No metric points yet.</p>';
      return;
    }
    const width = Math.min(560, Math.max(320, box.clientWidth / 2 - 24));
    for (const key of keys) {
      const xs = new Set();
      const per = runs.map((r) => {
        const m = new Map();
        for (const p of (series[r.id] || {})[key] || []) {
          const x = xOf(r, p);
          if (x === null || x === undefined || Number.isNaN(x)) continue;
          m.set(x, p.value);
          xs.add(x);
        }
        return m;
      });
      const xsSorted = [...xs].sort((a, b) => a - b);
      const data = [xsSorted, ...per.map((m) => xsSorted.map((x) => (m.has(x) ? m.get(x) : null)))];
      const div = document.createElement("div");
      div.className = "chart-box";
      div.dataset.key = key;
      box.appendChild(div);
      const opts = {
        title: key,
        width,
        height: 260,
        scales: { x: { time: false } },
        axes: [{ label: unit[axis()] }, { label: key.split("/").pop() }],
        series: [
          { label: unit[axis()] },
          ...runs.map((r) => ({ label: r.label, stroke: r.color, width: 2, spanGaps: true, points: { show: true, size: 4 } })),
        ],
      };
      charts.push(new uPlot(opts, data, div));
    }
  };
  const load = async (run) => {
    const res = await fetch(`/api/v1/runs/${run.id}/metrics?max_points=${root.dataset.maxPoints}`);
    if (!res.ok) return;
    const { series: s } = await res.json();
    const first = Object.values(s).flat().map((p) => p.time).sort()[0];
    series[run.id] = { ...s, _first: first };
  };
  Promise.all(runs.map(load)).then(draw);
  document.querySelectorAll('input[name="x-axis"]').forEach((i) => i.addEventListener("change", draw));
  const toggle = document.getElementById("show-all-options");
  if (toggle) {
    const apply = () => root.classList.toggle("all-options", toggle.checked);
    toggle.addEventListener("change", apply);
    apply();
  }
  for (const run of runs.filter((r) => r.active)) {
    const src = new EventSource(`/api/v1/runs/${run.id}/events`);
    let pending = null;
    src.addEventListener("metric", () => {
      if (!pending) pending = setTimeout(async () => { pending = null; await load(run); draw(); }, 500);
    });
    src.addEventListener("status", (e) => {
      const s = JSON.parse(e.data);
      if (!["queued", "running", "interrupted"].includes(s.status)) {
        src.close();
        setTimeout(() => window.location.reload(), 300);
      }
    });
  }
}

// Checkboxes of run ids (leaderboard, runs list) enable a "Compare selected" button.
function initComparePicker(button) {
  const picks = () => [...document.querySelectorAll("input.pick:checked")].map((i) => i.value);
  document.querySelectorAll("input.pick").forEach((i) =>
    i.addEventListener("change", () => { button.disabled = picks().length < 2; }));
  button.addEventListener("click", () => {
    window.location.href = "/compare?runs=" + [...new Set(picks())].join(",");
  });
}

// Marks each thumbnail once the page has loaded: data-loaded="true" when it decoded, and the
// class `broken` (a placeholder style) when it did not.
window.addEventListener("load", () => {
  for (const img of document.querySelectorAll("img.thumb")) {
    const ok = img.complete && img.naturalWidth > 0;
    img.dataset.loaded = ok;
    img.classList.toggle("broken", !ok);
  }
});

document.addEventListener("DOMContentLoaded", () => {
  const run = document.getElementById("run");
  if (run) initRunPage(run);
  const study = document.getElementById("study");
  if (study) initStudyPage(study);
  const compare = document.getElementById("compare");
  if (compare && window.uPlot) initComparePage(compare);
  const picker = document.getElementById("compare-selected");
  if (picker) initComparePicker(picker);
});
