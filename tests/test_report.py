"""The report and the blinded study: page data, the study statistics against brute force, bad answer files,
and (when Debian's chromium is installed) the pages themselves in a real headless browser."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import dirscope
from dirscope.cli import main
from dirscope.compare import mean_ci
from dirscope.errors import DirscopeError
from dirscope.report import html as report_html
from dirscope.report import make_study, score_study, write_report
from dirscope.report.page import embed_json
from dirscope.report.study import guess_accuracy, rank_tests, read_key, spearman
from dirscope.seeding import numpy_rng

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
# Each payload sets a flag or opens a dialog if it ever runs; module names cannot contain ".", hence alert().
PAYLOADS = [
    "<script>window.__xss = 1</script>",
    '<img src=x onerror="window.__xss = 2">',
    '"><svg onload="window.__xss = 3">',
    "&amp; </script><script>window.__xss = 4</script>",
]
EVIL_LAYER = "<img src=x onerror=alert(5)>"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "figures"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A scored tiny run whose file name, layer name and class names are HTML/script payloads, and a copy
    of it without scores."""
    import torch
    from torch import nn

    import dirscope

    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 160)
    x = (rng.random((160, 1, 8, 8)) * 100).astype(np.uint8)
    for i, label in enumerate(y):
        x[i, 0, 2 * label : 2 * label + 2, :] = 255
    data = root / "<img src=x onerror=alert(6)>.npz"
    np.savez(data, x=x, y=y, label_names=np.array(PAYLOADS))
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([("flat", nn.Flatten()), (EVIL_LAYER, nn.Linear(64, 8)), ("relu", nn.ReLU())]))
    scored = root / "scored"
    dirscope.run(
        model,
        [EVIL_LAYER, "relu"],
        f"npz:{data}",
        "basis,random:8",
        k=5,
        out=str(scored),
        progress=False,
        null_sample=80,
        figures=False,
    )
    dirscope.score(scored, metrics=["label_purity", "kurtosis"], null_draws=100, n_boot=100, n_perm=200, plots=False)
    plain = root / "plain"
    shutil.copytree(scored, plain)
    (plain / "scores.parquet").unlink()
    (plain / "verdict.json").unlink()
    return {"scored": scored, "plain": plain}


def page_data(path: Path) -> dict:
    text = path.read_text()
    start = text.index('<script type="application/json" id="data">') + len('<script type="application/json" id="data">')
    return json.loads(text[start : text.index("</script>", start)])


# ---- the pages' data ------------------------------------------------------------------------------------


def test_embedded_json_cannot_close_its_script_element():
    value = {"a": "</script><script>alert(1)</script>", "b": "x & y <!-- \u2028"}
    text = embed_json(value)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == value


def test_report_holds_every_direction_escaped_and_no_remote_reference(runs):
    path = write_report(runs["scored"])
    text = path.read_text()
    assert path == runs["scored"] / "report.html"
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    for payload in [*PAYLOADS, EVIL_LAYER]:
        assert payload not in text
    assert "http://" not in text and "https://" not in text and 'src="//' not in text
    data = page_data(path)
    assert len(data["dirs"]) == 2 * 16
    assert {d["top"][0][2] for d in data["dirs"]} <= set(PAYLOADS)
    assert any(m["metric"] == "label_purity" and m["set"] == "max" for m in data["metrics"])
    # pairs in the run's layer order: in an object, a browser would put layers named "2" or "10" first
    assert [layer for layer, _ in data["verdict"]["conclusions"]] == [layer["name"] for layer in data["layers"]]
    assert {layer["name"] for layer in data["layers"]} == {EVIL_LAYER, "relu"}
    assert set(data["images"]) >= {str(c[0]) for d in data["dirs"] for c in d["top"] + d["bot"]}


def test_report_embeds_the_runs_figures_and_plots(runs, tmp_path):
    import base64

    run = tmp_path / "with-figures"
    shutil.copytree(runs["scored"], run)
    main(["figures", str(run), "--rows", "2"])  # drawn after the run, so the manifest does not list them
    names = sorted(f"figures/{path.name}" for path in (run / "figures").glob("*.png"))
    plots = {p["name"]: p["png"] for p in page_data(write_report(run))["plots"]}
    assert set(plots) == set(names) and names
    for name, png in plots.items():
        assert base64.b64decode(png) == (run / name).read_bytes()


def test_report_embeds_example_images_up_to_a_size_then_keeps_them_beside_it(runs, tmp_path, monkeypatch):
    stored = dirscope.load(runs["scored"]).images
    embedded = write_report(runs["scored"], tmp_path / "small.html")
    assert "img-src data:;" in embedded.read_text() and not (tmp_path / "small_images").exists()
    assert {int(i): src for i, src in page_data(embedded)["images"].items()} == {
        row: "data:image/png;base64," + base64.b64encode(stored.png(row)).decode() for row in stored
    }

    monkeypatch.setattr(report_html, "EMBED_BYTES", stored.png_size() - 1)
    folder = tmp_path / "my report_images"
    folder.mkdir()
    (folder / "999999.png").write_bytes(b"from an older report")
    text = write_report(runs["scored"], tmp_path / "my report.html").read_text()
    assert "img-src data: 'self';" in text
    sources = page_data(tmp_path / "my report.html")["images"]
    assert sources == {str(row): f"my%20report_images/{row}.png" for row in stored}
    assert sorted(folder.iterdir()) == sorted(folder / f"{row}.png" for row in stored)  # replaced whole
    assert all((folder / f"{row}.png").read_bytes() == stored.png(row) for row in stored)

    monkeypatch.setattr(report_html, "EMBED_BYTES", stored.png_size())  # embedded again: the folder goes
    write_report(runs["scored"], tmp_path / "my report.html")
    assert not folder.exists()
    assert all(src.startswith("data:") for src in page_data(tmp_path / "my report.html")["images"].values())


