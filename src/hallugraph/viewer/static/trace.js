// One trace: prompt and answer as tokens, coloured by role or by a per-token signal; hovering a
// token shows its top attention sources (mean over layers and heads) and outlines them.
"use strict";

const SIGNALS = {
  logprob: { name: "log-prob", scheme: (d) => d3.scaleSequential(d3.interpolateRdYlGn).domain(d) },
  entropy: { name: "entropy", scheme: (d) => d3.scaleSequential(d3.interpolateYlOrRd).domain(d) },
  lookback: { name: "lookback ratio", scheme: (d) => d3.scaleSequential(d3.interpolateBlues).domain(d) },
};

function colour(data, mode) {
  if (mode === "role") return data.roles.map((r) => ROLE_COLORS[r]);
  const vals = data.signals[mode];
  const finite = vals.filter((v) => v !== null);
  const ext = d3.extent(finite);
  if (ext[0] === ext[1]) ext[1] = ext[0] + 1e-9;
  const scale = SIGNALS[mode].scheme(ext);
  return vals.map((v) => (v === null ? null : scale(v)));
}

function render(data, mode, box, legend) {
  const cols = colour(data, mode);
  for (const span of box.querySelectorAll(".tok")) {
    const i = Number(span.dataset.i);
    const c = cols[i];
    if (mode === "role") {
      span.style.background = "transparent";
      span.style.color = c;
      span.style.borderBottomColor = c;
    } else {
      span.style.color = c && d3.lab(c).l < 55 ? "#fff" : "#222";
      span.style.background = c || "transparent";
      span.style.borderBottomColor = ROLE_COLORS[data.roles[i]];
    }
  }
  if (mode === "role") {
    const present = Object.keys(ROLE_COLORS).filter((r) => data.roles.includes(r));
    HG.legend(legend, present.map((r) => [r, ROLE_COLORS[r]]));
  } else {
    const vals = data.signals[mode].filter((v) => v !== null);
    const [lo, hi] = d3.extent(vals);
    const scale = SIGNALS[mode].scheme([lo, hi]);
    HG.legend(legend, [[`${SIGNALS[mode].name} ${HG.fmt(lo)}`, scale(lo)], [HG.fmt(hi), scale(hi)], ["(answer tokens only; underline = role)", "transparent"]]);
  }
}

async function main() {
  const r = HG.runId();
  const i = Number(HG.parts()[3]);
  const runs = await HG.api("/api/runs");
  HG.nav([[runs[r].name, `/run/${r}/traces`], ["trace " + i, null]]);
  const data = await HG.api(`/api/runs/${r}/traces/${i}/tokens`);
  const app = document.getElementById("app");
  const lab = data.label === null || data.label === undefined ? "n" : data.label;
  app.append(
    HG.el("h1", {}, `trace ${i} `, HG.el("span", { class: "pill h" + lab }, HG.label(data.label)), " ", HG.el("span", { class: "muted" }, data.question_id)),
    HG.el("p", {}, HG.el("b", {}, "Q: "), data.question || ""),
    HG.el("p", {}, HG.el("b", {}, "A: "), data.answer || ""),
    HG.el("p", {},
      HG.el("a", { href: `/run/${r}/trace/${i}/graph` }, "attention graph →"), " · ",
      HG.el("a", { href: `/api/runs/${r}/traces/${i}` }, "trace JSON"), " · ",
      HG.el("a", { href: `/run/${r}/traces` }, "all traces")),
  );
  const modes = [["role", "role"], ...Object.keys(SIGNALS).filter((k) => data.signals[k]).map((k) => [k, SIGNALS[k].name])];
  const select = HG.el("select", { id: "colour" }, ...modes.map(([v, t]) => HG.el("option", { value: v }, t)));
  const legend = HG.el("div", { id: "legend" });
  app.append(HG.el("div", { class: "controls" }, HG.el("label", {}, "colour by ", select), legend));
  if (!data.sources) app.append(HG.el("p", { class: "muted" }, "The run kept no attention maps: no lookback ratio and no attention sources."));
  const box = HG.el("div", { class: "tokens", id: "tokens" });
  data.tokens.forEach((t, k) => {
    if (k === data.prompt_len) box.append(HG.el("span", { class: "muted" }, "\n── answer ──\n"));
    box.append(HG.el("span", { class: "tok role-" + data.roles[k], "data-i": k }, HG.tokText(t)));
  });
  app.append(box);
  const tip = HG.el("div", { class: "tooltip", id: "tooltip", hidden: true });
  document.body.append(tip);
  const spans = box.querySelectorAll(".tok");
  box.addEventListener("mouseover", (ev) => {
    const span = ev.target.closest(".tok");
    if (!span) return;
    const k = Number(span.dataset.i);
    for (const s of spans) s.classList.remove("hl", "cur");
    span.classList.add("cur");
    const lines = [HG.el("div", {}, HG.el("b", {}, `#${k} ${HG.tokText(data.tokens[k])}`), ` (${data.roles[k]})`)];
    for (const [name, vals] of Object.entries(data.signals)) {
      if (vals[k] !== null) lines.push(HG.el("div", {}, `${SIGNALS[name].name}: ${HG.fmt(vals[k])}`));
    }
    if (data.sources) {
      lines.push(HG.el("div", { class: "muted" }, "top attention sources (mean over layers, heads):"));
      for (const [j, w] of data.sources[k]) {
        spans[j].classList.add("hl");
        lines.push(HG.el("div", {}, `#${j} ${HG.tokText(data.tokens[j])} (${data.roles[j]}): ${HG.fmt(w)}`));
      }
    }
    tip.replaceChildren(...lines);
    tip.hidden = false;
    tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 370) + "px";
    tip.style.top = ev.clientY + 14 + "px";
  });
  box.addEventListener("mouseleave", () => {
    tip.hidden = true;
    for (const s of spans) s.classList.remove("hl", "cur");
  });
  select.addEventListener("change", () => render(data, select.value, box, legend));
  render(data, "role", box, legend);
}

main().catch((e) => HG.showError(e));
