/* report.html: overview, plots, direction cards (filter, sort, search, pages) and units vs random. */
const D = readData();
const IMAGES = D.images;
const byKey = new Map(D.dirs.map((d) => [d.l + "/" + d.d, d]));
const state = {layer: "", family: "", search: "", pattern: null, sort: "id", desc: false, page: 0, size: 20};
let view = [];
const built = {};

function showTab(name) {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.classList.toggle("active", button.dataset.tab === name);
  }
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== name;
  if (!built[name]) {
    built[name] = true;
    ({overview: buildOverview, plots: buildPlots, directions: buildDirections, side: buildSide})[name]();
  }
}

function table(head, rows) {
  const t = el("table");
  if (head) t.append(el("thead", {}, [el("tr", {}, head.map((h) => el("th", {text: h})))]));
  const body = el("tbody");
  for (const row of rows) body.append(el("tr", {}, row.map((c) => el("td", {text: c}))));
  t.append(body);
  return t;
}

function buildOverview() {
  const sec = byId("overview");
  sec.append(el("h2", {text: "Run"}), table(null, D.summary));
  sec.append(el("h2", {text: "Layers"}));
  sec.append(table(["layer", "shape", "dim", "examples", "directions"], D.layers.map((l) => {
    const counts = l.families.map((f) => f + " " + D.dirs.filter((d) => d.l === D.layers.indexOf(l) &&
      D.families[d.f] === f).length);
    return [l.name, "[" + l.shape.join(", ") + "]", String(l.dim), String(l.n), counts.join(", ")];
  })));
  sec.append(el("h2", {text: "Verdict"}));
  if (D.verdict === null) {
    sec.append(el("p", {class: "notcomputed", text: "Scores: not computed. Run `dirscope score RUN_DIR`, " +
      "then `dirscope report RUN_DIR` again."}));
    return;
  }
  for (const [layer, text] of D.verdict.conclusions) {
    sec.append(el("h3", {text: layer}), el("p", {class: "conclusion", text: text}));
    const rows = D.verdict.comparisons.filter((r) => r.layer === layer).map((r) => [
      r.metric, {max: "top-k", min: "bottom-k", all: "all"}[r.sign] || r.sign, r.family_a + " vs " + r.family_b,
      fmt(r.mean_a), fmt(r.mean_b), fmt(r.effect) + " [" + fmt(r.ci_low) + ", " + fmt(r.ci_high) + "]",
      fmtP(r.p_value), fmtP(r.p_holm), r.n_a + " / " + r.n_b, r.note || ""]);
    sec.append(table(["metric", "set", "families", "mean a", "mean b", "difference [95% CI]", "p", "p (Holm)",
      "n", "note"], rows));
  }
  for (const notice of D.verdict.notices) sec.append(el("p", {class: "note", text: "note: " + notice}));
}

function buildPlots() {
  const sec = byId("plots");
  if (D.plots.length === 0) sec.append(el("p", {class: "notcomputed", text: "This run has no figures."}));
  for (const plot of D.plots) {
    const img = new Image();
    img.alt = plot.name;
    img.src = "data:image/png;base64," + plot.png;
    sec.append(el("figure", {class: "plot"}, [img, el("figcaption", {text: plot.name})]));
  }
}

/* ---- direction cards ------------------------------------------------------------------------------ */
function buildDirections() {
  const layer = byId("f-layer");
  layer.append(option("", "all layers"), ...D.layers.map((l, i) => option(String(i), l.name)));
  byId("f-family").append(option("", "all families"), ...D.families.map((f, i) => option(String(i), f)));
  const sort = byId("f-sort");
  sort.append(option("id", "direction id"), ...D.stats.map((s, i) => option("s" + i, s)));
  if (D.metrics.length === 0) {
    const none = option("", "scores: not computed");
    none.disabled = true;
    sort.append(none);
  }
  sort.append(...D.metrics.map((m, i) => option("m" + i, m.label)));
  const update = () => {
    state.layer = layer.value;
    state.family = byId("f-family").value;
    state.search = byId("f-search").value.trim().toLowerCase();
    state.pattern = searchPattern(state.search);
    state.sort = sort.value;
    state.size = Number(byId("f-size").value);
    state.page = 0;
    filterAndSort();
  };
  for (const id of ["f-layer", "f-family", "f-sort", "f-size"]) byId(id).addEventListener("change", update);
  byId("f-search").addEventListener("input", update);
  byId("f-order").addEventListener("click", () => {
    state.desc = !state.desc;
    byId("f-order").textContent = state.desc ? "descending" : "ascending";
    state.page = 0;
    filterAndSort();
  });
  byId("f-order").textContent = "ascending";
  byId("prev").addEventListener("click", () => turn(-1));
  byId("next").addEventListener("click", () => turn(1));
  filterAndSort();
}