def test_report_keeps_a_folder_of_the_same_name_that_it_did_not_write(runs, tmp_path, monkeypatch):
    folder = tmp_path / "r_images"
    folder.mkdir()
    (folder / "notes.txt").write_text("a user's own file")
    write_report(runs["scored"], tmp_path / "r.html")  # embedded: the folder is not the report's to delete
    monkeypatch.setattr(report_html, "EMBED_BYTES", 0)  # beside the page: refused rather than replaced
    with pytest.raises(DirscopeError, match="r_images holds files a report did not write"):
        write_report(runs["scored"], tmp_path / "r.html")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_report_never_deletes_folders_named_like_its_staging_ones(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(report_html, "EMBED_BYTES", 0)
    for name in ("r_images.old", "r_images.partial"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text("a user's own file")
    write_report(runs["scored"], tmp_path / "r.html")
    write_report(runs["scored"], tmp_path / "r.html")  # replaces its own folder
    assert (tmp_path / "r_images.old" / "notes.txt").exists() and (tmp_path / "r_images.partial" / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r_images", "r_images.old", "r_images.partial"]


def test_report_without_scores_marks_them_not_computed(runs):
    data = page_data(write_report(runs["plain"], runs["plain"] / "other.html"))
    assert data["verdict"] is None and data["metrics"] == [] and all(d["m"] == [] for d in data["dirs"])


def test_report_never_imports_torch(runs, tmp_path):
    code = (
        "import sys; from dirscope.report import write_report, make_study, score_study; "
        f"write_report({str(runs['plain'])!r}, {str(tmp_path / 'r.html')!r}); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_study_is_balanced_shuffled_blinded_and_reproducible(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["plain"], run)
    study = make_study(run, per_family=3, seed=1)
    items = study.key["items"]
    assert len(items) == 2 * 2 * 3
    counts = pd.DataFrame(items).groupby(["layer", "family"]).size()
    assert (counts == 3).all()
    assert [it["family"] for it in items] != sorted(it["family"] for it in items)  # shuffled
    data = page_data(study.page)
    assert [set(it) for it in data["items"]] == [{"id", "cells"}] * len(items)
    assert [it["id"] for it in data["items"]] == [it["id"] for it in items]
    assert all(re.fullmatch("i[0-9a-f]{10}", it["id"]) for it in items) and len({it["id"] for it in items}) == 12
    assert make_study(run, per_family=3, seed=1).id == study.id
    assert make_study(run, per_family=3, seed=2).id != study.id
    capped = make_study(run, per_family=50, layers=["relu"]).key  # at 8 per family, less those picked by row
    left = capped.get("left_out", {}).get("relu", {})
    assert left and len(capped["items"]) == 2 * min(8 - left.get(f, 0) for f in ("basis", "random"))


def test_study_with_a_repeated_layer_draws_each_item_once(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["plain"], run)
    study = make_study(run, per_family=3, layers=["relu", "relu"], seed=1)
    ids = [it["id"] for it in study.key["items"]]
    assert len(ids) == len(set(ids)) == 6
    assert study.key["layers"] == ["relu"]
    assert study.id == make_study(run, per_family=3, layers=["relu"], seed=1).id


def test_study_refuses_families_the_run_lacks(runs):
    with pytest.raises(DirscopeError, match="no family 'pca'"):
        make_study(runs["plain"], families=["basis", "pca"])


# ---- the study's statistics against brute force ----------------------------------------------------------


def test_mann_whitney_matches_exhaustive_enumeration():
    x, y = np.array([1.5, 2.0, 3.25, 4.5, 5.0]), np.array([0.5, 1.0, 2.5, 3.0])
    per_item = pd.DataFrame({"mean": np.r_[x, y], "family": ["a"] * 5 + ["b"] * 4})
    (test,) = rank_tests(per_item, ["a", "b"])
    u = sum((a > b) + 0.5 * (a == b) for a in x for b in y)
    pooled = np.r_[x, y]
    us = [
        sum(pooled[i] > b for i in chosen for b in np.delete(pooled, chosen))
        for chosen in map(list, itertools.combinations(range(9), 5))
    ]
    centre = len(x) * len(y) / 2
    p = np.mean([abs(v - centre) >= abs(u - centre) for v in us])
    assert test["u"] == u and test["p_value"] == pytest.approx(p, rel=1e-6)
    assert test["cliffs_delta"] == pytest.approx((2 * u - 20) / 20)


def test_guess_accuracy_binomial_test_and_clopper_pearson_interval():
    families = pd.Series(["basis"] * 6 + ["random"] * 6)
    answers = pd.DataFrame(
        {"guess": ["basis"] * 9 + ["random"] * 3 + [None] * 2, "family": ["basis"] * 7 + ["random"] * 7}
    )
    g = guess_accuracy(answers, families)
    n, k = 12, 10  # guesses 0-6 right (basis), 7-8 wrong, 9-11 right (random), 12-13 not given
    assert (g["n"], g["correct"], g["chance"]) == (n, k, 0.5)
    pmf = stats.binom.pmf(np.arange(n + 1), n, 0.5)
    assert g["p_value"] == pytest.approx(pmf[pmf <= pmf[k] * (1 + 1e-7)].sum(), rel=1e-5)

    def bisect(f, lo=0.0, hi=1.0):  # root of an increasing function on [0, 1]
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
        return lo

    low = bisect(lambda p: stats.binom.sf(k - 1, n, p) - 0.025)  # P(X >= k | low) = 2.5%
    high = bisect(lambda p: 0.025 - stats.binom.cdf(k, n, p))  # P(X <= k | high) = 2.5%
    assert g["ci_low"] == pytest.approx(low, abs=1e-5) and g["ci_high"] == pytest.approx(high, abs=1e-5)


def test_spearman_is_pearson_of_average_ranks():
    rng = np.random.default_rng(3)
    ratings = rng.integers(1, 6, 30).astype(float)  # many ties
    scores = ratings + rng.normal(size=30)
    scores[4] = np.nan

    def ranks(v):
        order = np.argsort(v)
        r = np.empty(len(v))
        r[order] = np.arange(1, len(v) + 1)
        return np.array([r[v == value].mean() for value in v])  # ties get their average rank

    keep = np.isfinite(scores)
    expected = np.corrcoef(ranks(ratings[keep]), ranks(scores[keep]))[0, 1]
    result = spearman(ratings, scores)
    assert result["n"] == 29 and result["rho"] == pytest.approx(expected, abs=1e-6)
    assert spearman(np.ones(5), np.arange(5.0))["rho"] is None


def answers_file(path: Path, study: str, ratings: dict[str, int], rater: str, guesses: dict | None = None) -> Path:
    doc = {
        "format": "dirscope-study-answers",
        "version": 1,
        "study": study,
        "rater": rater,
        "answers": [{"item": i, "rating": r, "guess": (guesses or {}).get(i)} for i, r in ratings.items()],
    }
    path.write_text(json.dumps(doc))
    return path


def test_scores_merge_people_by_item_means(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["scored"], run)
    study = make_study(run, per_family=3)
    items = study.key["items"]
    first = {it["id"]: 1 + i % 5 for i, it in enumerate(items)}
    second = {it["id"]: 5 - i % 3 for i, it in enumerate(items[:7])}
    guesses = {it["id"]: "basis" for it in items}
    a = answers_file(tmp_path / "a.json", study.id, first, "r1", guesses)
    b = answers_file(tmp_path / "b.json", study.id, second, "r2")
    scores = score_study(run, [a, b], n_boot=300)
    assert json.loads((run / "study-scores.json").read_text()) == scores
    means = {it["id"]: np.mean([r[it["id"]] for r in (first, second) if it["id"] in r]) for it in items}
    for family in ("basis", "random"):
        values = [means[it["id"]] for it in items if it["family"] == family]
        mean, low, high = mean_ci(values, rng=numpy_rng(study.key["seed"], "study-mean", family), n_boot=300)
        got = scores["families"][family]
        assert got["mean"] == pytest.approx(mean) and got["ci_low"] == pytest.approx(low)
        assert got["ci_high"] == pytest.approx(high) and got["n_items"] == 6
    assert scores["n_ratings"] == len(first) + len(second) and scores["raters"] == ["r1", "r2"]
    assert scores["guesses"]["correct"] == 6 and scores["guesses"]["n"] == 12
    purity = next(m for m in scores["agreement"]["metrics"] if m["metric"] == "label_purity" and m["sign"] == "max")
    table = pd.read_parquet(run / "scores.parquet").query("metric == 'label_purity' and sign == 'max'")
    auto = table.set_index(["layer", "direction"])["score"]
    expected = stats.spearmanr([means[it["id"]] for it in items], [auto[it["layer"], it["direction"]] for it in items])
    assert purity["rho"] == pytest.approx(expected.statistic, abs=1e-6)


def test_scores_without_automatic_scores_say_not_computed(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["plain"], run)
    study = make_study(run, per_family=2, guess=False)
    path = answers_file(tmp_path / "a.json", study.id, {it["id"]: 3 for it in study.key["items"]}, "r")
    scores = score_study(run, [path])
    assert not scores["agreement"]["computed"] and "not computed" in scores["agreement"]["note"]
    assert scores["guesses"] is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda text, doc: text[: len(text) // 2], "not valid JSON .* truncated"),
        (lambda text, doc: json.dumps({**doc, "study": "0123456789ab"}), "study '0123456789ab', but"),
        (lambda text, doc: json.dumps({**doc, "answers": [{**doc["answers"][0], "rating": 6}]}), "rating 6; ratings"),
        (lambda text, doc: json.dumps({**doc, "answers": [{**doc["answers"][0], "rating": 2.5}]}), "rating 2.5"),
        (lambda text, doc: json.dumps({**doc, "answers": [{**doc["answers"][0], "rating": True}]}), "rating True"),
        (lambda text, doc: json.dumps({**doc, "answers": [{**doc["answers"][0], "item": "ixx"}]}), "not part of"),
        (lambda text, doc: json.dumps({**doc, "answers": [{**doc["answers"][0], "guess": "pca"}]}), "guess 'pca'"),
        (lambda text, doc: json.dumps({**doc, "answers": []}), "has no answers"),
        (lambda text, doc: json.dumps([1, 2]), "not a dirscope answers file"),
    ],
)
def test_bad_answer_files_get_one_line_errors(runs, tmp_path, capsys, mutate, message):
    run = tmp_path / "run"
    shutil.copytree(runs["plain"], run)
    study = make_study(run, per_family=2)
    good = answers_file(tmp_path / "good.json", study.id, {it["id"]: 3 for it in study.key["items"]}, "r")
    bad = tmp_path / "bad.json"
    bad.write_text(mutate(good.read_text(), json.loads(good.read_text())))
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "score", str(run), str(bad)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert re.search(message, err), err


def test_files_without_a_rater_are_told_apart_by_their_paths(runs, tmp_path):
    """Two people's answers.json in their own folders were "the same person (rater answers.json)"."""
    run = tmp_path / "run"
    shutil.copytree(runs["plain"], run)
    study = make_study(run, per_family=2)
    files = []
    for who in ("alice", "bob"):
        (tmp_path / who).mkdir()
        files.append(answers_file(tmp_path / who / "answers.json", study.id, {study.key["items"][0]["id"]: 2}, ""))
    assert score_study(run, files)["raters"] == [str(f.resolve()) for f in files]


def test_same_person_twice_and_missing_key_are_refused(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["plain"], run)
    with pytest.raises(DirscopeError, match=r"no study\.json"):
        read_key(run)
    study = make_study(run, per_family=2)
    a = answers_file(tmp_path / "a.json", study.id, {study.key["items"][0]["id"]: 2}, "same")
    b = answers_file(tmp_path / "b.json", study.id, {study.key["items"][1]["id"]: 2}, "same")
    with pytest.raises(DirscopeError, match="same person"):
        score_study(run, [a, b])


def test_cli_report_and_study(runs, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(runs["plain"], run)
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda uri: opened.append(uri) or True)
    main(["report", str(run), "--out", str(tmp_path / "x.html"), "--open"])
    printed = capsys.readouterr()
    assert opened == [(tmp_path / "x.html").as_uri()] and "no web browser" not in printed.err
    assert f"wrote {tmp_path / 'x.html'}" in printed.out
    monkeypatch.setattr("webbrowser.open", lambda uri: False)  # a machine without a browser: say so
    main(["report", str(run), "--out", str(tmp_path / "x.html"), "--open"])
    assert f"no web browser found here; open {(tmp_path / 'x.html').as_uri()} yourself" in capsys.readouterr().err
    main(["study", "--per-family", "2", "--no-guess", "--families", "basis,random,basis", str(run)])
    out = capsys.readouterr().out
    assert "8 grids (basis, random, shuffled)" in out and (run / "study.html").is_file()
    assert read_key(run)["guess"] is False
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path)])
    assert exit_info.value.code == 2 and "not a complete dirscope run" in capsys.readouterr().err


