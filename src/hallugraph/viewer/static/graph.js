// Attention graph of one trace (hallugraph.graphs.build_graph, the `graph` command's graph) as
// an arc diagram: tokens left to right, an arc per edge key -> query; layer slider, heads mean
// or one, top-k / threshold, the sink hidden or shown, answer -> context edges highlighted.
"use strict";

const ctl = { layer: 0, head: "", top_k: "3", threshold: "", hide_sink: true, highlight: true };

function params() {
  const p = new URLSearchParams({ layer: ctl.layer, hide_sink: ctl.hide_sink });
  if (ctl.head !== "") p.set("head", ctl.head);
  if (ctl.top_k !== "") p.set("top_k", ctl.top_k);
  if (ctl.threshold !== "") p.set("threshold", ctl.threshold);
  return p;
}

function draw(svgBox, g, info) {
  const S = g.nodes.length;
  // fit the page's width when the tokens allow it (7 to 18 px per token), else scroll
  const step = Math.max(7, Math.min(18, (svgBox.clientWidth - 90) / Math.max(S, 1)));
  const W = Math.max(600, S * step + 80);
  const edges = g.edges.filter(([s, d]) => s !== d);
  const maxSpan = d3.max(edges, ([s, d]) => d - s) || 1;
  const arcH = Math.min(320, (maxSpan * step) / 2 + 10);
  const H = arcH + 150;
  const base = arcH + 20;
  const x = (k) => 40 + k * step;
  const wmax = d3.max(edges, (e) => e[2]) || 1;
  const isAC = ([s, d]) => g.nodes[s].role === "context" && g.nodes[d].role === "answer";
  const svg = d3.create("svg").attr("width", W).attr("height", H).attr("id", "graph-svg")
    .attr("data-layer", g.layer).attr("data-edges", edges.length);
  const order = edges.slice().sort((a, b) => a[2] - b[2]);
  svg.append("g").selectAll("path").data(order).join("path")
    .attr("class", (e) => "edge" + (isAC(e) ? " ac" : ""))
    .attr("data-src", (e) => e[0]).attr("data-dst", (e) => e[1]).attr("data-w", (e) => e[2])
    .attr("d", ([s, d]) => {
      const r = ((d - s) * step) / 2;
      const h = Math.min(r, arcH);
      return `M${x(s)},${base} C${x(s)},${base - h * 1.33} ${x(d)},${base - h * 1.33} ${x(d)},${base}`;
    })
    .attr("stroke", (e) => (ctl.highlight ? (isAC(e) ? "#ff7f0e" : "#7f8fa6") : ROLE_COLORS[g.nodes[e[0]].role]))
    .attr("stroke-opacity", (e) => (ctl.highlight && !isAC(e) ? 0.12 + 0.4 * (e[2] / wmax) : 0.2 + 0.75 * (e[2] / wmax)))
    .attr("stroke-width", (e) => 0.4 + 3.2 * (e[2] / wmax))
    .append("title").text(([s, d, w]) => `${HG.tokText(g.nodes[s].text)} (#${s}) → ${HG.tokText(g.nodes[d].text)} (#${d}): ${w.toFixed(4)}`);
  const nodes = svg.append("g").selectAll("g").data(g.nodes).join("g").attr("transform", (n) => `translate(${x(n.id)},${base})`);
  nodes.append("circle").attr("class", (n) => "node role-" + n.role).attr("data-i", (n) => n.id).attr("r", 4)
    .attr("fill", (n) => ROLE_COLORS[n.role])
    .append("title").text((n) => `#${n.id} ${HG.tokText(n.text)} (${n.role})`);
  nodes.append("text").attr("transform", "translate(3,10) rotate(70)").attr("font-size", Math.min(10, step + 1))
    .attr("fill", (n) => ROLE_COLORS[n.role]).text((n) => HG.tokText(n.text).slice(0, 16));
  // hovering a token shows only the edges into and out of it
  const paths = svg.selectAll("path.edge");
  nodes.on("mouseenter", (ev, n) => {
    paths.attr("display", (e) => (e[0] === n.id || e[1] === n.id ? null : "none"));
  }).on("mouseleave", () => paths.attr("display", null));
  svgBox.replaceChildren(svg.node());
  const ac = edges.filter(isAC);
  const acW = d3.sum(ac, (e) => e[2]);
  info.textContent = `layer ${g.layer} of ${g.num_layers - 1}, ${g.head === null ? "heads averaged" : "head " + g.head}: ${edges.length} edges drawn (self-loops hidden), ${ac.length} of them answer → context (total weight ${acW.toFixed(3)})`;
}

