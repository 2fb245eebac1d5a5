// Attribution graph (circuit-tracer's viewer JSON): nodes by layer (rows) and position
// (columns): tokens at the bottom (context tokens marked), features (circles), error nodes
// (diamonds), logits on top; edges by |weight| with a pruning slider; click a node for its
// strongest inputs and outputs; Gctx / RS / CS from the scores JSON.
"use strict";

const KIND_COLORS = { feature: "#ff7f0e", error: "#9e9e9e", token: "#4c72b0", logit: "#9467bd" };

function layout(g, width) {
  // fit the page (8 to 44 px per position, 14 to 38 px per layer), else scroll
  const cellW = Math.max(8, Math.min(44, (width - 100) / Math.max(g.n_pos, 1)));
  const rowH = Math.max(14, Math.min(38, (window.innerHeight - 380) / (g.n_layers + 2)));
  const W = 90 + g.n_pos * cellW;
  const H = 110 + (g.n_layers + 2) * rowH;
  const base = H - 90;
  const cells = new Map();
  g.nodes.forEach((n, k) => {
    const key = n.pos + ":" + n.row;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(k);
  });
  const xy = new Array(g.nodes.length);
  for (const members of cells.values()) {
    const m = members.length;
    members.forEach((k, j) => {
      const n = g.nodes[k];
      const off = m > 1 ? (j / (m - 1) - 0.5) * Math.min(cellW * 0.9, 6 * m) : 0;
      xy[k] = [70 + n.pos * cellW + off, base - n.row * rowH];
    });
  }
  return { W, H, xy, base, rowH, cellW };
}

function shape(sel) {
  sel.each(function (n) {
    const s = d3.select(this);
    if (n.kind === "feature") s.append("circle").attr("r", 5);
    else if (n.kind === "error") s.append("rect").attr("x", -4).attr("y", -4).attr("width", 8).attr("height", 8).attr("transform", "rotate(45)");
    else s.append("rect").attr("x", -6).attr("y", -6).attr("width", 12).attr("height", 12);
  });
}

function nodeName(g, k) {
  const n = g.nodes[k];
  if (n.kind === "token") return `token #${n.pos} ${HG.tokText(g.prompt_tokens[n.pos] || "")}`;
  if (n.kind === "logit") return n.label || "logit";
  if (n.kind === "error") return `error L${n.row - 1} @${n.pos}`;
  return `feature L${n.row - 1} #${n.id.split("_")[1]} @${n.pos}`;
}

