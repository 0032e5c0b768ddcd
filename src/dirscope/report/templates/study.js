/* study.html: one grid at a time, rated 1-5 (and optionally guessed); progress lives in localStorage under
   the study id, so a reload or a closed tab loses nothing. "Export" downloads answers.json. */
const D = readData();
const STORE = "dirscope-study/" + D.study;
const N = D.items.length;
let S = restore();

function token() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return "r" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function restore() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE));
    if (saved && typeof saved.answers === "object" && typeof saved.rater === "string") return saved;
  } catch (e) {
    /* unreadable progress: start afresh */
  }
  return {rater: token(), name: "", answers: {}, position: 0, started: false};
}

function save() {
  localStorage.setItem(STORE, JSON.stringify(S));
}

function rated() {
  return D.items.filter((it) => S.answers[it.id] && S.answers[it.id].rating).length;
}

function answer(id) {
  S.answers[id] = S.answers[id] || {rating: null, guess: null};
  return S.answers[id];
}

function render() {
  const app = byId("app");
  if (!S.started) app.replaceChildren(...intro());
  else if (S.position >= N) app.replaceChildren(...done());
  else app.replaceChildren(...item());
}

function intro() {
  const name = el("input", {id: "name", type: "text", placeholder: "optional", size: "20"});
  name.value = S.name;
  const parts = [
    el("h1", {text: "A short rating study"}),
    el("p", {text: "You will see " + N + " grids of images. Each grid shows the images that most strongly " +
      "activate one direction inside a neural network."}),
    el("p", {text: "For each grid, rate how much the images share one clear property (a shape, a stroke, a " +
      "class, anything you can name), from " + D.ends[0] + " to " + D.ends[1] + "."}),
  ];
  if (D.guess) parts.push(el("p", {text: "If you like, also guess: " + D.guess.question}));
  parts.push(
    el("p", {class: "note", text: "Your answers are saved in this browser as you go; you can close the page " +
      "and come back. At the end, export them and send the file to whoever runs the study."}),
    el("p", {}, [el("label", {text: "Your name or initials "}, [name])]),
    el("div", {class: "nav"}, [el("button", {id: "start", type: "button", text: "Start", onclick: () => {
      S.name = name.value;
      S.started = true;
      save();
      render();
    }})]),
  );
  return parts;
}

function item() {
  const it = D.items[S.position];
  const a = S.answers[it.id] || {rating: null, guess: null};
  const bar = el("div");
  bar.style.width = (100 * rated() / N) + "%";
  const grid = imageGrid(it.cells.map((index) => ({index: index, caption: ""})), D.images, true);
  grid.style.setProperty("--cols", String(Math.ceil(Math.sqrt(it.cells.length))));
  const parts = [
    el("p", {id: "position", class: "note", text: "Grid " + (S.position + 1) + " of " + N + " \u00b7 " + rated() +
      " rated"}),
    el("div", {class: "progress"}, [bar]),
    grid,
    el("p", {class: "question", text: D.question}),
  ];
  const scale = el("div", {class: "scale"});
  for (let r = 1; r <= 5; r++) {
    scale.append(el("button", {type: "button", class: a.rating === r ? "chosen" : "", text: String(r),
      "data-rating": String(r), onclick: () => rate(r)}));
  }
  parts.push(scale, el("div", {class: "ends"}, [el("span", {text: D.ends[0]}), el("span", {text: D.ends[1]})]));
  if (D.guess) {
    const guess = el("div", {class: "guess"});
    for (const [value, label] of D.guess.options) {
      guess.append(el("button", {type: "button", class: a.guess === value ? "chosen" : "", text: label,
        "data-guess": value, onclick: () => setGuess(a.guess === value ? null : value)}));
    }
    parts.push(el("p", {class: "question", text: D.guess.question + " (optional)"}), guess);
  }
  parts.push(el("div", {class: "nav"}, [
    el("button", {id: "back", type: "button", text: "\u2039 back", onclick: () => move(-1)}),
    el("button", {id: "stop", type: "button", text: "stop here and export", onclick: () => {
      S.position = N;  // the closing page, which exports what is rated so far
      save();
      render();
    }}),
    el("button", {id: "next", type: "button", text: S.position === N - 1 ? "finish" : "next \u203a",
      onclick: () => move(1)}),
  ]));
  parts[parts.length - 1].firstChild.disabled = S.position === 0;
  parts[parts.length - 1].lastChild.disabled = !a.rating;
  return parts;
}

function done() {
  const count = rated();
  return [
    el("h1", {text: "Thank you"}),
    el("p", {id: "summary", text: "You rated " + count + " of " + N + " grids." +
      (count < N ? " Go back to rate the rest, or export what you have." : "")}),
    el("div", {class: "nav"}, [
      el("button", {id: "review", type: "button", text: "\u2039 back to the grids", onclick: () => {
        S.position = N - 1;
        save();
        render();
      }}),
      el("button", {id: "export", type: "button", text: "export answers.json", onclick: exportAnswers}),
    ]),
    el("p", {class: "note", text: "Send answers.json to whoever runs the study; they score it with " +
      "`dirscope study score RUN_DIR answers.json`."}),
  ];
}

function rate(r) {
  answer(D.items[S.position].id).rating = r;
  save();
  render();
}

function setGuess(value) {
  answer(D.items[S.position].id).guess = value;
  save();
  render();
}

function move(step) {
  const it = D.items[S.position];
  if (step > 0 && !(S.answers[it.id] && S.answers[it.id].rating)) return;
  S.position = Math.max(0, Math.min(N, S.position + step));
  save();
  render();
}

function exportAnswers() {
  const answers = D.items.filter((it) => S.answers[it.id] && S.answers[it.id].rating).map((it) => ({
    item: it.id, rating: S.answers[it.id].rating, guess: S.answers[it.id].guess}));
  const doc = {format: D.format, version: D.version, study: D.study, rater: S.rater, name: S.name,
    exported: new Date().toISOString(), n_items: N, answers: answers};
  const link = el("a", {download: "answers.json"});
  link.href = "data:application/json;charset=utf-8," + encodeURIComponent(JSON.stringify(doc, null, 2) + "\n");
  document.body.append(link);
  link.click();
  link.remove();
}

document.addEventListener("keydown", (event) => {
  // a focused button takes its own Enter or space (a rating, say), which must not also move on
  if (!S.started || S.position >= N || ["INPUT", "BUTTON"].includes(event.target.tagName)) return;
  if (event.key >= "1" && event.key <= "5") rate(Number(event.key));
  else if (event.key === "ArrowRight" || event.key === "Enter") move(1);
  else if (event.key === "ArrowLeft") move(-1);
});

render();
