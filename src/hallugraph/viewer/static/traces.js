// Trace list: filter (text, label), sort, paginate; each row's JSON on demand.
"use strict";

const COLS = [
  ["index", "#", true],
  ["label", "label", true],
  ["answer_len", "answer tokens", true],
  ["log_perplexity", "log perplexity", true],
  ["min_logprob", "min log-prob", true],
  ["mean_entropy", "mean entropy", true],
  ["question", "question", false],
  ["answer", "answer", false],
];

const state = { offset: 0, limit: 50, sort: "index", desc: false, q: "", label: "" };

function readHash() {
  const p = new URLSearchParams(window.location.hash.slice(1));
  for (const k of Object.keys(state)) {
    if (!p.has(k)) continue;
    const v = p.get(k);
    state[k] = k === "offset" || k === "limit" ? Number(v) : k === "desc" ? v === "1" : v;
  }
}

function writeHash() {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(state)) p.set(k, k === "desc" ? (v ? "1" : "0") : v);
  history.replaceState(null, "", "#" + p.toString());
}

async function load(r, body, info) {
  writeHash();
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(state)) p.set(k, k === "desc" ? (v ? "true" : "false") : v);
  const page = await HG.api(`/api/runs/${r}/traces?${p}`);
  body.replaceChildren(
    ...page.rows.map((t) => {
      const tr = HG.el("tr", { class: "trace-row", "data-index": t.index });
      const jsonCell = HG.el("td", {});
      const btn = HG.el("button", { class: "json-btn" }, "JSON");
      btn.addEventListener("click", async () => {
        const open = jsonCell.querySelector("pre");
        if (open) return open.remove();
        const meta = await HG.api(`/api/runs/${r}/traces/${t.index}`);
        jsonCell.append(HG.el("pre", { class: "json" }, JSON.stringify(meta, null, 1)));
      });
      jsonCell.append(btn);
      const lab = t.label === null || t.label === undefined ? "n" : t.label;
      tr.append(
        HG.el("td", { class: "num" }, HG.el("a", { href: `/run/${r}/trace/${t.index}` }, t.index)),
        HG.el("td", {}, HG.el("span", { class: "pill h" + lab }, HG.label(t.label))),
        HG.el("td", { class: "num" }, t.answer_len),
        HG.el("td", { class: "num" }, HG.fmt(t.log_perplexity)),
        HG.el("td", { class: "num" }, HG.fmt(t.min_logprob)),
        HG.el("td", { class: "num" }, HG.fmt(t.mean_entropy)),
        HG.el("td", {}, t.question),
        HG.el("td", {}, t.answer),
        jsonCell,
        HG.el("td", {}, HG.el("a", { href: `/run/${r}/trace/${t.index}/graph` }, "graph")),
      );
      return tr;
    }),
  );
  const last = Math.min(page.offset + page.limit, page.total);
  info.textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "no trace matches";
  return page;
}

async function main() {
  const r = HG.runId();
  readHash();
  const runs = await HG.api("/api/runs");
  const run = runs[r];
  HG.nav([[run.name, null], ["traces", null]]);
  const app = document.getElementById("app");
  app.append(HG.el("h1", {}, `${run.name}: ${run.n_traces} traces`));
  const q = HG.el("input", { type: "search", id: "q", placeholder: "question or answer text", value: state.q });
  const lab = HG.el("select", { id: "label" }, ...[["", "any label"], ["1", "hallucinated"], ["0", "correct"], ["none", "unlabelled"]].map(([v, t]) => HG.el("option", { value: v }, t)));
  lab.value = state.label;
  const size = HG.el("select", { id: "limit" }, ...[20, 50, 100, 200].map((n) => HG.el("option", { value: n }, n + " per page")));
  size.value = String(state.limit);
  app.append(HG.el("div", { class: "controls" }, HG.el("label", {}, "search ", q), lab, size));
  const head = HG.el("tr", {});
  for (const [key, text, sortable] of COLS) {
    const th = HG.el("th", { class: sortable ? "num sortable" : "", "data-key": key }, text);
    if (sortable) {
      th.style.cursor = "pointer";
      th.addEventListener("click", () => {
        state.desc = state.sort === key ? !state.desc : false;
        state.sort = key;
        state.offset = 0;
        refresh();
      });
    }
    head.append(th);
  }
  head.append(HG.el("th", {}, "trace JSON"), HG.el("th", {}, ""));
  const body = HG.el("tbody", { id: "rows" });
  app.append(HG.el("div", { class: "scroll" }, HG.el("table", { id: "traces" }, HG.el("thead", {}, head), body)));
  const info = HG.el("span", { id: "page-info" });
  const prev = HG.el("button", { id: "prev" }, "‹ previous");
  const next = HG.el("button", { id: "next" }, "next ›");
  app.append(HG.el("div", { class: "pager" }, prev, info, next));
  let page = null;
  async function refresh() {
    try {
      page = await load(r, body, info);
      prev.disabled = page.offset <= 0;
      next.disabled = page.offset + page.limit >= page.total;
      for (const th of head.querySelectorAll("th.sortable")) {
        const k = th.getAttribute("data-key");
        th.textContent = COLS.find((c) => c[0] === k)[1] + (k === state.sort ? (state.desc ? " ▼" : " ▲") : "");
      }
    } catch (e) {
      HG.showError(e);
    }
  }
  let timer = null;
  q.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.q = q.value; state.offset = 0; refresh(); }, 200);
  });
  lab.addEventListener("change", () => { state.label = lab.value; state.offset = 0; refresh(); });
  size.addEventListener("change", () => { state.limit = Number(size.value); state.offset = 0; refresh(); });
  prev.addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); refresh(); });
  next.addEventListener("click", () => { state.offset += state.limit; refresh(); });
  await refresh();
}

main().catch((e) => HG.showError(e));