async function main() {
  const r = HG.runId();
  const slug = decodeURIComponent(HG.parts()[3]);
  const runs = await HG.api("/api/runs");
  HG.nav([[runs[r].name, `/run/${r}/traces`], ["attribution " + slug, null]]);
  const g = await HG.api(`/api/runs/${r}/graphs/${encodeURIComponent(slug)}`);
  const app = document.getElementById("app");
  const ctx = new Set(g.context_positions);
  const ans = new Set(g.answer_positions);
  const c = g.counts;
  app.append(HG.el("h1", {}, "attribution graph ", HG.el("span", { class: "muted" }, g.slug)));
  if (g.question) app.append(HG.el("p", {}, HG.el("b", {}, "Q: "), g.question, HG.el("br", {}), HG.el("b", {}, "A: "), g.answer || "", " ", HG.el("span", { class: "pill h" + (g.label === null || g.label === undefined ? "n" : g.label) }, HG.label(g.label))));
  const s = g.scores || {};
  app.append(HG.el("p", { id: "scores" }, g.scores
    ? `Gctx ${HG.fmt(s.gctx)} · RS ${HG.fmt(s.rs)} · CS ${HG.fmt(s.cs)} · target ${g.target ? JSON.stringify(g.target.token) + " p=" + HG.fmt(g.target.prob) : "?"} · ${s.n_features} active features · ${s.n_context} context positions`
    : "No scores JSON beside this graph (Gctx / RS / CS unknown)."));
  app.append(HG.el("p", { id: "counts" }, `${c.feature} features, ${c.error} error nodes, ${c.token} token nodes, ${c.logit} logit nodes, ${g.links.length} edges (as pruned by the attribution command)`));
  const links = g.links.slice().sort((a, b) => Math.abs(b[2]) - Math.abs(a[2]));
  const slider = HG.el("input", { type: "range", id: "keep", min: 1, max: 100, value: links.length > 1000 ? 10 : 100 });
  const out = HG.el("output", { id: "keep-out" });
  app.append(HG.el("div", { class: "controls" }, HG.el("label", {}, "edges kept (heaviest first) ", slider, out)));
  const legend = HG.el("div", {});
  HG.legend(legend, [["feature", KIND_COLORS.feature], ["error", KIND_COLORS.error], ["context token", ROLE_COLORS.context], ["answer token", ROLE_COLORS.answer], ["other token", KIND_COLORS.token], ["logit", KIND_COLORS.logit], ["+ edge", "#1f77b4"], ["− edge", "#d62728"]]);
  app.append(legend);
  const L = layout(g, app.clientWidth - 330);
  const svg = d3.create("svg").attr("width", L.W).attr("height", L.H).attr("id", "attr-svg");
  for (let row = 0; row <= g.n_layers + 1; row++) {
    const name = row === 0 ? "tokens" : row === g.n_layers + 1 ? "logit" : "L" + (row - 1);
    svg.append("text").attr("x", 4).attr("y", L.base - row * L.rowH + 4).attr("font-size", 10).attr("fill", "#888").text(name);
    svg.append("line").attr("x1", 40).attr("x2", L.W).attr("y1", L.base - row * L.rowH).attr("y2", L.base - row * L.rowH).attr("stroke", "#f0f0f0");
  }
  const edgeG = svg.append("g");
  const wmax = d3.max(links, (e) => Math.abs(e[2])) || 1;
  const nodeG = svg.append("g").selectAll("g").data(g.nodes).join("g")
    .attr("class", (n) => `anode kind-${n.kind}` + (n.kind === "token" && ctx.has(n.pos) ? " context" : ""))
    .attr("data-k", (n, k) => k)
    .attr("transform", (n, k) => `translate(${L.xy[k][0]},${L.xy[k][1]})`);
  shape(nodeG);
  nodeG.selectAll("circle,rect").attr("fill", (n) => n.kind === "token" ? (ctx.has(n.pos) ? ROLE_COLORS.context : ans.has(n.pos) ? ROLE_COLORS.answer : KIND_COLORS.token) : KIND_COLORS[n.kind]);
  nodeG.append("title").text((n, k) => nodeName(g, k) + (n.influence !== null ? ` · influence ${HG.fmt(n.influence)}` : "") + (n.activation !== null ? ` · activation ${HG.fmt(n.activation)}` : ""));
  svg.append("g").selectAll("text").data(d3.range(g.n_pos)).join("text")
    .attr("transform", (p) => `translate(${70 + p * L.cellW - 3},${L.base + 12}) rotate(60)`)
    .attr("font-size", Math.min(10, L.cellW + 1)).attr("font-weight", (p) => (ctx.has(p) ? 700 : 400))
    .attr("fill", (p) => (ctx.has(p) ? ROLE_COLORS.context : ans.has(p) ? ROLE_COLORS.answer : "#333"))
    .text((p) => HG.tokText(g.prompt_tokens[p] || "").slice(0, 14));
  const side = HG.el("div", { class: "side", id: "node-info" }, HG.el("p", { class: "muted" }, "Click a node for its strongest inputs and outputs."));
  app.append(HG.el("div", { class: "split" }, HG.el("div", { class: "scroll" }, svg.node()), side));

  function drawEdges() {
    const n = Math.max(1, Math.round((links.length * Number(slider.value)) / 100));
    const kept = links.slice(0, n).reverse();
    out.textContent = `${slider.value} % (${links.length ? n : 0} of ${links.length})`;
    edgeG.selectAll("line").data(kept).join("line").attr("class", "aedge")
      .attr("x1", (e) => L.xy[e[0]][0]).attr("y1", (e) => L.xy[e[0]][1])
      .attr("x2", (e) => L.xy[e[1]][0]).attr("y2", (e) => L.xy[e[1]][1])
      .attr("stroke", (e) => (e[2] > 0 ? "#1f77b4" : "#d62728"))
      .attr("stroke-opacity", (e) => 0.15 + 0.75 * (Math.abs(e[2]) / wmax))
      .attr("stroke-width", (e) => 0.3 + 3.5 * (Math.abs(e[2]) / wmax));
    svg.attr("data-edges", links.length ? n : 0);
  }
  function pick(k) {
    nodeG.classed("sel", (_, j) => j === k);
    const ins = links.filter((e) => e[1] === k).slice(0, 10);
    const outs = links.filter((e) => e[0] === k).slice(0, 10);
    const list = (title, arr, end) => [HG.el("h2", {}, title), arr.length
      ? HG.el("table", {}, ...arr.map((e) => HG.el("tr", { class: "link-row" }, HG.el("td", {}, nodeName(g, e[end])), HG.el("td", { class: "num" }, HG.fmt(e[2], 4)))))
      : HG.el("p", { class: "muted" }, "none")];
    const n = g.nodes[k];
    side.replaceChildren(HG.el("h2", {}, nodeName(g, k)),
      HG.el("p", { class: "muted" }, `influence ${HG.fmt(n.influence)} · activation ${HG.fmt(n.activation)}`),
      ...list("strongest inputs", ins, 0), ...list("strongest outputs", outs, 1));
  }
  nodeG.on("click", (ev, n) => pick(g.nodes.indexOf(n)));
  slider.addEventListener("input", drawEdges);
  drawEdges();
}

main().catch((e) => HG.showError(e));
