// The dashboard page: polls the server (rlvr/dashboard/server.py) and draws with plotly.
// Every text that comes from a run (completions, prompts, names, config) goes in through
// textContent, never innerHTML: a completion can contain anything.
"use strict";

const params = new URLSearchParams(location.search);
const POLL_MS = Math.max(100, Number(params.get("poll")) || 2000);
const META_EVERY = Math.max(1, Math.round(3000 / POLL_MS));  // run.json changes rarely
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d",
  "#4b5563", "#ca8a04"];
const DASH_GLYPH = { solid: "—", dot: "···", dash: "- -" };

// Panels in the order they appear; [key, label, dash]. "fns", "eval", "errors" and "other" expand from the keys
// seen. A `sparse` panel's metrics are logged only at some steps (held-out evaluations): its lines join those.
const PANELS = [
  { id: "reward", title: "Reward (total)", series: [["reward"]] },
  "fns",
  "eval",
  { id: "eval_length", title: "Held-out mean completion length", series: [["eval/mean_length"]], sparse: true,
    nonneg: true },
  { id: "eval_reward", title: "Held-out mean reward", series: [["eval/mean_reward"]], sparse: true },
  { id: "reward_std", title: "Reward std within groups", series: [["reward_std"]], nonneg: true },
  { id: "frac_reward_zero_std", title: "Groups with zero reward std", series: [["frac_reward_zero_std"]], yfmt: ".0%",
    nonneg: true },
  { id: "completion_length", title: "Completion length", nonneg: true,
    series: [["completions/mean_length", "mean"], ["completions/min_length", "min", "dot"],
      ["completions/max_length", "max", "dash"]] },
  { id: "clipped_ratio", title: "Truncated (no EOS)", series: [["completions/clipped_ratio"]], yfmt: ".0%", nonneg: true },
  { id: "kl", title: "KL to the reference", series: [["kl"]], nonneg: true },
  { id: "entropy", title: "Entropy", series: [["entropy"]] },
  { id: "clip_ratio", title: "Clip ratio", nonneg: true,
    series: [["clip_ratio/region_mean", "region"], ["clip_ratio/low_mean", "low", "dot"],
      ["clip_ratio/high_mean", "high", "dash"]], yfmt: ".1%" },
  { id: "loss", title: "Loss", series: [["loss"]] },
  { id: "learning_rate", title: "Learning rate", series: [["learning_rate"]], yfmt: ".1e", nonneg: true },
  { id: "grad_norm", title: "Gradient norm (before clipping)", series: [["grad_norm"]], nonneg: true },
  { id: "tokens_per_second", title: "Rollout tokens/s", series: [["tokens_per_second"]], nonneg: true },
  { id: "time", title: "Step time (s)", nonneg: true,
    series: [["time/rollout", "rollout"], ["time/score", "scoring", "dot"], ["time/update", "update", "dash"]] },
  { id: "memory", title: "Peak memory (GiB)", series: [["memory/peak_gib"]], nonneg: true },
  { id: "is_ratio", title: "Importance-sampling ratio vs rollout engine",
    series: [["sampling/importance_sampling_ratio/mean", "mean"], ["sampling/importance_sampling_ratio/min", "min", "dot"],
      ["sampling/importance_sampling_ratio/max", "max", "dash"]] },
  { id: "skipped_steps", title: "Skipped steps (non-finite)", series: [["skipped_steps"]], nonzero: true, nonneg: true },
  "errors",
  "other",
];
const NOT_CHARTED = new Set(["step", "eval/best_step", "eval/problems", "eval/seconds"]);  // bookkeeping, not curves

const state = {
  runs: [],
  keys: new Set(),
  smoothing: 0,
  panels: new Map(),  // id -> {def, card, plot}
  panelOrder: "",
  ticks: 0,
  samples: { runId: null, steps: [], step: null, count: 0, records: [], follow: true },
};

// ------------------------------------------------------------------ small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

async function getJSON(url) {
  const res = await fetch(url, { cache: "no-store" });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return res.json();
}