function matches(d) {
  if (state.layer !== "" && d.l !== Number(state.layer)) return false;
  if (state.family !== "" && d.f !== Number(state.family)) return false;
  if (state.search === "") return true;
  if (/^\d+$/.test(state.search)) return d.d === Number(state.search);
  return state.pattern.test(d.t.toLowerCase());
}

/* A search text matches a title where it starts a word and, when it ends in a digit, where no digit follows:
   "unit 12" finds unit 12 but not unit 120-129, "#3" finds #3 but not #30, "rand" finds random. */
function searchPattern(text) {
  const escaped = text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp((/^\w/.test(text) ? "\\b" : "") + escaped + (/\d$/.test(text) ? "(?!\\d)" : ""));
}

function sortValue(d) {
  const i = Number(state.sort.slice(1));
  return state.sort[0] === "s" ? d.s[i] : d.m[i];
}

function filterAndSort() {
  view = D.dirs.filter(matches);
  const sign = state.desc ? -1 : 1;
  if (state.sort === "id") {
    view.sort((a, b) => sign * (a.l - b.l || a.d - b.d));
  } else {
    view.sort((a, b) => {
      const x = sortValue(a);
      const y = sortValue(b);
      if (x === null || y === null) return (x === null) - (y === null) || a.l - b.l || a.d - b.d;
      return sign * (x - y) || a.l - b.l || a.d - b.d;
    });
  }
  renderPage();
}

function turn(step) {
  const pages = Math.max(1, Math.ceil(view.length / state.size));
  state.page = Math.min(pages - 1, Math.max(0, state.page + step));
  renderPage();
}

function renderPage() {
  const start = state.page * state.size;
  const shown = view.slice(start, start + state.size);
  byId("count").textContent = view.length === 0 ? "no direction matches" :
    (start + 1) + "\u2013" + (start + shown.length) + " of " + view.length + " directions";
  byId("prev").disabled = state.page === 0;
  byId("next").disabled = start + state.size >= view.length;
  byId("cards").replaceChildren(...shown.map(card));
}

/* Cells of an example set; an example without an image (token ids, say) names its dataset row instead, the one
   way left to find it. */
function cells(set) {
  return set.map((c) => ({index: c[0], caption: fmt(c[1]) + (c[2] === null ? "" : " \u00b7 " + c[2]),
    placeholder: "row " + c[0]}));
}

function exampleBlock(name, set, zeros, constant) {
  const block = el("div", {class: "examples"}, [el("h4", {text: name + "-" + set.length})]);
  block.append(imageGrid(cells(set), IMAGES, false));
  const held = set.filter((c) => c[1] === 0).length;  // as figures.tie_note
  if (constant || (set.length > 1 && set.every((c) => c[1] === set[0][1]))) {
    block.append(el("p", {class: "note", text: "all tied: ordered by dataset row"}));
  } else if (held > 0 && held < zeros) {
    block.append(el("p", {class: "note", text: held + " of its " + zeros + " exact zeros, picked by dataset row"}));
  }
  return block;
}

