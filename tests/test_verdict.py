"""Scores and the verdict end to end: brute-force checks, and calibration on layers built to be (not) privileged."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import dirscope
from dirscope.directions import haar_rotation
from dirscope.errors import DirscopeError
from dirscope.metrics import glyph_attributes


def planted(n: int, dim: int, seed: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Features whose units each detect one class (dim classes), under Gaussian noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, dim, n)
    f = rng.normal(scale=noise, size=(n, dim))
    f[np.arange(n), y] += 2.0
    return f.astype(np.float32), y


def linear_layer(weight: np.ndarray) -> nn.Module:
    """A model whose layer "0" is exactly weight @ f, with no nonlinearity."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
    return nn.Sequential(layer)


def basis_vs_random(model: nn.Module, data, seed: int) -> dict:
    res = dirscope.run(model, ["0"], data, "basis,random:24", k=9, seed=seed, progress=False, null_sample=300)
    verdict = res.score(metrics=["label_purity"], null_draws=200, n_boot=300, n_perm=999, plots=False)
    (record,) = [r for r in verdict.records if r["sign"] == "max" and r["family_b"] == "random"]
    return record


def test_rotated_planted_layer_rejects_at_about_alpha():
    """The layer is an exact random rotation of planted features: its units are random directions of f, so
    units vs random must reject at about the nominal 5%."""
    rejections = 0
    seeds = range(60)
    for seed in seeds:
        f, y = planted(400, 24, seed)
        rotation = haar_rotation(24, np.random.default_rng(10_000 + seed))
        record = basis_vs_random(linear_layer(rotation), (f, y), seed)
        rejections += record["p_value"] < 0.05 and record["ci_low"] * record["ci_high"] > 0
    assert rejections / len(seeds) <= 0.12  # 5% nominal; P(>= 8 of 60 | p = 0.05) is about 3%


def test_planted_privileged_layer_is_detected():
    detected = 0
    for seed in range(15):
        f, y = planted(400, 24, seed)
        record = basis_vs_random(linear_layer(np.eye(24)), (f, y), seed)
        detected += record["p_value"] < 0.05 and record["ci_low"] > 0
    assert detected >= 14


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    x = (rng.random((300, 1, 8, 8)) * 120).astype(np.uint8)
    for i, label in enumerate(y):  # a class-dependent bright bar, so images carry glyph-like structure
        x[i, 0, 2 * label : 2 * label + 2, :] = 255
    torch.manual_seed(0)  # before the model: its weights must not depend on the tests run before
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU())
    res = dirscope.run(
        model, ["1", "2"], (x, y), "basis,random:5,rotation", k=7, out=str(out), progress=False, null_sample=120
    )
    verdict = dirscope.score(out, null_draws=300, n_boot=200, n_perm=500)
    return out, res, verdict, x, y


def test_scores_match_brute_force(scored_run):
    out, res, _verdict, x, y = scored_run
    scores = pd.read_parquet(out / "scores.parquet")
    topk = res.topk
    for layer, direction in (("1", 0), ("2", 3), ("2", 7)):
        rows = topk[(topk.layer == layer) & (topk.direction == direction) & (topk.sign == "max")].sort_values("rank")
        labels = y[rows["index"].to_numpy()]
        purity = np.bincount(labels).max() / len(labels)
        got = scores[(scores.layer == layer) & (scores.direction == direction) & (scores.sign == "max")]
        assert got.loc[got.metric == "label_purity", "score"].item() == pytest.approx(purity)
        pixels = x[rows["index"].to_numpy()].reshape(7, -1).astype(np.float64) / 255
        unit = pixels / np.linalg.norm(pixels, axis=1, keepdims=True)
        cos = unit @ unit.T
        mean_pair = (cos.sum() - 7) / (7 * 6)
        assert got.loc[got.metric == "embedding_coherence:pixels", "score"].item() == pytest.approx(mean_pair)
        attrs = glyph_attributes([x[i, 0] for i in rows["index"]])
        null_attrs = glyph_attributes([x[i, 0] for i in res.null["index"]])
        ref = null_attrs.std(axis=0, ddof=1)
        ok = ref > 0
        expected = 1 - np.mean(attrs.std(axis=0, ddof=1)[ok] / ref[ok])
        assert got.loc[got.metric == "attribute_coherence", "score"].item() == pytest.approx(expected)