const isNum = (v) => typeof v === "number" && Number.isFinite(v);
const slug = (s) => s.replace(/[^A-Za-z0-9_-]+/g, "_");
const fmt = (v, digits = 3) => (isNum(v) ? (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3)
  ? v.toExponential(2) : Number(v.toFixed(digits)).toString()) : "–");

function ago(seconds) {
  if (!isNum(seconds)) return "";
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

function duration(seconds) {
  if (!isNum(seconds) || seconds < 0) return "";
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = Math.round(seconds % 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s} s` : `${s} s`;
}

// TensorBoard's smoothing: an exponential moving average, debiased at the start.
function smooth(ys, w) {
  if (!w) return ys;
  let avg = 0, n = 0;
  return ys.map((y) => {
    if (!isNum(y)) return null;
    n += 1;
    avg = avg * w + (1 - w) * y;
    return avg / (1 - Math.pow(w, n));
  });
}

// ------------------------------------------------------------------ metrics

function addRecords(run, records) {
  for (const r of records) {
    if (!isNum(r.step)) continue;
    // A resumed or restarted run logs a step again: the newer line replaces it and all after it.
    while (run.rows.length && run.rows[run.rows.length - 1].step >= r.step) run.rows.pop();
    run.rows.push(r);
    for (const [k, v] of Object.entries(r)) if (k !== "step" && isNum(v)) state.keys.add(k);
  }
}

async function pollMetrics(run) {
  let changed = false;
  for (let i = 0; i < 100; i++) {  // catch up in bounded chunks, then wait for the next tick
    const res = await getJSON(`api/runs/${run.id}/metrics?offset=${run.offset}`);
    if (res.reset) { run.rows = []; changed = true; }
    if (res.records.length) { addRecords(run, res.records); changed = true; }
    run.malformed += res.malformed;
    run.offset = res.offset;
    if (!res.more) break;
  }
  return changed;
}

function panelDefs() {
  const keys = [...state.keys].sort();
  const used = new Set(NOT_CHARTED);
  const defs = [];
  for (const p of PANELS) {
    if (p === "eval") {
      // Held-out accuracy, format and pass@k (k > 1) in one chart: evaluation during training (train.eval_strategy).
      const passes = keys.filter((k) => /^eval\/pass@\d+$/.test(k) && k !== "eval/pass@1");
      const series = [["eval/accuracy", "accuracy"], ["eval/format", "format", "dot"],
        ...passes.map((k) => [k, k.slice(5), "dash"])];
      if (keys.includes("eval/pass@1")) used.add("eval/pass@1");  // greedy or not, it is the accuracy's curve
      defs.push({ id: "eval_accuracy", title: "Held-out accuracy (eval)", series, sparse: true, yfmt: ".0%",
        nonneg: true });
    } else if (p === "fns") {
      for (const k of keys) {
        const m = k.match(/^rewards\/(.+)\/mean$/);
        if (m) defs.push({ id: `reward-fn-${slug(m[1])}`, title: `Reward · ${m[1]}`, series: [[k]] });
      }
    } else if (p === "errors") {
      const errs = keys.filter((k) => /^rewards\/.+\/errors(\/.*)?$/.test(k));
      if (errs.length) {
        defs.push({ id: "reward_errors", title: "Reward rows scored None (errors)", nonzero: true, nonneg: true,
          series: errs.map((k, i) => [k, k.replace(/^rewards\//, ""), ["solid", "dot", "dash"][i % 3]]) });
      }
    } else if (p === "other") {
      for (const k of keys) {
        if (!used.has(k) && !/^rewards\/.+\/(std|mean|errors.*)$/.test(k)) {
          defs.push({ id: `other-${slug(k)}`, title: k, series: [[k]] });
        }
      }
    } else {
      defs.push(p);
    }
    for (const d of defs) for (const [k] of d.series) used.add(k);
  }
  return defs.filter(hasData);
}

function hasData(def) {
  return state.runs.some((run) => run.rows.some((r) => def.series.some(([k]) =>
    isNum(r[k]) && (!def.nonzero || r[k] !== 0))));
}

function ensurePanels(defs) {
  const grid = document.getElementById("charts");
  const order = defs.map((d) => d.id).join(",");
  for (const def of defs) {
    if (state.panels.has(def.id)) { state.panels.get(def.id).def = def; continue; }
    const plot = el("div", { class: "chart", id: `chart-${def.id}`, "data-keys": def.series.map((s) => s[0]).join(" ") });
    const key = def.series.length > 1
      ? def.series.map(([, label, dash]) => `${DASH_GLYPH[dash || "solid"]} ${label}`).join("  ")
      : def.series[0][0];
    const card = el("div", { class: "chart-card" }, el("h3", { title: def.series.map((s) => s[0]).join(", ") },
      def.title, el("span", { class: def.series.length > 1 ? "key series" : "key", text: def.title === key ? "" : key })),
    plot);
    state.panels.set(def.id, { def, card, plot });
  }
  if (order !== state.panelOrder) {  // moving cards only when the set changes keeps plotly's state
    for (const def of defs) grid.append(state.panels.get(def.id).card);
    state.panelOrder = order;
  }
  document.getElementById("no-metrics").hidden = defs.length > 0;
}

function traces(def) {
  const out = [];
  const visible = state.runs.filter((r) => r.visible);
  for (const run of visible) {
    for (const [key, label, dash] of def.series) {
      const rows = def.sparse ? run.rows.filter((r) => isNum(r[key])) : run.rows;
      const ys = rows.map((r) => (isNum(r[key]) ? r[key] : null));
      if (!ys.some(isNum)) continue;
      const name = def.series.length === 1 ? run.name : state.runs.length > 1 ? `${run.name} · ${label}` : label;
      out.push({
        x: rows.map((r) => r.step), y: def.sparse ? ys : smooth(ys, state.smoothing), name, type: "scatter",
        mode: rows.length <= 40 || def.sparse ? "lines+markers" : "lines", marker: { size: 4 },
        line: { color: run.color, width: 1.6, dash: dash || "solid" }, connectgaps: false,
        meta: { run: run.name, key }, hovertemplate: "%{y:.4g}",
      });
    }
  }
  return out;
}

function layout(def, maxStep) {
  const axis = { gridcolor: "#eef0f3", zeroline: false, linecolor: "#d1d5db", automargin: true };
  return {
    margin: { l: 44, r: 8, t: 4, b: 24 }, height: 190, showlegend: false, hovermode: "x unified",
    font: { size: 10.5, family: "system-ui, -apple-system, Segoe UI, Roboto, DejaVu Sans, sans-serif", color: "#374151" },
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", uirevision: def.id,
    xaxis: { ...axis, dtick: maxStep <= 12 ? 1 : undefined, tickformat: "d" },
    yaxis: { ...axis, tickformat: def.yfmt || "~g", rangemode: def.nonneg ? "tozero" : "normal" },
  };
}

function renderCharts() {
  const defs = panelDefs();
  ensurePanels(defs);
  const maxStep = Math.max(0, ...state.runs.flatMap((r) => (r.rows.length ? [r.rows[r.rows.length - 1].step] : [])));
  for (const def of defs) {
    const { plot } = state.panels.get(def.id);
    Plotly.react(plot, traces(def), layout(def, maxStep), { displaylogo: false, responsive: true, displayModeBar: false });
  }
  const bad = state.runs.reduce((n, r) => n + r.malformed, 0);
  document.getElementById("metrics-note").textContent =
    bad ? `${bad} malformed line${bad > 1 ? "s" : ""} of metrics.jsonl skipped` : "";
}

// ------------------------------------------------------------------ runs: chips and details

function statusOf(info) {
  if (info.status === "running" && info.alive === false) return ["stale", "run.json says running, but its process is gone"];
  return [info.status || "unknown", info.meta && info.meta.error ? info.meta.error : ""];
}

function renderChips() {
  const box = document.getElementById("runs");
  box.replaceChildren(...state.runs.map((run) => {
    const info = run.info || {};
    const [status, why] = statusOf(info);
    const meta = info.meta || {};
    const last = run.rows.length ? run.rows[run.rows.length - 1].step : null;
    const step = meta.total_steps ? `${last ?? 0}/${meta.total_steps}` : last != null ? `step ${last}` : "";
    const chip = el("button", { class: `chip${run.visible ? "" : " hidden-run"}`, type: "button", "data-run": run.name,
      title: `${info.path || ""}\n${why}\nclick to ${run.visible ? "hide" : "show"} in the charts` },
    el("span", { class: "swatch", style: `background:${run.color}` }), el("span", { text: run.name }),
    el("span", { class: `status ${status}`, text: status }), el("span", { class: "step", text: step }));
    chip.addEventListener("click", () => { run.visible = !run.visible; renderChips(); renderCharts(); });
    return chip;
  }));
}

function detailCard(run) {
  const info = run.info || {};
  const meta = info.meta || {};
  const [status, why] = statusOf(info);
  const v = meta.versions || {};
  const started = meta.started_at ? new Date(meta.started_at) : null;
  const ended = meta.ended_at ? new Date(meta.ended_at) : null;
  const rows = [
    ["path", info.path],
    ["model", meta.model],
    ["trainer", meta.trainer],
    ["started", started ? started.toLocaleString() : ""],
    ["ended", ended ? `${ended.toLocaleString()} (${duration((ended - started) / 1000)})` : ""],
    ["step", meta.total_steps ? `${meta.step ?? ""} of ${meta.total_steps} (run.json)` : ""],
    ["resumed from", meta.resumed_from_step ? `step ${meta.resumed_from_step}` : ""],
    ["process", meta.pid ? `pid ${meta.pid} on ${meta.host}${info.alive === false ? " (gone)" : ""}` : ""],
    ["versions", Object.entries(v).filter(([, x]) => x).map(([k, x]) => `${k} ${x}`).join(" · ")],
    ["metrics", info.metrics_age_s != null ? `last written ${ago(info.metrics_age_s)}` : "none yet"],
    ["best", meta.best && meta.best.step != null ? `${meta.best.metric} ${fmt(meta.best.value)} at step ${meta.best.step} (best/)` : ""],
    ["warnings", (meta.warnings || []).join("\n")],
  ].filter(([, x]) => x);
  const dl = el("dl", {}, ...rows.flatMap(([k, x]) => [el("dt", { text: k }), el("dd", { text: String(x) })]));
  const files = el("div", { class: "files" }, ...(info.files || []).map((f) =>
    el("a", { href: `runs/${run.id}/files/${encodeURIComponent(f)}`, target: "_blank", rel: "noopener", text: f })));
  const config = info.config_text
    ? el("details", {}, el("summary", { text: "config" }), el("pre", { text: info.config_text })) : null;
  return el("div", { class: "run-card", style: `--run-color:${run.color}`, "data-run": run.name },
    el("h3", {}, el("span", { text: run.name }), el("span", { class: `status ${status}`, text: status })),
    why && status !== "running" ? el("div", { class: "error", text: why }) : null, dl, files, config);
}

function renderDetails() {
  const box = document.getElementById("run-details");
  for (const run of state.runs) {
    const sig = JSON.stringify({ ...run.info, metrics_age_s: Math.round((run.info || {}).metrics_age_s / 10) });
    if (sig === run.detailSig) continue;
    const old = box.querySelector(`.run-card[data-run="${CSS.escape(run.name)}"]`);
    const card = detailCard(run);
    const wasOpen = old && old.querySelector("details") && old.querySelector("details").open;
    if (wasOpen && card.querySelector("details")) card.querySelector("details").open = true;
    if (old) old.replaceWith(card); else box.append(card);
    run.detailSig = sig;
  }
}

async function pollRuns() {
  const res = await getJSON("api/runs");
  for (const info of res.runs) {
    let run = state.runs.find((r) => r.id === info.id);
    if (!run) {
      run = { id: info.id, name: info.name, color: COLORS[info.id % COLORS.length], visible: true, offset: 0,
        rows: [], malformed: 0 };
      state.runs.push(run);
    }
    run.info = info;
  }
}

// ------------------------------------------------------------------ rollouts

function fillSelect(select, options, value) {
  select.replaceChildren(...options.map(([v, label]) => el("option", { value: String(v), text: label })));
  if (value != null) select.value = String(value);
}

async function pollSamples() {
  const s = state.samples;
  if (s.runId == null) return;
  const res = await getJSON(`api/runs/${s.runId}/samples`);
  const steps = res.steps;
  const stepSelect = document.getElementById("sample-step");
  const sig = steps.map((x) => `${x.step}:${x.count}`).join(",");
  if (sig !== s.stepsSig) {
    s.stepsSig = sig;
    s.steps = steps;
    if (steps.length && (s.follow || !steps.some((x) => x.step === s.step))) s.step = steps[steps.length - 1].step;
    fillSelect(stepSelect, steps.map((x) => [x.step, `${x.step} · ${x.count} completions`]), s.step);
    const current = steps.find((x) => x.step === s.step);
    if (current && (current.step !== s.loadedStep || current.count !== s.records.length)) await loadStep(s.step);
    if (!steps.length) renderSamples();
  }
}

async function loadStep(step) {
  const s = state.samples;
  const res = await getJSON(`api/runs/${s.runId}/samples/${step}`);
  s.records = res.samples.map((r, i) => ({ ...r, index: i }));
  s.loadedStep = step;
  renderSamples();
}

function selectStep(step) {
  const s = state.samples;
  s.step = step;
  s.follow = s.steps.length > 0 && step === s.steps[s.steps.length - 1].step;
  document.getElementById("sample-step").value = String(step);
  loadStep(step).catch(showError);
}

const SORTS = {
  order: (a, b) => a.index - b.index,
  "reward-desc": (a, b) => (b.reward ?? -Infinity) - (a.reward ?? -Infinity),
  "reward-asc": (a, b) => (a.reward ?? Infinity) - (b.reward ?? Infinity),
  "adv-desc": (a, b) => (b.advantage ?? -Infinity) - (a.advantage ?? -Infinity),
  "adv-asc": (a, b) => (a.advantage ?? Infinity) - (b.advantage ?? Infinity),
  "length-desc": (a, b) => (b.length ?? b.completion.length) - (a.length ?? a.completion.length),
};

const FILTERS = {
  all: () => true,
  "reward-pos": (r) => isNum(r.reward) && r.reward > 0,
  "reward-zero": (r) => !isNum(r.reward) || r.reward <= 0,
  "adv-pos": (r) => isNum(r.advantage) && r.advantage > 0,
  "adv-neg": (r) => isNum(r.advantage) && r.advantage < 0,
};

function groupsOf(records) {
  // Older runs' samples have no group index: the prompt text groups them then.
  const groups = new Map();
  for (const r of records) {
    const key = r.group != null ? `g${r.group}` : `p${r.prompt}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(r);
  }
  return [...groups.values()];
}

