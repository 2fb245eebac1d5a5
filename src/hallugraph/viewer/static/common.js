// hallugraph view: helpers shared by every page (no network access beyond this app's /api).
"use strict";

const ROLE_COLORS = {
  system: "#9e9e9e",
  prompt: "#4c72b0",
  context: "#2ca02c",
  question: "#9467bd",
  answer: "#d62728",
};

const HG = {
  // path segments after /run/: [r, "trace", i, ...]
  parts() {
    return window.location.pathname.split("/").filter((s) => s.length);
  },
  runId() {
    const p = HG.parts();
    return Number(p[1]);
  },
  async api(url) {
    const res = await fetch(url);
    let body = null;
    try {
      body = await res.json();
    } catch (e) {
      body = null;
    }
    if (!res.ok) {
      let msg = body && body.detail ? body.detail : res.status + " " + res.statusText;
      if (typeof msg !== "string") msg = JSON.stringify(msg); // FastAPI's validation errors
      throw new Error(msg);
    }
    return body;
  },
  showError(err, where) {
    const box = document.getElementById(where || "error");
    if (box) {
      box.textContent = String(err.message || err);
      box.hidden = false;
    }
  },
  el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "onclick") node.addEventListener("click", v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  },
  fmt(v, nd) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return Number(v).toFixed(nd === undefined ? 3 : nd);
  },
  label(v) {
    if (v === null || v === undefined) return "unlabelled";
    return Number(v) === 1 ? "hallucinated" : "correct";
  },
  // a token as visible text: newlines and tabs as symbols, empty as ∅
  tokText(t) {
    const s = String(t).replace(/\n/g, "⏎").replace(/\t/g, "→").replace(/\r/g, "↵");
    return s.length ? s : "∅";
  },
  legend(container, entries) {
    container.replaceChildren(
      ...entries.map(([name, color]) =>
        HG.el("span", { class: "legend-item" }, HG.el("span", { class: "swatch", style: "background:" + color }), name),
      ),
    );
  },
  nav(extra) {
    const nav = document.getElementById("nav");
    if (!nav) return;
    const items = [HG.el("a", { href: "/" }, "runs")];
    for (const [text, href] of extra || []) {
      items.push(" › ");
      items.push(href ? HG.el("a", { href }, text) : HG.el("span", {}, text));
    }
    nav.replaceChildren(...items);
  },
};