# ---- in a real browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """A headless Debian chromium with a fresh profile, driven by Playwright (never its own downloads)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent; `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright  # in the dev extra: its absence is an error, not a skip

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            accept_downloads=True,
            viewport={"width": 1280, "height": 900},
        )
        yield context
        context.close()


class Watched:
    """A page whose console errors, uncaught exceptions, dialogs and requests are recorded."""

    def __init__(self, context) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def check_clean(self) -> None:
        """No error, no dialog, no script from the data, and nothing fetched but the file itself and data: URIs."""
        assert self.errors == [] and self.dialogs == []
        assert self.page.evaluate("window.__xss") is None
        assert all(u.startswith(("file:", "data:")) for u in self.requests), self.requests
        self.page.close()


def open_page(context, path: Path) -> Watched:
    watched = Watched(context)
    watched.page.goto(path.resolve().as_uri())
    return watched


def loaded_images(page, selector: str) -> tuple[int, int]:
    """(images, images loaded), once every image has finished loading or failing (files beside the page
    load asynchronously; counting at once raced with them on a busy machine)."""
    done = f"() => [...document.querySelectorAll({json.dumps(selector)})].every((i) => i.complete)"
    page.wait_for_function(done, timeout=15_000)
    return page.evaluate(
        f"() => {{ const imgs = [...document.querySelectorAll({json.dumps(selector)})];"
        " return [imgs.length, imgs.filter((i) => i.complete && i.naturalWidth > 0).length]; }"
    )