function completionRow(r, fnNames, maxAdv) {
  const fns = el("div", { class: "fn-rewards" }, ...fnNames.map((fn) => {
    const v = (r.rewards || {})[fn];
    return el("span", { class: `fn${isNum(v) && v !== 0 ? "" : " zero"}`, title: `reward function ${fn}`,
      text: `${fn} ${isNum(v) ? fmt(v) : "none"}` });
  }));
  const a = isNum(r.advantage) ? r.advantage : 0;
  const width = `${Math.min(1, Math.abs(a) / (maxAdv || 1)) * 50}%`;
  const bar = el("span", { class: "bar" }, el("span", { class: a >= 0 ? "pos" : "neg", style: `width:${width}` }));
  const scores = el("div", { class: "scores" },
    el("div", { class: "reward" }, el("small", { text: "reward " }), fmt(r.reward)),
    fns,
    el("div", { class: "adv", title: "advantage" }, bar, el("span", { text: `adv ${fmt(r.advantage)}` })),
    el("div", { class: "meta-line", text: `#${r.index + 1}${isNum(r.length) ? ` · ${r.length} tokens` : ""}` }));
  return el("div", { class: "completion", "data-reward": String(r.reward), "data-advantage": String(r.advantage) },
    scores, el("pre", { class: "completion-text", text: r.completion ?? "" }));
}

