"""wordnet_similarity: Wu–Palmer on a hand-built noun file, on real WordNet, and as a scored metric."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from torch import nn

import dirscope
from dirscope.errors import DirscopeError
from dirscope.metrics import get_metric, null_summary
from dirscope.metrics.wordnet import WordNetNouns, find_wordnet, label_similarity, synset_offsets

# name -> (hypernyms, instance hypernyms). root <- a <- b <- cat; dog under b and directly under root.
GRAPH = {
    "root": ((), ()),
    "a": (("root",), ()),
    "b": (("a",), ()),
    "cat": (("b",), ()),
    "dog": (("b", "root"), ()),
    "cup": (("root",), ()),
    "tom": ((), ("cat",)),
}


def write_noun_file(path: Path) -> dict[str, int]:
    """A data.noun in WordNet's format whose offsets are byte positions, as in the real file."""
    header = "  1 A hand-built noun file for tests.\n"
    names = list(GRAPH)

    def line(name: str, offsets: dict[str, int]) -> str:
        hyper, inst = GRAPH[name]
        pointers = [f"@ {offsets[h]:08d} n 0000" for h in hyper] + [f"@i {offsets[h]:08d} n 0000" for h in inst]
        return f"{offsets[name]:08d} 03 n 01 {name} 0 {len(pointers):03d} {' '.join(pointers)} | a {name}\n".replace(
            "  |", " |"
        )

    placeholder = dict.fromkeys(names, 0)
    offsets, position = {}, len(header)
    for name in names:
        offsets[name] = position
        position += len(line(name, placeholder))  # offsets are 8 digits wide, so lengths do not change
    path.write_text(header + "".join(line(name, offsets) for name in names))
    return offsets


@pytest.fixture
def toy(tmp_path):
    offsets = write_noun_file(tmp_path / "data.noun")
    return WordNetNouns(tmp_path / "data.noun"), offsets


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        ("cat", "dog", 6 / 8),  # subsumer b: depth 2 + 1 = 3, one step each: 2*3 / (1 + 1 + 6)
        ("cat", "cup", 2 / 6),  # subsumer root: depth 1; cat is 3 steps below it, cup 1
        ("dog", "cup", 2 / 4),  # dog's shortest path to root is its direct link
        ("tom", "cat", 8 / 9),  # through the instance hypernym: subsumer cat, depth 3 + 1 = 4
        ("cat", "cat", 1.0),
    ],
)
def test_wup_matches_hand_computation(toy, x, y, expected):
    nouns, offsets = toy
    assert nouns.wup(offsets[x], offsets[y]) == pytest.approx(expected)
    assert nouns.wup(offsets[y], offsets[x]) == pytest.approx(expected)


def test_not_a_synset_is_one_line(toy):
    nouns, offsets = toy
    with pytest.raises(DirscopeError, match="not a noun synset"):
        nouns.hypernyms(offsets["cat"] + 3)


def test_label_names_map_to_synsets():
    assert synset_offsets(["n02124075", "n02124075 Egyptian cat", "Egyptian cat", "espresso"]) == [
        2124075,
        2124075,
        2124075,
        7920052,
    ]
    assert synset_offsets(["crane (n03126707)", "tench"]) == [3126707, 1440764]
    with pytest.raises(DirscopeError, match="label '7' is neither"):
        synset_offsets(["n01440764", "7"])


def test_real_wordnet_agrees_with_nltk():
    try:
        data_noun = find_wordnet()
    except DirscopeError:
        pytest.skip("WordNet is not installed (make test installs Debian's wordnet-base)")
    nouns = WordNetNouns(data_noun)
    assert nouns.wup(2084071, 2121620) == pytest.approx(0.857142857)  # dog.n.01, cat.n.01, as in NLTK's howto
    sim = label_similarity(["n02084071", "n02121620", "espresso"], data_noun)
    assert sim[0, 1] == sim[1, 0] == pytest.approx(0.857142857) and np.all(np.diag(sim) == 1)
    assert sim[0, 2] < 0.5


@pytest.mark.parametrize(
    ("a", "b", "nltk"),
    [
        (7684084, 7693725, 0.8),  # french_loaf.n.01, bagel.n.01: bread.n.01 and starches.n.01 tie, bread sorts first
        (7892512, 15075141, 0.4),  # red_wine.n.01, toilet_tissue.n.01: part.n.01 and substance.n.01 tie
        (1742172, 2096437, 18 / 31),  # boa_constrictor.n.01, dandie_dinmont.n.01: a path up past vertebrate.n.01
    ],
)
def test_real_wordnet_follows_nltk_in_ties_and_path_lengths(a, b, nltk):
    """Values of NLTK 3.10's wup_similarity on WordNet 3.0 (not installed here, so written down)."""
    try:
        nouns = WordNetNouns(find_wordnet())
    except DirscopeError:
        pytest.skip("WordNet is not installed (make test installs Debian's wordnet-base)")
    assert nouns.wup(a, b) == pytest.approx(nltk, abs=1e-12)


def test_score_is_the_mean_over_pairs():
    rng = np.random.default_rng(0)
    sim = rng.random((5, 5))
    sim = (sim + sim.T) / 2
    labels = rng.integers(0, 5, 40)
    sets = np.array([rng.choice(40, 6, replace=False) for _ in range(30)])
    got = get_metric("wordnet_similarity").score(sets, {"labels": labels, "label_similarity": sim})
    brute = [np.mean([sim[labels[i], labels[j]] for i, j in combinations(s, 2)]) for s in sets]
    np.testing.assert_allclose(got, brute)