def test_browser_report_cards_images_filter_sort_search(browser, runs):
    w = open_page(browser, write_report(runs["scored"]))
    page = w.page
    assert EVIL_LAYER in page.inner_text("#overview")  # the name is shown, as text
    page.click("#tabs button[data-tab=directions]")
    assert page.locator(".card").count() == 20
    total, ok = loaded_images(page, "#cards img")
    assert total == 20 * 2 * 5 and ok == total
    assert PAYLOADS[0] in page.inner_text("#cards")  # labels appear literally

    page.select_option("#f-layer", label="relu")
    page.select_option("#f-family", label="random")
    assert set(page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.layer + '/' + c.dataset.family)")) == {
        "relu/random"
    }
    page.select_option("#f-sort", label="label_purity (top-k)")
    page.click("#f-order")  # descending
    shown = page.eval_on_selector_all(".card", "cs => cs.map(c => Number(c.dataset.direction))")
    scores = pd.read_parquet(runs["scored"] / "scores.parquet").query(
        "layer == 'relu' and family == 'random' and metric == 'label_purity' and sign == 'max'"
    )
    by_direction = scores.set_index("direction")["score"]
    assert len(shown) == 8 and [by_direction[d] for d in shown] == sorted(by_direction, reverse=True)
    page.select_option("#f-family", label="all families")
    page.fill("#f-search", "3")
    assert page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.direction)") == ["3"]
    page.fill("#f-search", "")
    page.select_option("#f-layer", label="all layers")
    page.select_option("#f-sort", label="direction id")
    page.click("#next")
    assert page.inner_text("#count").startswith("21")

    page.click("#tabs button[data-tab=side]")
    assert page.locator("#side-panels .panel").count() == 2
    assert page.locator("#side-panels .siderow").count() == 2 * 8
    page.click("#tabs button[data-tab=plots]")
    w.check_clean()


def test_browser_report_shows_images_kept_beside_it(browser, runs, tmp_path, monkeypatch):
    monkeypatch.setattr(report_html, "EMBED_BYTES", 0)
    w = open_page(browser, write_report(runs["scored"], tmp_path / "many images.html"))
    w.page.click("#tabs button[data-tab=directions]")
    total, ok = loaded_images(w.page, "#cards img")
    assert total == 20 * 2 * 5 and ok == total
    assert any(u.endswith("many%20images_images/" + u.rsplit("/", 1)[-1]) for u in w.requests)
    w.check_clean()


def test_browser_report_without_scores(browser, runs):
    w = open_page(browser, write_report(runs["plain"]))
    assert "not computed" in w.page.inner_text("#overview")
    w.page.click("#tabs button[data-tab=directions]")
    assert w.page.locator(".card .notcomputed").count() == 20
    w.check_clean()