def test_null_z_scores_are_consistent(scored_run):
    out = scored_run[0]
    scores = pd.read_parquet(out / "scores.parquet")
    purity = scores[(scores.metric == "label_purity") & scores.z.notna()]
    # z = (s - mean) / std with one null per (metric, k): the map from score to z is one increasing line.
    fit = np.polyfit(purity["score"], purity["z"], 1)
    assert fit[0] > 0
    np.testing.assert_allclose(np.polyval(fit, purity["score"]), purity["z"], atol=1e-9)
    # A set of one class scores far above a random subset's purity.
    assert purity["z"].max() > 2


def test_dead_unit_sets_are_flagged_and_excluded(scored_run):
    out, res, verdict, _x, _y = scored_run
    scores = pd.read_parquet(out / "scores.parquet")
    mins = res.topk[(res.topk.layer == "2") & (res.topk.sign == "min")]
    tied = mins.groupby("direction")["value"].nunique() == 1  # ReLU units: bottom-7 all zero
    held = mins.groupby("direction")["value"].apply(lambda v: int((v == 0).sum()))
    zeros = res.stats[res.stats.layer == "2"].set_index("direction")["zeros"]
    padded = (held > 0) & (zeros.reindex(held.index) > held)  # some of the direction's zeros, picked by row
    flagged = scores[(scores.layer == "2") & (scores.sign == "min") & (scores.metric == "label_purity")]
    expected = (tied | padded).sort_index()
    assert tied[:6].any() and not expected[6:].all()
    np.testing.assert_array_equal(flagged.set_index("direction")["degenerate"].sort_index(), expected)
    record = next(
        r
        for r in verdict.records
        if r["layer"] == "2" and r["sign"] == "min" and r["metric"] == "label_purity" and r["family_b"] == "random"
    )
    assert record["excluded_a"] == int(tied[:6].sum())
    assert record["n_a"] == 6 - record["excluded_a"]


def test_verdict_json_format(scored_run):
    out, _res, verdict, _x, _y = scored_run
    data = json.loads((out / "verdict.json").read_text())
    assert data["format"] == "dirscope-verdict/1" and set(data["conclusions"]) == {"1", "2"}
    keys = {"layer", "metric", "family_a", "family_b", "effect", "ci_low", "ci_high", "p_value", "p_holm", "n_a", "n_b"}
    for rec in data["comparisons"]:
        assert keys <= set(rec)
        assert rec["p_holm"] is None or rec["p_holm"] >= rec["p_value"]
    pairs = {(r["family_a"], r["family_b"]) for r in data["comparisons"]}
    assert pairs == {("basis", "random"), ("basis", "rotation")}
    assert (out / "figures" / "scores-2.png").stat().st_size > 5000
    assert (out / "figures" / "profile.png").exists()
    assert "figures/2-most-coherent.png" in data["settings"]["figures"]
    assert verdict.conclusions["2"] == data["conclusions"]["2"]


def test_holm_is_applied_across_the_whole_run(scored_run):
    _out, _res, verdict, _x, _y = scored_run
    from dirscope.compare import holm

    p = np.array([r["p_value"] for r in verdict.records], dtype=float)  # None (no test) becomes NaN
    np.testing.assert_allclose(holm(p), np.array([r["p_holm"] for r in verdict.records], dtype=float))


def test_sweep_and_layer_profile_plots(tmp_path):
    f, y = planted(300, 12, 0)
    dirscope.run(
        linear_layer(np.eye(12)),
        ["0"],
        (f, y),
        "basis,random:12,sweep:3",
        k=5,
        out=str(tmp_path / "s"),
        progress=False,
        null_sample=100,
    )
    verdict = dirscope.score(tmp_path / "s", metrics=["label_purity"], null_draws=100, n_boot=100, n_perm=200)
    assert (tmp_path / "s" / "figures" / "sweep.png").stat().st_size > 5000
    families = {r["family_b"] for r in verdict.records}
    assert {"rotation:0", "rotation:0.5", "rotation:1", "random"} <= families