function renderSamples() {
  const s = state.samples;
  const box = document.getElementById("samples");
  const sort = SORTS[document.getElementById("sample-sort").value];
  const keep = FILTERS[document.getElementById("sample-filter").value];
  const needle = document.getElementById("sample-search").value.toLowerCase();
  const fnNames = [...new Set(s.records.flatMap((r) => Object.keys(r.rewards || {})))];
  const maxAdv = Math.max(1e-9, ...s.records.map((r) => Math.abs(r.advantage || 0)));
  let shown = 0;
  const cards = groupsOf(s.records).map((group, gi) => {
    const rows = group.filter((r) => keep(r) && (!needle || (r.completion || "").toLowerCase().includes(needle)))
      .sort(sort);
    if (!rows.length) return null;
    shown += rows.length;
    const rewards = group.map((r) => r.reward).filter(isNum);
    const mean = rewards.reduce((x, y) => x + y, 0) / Math.max(1, rewards.length);
    const std = Math.sqrt(rewards.reduce((x, y) => x + (y - mean) ** 2, 0) / Math.max(1, rewards.length - 1));
    const head = el("div", { class: "group-head" }, el("span", { class: "title", text: `Prompt ${gi + 1}` }),
      el("span", { class: "stats", text: `${group.length} completions · mean reward ${fmt(mean)} · std ${fmt(std)}`
        + (rows.length < group.length ? ` · ${rows.length} shown` : "") }));
    return el("div", { class: "rollout-group" }, head, el("pre", { class: "prompt", text: group[0].prompt ?? "" }),
      el("div", { class: "completions" }, ...rows.map((r) => completionRow(r, fnNames, maxAdv))));
  }).filter(Boolean);
  box.replaceChildren(...(cards.length ? cards : [el("p", { class: "empty",
    text: s.records.length ? "No completion matches the filter." : "No sample completions yet (samples.jsonl)." })]));
  document.getElementById("sample-summary").textContent = s.records.length
    ? `step ${s.loadedStep} · ${shown} of ${s.records.length} completions` : "";
}