def test_browser_report_cards_without_images_name_the_examples_dataset_rows(browser, tmp_path):
    """Token ids are never drawn: a card's example cells must then say which rows they are, with value and label."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 8))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 20, size=(40, 5)), rng.integers(0, 2, 40)
    res = dirscope.run(model, ["1"], (x, y), "basis:2", k=3, progress=False, out=str(tmp_path / "r"))
    w = open_page(browser, write_report(tmp_path / "r"))
    w.page.click("#tabs button[data-tab=directions]")
    first = w.page.locator(".card").first
    direction = int(first.get_attribute("data-direction"))
    top = res.examples("1", direction, "max")
    assert first.locator(".examples").first.locator(".noimg").all_inner_texts() == [f"row {i}" for i in top["index"]]
    captions = first.locator(".examples").first.locator("figcaption").all_inner_texts()
    assert [c.split(" \u00b7 ")[1] for c in captions] == [str(v) for v in top["label"]]
    w.check_clean()


def test_browser_blinded_session_survives_reload_and_exports_scorable_answers(browser, runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["scored"], run)
    study = make_study(run, per_family=3)
    items = study.key["items"]
    w = open_page(browser, study.page)
    page = w.page
    text = page.inner_text("body")
    assert "basis" not in page.content().split('id="data"')[0] and "label_purity" not in text
    page.click("#start")
    ratings = {}
    for i, item in enumerate(items):
        if i == len(items) // 2:  # reload mid-way: everything so far must survive
            page.reload()
            assert page.inner_text("#position").startswith(f"Grid {i + 1} of {len(items)}")
            page.click("#back")
            assert page.locator(f"[data-rating='{ratings[items[i - 1]['id']]}'].chosen").count() == 1
            page.click("#next")
        total, ok = loaded_images(page, ".grid img")
        assert total == 5 and ok == 5
        assert page.locator("figcaption").count() == 0  # no values, labels or ids
        ratings[item["id"]] = 1 + (3 if item["family"] == "basis" else 0) + i % 2
        page.click(f"[data-rating='{ratings[item['id']]}']")
        page.click(f"[data-guess='{item['family'] if i % 3 else 'random'}']")
        page.click("#next")
    assert "You rated 12 of 12" in page.inner_text("#summary")
    with page.expect_download() as download:
        page.click("#export")
    answers = tmp_path / "answers.json"
    download.value.save_as(answers)
    w.check_clean()

    doc = json.loads(answers.read_text())
    assert doc["study"] == study.id and {a["item"]: a["rating"] for a in doc["answers"]} == ratings
    main(["study", "score", str(run), str(answers)])
    out = capsys.readouterr().out
    assert "mean rating" in out and "guesses:" in out and "label_purity (top-k): rho" in out
    scores = json.loads((run / "study-scores.json").read_text())
    assert scores["families"]["basis"]["mean"] > scores["families"]["random"]["mean"]
    assert scores["guesses"]["n"] == 12


def test_browser_runs_no_script_from_the_data(browser, runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["scored"], run)
    for page_path in (write_report(run), make_study(run, per_family=2).page):
        w = open_page(browser, page_path)
        for tab in ("directions", "side", "plots"):
            if w.page.locator(f"#tabs button[data-tab={tab}]").count():
                w.page.click(f"#tabs button[data-tab={tab}]")
        if w.page.locator("#start").count():
            w.page.click("#start")
        w.page.wait_for_timeout(200)  # give an injected onerror handler time to fire
        w.check_clean()


@pytest.mark.skipif(os.environ.get("DIRSCOPE_SCREENSHOTS") != "1", reason="set DIRSCOPE_SCREENSHOTS=1 to refresh")
def test_browser_screenshots_for_the_docs(browser, tmp_path):
    """docs/figures/report.png and study.png, from a real MNIST run (needs `dirscope fetch mnist`)."""
    import dirscope

    run = tmp_path / "mnist"
    dirscope.run("mnist-cnn", ["conv2", "fc1"], "mnist", "basis,random:64,rotation", k=9, out=str(run), progress=False)
    dirscope.score(run)
    w = open_page(browser, write_report(run))
    w.page.click("#tabs button[data-tab=directions]")
    w.page.select_option("#f-layer", label="fc1")
    w.page.screenshot(path=str(DOCS / "report.png"))
    w.check_clean()
    w = open_page(browser, make_study(run).page)
    w.page.evaluate("localStorage.clear()")
    w.page.reload()
    w.page.click("#start")
    w.page.click("[data-rating='4']")
    w.page.set_viewport_size({"width": 900, "height": 640})
    w.page.screenshot(path=str(DOCS / "study.png"))
    w.check_clean()


# ---- exact values and whole-number search (values that agree to 4 significant digits) ----------------------


@pytest.fixture(scope="module")
def close_run(tmp_path_factory) -> Path:
    """130 units about 1000 +- 0.01 (distinct values that agree to 4 significant digits; unit 5 constant, so
    exactly tied; unit 7 zero but on rows 3 and 9, so its top-5 is padded with zeros by row) and 12 random
    directions, for the tie notes, the sort and the search "unit 12" vs 120-129."""
    import torch
    from torch import nn

    root = tmp_path_factory.mktemp("close")
    rng = np.random.default_rng(0)
    x = (rng.random((120, 1, 4, 4)) * 255).astype(np.uint8)
    x[:, 0, 0, 0] = 0
    x[[3, 9], 0, 0, 0] = 200
    np.savez(root / "d.npz", x=x, y=rng.integers(0, 3, 120))
    torch.manual_seed(0)
    lin = nn.Linear(16, 130)
    with torch.no_grad():
        lin.weight.mul_(1e-2)
        lin.weight[5] = 0.0
        lin.bias.fill_(1000.0)
        lin.weight[7], lin.bias[7] = 0.0, 0.0
        lin.weight[7, 0] = 1.0
    model = nn.Sequential(OrderedDict([("flat", nn.Flatten()), ("fc", lin)]))
    out = root / "run"
    data = f"npz:{root / 'd.npz'}"
    dirscope.run(model, ["fc"], data, "basis,random:12", k=5, out=str(out), progress=False, figures=False)
    return out


def test_report_embeds_exact_values_so_ties_and_sorting_agree_with_the_run(close_run, runs):
    data = page_data(write_report(close_run))
    topk = pd.read_parquet(close_run / "topk.parquet")
    assert topk["value"].dtype == np.float32
    stats_table = pd.read_parquet(close_run / "stats.parquet").set_index("direction")
    tied = 0
    for d in data["dirs"]:
        for sign, key in (("max", "top"), ("min", "bot")):
            exact = topk[(topk.direction == d["d"]) & (topk.sign == sign)].sort_values("rank")["value"]
            shown = [c[1] for c in d[key]]
            assert np.array_equal(np.float32(shown), exact.to_numpy())  # float32 values read back exactly
            assert (len(set(shown)) == 1) == (exact.nunique() == 1)  # the page's tie test is the figures' one
            assert all(len(repr(v).lstrip("-").replace(".", "").lstrip("0")) <= 9 for v in shown)  # shortest
            tied += exact.nunique() == 1
        exact_stats = [stats_table.loc[d["d"], c] for c in report_html.STAT_COLUMNS]
        assert d["s"] == [None if np.isnan(v) else v for v in exact_stats]  # NaN (unit 5's skew): null
    assert tied == 3  # unit 5's two sets and unit 7's bottom one; with 4 digits it was every set
    padded = next(d for d in data["dirs"] if d["t"] == "basis: unit 7")
    assert padded["z0"] == 118 and [c[0] for c in padded["top"]] == [3, 9, 0, 1, 2]
    i = data["stats"].index("max")
    order = [d["d"] for d in sorted(data["dirs"], key=lambda d: (-d["s"][i], d["d"]))]
    by_max = stats_table.reset_index().sort_values(["max", "direction"], ascending=[False, True])
    assert order == by_max["direction"].tolist()
    scored = page_data(write_report(runs["scored"]))
    scores = pd.read_parquet(runs["scored"] / "scores.parquet").set_index(["layer", "direction", "metric", "sign"])
    layers = [layer["name"] for layer in scored["layers"]]
    for d in scored["dirs"]:
        for m, value, z in zip(scored["metrics"], d["m"], d["z"], strict=True):
            key = (layers[d["l"]], d["d"], m["metric"], m["set"])
            assert value == (scores.loc[key, "score"] if key in scores.index else None)
            if key in scores.index and np.isfinite(scores.loc[key, "z"]):  # exact: the page rounds it once
                assert z == scores.loc[key, "z"]


def test_browser_report_ties_sort_and_whole_number_search(browser, close_run):
    w = open_page(browser, write_report(close_run))
    page = w.page
    page.click("#tabs button[data-tab=directions]")
    page.select_option("#f-size", label="100")
    cards = page.eval_on_selector_all(".card", "cs => cs.map(c => Number(c.dataset.direction))")
    assert page.locator("text=all tied: ordered by dataset row").count() == 3 and {5, 7} <= set(cards)
    assert page.locator("text=3 of its 118 exact zeros, picked by dataset row").count() == 1

    def titles(text: str) -> list[str]:
        page.fill("#f-search", text)
        return page.eval_on_selector_all(".card h3", "cs => cs.map(c => c.textContent.split(' \u00b7 ')[1])")

    assert titles("unit 12") == ["basis: unit 12"]
    assert titles("unit 1") == ["basis: unit 1"]
    assert titles("random #1") == ["random #1"]
    assert titles("#1") == ["random #1"]
    assert titles("nit 12") == []  # words match from their start
    assert len(titles("rand")) == 12 and len(titles("unit 12")) == 1
    page.fill("#f-search", "")
    page.select_option("#f-sort", label="max")
    page.click("#f-order")  # descending
    shown = page.eval_on_selector_all(".card", "cs => cs.map(c => Number(c.dataset.direction))")
    stats_table = pd.read_parquet(close_run / "stats.parquet")
    expected = stats_table.sort_values(["max", "direction"], ascending=[False, True])["direction"].tolist()[:100]
    assert shown == expected and shown[:5] != sorted(shown[:5])  # not the id order that rounding gave
    w.check_clean()


def test_study_score_refuses_a_study_made_for_another_run(runs, tmp_path, capsys):
    from dirscope.result import Result

    run = tmp_path / "run"
    shutil.copytree(runs["plain"], run)
    study = make_study(run, per_family=2)
    assert study.key["run"]["run_id"] == json.loads((run / "manifest.json").read_text())["run_id"]
    answers = answers_file(tmp_path / "a.json", study.id, {it["id"]: 3 for it in study.key["items"]}, "r")
    key = (run / "study.json").read_text()
    score_study(run, [answers])
    result = Result.load(run)
    del result.manifest["run_id"]  # as a new run's manifest
    result.save(run, overwrite=True, figures=False)
    assert not (run / "study.json").exists() and not (run / "study-scores.json").exists()  # they went with it
    (run / "study.json").write_text(key)  # put back by hand
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "score", str(run), str(answers)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "was made for another run" in err
    old = json.loads(key)  # a key of an earlier version (no run id) is checked by the run's creation time
    del old["run"]["run_id"]
    (run / "study.json").write_text(json.dumps(old))
    score_study(run, [answers])
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "created": "2000-01-01T00:00:00+00:00"}))
    with pytest.raises(DirscopeError, match="was made for another run"):
        score_study(run, [answers])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda doc: {**doc, "answers": [{**doc["answers"][0], "item": [1]}]}, r"names item \[1\], which is not"),
        (lambda doc: {**doc, "answers": [{**doc["answers"][0], "item": {"a": 1}}]}, "which is not part of"),
        (lambda doc: {**doc, "rater": ["r"]}, r"rater is \['r'\]; it must be a string"),
        (lambda doc: {**doc, "answers": ["x"]}, "answer 1 is 'x', not an object with item, rating and guess"),
        (lambda doc: {**doc, "answers": {"a": 1}}, r"answers must be a list of \{item, rating, guess\}"),
        (lambda doc: "[" * 100_000 + "]" * 100_000, "is nested too deeply"),
    ],
)
def test_answers_of_the_wrong_structure_get_one_line_errors(runs, tmp_path, capsys, mutate, message):
    """An unhashable item id was a TypeError traceback, deep nesting a RecursionError."""
    run = tmp_path / "run"
    shutil.copytree(runs["plain"], run)
    study = make_study(run, per_family=2)
    good = answers_file(tmp_path / "good.json", study.id, {it["id"]: 3 for it in study.key["items"]}, "r")
    damaged = mutate(json.loads(good.read_text()))
    bad = tmp_path / "bad.json"
    bad.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "score", str(run), str(bad)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and re.search(message, err), err


@pytest.mark.parametrize(
    "damage",
    [
        lambda key: {**key, "items": [{**key["items"][0], "id": [1]}]},
        lambda key: {**key, "families": None},
        lambda key: "[" * 100_000 + "]" * 100_000,
    ],
)
def test_a_hand_damaged_study_key_is_one_line(runs, tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(runs["plain"], run)
    study = make_study(run, per_family=2)
    answers = answers_file(tmp_path / "a.json", study.id, {it["id"]: 3 for it in study.key["items"]}, "r")
    damaged = damage(study.key)
    (run / "study.json").write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "score", str(run), str(answers)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "study.json" in err, err


def test_report_never_overwrites_a_runs_own_file_or_a_file_that_is_no_report(runs, tmp_path, capsys):
    """`report --out RUN/manifest.json` (or any existing file, e.g. the data) was overwritten with the HTML."""
    run = tmp_path / "run"
    shutil.copytree(runs["scored"], run)
    (tmp_path / "data.npz").write_bytes(b"user data")
    (tmp_path / "folder").mkdir()
    owned = ["manifest.json", "topk.parquet", "verdict.json", "directions/x.html", "figures/new.html", "cache/a"]
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for target, message in [
        *((run / name, f"is a file of the run in {run.resolve()}") for name in owned),
        (tmp_path / "data.npz", "exists and is not a dirscope report"),
        (tmp_path / "folder", "is a directory"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["report", str(run), "--out", str(target)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err, (target, err)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert (tmp_path / "data.npz").read_bytes() == b"user data" and not any((tmp_path / "folder").iterdir())
    assert not (run / "cache").exists() and not (run / "figures").exists()
    page = write_report(run, tmp_path / "r.html")
    assert b'<meta name="generator" content="dirscope report">' in page.read_bytes()[:500]
    assert write_report(run, page) == page  # a report is replaced by a newer one
    old = page.read_text().replace('<meta name="generator" content="dirscope report">\n', "")
    page.write_text(old)  # a report written before the marker: known by its title
    assert write_report(run, page) == page and write_report(run, run / "report.html") == run / "report.html"
    study = Path(shutil.copy(make_study(run, per_family=2).page, tmp_path / "study-copy.html"))
    with pytest.raises(DirscopeError, match="is not a dirscope report"):  # a page of ours, but no report
        write_report(run, study)


def test_browser_study_enter_on_a_focused_button_and_stopping_early(browser, runs, tmp_path):
    """Enter on a focused rating button moved on without the rating; and who stopped early could not export."""
    run = tmp_path / "run"
    shutil.copytree(runs["plain"], run)
    study = make_study(run, per_family=2, seed=20261128)  # a study id of its own: no other test's saved progress
    w = open_page(browser, study.page)
    page = w.page
    page.click("#start")
    page.keyboard.press("2")
    page.focus("[data-rating='4']")
    page.keyboard.press("Enter")
    assert page.inner_text("#position").startswith("Grid 1 of 8")
    assert page.locator("[data-rating='4'].chosen").count() == 1
    page.keyboard.press("ArrowRight")
    page.keyboard.press("3")
    page.keyboard.press("Enter")  # no button has the focus: Enter moves on, as documented
    assert page.inner_text("#position").startswith("Grid 3 of 8")
    page.click("#stop")
    assert "You rated 2 of 8" in page.inner_text("#summary")
    with page.expect_download() as download:
        page.click("#export")
    answers = tmp_path / "answers.json"
    download.value.save_as(answers)
    w.check_clean()
    ratings = [a["rating"] for a in json.loads(answers.read_text())["answers"]]
    assert ratings == [4, 3]


# ---- figures and plots ------------------------------------------------------------------------------------


def test_figures_and_plots_show_dollar_signs_as_text(tmp_path):
    """Label and family names with "$" were parsed as matplotlib mathtext: "$\\frac$" made the run fail at its
    figures (and the score at its plots) with a ParseSyntaxException, "$5 to $10" came out as italic maths."""
    import matplotlib.text
    import torch
    from torch import nn

    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x=(rng.random((80, 6, 6)) * 255).astype(np.uint8),
        y=rng.integers(0, 3, 80),
        label_names=np.array(["cost $5 to $10", "$\\frac$", "a_b^c $x^2$"]),
    )
    family_file = tmp_path / "dir$\\frac$.npy"
    np.save(family_file, rng.normal(size=(3, 6)).astype(np.float32))
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([("flat", nn.Flatten()), ("fc", nn.Linear(36, 6))]))
    out = tmp_path / "run"
    drawn: list[str] = []
    original = matplotlib.text.Text.draw

    def draw(self, renderer):
        if "$" in self.get_text() and "mathdefault" not in self.get_text():  # not matplotlib's own tick labels
            drawn.append(self.get_text())
            assert not self.get_parse_math(), self.get_text()
        return original(self, renderer)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.text.Text, "draw", draw)
        data = f"npz:{tmp_path / 'd.npz'}"
        dirscope.run(model, ["fc"], data, f"basis,file:{family_file}", k=4, out=out, progress=False, null_sample=40)
        dirscope.score(out, metrics=["label_purity", "kurtosis"], null_draws=50, n_boot=50, n_perm=50)
    assert {"fc-side-by-side.png", "scores-fc.png"} <= {p.name for p in (out / "figures").glob("*.png")}
    assert any("$\\frac$" in t for t in drawn) and any(t.startswith("file:dir$") for t in drawn)
    assert any("file:dir$" in t for t in drawn if not t.startswith("file:dir$"))  # the plots' tick labels too


def test_grid_titles_stay_inside_the_figure_and_clear_of_the_neighbouring_panel():
    """Row titles longer than the fixed 1.5-inch margin (a file family's name, a tie note) were cut off at the
    figure's left edge and, in the side-by-side figure, drawn over the left panel's images; a panel title wider
    than its panel (k=1) was cut off at the right edge."""
    import matplotlib.pyplot as plt

    from dirscope.figures import GridRow, Panel, render_panels

    img = np.zeros((8, 8), np.uint8)
    long = "file:sparse_autoencoder_features_layer_fc1"
    left = Panel("units (natural basis)", [GridRow(f"basis: unit {i}", [img], ["1.0"]) for i in range(2)])
    right = Panel(long, [GridRow(f"{long} #{i}\n(all tied: order by index)", [img], ["1.0"]) for i in range(2)])
    for panels in ([right], [left, right]):
        fig = render_panels(panels, f"fc1 · {long} · top-1 examples")
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        (ax,) = fig.axes
        for text in [*ax.texts, *fig.texts]:
            box = text.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= fig.bbox.width, text.get_text()
        if len(panels) == 2:
            images_end = ax.transData.transform((8, 0))[0]  # the left panel's one column of 8-pixel images
            titles = [t for t in ax.texts if t.get_text().startswith(long + " #")]
            assert titles and all(t.get_window_extent(renderer).x0 > images_end for t in titles)
        plt.close(fig)


def test_study_item_ids_cannot_be_recomputed_from_the_seed_and_the_timestamp(runs, tmp_path):
    """Item ids hashed only the seed (0 by default), the run's `created` second, the layer and the direction:
    trying the seconds of one day recovered every item's direction id, and so its family, from study.html."""
    import hashlib

    from dirscope.result import Result

    run = tmp_path / "run"
    shutil.copytree(runs["plain"], run)
    study = make_study(run, per_family=2)
    manifest = json.loads((run / "manifest.json").read_text())
    guessable = f"{study.key['seed']}/{manifest['created']}"
    for item in study.key["items"]:
        text = f"{guessable}/{item['layer']}/{item['direction']}"
        assert item["id"] != "i" + hashlib.sha256(text.encode()).hexdigest()[:10]
    assert make_study(run, per_family=2).key["items"] == study.key["items"]  # still stable for the same run
    result = Result.load(run)
    result.manifest["run_id"] = "0" * 32  # another run id
    result.save(run, overwrite=True, figures=False)
    assert {it["id"] for it in make_study(run, per_family=2).key["items"]}.isdisjoint(
        it["id"] for it in study.key["items"]
    )


def test_figure_captions_show_the_labels_the_report_shows(close_run):
    """Data with labels but no class names (an npz without label_names): the report showed each example's label,
    the figures showed none."""
    from dirscope.figures import direction_row

    result = dirscope.load(close_run)
    data = page_data(write_report(close_run))
    for d in data["dirs"][:20]:
        captions = direction_row(result, "fc", d["d"]).captions
        assert [c.split(" · ")[1] for c in captions] == [label for _, _, label in d["top"]]


@pytest.mark.parametrize("shape", [(1, 64), (64, 1)])
def test_grids_of_strip_shaped_examples_keep_their_texts_apart(shape):
    """Text-like data ([N, 1, 64] is shown as 1 x 64 strips) drew rows a fraction of a text line high, so every
    title and caption overlapped; a 64 x 1 strip made each row about 74 inches high."""
    import matplotlib.pyplot as plt

    from dirscope.figures import GridRow, Panel, render_panels

    img = np.full(shape, 128, np.uint8)
    rows = [GridRow(f"random #{i}", [img] * 3, ["1.23 · alpha"] * 3) for i in range(4)]
    fig = render_panels([Panel("random directions", rows)], "fc · random · top-3 examples")
    assert fig.get_size_inches()[1] < 20  # 4 rows; it was about 300 inches
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in [*fig.axes[0].texts, *fig.texts]]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    plt.close(fig)