def test_label_metrics_are_skipped_without_labels(tmp_path):
    x = np.random.default_rng(0).normal(size=(80, 5)).astype(np.float32)
    res = dirscope.run(nn.Sequential(nn.Linear(5, 5)), ["0"], x, "basis,random:5", k=4, progress=False)
    verdict = res.score(null_draws=50, n_boot=50, n_perm=50, plots=False)
    assert any("label_purity: skipped, the data has no labels" in n for n in verdict.notices)
    assert {r["metric"] for r in verdict.records} >= {"kurtosis", "zero_fraction"}


def test_partly_labelled_data_scores_sets_with_an_unknown_label_as_nan():
    """Unknown labels (-1) in the pool once failed the whole scoring; they only leave their own sets unscored."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    y = rng.integers(0, 3, 100)
    y[::7] = -1
    res = dirscope.run(nn.Sequential(nn.Identity()), ["0"], (x, y), "basis,random:6", k=3, progress=False)
    res.score(metrics=["label_purity"], null_draws=50, n_boot=20, n_perm=20, plots=False)
    scores = res.scores.set_index(["direction", "sign"])["score"]
    for (direction, sign), rows in res.topk.groupby(["direction", "sign"]):
        labels = y[rows["index"].to_numpy()]
        expected = np.nan if (labels < 0).any() else np.bincount(labels).max() / 3
        np.testing.assert_equal(scores[direction, sign], expected)
    assert scores.isna().any() and scores.notna().any()


def test_a_constant_directions_top_1_is_degenerate():
    """At k = 1 no tie shows within a set, but a constant direction's top-1 is still the lowest index."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    x[:, 1] = 2.5
    res = dirscope.run(nn.Sequential(nn.Identity()), ["0"], (x, np.arange(60) % 3), "basis", k=1, progress=False)
    res.score(metrics=["label_purity"], null_draws=20, n_boot=10, n_perm=10, plots=False)
    flags = res.scores.set_index(["direction", "sign"])["degenerate"]
    assert flags[1, "max"] and flags[1, "min"]
    assert not flags[0, "max"] and not flags[2, "min"]


def test_metrics_needing_larger_sets_are_skipped_by_default_and_fail_when_named():
    rng = np.random.default_rng(0)
    x, y = (rng.random((120, 1, 8, 8)) * 120).astype(np.uint8), rng.integers(0, 3, 120)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6))
    res = dirscope.run(model, ["1"], (x, y), "basis,random:6", k=1, progress=False, null_sample=100)
    verdict = res.score(null_draws=50, n_boot=50, n_perm=50, plots=False)
    assert "attribute_coherence: skipped, it needs sets of at least 2 examples and the run kept k=1" in verdict.notices
    assert {r["metric"] for r in verdict.records} >= {"label_purity", "kurtosis"}
    with pytest.raises(DirscopeError, match="needs sets of at least 2 examples, got k=1"):
        res.score(metrics=["attribute_coherence"], null_draws=50, n_boot=50, n_perm=50, plots=False)


def test_bad_scoring_input(tmp_path, scored_run):
    out = scored_run[0]
    with pytest.raises(DirscopeError, match="unknown metric 'purity'"):
        dirscope.score(out, metrics=["purity"])
    with pytest.raises(DirscopeError, match="--compare pca:random: no family 'pca'"):
        dirscope.score(out, compare=[("pca", "random")], null_draws=20, n_boot=20, n_perm=20, plots=False)
    with pytest.raises(DirscopeError, match="--compare random:random compares a family with itself"):
        dirscope.score(out, compare=[("random", "random")], null_draws=20, n_boot=20, n_perm=20, plots=False)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "manifest.json").write_text((out / "manifest.json").read_text())
    with pytest.raises(DirscopeError, match=r"incomplete: missing topk\.parquet"):
        dirscope.score(tmp_path / "half")
    x, y = scored_run[3], scored_run[4]
    with pytest.raises(DirscopeError, match=r"reference 'mnist-cnn@fc1': .*cannot take inputs of shape \[1, 8, 8\]"):
        dirscope.score(out, references=["mnist-cnn@fc1"], metrics=["embedding_coherence"], data=(x, y), plots=False)
    with pytest.raises(DirscopeError, match="pass data="):
        dirscope.score(out, references=["mnist-cnn@fc1"], metrics=["embedding_coherence"], plots=False)


