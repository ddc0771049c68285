// agentrt dashboard page: reads the JSON API (or, in a self-contained export, window.AGENTRT_DATA keyed
// by API path) and draws the headline, the timeline and the charts with Vega-Lite.
// Every text from the store (prompts, outputs, tool arguments and results, tasks, errors) is untrusted:
// it only ever reaches the page through textContent (the `el` helper), never through innerHTML.
"use strict";

const DATA = window.AGENTRT_DATA || null;
const state = { runs: [], a: null, b: null, program: null, key: sessionStorage.getItem("agentrt-key") || "", timer: null };
window.agentrtViews = {};  // the Vega views, for the browser test and the curious
const SPAN_COLORS = {
  domain: ["queue", "prefill", "decode", "tool", "pin hit", "pin expired", "pin released", "pin holding"],
  range: ["#c7c7c7", "#f58518", "#4c78a8", "#54a24b", "#1b7a1b", "#e45756", "#b279a2", "#72b7b2"],
};

async function api(path) {
  if (DATA) {
    if (path in DATA) return DATA[path];
    throw new Error(`${path} is not in this export`);
  }
  const response = await fetch(path, { headers: state.key ? { Authorization: `Bearer ${state.key}` } : {} });
  if (response.status === 401) {
    document.getElementById("key-form").hidden = false;
    throw new Error("this dashboard needs an API key");
  }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const num = (v, digits = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const pct = (v) => (v === null || v === undefined ? "not recorded" : `${(100 * v).toFixed(1)} %`);
const short = (id) => id.slice(0, 8);
function runLabel(id) {
  const run = state.runs.find((r) => r.id === id);
  return run && run.name ? `${run.name} (${short(id)})` : short(id);
}

function showError(err) {
  document.getElementById("error").textContent = err ? String(err.message || err) : "";
}

async function embed(id, spec) {
  const target = document.getElementById(id);
  const result = await vegaEmbed(target, { $schema: "https://vega.github.io/schema/vega-lite/v6.json", ...spec },
    { actions: false, renderer: "svg" });
  window.agentrtViews[id] = result.view;
  return result.view;
}

function note(id, text) {
  const target = document.getElementById(id);
  target.replaceChildren(el("p", { class: "note" }, text));
  delete window.agentrtViews[id];
}

// ---- headline and comparison --------------------------------------------------------------------

const HEADLINE = [
  ["programs", (r) => r.programs],
  ["by status", (r) => Object.entries(r.by_status).map(([k, n]) => `${n} ${k}`).join(", ")],
  ["JCT mean (s)", (r) => num(r.jct_mean_s)],
  ["JCT p50 (s)", (r) => num(r.jct_p50_s)],
  ["JCT p95 (s)", (r) => num(r.jct_p95_s)],
  ["JCT p99 (s)", (r) => num(r.jct_p99_s)],
  ["makespan (s)", (r) => num(r.makespan_s)],
  ["throughput (programs/s)", (r) => num(r.throughput_programs_per_s, 3)],
  ["LLM calls / tool calls", (r) => `${r.llm_calls} / ${r.tool_calls}`],
  ["TTFT p50 (s)", (r) => num(r.ttft_p50_s, 3)],
  ["prefix cache hit rate", (r) => pct(r.prefix_hit_rate)],
  ["DHD reuse rate", (r) => pct(r.dhd_hit_rate)],
  ["pins", (r) => Object.entries(r.pins).map(([k, n]) => `${n} ${k}`).join(", ") || "none"],
  ["retention policy", (r) => (r.config && r.config.retention) || "none"],
];

function renderHeadline(summaries) {
  const table = document.getElementById("compare");
  const head = el("tr", {}, el("th", {}, ""), ...summaries.map((s) => el("th", { "data-run": s.run_id }, runLabel(s.run_id))));
  const rows = HEADLINE.map(([label, value]) => el("tr", {}, el("th", {}, label), ...summaries.map((s) => el("td", {}, value(s)))));
  table.replaceChildren(head, ...rows);
  const live = summaries[0].live;
  document.getElementById("live").hidden = !live;
}

// ---- charts -------------------------------------------------------------------------------------

async function renderTimeline(tl) {
  const y = { field: "index", type: "ordinal", title: "program", axis: { labelExpr: "'#' + datum.value" } };
  const x = { field: "start", type: "quantitative", title: "seconds since run start", axis: { tickCount: 10 } };
  const view = await embed("timeline", {
    width: "container", height: { step: 22 },
    layer: [
      { data: { values: tl.programs }, mark: { type: "bar", color: "#eef1f5", height: { band: 0.9 } },
        encoding: { y, x, x2: { field: "end" }, tooltip: [
          { field: "index", title: "program" }, { field: "status" }, { field: "turns" },
          { field: "jct_s", title: "JCT (s)", format: ".2f" }] } },
      { data: { values: tl.spans }, mark: { type: "bar", height: { band: 0.55 } },
        encoding: { y, x, x2: { field: "end" }, color: { field: "kind", type: "nominal", scale: SPAN_COLORS, title: "span" },
          tooltip: [{ field: "kind" }, { field: "label" }, { field: "start", format: ".3f" }, { field: "end", format: ".3f" }] } },
      { data: { values: tl.pins }, mark: { type: "rule", strokeWidth: 3, yOffset: -8 },
        encoding: { y, x, x2: { field: "end" }, color: { field: "kind", type: "nominal", scale: SPAN_COLORS, title: "span" },
          tooltip: [{ field: "kind", title: "pin" }, { field: "ttl_s", title: "TTL (s)", format: ".2f" }, { field: "inferred" }] } },
    ],
  });
  view.addEventListener("click", (_event, item) => {
    if (item && item.datum && item.datum.program_id) showProgram(item.datum.program_id);
  });
}

async function renderCdf(cdfs) {
  const values = cdfs.flatMap((c) => c.points.map((p) => ({ ...p, run: runLabel(c.run_id) })));
  if (!values.length) return note("cdf", "no finished programs yet");
  await embed("cdf", {
    width: "container", height: 220, data: { values },
    mark: { type: "line", interpolate: "step-after", point: true },
    encoding: { x: { field: "jct_s", type: "quantitative", title: "JCT (s)" },
      y: { field: "p", type: "quantitative", title: "fraction of programs", scale: { domain: [0, 1] } },
      color: { field: "run", type: "nominal" }, tooltip: [{ field: "run" }, { field: "jct_s", format: ".2f" }, { field: "p", format: ".2f" }] },
  });
}

async function renderTools(tools) {
  const values = tools.calls.filter((c) => c.predicted_s !== null);
  if (!values.length) return note("tools", `${tools.calls.length} tool calls, none with a predicted duration (the run had no retention policy)`);
  const top = Math.max(...values.map((c) => Math.max(c.predicted_s, c.actual_s)));
  await embed("tools", {
    width: "container", height: 220,
    layer: [
      { data: { values: [{ a: 0, b: top }] }, mark: { type: "rule", strokeDash: [4, 4], color: "#999" },
        encoding: { x: { field: "a", type: "quantitative" }, y: { field: "a", type: "quantitative" }, x2: { field: "b" }, y2: { field: "b" } } },
      { data: { values }, mark: { type: "point", filled: true },
        encoding: { x: { field: "predicted_s", type: "quantitative", title: "predicted (s)" },
          y: { field: "actual_s", type: "quantitative", title: "actual (s)" }, color: { field: "name", type: "nominal", title: "tool" },
          tooltip: [{ field: "name" }, { field: "predicted_s", format: ".3f" }, { field: "actual_s", format: ".3f" }, { field: "ttl_s", format: ".2f" }] } },
    ],
  });
}

async function renderKv(kv) {
  if (!kv.samples.length) return note("kv", "no engine samples (only an embedded engine is sampled)");
  // used and pinned stacked; the free rest is only a number, as a large pool would flatten the rest
  const total = Math.max(...kv.samples.map((s) => s.total));
  await embed("kv", {
    width: "container", height: 220, data: { values: kv.samples },
    title: { text: `of ${total} blocks`, fontSize: 11, fontWeight: "normal", anchor: "start" },
    transform: [{ fold: ["used", "pinned"], as: ["blocks", "count"] }],
    mark: { type: "area", interpolate: "step-after" },
    encoding: { x: { field: "t", type: "quantitative", title: "seconds since run start" },
      y: { field: "count", type: "quantitative", stack: "zero", title: "KV blocks in use" },
      color: { field: "blocks", type: "nominal", scale: { domain: ["used", "pinned"], range: ["#4c78a8", "#f58518"] } },
      tooltip: [{ field: "t", format: ".2f" }, { field: "blocks" }, { field: "count" }, { field: "free" }, { field: "running" }, { field: "waiting" }] },
  });
}

function renderPrograms(tl) {
  const table = document.getElementById("programs");
  const head = el("tr", {}, el("th", {}, "#"), el("th", {}, "status"), el("th", {}, "turns"), el("th", {}, "JCT (s)"), el("th", {}, "id"));
  const rows = tl.programs.map((p) => {
    const row = el("tr", { "data-program": p.program_id }, el("td", {}, p.index), el("td", {}, p.status), el("td", {}, p.turns),
      el("td", {}, num(p.jct_s)), el("td", {}, short(p.program_id)));
    row.addEventListener("click", () => showProgram(p.program_id));
    return row;
  });
  table.replaceChildren(head, ...rows);
}

// ---- program detail ------------------------------------------------------------------------------

function field(label, text) {
  return text === null || text === undefined || text === "" ? null : el("div", {}, el("b", {}, label), el("pre", {}, text));
}

async function showProgram(id) {
  state.program = id;
  writeHash();
  const detail = await api(`/api/programs/${encodeURIComponent(id)}`);
  const p = detail.program;
  document.getElementById("detail-title").textContent = `#${p.index} (${short(p.id)}): ${p.status}, ${p.turns} turns, JCT ${num(p.jct_s)} s`;
  const body = [field("task", p.task), field("result", p.result), field("error", p.error)];
  for (const t of detail.turns) {
    const turn = el("div", { class: "turn" }, el("h3", {}, t.turn < 0 ? "before the first turn" : `turn ${t.turn}`));
    for (const c of t.llm_calls) {
      turn.append(el("div", { class: "kv" }, `${c.prompt_tokens} prompt tokens (${c.cached_tokens} cached), ${c.output_tokens} generated, `
        + `finish ${c.finish_reason}, pin held on arrival: ${c.pin_held === null ? "unknown" : c.pin_held}`));
      for (const part of [field("prompt (last message)", c.prompt), field("output", c.output), field("error", c.error)]) if (part) turn.append(part);
    }
    for (const c of t.tool_calls) {
      turn.append(el("div", { class: "kv" }, `tool ${c.name}: ${c.ok ? "ok" : "failed"}${c.exit_code === null ? "" : ` (exit ${c.exit_code})`}, `
        + `${num(c.duration_s, 3)} s, predicted ${num(c.predicted_s, 3)} s, TTL ${num(c.ttl_s)} s, pin ${c.pin || "none"}`));
      for (const part of [field("arguments", JSON.stringify(c.arguments, null, 2)), field("result", c.output), field("error", c.error)]) if (part) turn.append(part);
    }
    body.push(turn);
  }
  document.getElementById("detail-body").replaceChildren(...body.filter(Boolean));
  document.getElementById("detail").hidden = false;
}

// ---- run selection, refresh ----------------------------------------------------------------------

function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  return { a: h.get("run"), b: h.get("compare"), program: h.get("program") };
}

function writeHash() {
  const h = new URLSearchParams();
  if (state.a) h.set("run", state.a);
  if (state.b) h.set("compare", state.b);
  if (state.program) h.set("program", state.program);
  history.replaceState(null, "", `#${h}`);
}

function fillPickers() {
  const a = document.getElementById("run-a");
  const b = document.getElementById("run-b");
  const option = (r) => el("option", { value: r.id }, `${r.name || "run"} ${short(r.id)}: ${r.programs} programs${r.live ? " (live)" : ""}`);
  a.replaceChildren(...state.runs.map(option));
  b.replaceChildren(el("option", { value: "" }, "(none)"), ...state.runs.map(option));
  a.value = state.a || "";
  b.value = state.b || "";
}

async function refresh() {
  clearTimeout(state.timer);
  try {
    state.runs = await api("/api/runs");
    if (!state.runs.length) return showError("no runs in this database yet");
    if (!state.runs.some((r) => r.id === state.a)) state.a = state.runs[0].id;
    if (!state.runs.some((r) => r.id === state.b) || state.b === state.a) state.b = null;
    fillPickers();
    writeHash();
    const ids = [state.a, state.b].filter(Boolean);
    const summaries = await Promise.all(ids.map((id) => api(`/api/runs/${id}`)));
    const [tl, tools, kv] = await Promise.all(["timeline", "tools", "kv"].map((what) => api(`/api/runs/${state.a}/${what}`)));
    const cdfs = await Promise.all(ids.map((id) => api(`/api/runs/${id}/jct`)));
    renderHeadline(summaries);
    renderPrograms(tl);
    await Promise.all([renderTimeline(tl), renderCdf(cdfs), renderTools(tools), renderKv(kv)]);
    if (state.program && tl.programs.some((p) => p.program_id === state.program)) await showProgram(state.program);
    showError(null);
    document.body.dataset.ready = "1";
    if (summaries.some((s) => s.live) && !DATA) state.timer = setTimeout(refresh, 2000);  // a run still writing
  } catch (err) {
    showError(err);
  }
}

document.getElementById("run-a").addEventListener("change", (e) => { state.a = e.target.value; state.program = null; refresh(); });
document.getElementById("run-b").addEventListener("change", (e) => { state.b = e.target.value || null; refresh(); });
document.getElementById("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = document.getElementById("key").value;
  sessionStorage.setItem("agentrt-key", state.key);
  document.getElementById("key-form").hidden = true;
  refresh();
});
Object.assign(state, readHash());
refresh();