function card(d) {
  const layer = D.layers[d.l].name;
  const node = el("article", {class: "card"});
  node.dataset.layer = layer;
  node.dataset.direction = String(d.d);
  node.dataset.family = D.families[d.f];
  node.append(el("header", {}, [
    el("h3", {text: layer + " \u00b7 " + d.t}),
    el("span", {class: "meta", text: "id " + d.d + " \u00b7 family " + D.families[d.f]}),
  ]));
  node.append(exampleBlock("top", d.top, d.z0, d.c), exampleBlock("bottom", d.bot, d.z0, d.c));
  const foot = el("div", {class: "foot"}, [histogram(d.h)]);
  foot.append(el("p", {class: "stats", text: D.stats.map((s, i) => s + " " + fmt(d.s[i])).join(" \u00b7 ")}));
  node.append(foot, scoreTable(d));
  return node;
}

function scoreTable(d) {
  if (D.metrics.length === 0) {
    return el("p", {class: "notcomputed scores", text: "scores: not computed"});
  }
  const rows = D.metrics.map((m, i) => [m.label, fmt(d.m[i]), d.z[i] === null ? "" : "z " + fmt(d.z[i], 2)]);
  const t = table(["score", "value", "vs null"], rows);
  t.className = "scores";
  return t;
}

function histogram(h) {
  const canvas = el("canvas", {class: "hist", width: "240", height: "56"});
  if (h === null) return canvas;
  const [start, width, counts] = h;
  const ctx = canvas.getContext("2d");
  const top = Math.sqrt(Math.max(...counts));
  const bar = canvas.width / counts.length;
  ctx.fillStyle = "#4a6fa5";
  counts.forEach((c, i) => {
    const height = (Math.sqrt(c) / top) * (canvas.height - 12);
    ctx.fillRect(i * bar, canvas.height - 12 - height, Math.max(1, bar - 0.5), height);
  });
  const end = start + width * counts.length;
  if (start < 0 && end > 0) {
    ctx.fillStyle = "#c0392b";
    ctx.fillRect(((0 - start) / (end - start)) * canvas.width, 0, 1, canvas.height - 12);
  }
  ctx.fillStyle = "#444";
  ctx.font = "9px sans-serif";
  ctx.fillText(fmt(start), 0, canvas.height - 2);
  const right = fmt(end);
  ctx.fillText(right, canvas.width - ctx.measureText(right).width, canvas.height - 2);
  canvas.title = "activation histogram (bar height: square root of the count)";
  return canvas;
}

/* ---- units vs random -------------------------------------------------------------------------------- */
function buildSide() {
  const layer = byId("s-layer");
  layer.append(...D.layers.map((l, i) => option(String(i), l.name)));
  const fill = () => {
    const fams = D.layers[Number(layer.value)].families;
    for (const [id, preferred, fallback] of [["s-left", "basis", 0], ["s-right", "random", 1]]) {
      const select = byId(id);
      const keep = select.value;
      select.replaceChildren(...fams.map((f) => option(f, familyName(f))));
      select.value = fams.includes(keep) ? keep : fams.includes(preferred) ? preferred :
        fams[Math.min(fallback, fams.length - 1)];
    }
    renderSide();
  };
  layer.addEventListener("change", fill);
  byId("s-left").addEventListener("change", renderSide);
  byId("s-right").addEventListener("change", renderSide);
  fill();
}

function renderSide() {
  const l = Number(byId("s-layer").value);
  const sample = D.sides[D.layers[l].name];
  const panels = [byId("s-left").value, byId("s-right").value].map((family) => {
    const panel = el("div", {class: "panel"}, [el("h3", {text: familyName(family)})]);
    for (const direction of sample[family] || []) {
      const d = byKey.get(l + "/" + direction);
      panel.append(el("div", {class: "siderow"}, [el("span", {class: "rowtitle", text: d.t}),
        imageGrid(cells(d.top), IMAGES, false)]));
    }
    return panel;
  });
  byId("side-panels").replaceChildren(...panels);
}

for (const button of document.querySelectorAll("#tabs button")) {
  button.addEventListener("click", () => showTab(button.dataset.tab));
}
document.title = byId("title").textContent = "dirscope report \u00b7 " + D.summary[0][1];
showTab("overview");
