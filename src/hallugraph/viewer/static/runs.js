// Runs page: each run's summary, the evaluate table, ROC curves (click a point: answers near it).
"use strict";

function rocCurve(points) {
  // points: [[index, y, score]]; one ROC point per distinct score threshold (score >= t)
  const sorted = points.slice().sort((a, b) => b[2] - a[2]);
  const P = sorted.filter((p) => p[1] === 1).length;
  const N = sorted.length - P;
  const out = [{ fpr: 0, tpr: 0, thr: Infinity }];
  let tp = 0;
  let fp = 0;
  for (let k = 0; k < sorted.length; k++) {
    if (sorted[k][1] === 1) tp++;
    else fp++;
    if (k + 1 < sorted.length && sorted[k + 1][2] === sorted[k][2]) continue;
    out.push({ fpr: N ? fp / N : 0, tpr: P ? tp / P : 0, thr: sorted[k][2] });
  }
  return out;
}

function drawRoc(container, run, roc, onPick) {
  const W = 420;
  const H = 380;
  const m = { l: 46, r: 12, t: 10, b: 40 };
  const svg = d3.select(container).append("svg").attr("width", W).attr("height", H).attr("class", "roc");
  const x = d3.scaleLinear().domain([0, 1]).range([m.l, W - m.r]);
  const y = d3.scaleLinear().domain([0, 1]).range([H - m.b, m.t]);
  svg.append("g").attr("transform", `translate(0,${H - m.b})`).call(d3.axisBottom(x).ticks(5));
  svg.append("g").attr("transform", `translate(${m.l},0)`).call(d3.axisLeft(y).ticks(5));
  svg.append("text").attr("x", (m.l + W - m.r) / 2).attr("y", H - 6).attr("text-anchor", "middle").attr("font-size", 11).text("false positive rate");
  svg.append("text").attr("transform", `translate(12,${(H - m.b) / 2}) rotate(-90)`).attr("text-anchor", "middle").attr("font-size", 11).text("true positive rate (hallucinated)");
  svg.append("line").attr("x1", x(0)).attr("y1", y(0)).attr("x2", x(1)).attr("y2", y(1)).attr("stroke", "#bbb").attr("stroke-dasharray", "2,3");
  const color = d3.scaleOrdinal(d3.schemeCategory10);
  const legend = HG.el("div", {});
  roc.detectors.forEach((det, k) => {
    const curve = rocCurve(det.points);
    const c = color(k);
    svg.append("path").datum(curve).attr("fill", "none").attr("stroke", c).attr("stroke-width", 1.6)
      .attr("d", d3.line().x((d) => x(d.fpr)).y((d) => y(d.tpr)).curve(d3.curveStepAfter));
    svg.append("g").selectAll("circle").data(curve.slice(1)).join("circle")
      .attr("class", "roc-point").attr("data-detector", det.name)
      .attr("cx", (d) => x(d.fpr)).attr("cy", (d) => y(d.tpr)).attr("r", 4)
      .attr("fill", c).attr("fill-opacity", 0.75).style("cursor", "pointer")
      .on("click", (ev, d) => onPick(det, d));
    legend.append(HG.el("div", { class: "legend-item" }, HG.el("span", { class: "swatch", style: "background:" + c }),
      `${det.name}: AUROC ${HG.fmt(det.auroc)} (evaluate: ${HG.fmt(det.auroc_reported)})`));
  });
  container.append(legend);
}

function nearList(run, det, point, box) {
  // the test answers whose scores are nearest the clicked threshold
  const thr = point.thr;
  const near = det.points.slice().sort((a, b) => Math.abs(a[2] - thr) - Math.abs(b[2] - thr)).slice(0, 8);
  const rows = near.map(([i, lab, s]) =>
    HG.el("tr", { class: "near-row" },
      HG.el("td", {}, HG.el("a", { href: `/run/${run.id}/trace/${i}` }, "#" + i)),
      HG.el("td", {}, HG.el("span", { class: "pill h" + lab }, HG.label(lab))),
      HG.el("td", { class: "num" }, HG.fmt(s)),
      HG.el("td", { "data-answer": i }, "…"),
    ));
  box.replaceChildren(
    HG.el("div", {}, `${det.name}: threshold ${HG.fmt(thr)} → FPR ${HG.fmt(point.fpr, 2)}, TPR ${HG.fmt(point.tpr, 2)}; the ${near.length} test answers scored nearest it:`),
    HG.el("table", {}, HG.el("tr", {}, HG.el("th", {}, "trace"), HG.el("th", {}, "label"), HG.el("th", { class: "num" }, "score"), HG.el("th", {}, "answer")), ...rows),
  );
  for (const [i] of near) {
    HG.api(`/api/runs/${run.id}/traces/${i}`).then((t) => {
      const cell = box.querySelector(`td[data-answer="${i}"]`);
      if (cell) cell.textContent = t.generated_answer_clean || "";
    }).catch((e) => HG.showError(e));
  }
}