def test_score_plots_call_only_the_basis_family_units():
    """A family whose name merely contains "basis" (a directions file pca_basis.npy) was labelled
    "file:pca_units" on the score plots."""
    import matplotlib.pyplot as plt

    from dirscope.plots import distributions
    from dirscope.scoring import Scores

    families = ["basis"] * 3 + ["file:pca_basis"] * 3
    table = pd.DataFrame(
        {
            "layer": "fc",
            "direction": range(6),
            "family": families,
            "sign": "max",
            "metric": "label_purity",
            "score": [0.5, 0.6, 0.7, 0.4, 0.5, 0.9],
            "z": np.nan,
            "percentile": np.nan,
            "degenerate": False,
        }
    )
    fig = distributions(Scores(table, {"label_purity": True}, {"label_purity": "coherence"}), "fc", 0)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["units", "file:pca_basis"]
    plt.close(fig)


def _exhaustive_rank_p(x: np.ndarray, y: np.ndarray) -> float:
    """The permutation p of |U - E[U]| over every split of the pooled values, ties counted as halves."""
    pooled, n = np.r_[x, y], len(x)

    def u_of(chosen: list[int]) -> float:
        rest = np.delete(pooled, chosen)
        return sum((pooled[i] > b) + 0.5 * (pooled[i] == b) for i in chosen for b in rest)

    centre = n * len(y) / 2
    observed = abs(u_of(list(range(n))) - centre)
    us = np.array([u_of(list(c)) for c in itertools.combinations(range(len(pooled)), n)])
    return float(np.mean(np.abs(us - centre) >= observed - 1e-9))