async function main() {
  const r = HG.runId();
  const i = Number(HG.parts()[3]);
  const runs = await HG.api("/api/runs");
  HG.nav([[runs[r].name, `/run/${r}/traces`], ["trace " + i, `/run/${r}/trace/${i}`], ["attention graph", null]]);
  const app = document.getElementById("app");
  const meta = await HG.api(`/api/runs/${r}/traces/${i}`);
  const lab = meta.label === null || meta.label === undefined ? "n" : meta.label;
  app.append(
    HG.el("h1", {}, `attention graph of trace ${i} `, HG.el("span", { class: "pill h" + lab }, HG.label(meta.label))),
    HG.el("p", {}, HG.el("b", {}, "Q: "), meta.question || "", HG.el("br", {}), HG.el("b", {}, "A: "), meta.generated_answer_clean || ""),
  );
  let g = await HG.api(`/api/runs/${r}/traces/${i}/graph?${params()}`);
  ctl.layer = Math.floor(g.num_layers / 2);
  const slider = HG.el("input", { type: "range", id: "layer", min: 0, max: g.num_layers - 1, value: ctl.layer, step: 1 });
  const layerOut = HG.el("output", { id: "layer-out" }, ctl.layer);
  const head = HG.el("select", { id: "head" }, HG.el("option", { value: "" }, "mean of heads"),
    ...d3.range(g.num_heads).map((h) => HG.el("option", { value: h }, "head " + h)));
  const topk = HG.el("input", { type: "number", id: "top_k", min: 1, value: ctl.top_k, style: "width:4em" });
  const thr = HG.el("input", { type: "number", id: "threshold", min: 0, max: 1, step: 0.01, placeholder: "none", style: "width:5em" });
  const sink = HG.el("input", { type: "checkbox", id: "hide_sink", checked: true });
  const hl = HG.el("input", { type: "checkbox", id: "highlight", checked: true });
  app.append(HG.el("div", { class: "controls" },
    HG.el("label", {}, "layer ", slider, layerOut), head,
    HG.el("label", {}, "top-k in-edges ", topk), HG.el("label", {}, "threshold ", thr),
    HG.el("label", {}, sink, "hide sink (edges out of token 0)"),
    HG.el("label", {}, hl, "highlight answer → context")));
  const legend = HG.el("div", {});
  const present = Object.keys(ROLE_COLORS).filter((k) => g.nodes.some((n) => n.role === k));
  HG.legend(legend, [...present.map((k) => [k, ROLE_COLORS[k]]), ["answer → context edge", "#ff7f0e"]]);
  const info = HG.el("p", { id: "graph-info", class: "muted" });
  const svgBox = HG.el("div", { class: "scroll", id: "graph" });
  app.append(legend, info, svgBox);
  let seq = 0;
  async function refresh() {
    const mine = ++seq;
    try {
      const res = await HG.api(`/api/runs/${r}/traces/${i}/graph?${params()}`);
      if (mine !== seq) return; // a newer request is on its way
      g = res;
      draw(svgBox, g, info);
      document.getElementById("error").hidden = true;
    } catch (e) {
      HG.showError(e);
    }
  }
  slider.addEventListener("input", () => { ctl.layer = Number(slider.value); layerOut.textContent = slider.value; refresh(); });
  head.addEventListener("change", () => { ctl.head = head.value; refresh(); });
  topk.addEventListener("change", () => { ctl.top_k = topk.value; refresh(); });
  thr.addEventListener("change", () => { ctl.threshold = thr.value; refresh(); });
  sink.addEventListener("change", () => { ctl.hide_sink = sink.checked; refresh(); });
  hl.addEventListener("change", () => { ctl.highlight = hl.checked; draw(svgBox, g, info); });
  await refresh();
}

main().catch((e) => HG.showError(e));