async function evalSection(run, card) {
  const evals = await HG.api(`/api/runs/${run.id}/eval`);
  if (!evals.length) {
    card.append(HG.el("p", { class: "muted" }, "No `hallugraph evaluate` outputs found for this run (looked in RUN/../eval, RUN/eval and --eval DIR)."));
    return;
  }
  for (const ev of evals) {
    card.append(HG.el("h2", {}, "Detectors (" + ev.dir + ")"));
    const head = HG.el("tr", {}, ...["detector", "family", "AUROC [95% CI]", "AUPR", "Acc", "F1", "n (out-of-fold)", "notes"].map((h) => HG.el("th", {}, h)));
    const rows = ev.rows.map((r) => HG.el("tr", { class: "det-row" },
      HG.el("td", {}, r.detector), HG.el("td", {}, r.family),
      HG.el("td", { class: "num" }, `${HG.fmt(r.auroc)} [${HG.fmt(r.auroc_lo)}, ${HG.fmt(r.auroc_hi)}]`),
      HG.el("td", { class: "num" }, HG.fmt(r.aupr)), HG.el("td", { class: "num" }, HG.fmt(r.acc)),
      HG.el("td", { class: "num" }, HG.fmt(r.f1)), HG.el("td", { class: "num" }, r.n),
      HG.el("td", { class: "muted" }, r.error ? "error: " + r.error : r.notes || "")));
    card.append(HG.el("div", { class: "scroll" }, HG.el("table", {}, head, ...rows)));
  }
  card.append(HG.el("h2", {}, "ROC curves (test split; click a point for the answers near it)"));
  const rocBox = HG.el("div", { class: "split" });
  const plot = HG.el("div", { class: "roc-box" }, HG.el("span", { class: "muted" }, "computing…"));
  const near = HG.el("div", { class: "side near" });
  rocBox.append(plot, near);
  card.append(rocBox);
  const roc = await HG.api(`/api/runs/${run.id}/roc`);
  plot.replaceChildren();
  if (!roc.detectors.length) {
    plot.append(HG.el("p", { class: "muted" }, "No ROC: " + (roc.note || "no label-free detector in the evaluation")));
    return;
  }
  plot.append(HG.el("p", { class: "muted" }, "Every detector's out-of-fold scores (first cross-validation repeat), as evaluate saved them." + (roc.note ? " " + roc.note : "")));
  drawRoc(plot, run, roc, (det, point) => nearList(run, det, point, near));
}

async function main() {
  HG.nav([]);
  const app = document.getElementById("app");
  const runs = await HG.api("/api/runs");
  app.append(HG.el("h1", {}, runs.length + " run(s)"));
  for (const run of runs) {
    const card = HG.el("section", { class: "card run", "data-run": run.id });
    card.append(HG.el("h2", {}, HG.el("a", { href: `/run/${run.id}/traces` }, run.name), " ", HG.el("span", { class: "muted" }, run.path)));
    const pct = run.labeled ? (100 * run.hallucinated / run.labeled).toFixed(1) + " %" : "–";
    const facts = [
      ["model", run.model + (run.model_id && run.model_id !== run.model ? ` (${run.model_id})` : "")],
      ["dataset", run.dataset],
      ["traces", run.n_traces],
      ["labels", run.labeled ? `${run.hallucinated} hallucinated / ${run.correct} correct (${pct} hallucinated)` : "none (run `hallugraph label`)"],
      ["with context", run.with_context],
      ["tensors", run.tensors_kept ? "kept (" + run.codec + ")" : "not kept: token signals only, no graphs"],
    ];
    card.append(HG.el("table", { class: "facts" }, ...facts.map(([k, v]) => HG.el("tr", {}, HG.el("th", {}, k), HG.el("td", {}, v)))));
    const links = [HG.el("a", { href: `/run/${run.id}/traces` }, "traces →")];
    for (const slug of run.graphs) {
      links.push(" · ");
      links.push(HG.el("a", { href: `/run/${run.id}/attribution/${encodeURIComponent(slug)}` }, "attribution graph " + slug));
    }
    card.append(HG.el("p", {}, ...links));
    app.append(card);
    evalSection(run, card).catch((e) => HG.showError(e));
  }
}

main().catch((e) => HG.showError(e));