def test_readers_of_a_run_directory_never_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, dirscope.rundir, dirscope.assess, dirscope.verdict, dirscope.plots; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_layer_all_gives_a_profile_over_every_layer(tmp_path):
    f, y = planted(200, 8, 1)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    res = dirscope.run(
        model, "all", (f, y), "basis,random:8", k=5, out=str(tmp_path / "a"), progress=False, null_sample=100
    )
    assert res.layers == ["0", "1", "2"]
    verdict = res.score(metrics=["label_purity", "kurtosis"], null_draws=50, n_boot=50, n_perm=100)
    assert set(verdict.conclusions) == {"0", "1", "2"}
    assert (tmp_path / "a" / "figures" / "profile.png").stat().st_size > 5000


PAIR_MODEL = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU())
"""
QUICK = {"null_draws": 50, "n_boot": 50, "n_perm": 50}


@pytest.fixture
def spec_run(tmp_path, monkeypatch):
    """A run of a model and an npz file named by specs, as `dirscope run` makes it, with other data beside."""
    (tmp_path / "pairmodel.py").write_text(PAIR_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for name, n in (("data", 50), ("one", 1), ("big", 80)):
        x = rng.integers(0, 256, (n, 1, 8, 8)).astype(np.uint8)
        np.savez(tmp_path / f"{name}.npz", x=x, y=rng.integers(0, 3, n))
    dirscope.run("python:pairmodel:build", ["1"], "npz:data.npz", "basis,random:3", k=3, out="run", progress=False)
    return tmp_path / "run"


def test_a_scoring_killed_while_plotting_leaves_a_run_that_reads_as_not_scored(spec_run, monkeypatch, capsys):
    dirscope.score(spec_run, metrics=["kurtosis"], plots=False, **QUICK)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as kill -9 between scores.parquet and verdict.json

    monkeypatch.setattr("dirscope.plots.write_plots", killed)
    with pytest.raises(KeyboardInterrupt):
        dirscope.score(spec_run, metrics=["kurtosis", "label_purity"], **QUICK)
    capsys.readouterr()
    loaded = dirscope.load(spec_run)  # the first scoring's verdict must not pair with the second's scores
    assert loaded.verdict is None and loaded.scores is None
    assert "reads as not scored" in capsys.readouterr().err
    monkeypatch.undo()
    dirscope.score(spec_run, metrics=["kurtosis"], plots=False, **QUICK)
    assert dirscope.load(spec_run).verdict is not None


def test_a_verdict_is_paired_only_with_the_scores_of_its_own_scoring(spec_run, capsys):
    dirscope.score(spec_run, metrics=["kurtosis"], plots=False, **QUICK)
    first = (spec_run / "verdict.json").read_text()
    dirscope.score(spec_run, metrics=["label_purity"], plots=False, **QUICK)
    (spec_run / "verdict.json").write_text(first)
    capsys.readouterr()
    loaded = dirscope.load(spec_run)
    assert loaded.verdict is None and loaded.scores is None
    err = capsys.readouterr().err
    assert "of two scorings" in err and err.count("\n") == 1
    # a run scored before scores had ids (no key on either side) still loads its scores
    saved = json.loads(first)
    del saved["settings"]["scores_id"]
    (spec_run / "verdict.json").write_text(json.dumps(saved))
    table = pd.read_parquet(spec_run / "scores.parquet")
    table.to_parquet(spec_run / "scores.parquet", index=False)  # pandas' own metadata only
    loaded = dirscope.load(spec_run)
    assert loaded.verdict is not None and set(loaded.scores["metric"]) == {"label_purity"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("npz:one.npz", r"data 'npz:one.npz' has 1 examples but the run scanned 50; pass --data"),
        ("npz:big.npz", r"data 'npz:big.npz' has 80 examples but the run scanned 50; pass --data"),
    ],
)
def test_score_refuses_data_of_another_size_than_the_runs(spec_run, data, message):
    with pytest.raises(DirscopeError, match=message) as caught:
        dirscope.score(spec_run, references=["python:pairmodel:build@1"], data=data, plots=False, **QUICK)
    assert "\n" not in str(caught.value)


def test_score_refuses_the_runs_data_file_once_rewritten(spec_run, tmp_path):
    options = {"references": ["python:pairmodel:build@1"], "metrics": ["embedding_coherence"], "plots": False}
    dirscope.score(spec_run, **options, **QUICK)  # the run's own data, unchanged: scored
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (50, 1, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "data.npz", x=x, y=rng.integers(0, 3, 50))  # other images, same size
    with pytest.raises(DirscopeError, match=r"'npz:data.npz' is not the version of 'npz:data.npz' the run scanned"):
        dirscope.score(spec_run, **options, **QUICK)


@pytest.fixture(scope="module")
def api_run():
    """An in-memory run (nothing written: scoring it leaves no files) of three families, with labels."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 16), nn.ReLU()).eval()
    x, y = torch.randn(200, 1, 8, 8), torch.randint(0, 3, (200,))
    return dirscope.run(net, "3", (x, y), "basis,random:4,rotation", k=4, progress=False, null_sample=100), x