def test_rank_test_p_is_exact_for_tied_ratings():
    """Mean ratings tie; scipy's p-values assume they do not (0.040 here, the exact p is 0.057)."""
    x, y = np.array([3.0, 4.0, 4.0, 5.0]), np.array([1.0, 2.0, 2.0, 3.0])
    per_item = pd.DataFrame({"mean": np.r_[x, y], "family": ["a"] * 4 + ["b"] * 4})
    (test,) = rank_tests(per_item, ["a", "b"])
    assert test["p_value"] == pytest.approx(_exhaustive_rank_p(x, y)) == pytest.approx(4 / 70)


def test_rank_test_p_of_many_items_is_a_seeded_permutation_estimate():
    """Beyond RANK_PERMUTATIONS splits (8 vs 8 items: 12,870) the p is drawn, seeded, near the exact one."""
    rng = np.random.default_rng(3)
    x, y = rng.integers(2, 6, 8) / 2, rng.integers(1, 5, 8) / 2
    per_item = pd.DataFrame({"mean": np.r_[x, y], "family": ["a"] * 8 + ["b"] * 8})
    (test,) = rank_tests(per_item, ["a", "b"], seed=5)
    exact = _exhaustive_rank_p(x, y)
    assert 0.001 < exact < 0.999 and abs(test["p_value"] - exact) < 4 * np.sqrt(exact * (1 - exact) / 9999) + 1e-4
    assert rank_tests(per_item, ["a", "b"], seed=5) == [test] != rank_tests(per_item, ["a", "b"], seed=6)


