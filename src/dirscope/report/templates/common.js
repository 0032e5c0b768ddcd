"use strict";
/* Shared by report.html and study.html. Data from the run reaches the DOM only as text nodes and element
   properties (never as HTML), so labels, class names, file names and layer names cannot inject markup. */

function readData() {
  return JSON.parse(document.getElementById("data").textContent);
}

function byId(id) {
  return document.getElementById(id);
}

/* An element with a class, text and children; `props` keys other than text/class/on* are plain attributes. */
function el(tag, props, children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children || []) node.append(child);
  return node;
}

/* The one image grid: cells are {index, caption, placeholder (shown where the row has no image; default "no
   image")}; images maps a dataset row to its image's source (a data: URI, or the path of a file beside the page). */
function imageGrid(cells, images, big) {
  const grid = el("div", {class: big ? "grid big" : "grid"});
  for (const cell of cells) {
    const figure = el("figure", {class: "cell"});
    const source = images[String(cell.index)];
    if (source === undefined) {
      figure.append(el("div", {class: "noimg", text: cell.placeholder || "no image"}));
    } else {
      const img = new Image();
      img.alt = "";
      img.src = source;
      figure.append(img);
    }
    if (cell.caption) figure.append(el("figcaption", {text: cell.caption}));
    grid.append(figure);
  }
  return grid;
}

function fmt(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "n/a";
  const d = digits || 3;
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e5 || abs < 1e-3)) return value.toExponential(d - 1);
  return String(Number(value.toPrecision(d)));
}

function fmtP(p) {
  if (p === null || p === undefined) return "n/a";
  return p < 0.001 ? "< 0.001" : p.toFixed(3);
}

function option(value, text) {
  const o = el("option", {text: text});
  o.value = value;
  return o;
}

function familyName(family) {
  return {basis: "units (natural basis)", random: "random directions"}[family] || family;
}