def test_score_takes_names_joined_by_commas_as_one_string(api_run):
    """A string was a list of its letters: metrics="kurtosis" said unknown metric 'k'."""
    res = api_run[0]
    verdict = res.score(metrics="kurtosis, label_purity", compare="random:rotation", plots=False, **QUICK)
    assert {r["metric"] for r in verdict.records} == {"kurtosis", "label_purity"}
    assert ("random", "rotation") in {(r["family_a"], r["family_b"]) for r in verdict.records}
    verdict = res.score(metrics="embedding_coherence", references="pixels", plots=False, **QUICK)
    assert verdict.settings["references"] == ["embedding_coherence:pixels"]
    verdict = res.score(metrics=["kurtosis"], compare=[("rotation", "random")], **QUICK)
    assert ("rotation", "random") in {(r["family_a"], r["family_b"]) for r in verdict.records}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compare": ("random", "rotation")}, "compare=('random', 'rotation'): 'random' is not a pair of families"),
        ({"compare": [("random", "rotation", "basis")]}, "is not a pair of families; give a list of (A, B) pairs"),
        ({"compare": 3}, "compare=3 is not a list of pairs"),
        ({"compare": "random"}, "compare takes two families as A:B, got 'random'"),
        ({"compare": ","}, "empty compare list"),
        ({"references": [nn.Linear(2, 2)]}, "references must be names, got a Linear"),
        ({"metrics": 5}, "metrics=5 is not a list of names"),
        ({"device": None}, "device must be a name such as 'cpu' or 'cuda:0', or a torch.device; got None"),
        ({"device": "cuda"}, "CUDA is not available on this machine"),
    ],
)
def test_score_refuses_arguments_of_the_wrong_shape_in_one_line(api_run, monkeypatch, options, message):
    """They were ValueErrors and TypeErrors from deep inside scoring; device="cuda" on a machine without CUDA
    scored on, where run refuses it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DirscopeError, match=re.escape(message)) as caught:
        api_run[0].score(**{"metrics": ["kurtosis"], **options}, plots=False, **QUICK)
    assert "\n" not in str(caught.value)


def test_conclusions_say_why_there_is_no_coherence_verdict(api_run):
    """Both said "no coherence metric could be computed", though scores were computed."""
    res, x = api_run
    verdict = res.score(metrics="kurtosis,zero_fraction", plots=False, **QUICK)
    assert verdict.conclusions["3"] == (
        "no coherence metric was scored; only label-free statistics were compared (kurtosis, zero_fraction)"
    )
    units = dirscope.run(res_model(), "1", x, "basis", k=4, progress=False, null_sample=100)
    verdict = units.score(metrics="kurtosis", plots=False, **QUICK)
    assert (
        verdict.conclusions["1"] == "nothing to compare: basis is the layer's only family (add another, e.g. random:64)"
    )
    others = dirscope.run(res_model(), "1", x, "random:3,rotation", k=4, progress=False, null_sample=100)
    verdict = others.score(metrics="kurtosis", plots=False, **QUICK)
    assert verdict.conclusions["1"].startswith("nothing to compare: no basis family to compare random, rotation")


def res_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU())


def test_a_bottom_k_difference_is_in_the_conclusion_and_its_row_is_printed():
    """The conclusion read only the top-k sets: "no detectable difference (... smallest p_holm = 1.000)" stood
    above bottom-k rows with p_holm 0.005 whose intervals exclude 0."""
    from dirscope.compare import Comparison, to_record
    from dirscope.verdict import Verdict, _layer_conclusion, summary_lines

    def rec(sign, effect, low, high, p_holm):
        c = Comparison(effect, low, high, p_holm, 0.5, 32, 32, 0.6 + effect, 0.6, True, "")
        return {**to_record("conv2", "label_purity", sign, "basis", "random", c, p_holm), "kind": "coherence",
                "row": f"label purity ({sign})"}  # fmt: skip

    rows = pd.DataFrame({"family": ["basis", "random"], "metric": ["label_purity"] * 2})
    kinds = {"label_purity": "coherence"}
    top = rec("max", 0.01, -0.02, 0.04, 1.0)
    assert _layer_conclusion([top, rec("min", 0.1, -0.01, 0.2, 0.2)], rows, kinds, 0.05).startswith(
        "no detectable difference between units and random directions"
    )  # a bottom-k set that does not differ leaves the top-k conclusion as it was
    bottom = rec("min", 0.14, 0.08, 0.2, 0.005)
    text = _layer_conclusion([top, bottom], rows, kinds, 0.05)
    assert text.startswith("top-k sets: no detectable difference between units and random directions")
    assert "; bottom-k sets: units more coherent than random directions (label_purity +0.14" in text
    lines = summary_lines(Verdict([top, bottom], {"conv2": text}, settings={"alpha": 0.05}))
    assert lines == ["conv2:", "  label purity (max)", "  bottom-k label purity (min)", f"  => {text}"]


def test_a_reversed_pair_is_compared_once(api_run):
    """--compare random:basis repeated the default basis-vs-random tests, weakening Holm for every other one."""
    verdict = api_run[0].score(metrics="kurtosis", compare="random:basis,rotation:random", plots=False, **QUICK)
    pairs = [(r["family_a"], r["family_b"]) for r in verdict.records]
    assert sorted(set(pairs)) == [("basis", "random"), ("basis", "rotation"), ("rotation", "random")]
    assert len(pairs) == 3 * len({r["sign"] for r in verdict.records})


def test_the_verdict_table_has_its_columns_without_comparisons():
    """A basis-only run has no comparisons: table()["p_holm"] raised a KeyError."""
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    res = dirscope.run(nn.Sequential(nn.Identity()), ["0"], x, "basis", k=3, progress=False)
    table = res.score(metrics="kurtosis", plots=False, **QUICK).table()
    assert table.empty and {"layer", "metric", "p_holm", "effect"} <= set(table.columns)


def test_the_verdict_table_has_the_same_columns_with_and_without_comparisons(api_run):
    """With columns given, table() once dropped the records' excluded_a/excluded_b, kind and row."""
    full = api_run[0].score(metrics="kurtosis", plots=False, **QUICK).table()
    assert not full.empty and list(full.columns) == list(dirscope.verdict.TABLE_COLUMNS)