def test_a_constant_directions_top_1_is_noted_as_picked_by_row_in_figures_and_report():
    """At k = 1 no tie shows within a set, yet a constant direction's example is the lowest row: noted like a tie."""
    from torch import nn

    from dirscope.figures import direction_row

    x = np.random.default_rng(0).random((30, 1, 4, 4)).astype(np.float32)
    x[:, 0, 0, 1] = 0.5  # unit 1 of the flattened layer is constant
    res = dirscope.run(nn.Sequential(nn.Flatten()), ["0"], x, "basis:16", k=1, progress=False)
    units = res.directions.set_index("unit")["direction"]
    constant, varying = int(units[1]), int(units[0])
    assert direction_row(res, "0", constant).title.endswith("(all tied: order by index)")
    assert "\n" not in direction_row(res, "0", varying).title
    flags = {d["d"]: d["c"] for d in report_html.report_data(res, {}, [])["dirs"]}
    assert flags[constant] and not flags[varying]


def test_study_leaves_out_grids_picked_by_dataset_row(tmp_path, capsys):
    """Dead units all show rows 0..k-1: identical grids found only among units told raters the family."""
    from torch import nn

    x = np.random.default_rng(0).normal(size=(60, 1, 6, 4)).astype(np.float32)
    x[:, :, :3] = -np.abs(x[:, :, :3])  # units 0-11 of the flattened image are dead after the ReLU
    run = tmp_path / "r"
    model = nn.Sequential(nn.Flatten(), nn.ReLU())
    dirscope.run(model, ["1"], x, "basis,random:8", k=3, progress=False, out=str(run))
    made = make_study(run, per_family=8)
    units = {it["direction"] for it in made.key["items"] if it["family"] == "basis"}
    res = dirscope.load(run)
    dead = set(res.directions.loc[(res.directions.family == "basis") & (res.directions.unit < 12), "direction"])
    assert len(units) == 8 and not units & dead
    assert made.key["left_out"] == {"1": {"basis": 12}}
    assert len({tuple(res.examples("1", it["direction"])["index"]) for it in made.key["items"]}) == 16
    capsys.readouterr()
    main(["study", str(run), "--per-family", "8"])
    assert "note: 1: left out 12 unit grids picked by dataset row" in capsys.readouterr().err