def test_null_mean_matches_the_exact_expectation():
    sim = np.array([[1.0, 0.2, 0.6], [0.2, 1.0, 0.4], [0.6, 0.4, 1.0]])
    counts = {0: 30, 1: 50, 2: 20}
    n = np.array([30, 50, 20])
    pairs = np.outer(n, n) - np.diag(n)  # ordered pairs of distinct examples by class
    expected = (pairs * sim).sum() / pairs.sum()
    null = null_summary(
        "wordnet_similarity",
        5,
        np.random.default_rng(1),
        population={"label_similarity": sim},
        label_counts=counts,
        draws=4000,
    )
    assert null.mean == pytest.approx(expected, abs=4 * null.std / np.sqrt(4000))


def test_scored_run_with_synset_labels(tmp_path, monkeypatch, toy):
    _nouns, offsets = toy
    monkeypatch.setenv("DIRSCOPE_WORDNET", str(tmp_path))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    x[np.arange(200), y] += 3
    names = [f"n{offsets[name]:08d} {name}" for name in ("cat", "dog", "cup")]
    np.savez(tmp_path / "d.npz", x=x, y=y, label_names=np.array(names))
    out = tmp_path / "run"
    dirscope.run(
        nn.Sequential(nn.Identity(), nn.ReLU()),
        ["1"],
        f"npz:{tmp_path / 'd.npz'}",
        "basis",
        k=5,
        out=str(out),
        progress=False,
        null_sample=100,
    )
    dirscope.score(out, metrics=["wordnet_similarity"], null_draws=200, n_boot=100, n_perm=100, plots=False)
    import pandas as pd

    scores = pd.read_parquet(out / "scores.parquet")
    rows = scores[(scores.metric == "wordnet_similarity") & (scores.sign == "max")].sort_values("direction")
    topk = dirscope.Result.load(out).topk
    sim = label_similarity(names, tmp_path / "data.noun")
    for direction, got in zip(rows.direction, rows.score, strict=True):
        idx = topk[(topk.direction == direction) & (topk.sign == "max")]["index"].to_numpy()
        assert got == pytest.approx(np.mean([sim[y[i], y[j]] for i, j in combinations(idx, 2)]))


def test_unlabelled_images_are_scored_on_the_models_predictions(tmp_path, monkeypatch):
    """An unlabelled folder scanned by Lite0: wordnet_similarity:predicted equals the mean pairwise Wu–Palmer of
    the model's own top-1 classes, computed here by a direct forward pass."""
    import pandas as pd
    import torch

    from dirscope.data import load_data
    from dirscope.models import imagenet_classes, load_model

    try:
        data_noun = find_wordnet()
    except DirscopeError:
        pytest.skip("WordNet is not installed (make test installs Debian's wordnet-base)")
    monkeypatch.setenv("DIRSCOPE_HOME", str(tmp_path / "home"))
    photos = load_data("photos:2")
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, rel in enumerate(photos.files):  # the same crops without class folders: no labels
        (flat / f"{i:03d}.png").write_bytes((photos.root / rel).read_bytes())
    model = load_model("efficientnet-lite0", preprocess="resize=96,crop=96")
    out = tmp_path / "run"
    dirscope.run(model, ["_dropout"], f"folder:{flat}", "basis:6,random:6", k=4, out=str(out), progress=False)
    verdict = dirscope.score(out, metrics=["wordnet_similarity"], null_draws=100, n_boot=100, n_perm=100, plots=False)
    assert any("top-1 predictions" in n for n in verdict.notices)
    scores = pd.read_parquet(out / "scores.parquet")
    rows = scores[(scores.metric == "wordnet_similarity:predicted") & (scores.sign == "max")]
    assert len(rows) == 12 and rows.z.notna().all()
    source = load_data(f"folder:{flat}", preprocess=model.preprocess)
    with torch.inference_mode():
        classes = model.module(next(source.batches(64)).x).argmax(1).numpy()
    wnids = imagenet_classes().wnids
    nouns = WordNetNouns(data_noun)
    topk = dirscope.Result.load(out).topk
    for direction, got in zip(rows.direction, rows.score, strict=True):
        idx = topk[(topk.direction == direction) & (topk.sign == "max")]["index"].to_numpy()
        offsets = [int(wnids[classes[i]][1:]) for i in idx]
        pairs = [1.0 if a == b else nouns.wup(a, b) for a, b in combinations(offsets, 2)]
        assert got == pytest.approx(np.mean(pairs))


def test_predictions_need_an_imagenet_classifier(tmp_path):
    from dirscope.predictions import run_model

    with pytest.raises(DirscopeError, match="not an ImageNet classifier"):
        run_model({"spec": "mnist-cnn"})


def test_missing_wordnet_says_how_to_install(tmp_path, monkeypatch):
    from dirscope.metrics import wordnet

    monkeypatch.setattr(wordnet, "wordnet_dirs", lambda: [tmp_path / "none"])
    with pytest.raises(DirscopeError, match=r"WordNet not found; install Debian's wordnet-base .*nltk") as err:
        label_similarity(["n02084071", "n02121620"])
    assert "\n" not in str(err.value)