def test_a_null_sample_smaller_than_k_skips_only_the_metrics_drawing_from_it():
    """Scoring failed as a whole; label metrics draw from the label counts and still score."""
    rng = np.random.default_rng(0)
    x, y = rng.random((80, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 80)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6))
    res = dirscope.run(model, ["1"], (x, y), "basis,random:6", k=4, progress=False, null_sample=3)
    verdict = res.score(plots=False, **QUICK)
    assert (
        "embedding_coherence:pixels: skipped, its null draws sets of k=4 from the null sample and the run kept 3 "
        "rows; run again with --null-sample 4 or more" in verdict.notices
    )
    assert {"label_purity", "label_entropy"} <= {r["metric"] for r in verdict.records}
    with pytest.raises(DirscopeError, match="the null population has 3 examples, fewer than k=4"):
        res.score(metrics=["embedding_coherence"], references=["pixels"], plots=False, **QUICK)


def test_image_references_of_a_run_without_images_say_the_data_is_not_image_like():
    """The notice read "the run has no image for rows [0, 1, 2, 3, 4]", as if a few images were missing."""
    x = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32)
    data = (x, np.arange(60) % 3)
    res = dirscope.run(nn.Sequential(nn.Linear(5, 5)), ["0"], data, "basis,random:5", k=3, progress=False)
    verdict = res.score(plots=False, **QUICK)
    assert any(
        n.startswith("embedding_coherence:pixels: skipped, the run has no example images (its data is not image-like)")
        for n in verdict.notices
    ), verdict.notices