// ------------------------------------------------------------------ wiring

function showError(e) {
  const live = document.getElementById("live");
  live.textContent = `server unreachable (${e.message})`;
  live.classList.add("error");
}

async function tick() {
  try {
    if (state.ticks % META_EVERY === 0 || !state.runs.length) {
      await pollRuns();
      renderDetails();
      if (state.samples.runId == null && state.runs.length) {
        const withSamples = state.runs.filter((r) => (r.info.files || []).includes("samples.jsonl"));
        setSampleRun((withSamples.length ? withSamples : state.runs).at(-1).id);
      }
    }
    const changed = (await Promise.all(state.runs.map(pollMetrics))).some(Boolean);
    if (changed) renderCharts();
    renderChips();
    await pollSamples();
    const live = document.getElementById("live");
    live.textContent = `live · ${new Date().toLocaleTimeString()}`;
    live.classList.remove("error");
  } catch (e) {
    showError(e);
  }
  state.ticks += 1;
  setTimeout(tick, POLL_MS);
}

function setSampleRun(id) {
  const s = state.samples;
  Object.assign(s, { runId: id, steps: [], stepsSig: null, step: null, loadedStep: null, records: [], follow: true });
  const select = document.getElementById("sample-run");
  fillSelect(select, state.runs.map((r) => [r.id, r.name]), id);
  pollSamples().catch(showError);
}

function wire() {
  document.getElementById("sample-run").addEventListener("change", (e) => setSampleRun(Number(e.target.value)));
  document.getElementById("sample-step").addEventListener("change", (e) => selectStep(Number(e.target.value)));
  const move = (d) => {
    const s = state.samples;
    const i = s.steps.findIndex((x) => x.step === s.step) + d;
    if (i >= 0 && i < s.steps.length) selectStep(s.steps[i].step);
  };
  document.getElementById("step-prev").addEventListener("click", () => move(-1));
  document.getElementById("step-next").addEventListener("click", () => move(1));
  for (const id of ["sample-sort", "sample-filter", "sample-search"]) {
    document.getElementById(id).addEventListener("input", renderSamples);
  }
  const slider = document.getElementById("smoothing");
  slider.addEventListener("input", () => {
    state.smoothing = Number(slider.value);
    document.getElementById("smoothing-value").textContent = slider.value;
    renderCharts();
  });
}

wire();
tick();
