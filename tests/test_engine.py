"""The whole pipeline on tiny models against brute force, the run directory, and every bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import dirscope
from dirscope.errors import DirscopeError
from dirscope.result import Result


class TinyConv(nn.Module):
    """Conv features with ReLU then a flat layer; integer weights keep small-integer inputs exact in float32."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 5, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randint(-2, 3, self.conv.weight.shape, generator=g).float())
            self.fc.weight.copy_(torch.randint(-1, 2, self.fc.weight.shape, generator=g).float())

    def forward(self, x):
        h = self.relu(self.conv(x))
        return self.fc(h.flatten(1))


def tiny_data(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(n, 1, 6, 6)).astype(np.float32)  # small integers: many exact ties
    return x, rng.integers(0, 3, size=n)


def brute_topk(values: np.ndarray, k: int, descending: bool) -> np.ndarray:
    """values [N, K] float64 -> [K, k] row indices, ties toward the lower index."""
    n = values.shape[0]
    return np.array([np.lexsort((np.arange(n), -col if descending else col))[:k] for col in values.T])


def activations(model: TinyConv, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        h = model.relu(model.conv(torch.from_numpy(x)))
        return {"relu": h.double().numpy(), "fc": model.fc(h.flatten(1)).double().numpy()}


@pytest.mark.parametrize("pool", ["max", "mean"])
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_basis_topk_is_exact_against_brute_force(pool, batch_size):
    model, (x, y) = TinyConv().eval(), tiny_data()
    res = dirscope.run(model, ["relu", "fc"], (x, y), "basis", k=5, pool=pool, batch_size=batch_size, progress=False)
    acts = activations(model, x)
    relu = acts["relu"].reshape(60, 4, -1)
    pooled = {"relu": relu.max(2) if pool == "max" else relu.mean(2), "fc": acts["fc"]}
    for layer, values in pooled.items():
        for sign, desc in (("max", True), ("min", False)):
            got = res.topk[(res.topk.layer == layer) & (res.topk.sign == sign)].sort_values(["direction", "rank"])
            want = brute_topk(values, 5, desc)
            np.testing.assert_array_equal(got["index"].to_numpy().reshape(want.shape), want)
            np.testing.assert_allclose(
                got["value"].to_numpy().reshape(want.shape), np.take_along_axis(values.T, want, 1), rtol=1e-6
            )
            np.testing.assert_array_equal(got["label"].to_numpy().reshape(want.shape), y[want])


def test_random_directions_match_float64_projection():
    """Continuous data: the chosen rows equal the float64 brute force wherever the k-th gap is not a near-tie."""
    rng = np.random.default_rng(1)
    model = nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU()).eval()
    x = rng.normal(size=(300, 2, 7, 7)).astype(np.float32)
    res = dirscope.run(model, ["1"], x, "random:16,rotation", k=6, batch_size=50, progress=False)
    with torch.no_grad():
        act = model(torch.from_numpy(x)).double().numpy().reshape(300, 8, -1)
    dirs = res.vectors("1").astype(np.float64)
    values = np.einsum("bcp,kc->bkp", act, dirs).max(2)
    want = brute_topk(values, 6, True)
    got = res.topk[res.topk.sign == "max"].sort_values(["direction", "rank"])["index"].to_numpy().reshape(want.shape)
    sorted_vals = -np.sort(-values, axis=0)
    clear = np.abs(sorted_vals[5] - sorted_vals[6]) > 1e-4  # no near-tie at the k-th place
    assert clear.sum() >= 20
    np.testing.assert_array_equal(got[clear], want[clear])


def test_moments_and_zeros_against_brute_force():
    model, (x, _) = TinyConv().eval(), tiny_data(200, seed=3)
    res = dirscope.run(model, ["relu"], x, "basis,random:3", k=2, batch_size=33, progress=False)
    act = activations(model, x)["relu"].reshape(200, 4, -1)
    values = np.einsum("bcp,kc->bkp", act, res.vectors("relu").astype(np.float64)).max(2)
    stats = res.stats.sort_values("direction")
    np.testing.assert_allclose(stats["mean"], values.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["std"], values.std(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(stats["zeros"][:4], (values[:, :4] == 0).sum(0))
    np.testing.assert_array_equal(stats["count"], 200)


def test_multi_layer_pass_equals_separate_runs():
    model, (x, _) = TinyConv().eval(), tiny_data(80)
    together = dirscope.run(model, ["relu", "fc"], x, "basis,random:4", k=4, batch_size=16, progress=False)
    for layer in ("relu", "fc"):
        alone = dirscope.run(model, [layer], x, "basis,random:4", k=4, batch_size=16, progress=False)
        pd.testing.assert_frame_equal(
            together.topk[together.topk.layer == layer].reset_index(drop=True),
            alone.topk.reset_index(drop=True),
        )


def test_same_seed_same_bits_and_seed_matters(tmp_path):
    model, (x, y) = TinyConv().eval(), tiny_data()
    a = dirscope.run(
        model, ["relu"], (x, y), "random:8,rotation:0.5", k=3, seed=7, out=str(tmp_path / "a"), progress=False
    )
    b = dirscope.run(
        model, ["relu"], (x, y), "random:8,rotation:0.5", k=3, seed=7, out=str(tmp_path / "b"), progress=False
    )
    c = dirscope.run(model, ["relu"], (x, y), "random:8,rotation:0.5", k=3, seed=8, progress=False)
    for name in ("topk.parquet", "stats.parquet", "directions/relu.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert not np.array_equal(a.vectors("relu"), c.vectors("relu"))
    assert b.manifest["config"]["seed"] == 7


def test_run_directory_format_and_round_trip(tmp_path):
    model, (x, y) = TinyConv().eval(), tiny_data()
    res = dirscope.run(model, ["relu", "fc"], (x, y), "basis,random:3", k=4, out=str(tmp_path / "run"), progress=False)
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} >= {
        "manifest.json",
        "topk.parquet",
        "stats.parquet",
        "directions.parquet",
        "examples.parquet",
        "directions",
        "figures",
    }
    topk = pd.read_parquet(out / "topk.parquet")
    assert list(topk.columns)[:8] == [
        "layer",
        "direction",
        "family",
        "sign",
        "rank",
        "index",
        "value",
        "label",
    ]
    assert set(topk.sign) == {"max", "min"} and topk["rank"].max() == 3
    assert len(topk) == 2 * 4 * (4 + 3 + 5 + 3)
    assert np.load(out / "directions" / "relu.npy").shape == (7, 4)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n"] == {"relu": 60, "fc": 60} and manifest["config"]["pool"] == "max"
    assert {"torch", "numpy", "dirscope"} <= set(manifest["versions"])
    assert (out / "figures" / "relu-side-by-side.png").stat().st_size > 1000
    loaded = Result.load(out)
    pd.testing.assert_frame_equal(loaded.topk, res.topk)
    pd.testing.assert_frame_equal(loaded.stats, res.stats)
    null = pd.read_parquet(out / "null.parquet")
    assert sorted(null["index"]) == list(range(60))  # the null sample holds every row of a small dataset
    np.testing.assert_array_equal(null["label"].to_numpy(), y)
    assert manifest["data"]["label_counts"] == {str(c): int((y == c).sum()) for c in np.unique(y)}
    assert set(loaded.images) == set(topk["index"]) | set(null["index"])
    np.testing.assert_array_equal(loaded.images[int(topk["index"][0])], res.images[int(topk["index"][0])])
    assert "<img" in loaded._repr_html_()


def test_queries_name_an_unknown_layer_or_family_instead_of_answering_empty():
    res = dirscope.run(TinyConv().eval(), ["fc"], tiny_data()[0], "basis,random:3", k=2, progress=False)
    assert res.rows_of("fc", "random").tolist() == [5, 6, 7]  # after fc's 5 units
    with pytest.raises(DirscopeError, match=r"has no family 'pca'; it has basis, random"):
        res.rows_of("fc", "pca")
    with pytest.raises(DirscopeError, match=r"no layer 'relu'; it has fc"):
        res.rows_of("relu", "basis")


def test_a_figure_of_given_directions_shows_only_directions_of_its_family():
    """A basis unit was drawn under the title random, and a family the run lacks was accepted."""
    res = dirscope.run(TinyConv().eval(), ["fc"], tiny_data()[0], "basis,random:3", k=2, progress=False)
    with pytest.raises(DirscopeError, match=r"family 'random' has no direction 0; its directions are 5 to 7"):
        res.figure("fc", "random", directions=[0])
    with pytest.raises(DirscopeError, match=r"has no family 'pca'; it has basis, random"):
        res.figure("fc", "pca", directions=[0])
    with pytest.raises(DirscopeError, match=r"directions \[0, 5\] are of families basis, random; give family="):
        res.figure("fc", directions=[0, 5])
    assert res.figure("fc", directions=[5, 6]).texts[0].get_text().startswith("fc · random")


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    model, (x, _) = TinyConv().eval(), tiny_data()
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(DirscopeError, match="not empty; pass --overwrite"):
        dirscope.run(model, ["fc"], x, "basis", k=2, out=str(tmp_path), progress=False)
    dirscope.run(model, ["fc", "relu"], x, "basis", k=2, out=str(tmp_path), overwrite=True, progress=False)
    dirscope.run(model, ["fc"], x, "basis", k=2, out=str(tmp_path), overwrite=True, progress=False)
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "directions" / "relu.npy").exists()  # stale files of the earlier run are gone
    assert Result.load(tmp_path).layers == ["fc"]


def test_null_sample_is_seeded_uniform_and_within_the_limit():
    model, (x, _) = TinyConv().eval(), tiny_data(200)
    a = dirscope.run(model, ["fc"], x, "basis", k=2, null_sample=50, limit=150, batch_size=32, progress=False)
    b = dirscope.run(model, ["fc"], x, "basis", k=2, null_sample=50, limit=150, batch_size=32, progress=False)
    rows = a.null["index"].to_numpy()
    assert len(rows) == 50 and len(set(rows)) == 50 and rows.max() < 150
    np.testing.assert_array_equal(rows, b.null["index"].to_numpy())
    assert a.null["label"].isna().all()


def test_limit_scans_a_prefix():
    model, (x, _) = TinyConv().eval(), tiny_data()
    res = dirscope.run(model, ["fc"], x, "basis", k=3, limit=25, batch_size=10, progress=False)
    assert res.manifest["n"]["fc"] == 25 and res.topk["index"].max() < 25
    full = dirscope.run(model, ["fc"], x[:25], "basis", k=3, progress=False)
    pd.testing.assert_frame_equal(res.topk, full.topk)


class NaNOnMarked(nn.Module):
    """Emits NaN (or inf) features for inputs whose first value is negative."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()

    def forward(self, x):
        bad = x[:, 0] < 0
        x = torch.where(bad[:, None], torch.full_like(x, float("nan")), x)
        x[bad.nonzero().flatten()[::2], 1] = float("inf")
        return self.feat(x)


def test_nonfinite_rows_are_excluded_counted_and_named(capsys):
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    x[:, 0] = np.abs(x[:, 0])
    x[[3, 17, 18], 0] = -1.0
    res = dirscope.run(NaNOnMarked(), ["feat"], x, "basis,random:2", k=5, batch_size=8, progress=False)
    layer = res.manifest["layers"][0]
    assert layer["excluded_nonfinite"] == 3 and layer["first_excluded_rows"] == [3, 17, 18]
    assert res.manifest["n"]["feat"] == 37
    assert not set(res.topk["index"]) & {3, 17, 18}
    err = capsys.readouterr().err
    assert "3 examples with NaN/inf activations excluded" in err
    assert "see result.manifest" in err  # there is no manifest.json: the run has no out directory


@pytest.mark.parametrize("tally", ["numba", "device"])
def test_folding_each_batch_two_batches_late_changes_nothing(monkeypatch, tally):
    from dirscope import engine

    x = np.random.default_rng(1).normal(size=(60, 3)).astype(np.float32)
    x[:, 0] = np.abs(x[:, 0])
    x[[3, *range(16, 24), 41], 0] = -1.0  # non-finite rows, one batch of 8 entirely

    def run():
        settings = dict(k=5, batch_size=8, tally=tally, progress=False)
        return dirscope.run(NaNOnMarked(), ["feat"], x, "basis,random:2", **settings)

    at_once = run()
    held, add = [], engine._Folds.add

    def add_and_count(self, idx, y, acts):
        add(self, idx, y, acts)
        held.append(len(self.waiting))

    monkeypatch.setattr(engine._Folds, "add", add_and_count)
    monkeypatch.setattr(engine, "_fold_lag", lambda _device: 2)
    late = run()
    assert max(held) == 2 and len(held) == 8  # never more than two batches' projections held
    pd.testing.assert_frame_equal(late.topk, at_once.topk)
    pd.testing.assert_frame_equal(late.stats, at_once.stats)
    assert late.manifest["layers"] == at_once.manifest["layers"]
    assert late.manifest["layers"][0]["first_excluded_rows"] == [3, *range(16, 24), 41]


class TwoMasks(nn.Module):
    """Layer ``a`` is NaN on rows whose first pixel is NaN; layer ``b`` (``a`` with NaN as 0) on rows whose
    second pixel is negative: two layers that exclude two different sets of rows."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Flatten(), nn.Identity()

    def forward(self, x):
        a = self.a(x)
        return self.b(torch.where((a[:, 1] < 0)[:, None], torch.full_like(a, float("nan")), torch.nan_to_num(a)))


def two_mask_data(n: int = 90) -> tuple[np.ndarray, np.ndarray, dict[str, list[int]]]:
    """Images, labels, and the rows each layer of TwoMasks excludes."""
    rng = np.random.default_rng(3)
    x = rng.random((n, 1, 4, 4)).astype(np.float32)
    bad = {"a": sorted(rng.choice(n, 20, replace=False).tolist()), "b": sorted(rng.choice(n, 15, replace=False))}
    x[bad["a"], 0, 0, 0] = np.nan
    x[bad["b"], 0, 0, 1] = -1.0
    return x, rng.integers(0, 3, size=n), {layer: [int(r) for r in rows] for layer, rows in bad.items()}


def test_each_layers_null_is_the_null_sample_and_label_counts_of_its_finite_rows(tmp_path, monkeypatch):
    from collections import Counter

    from dirscope import scoring
    from dirscope.references import pixel_embeddings

    x, y, bad = two_mask_data()
    settings = dict(directions="basis,random:3", k=4, batch_size=16, null_sample=40, progress=False)
    res = dirscope.run(TwoMasks(), ["a", "b"], (x, y), **settings, out=tmp_path / "m", cache=True)
    null = res.null["index"].tolist()
    finite = {layer: [r for r in range(len(y)) if r not in rows] for layer, rows in bad.items()}
    for layer in res.manifest["layers"]:
        rows = bad[layer["name"]]
        assert layer["excluded_nonfinite"] == len(rows)
        assert layer["excluded_null_rows"] == sorted(set(null) & set(rows)) != []
        assert layer["excluded_label_counts"] == {str(c): n for c, n in sorted(Counter(y[rows].tolist()).items())}
    cached = dirscope.run(from_cache=tmp_path / "m", **settings)
    keys = ("excluded_nonfinite", "first_excluded_rows", "excluded_label_counts", "excluded_null_rows")
    assert [[m[key] for key in keys] for m in cached.manifest["layers"]] == [
        [m[key] for key in keys] for m in res.manifest["layers"]
    ]

    seen, real = [], scoring.null_summary

    def spy(metric, k, rng, **kwargs):
        seen.append(kwargs)
        return real(metric, k, rng, **kwargs)

    monkeypatch.setattr(scoring, "null_summary", spy)
    scoring.score_run(res, metrics=["label_purity", "embedding_coherence"], references=["pixels"], null_draws=50)
    groups = [layer for layer, _sign in res.topk.groupby(["layer", "sign"], sort=False).groups]
    assert len(seen) == 2 * len(groups) == 8  # label_purity, then embedding_coherence:pixels, per (layer, sign)
    for got, layer in zip(seen, groups * 2, strict=True):
        null_rows = [r for r in null if r in finite[layer]]
        assert got["label_counts"] == dict(Counter(y[finite[layer]].tolist()))
        if "embeddings:pixels" in got["population"]:
            want = pixel_embeddings(res.images, np.array(null_rows))
            np.testing.assert_array_equal(got["population"]["embeddings:pixels"], want)
    fingerprints = {(got["fingerprint"], layer) for got, layer in zip(seen, groups * 2, strict=True)}
    assert len(fingerprints) == len({f for f, _ in fingerprints})  # layers with different nulls never share one


@pytest.mark.parametrize("size", [0, 1, 7, 40, 500])
def test_exclusions_hold_every_excluded_row_of_the_null_sample_however_cut_and_merged(size):
    from dirscope.engine import Exclusions
    from dirscope.tally import Reservoir

    rng = np.random.default_rng(size)
    n = 400
    excluded = np.sort(rng.choice(n, 150, replace=False))
    y = rng.integers(-1, 3, size=n)
    whole = Reservoir(size, 11)
    whole.update(np.arange(n))
    merged = Exclusions(Reservoir(size, 11))
    for shard in np.array_split(excluded, [30, 31, 90]):  # shards (one empty), each in batches
        part = Exclusions(Reservoir(size, 11))
        for batch in np.array_split(shard, 3):
            part.add(batch, y[batch])
        merged.merge(part)
    assert merged.null_rows(whole.result()) == sorted(set(whole.result().tolist()) & set(excluded.tolist()))
    assert merged.labels == {c: int((y[excluded] == c).sum()) for c in range(3)}
    assert merged.count == 150 and merged.first == excluded[:10].tolist() and len(merged.sample.rows) <= size


def test_runs_without_the_exclusion_keys_or_without_exclusions_score_on_the_whole_null():
    from dirscope import scoring

    x, y = tiny_data(80)
    res = dirscope.run(TinyConv(), ["relu", "fc"], (x, y), "basis,random:3", k=4, null_sample=30, progress=False)
    assert all(
        layer["excluded_null_rows"] == [] and layer["excluded_label_counts"] == {} for layer in res.manifest["layers"]
    )
    new = scoring.score_run(res, metrics=["label_purity", "label_entropy"], null_draws=50).table
    for layer in res.manifest["layers"]:  # a run directory written before these keys
        del layer["excluded_null_rows"], layer["excluded_label_counts"]
    old = scoring.score_run(res, metrics=["label_purity", "label_entropy"], null_draws=50).table
    pd.testing.assert_frame_equal(new, old)
    pool = scoring._pool(res)
    for null in scoring.layer_nulls(res, pool).values():
        assert null.positions is pool.null_positions and null.counts == {
            c: int(n) for c, n in enumerate(np.bincount(y))
        }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": ["nope"]}, "unknown layer 'nope'"),
        ({"directions": "bassis"}, "unknown direction family 'bassis'.*did you mean 'basis'"),
        ({"k": 61}, "k=61 is larger than the 60 examples"),
        ({"k": 0}, "k must be at least 1"),
        ({"pool": "median"}, "unknown pooling"),
        (
            {"device": "cuda:0" if not torch.cuda.is_available() else "tpu"},
            "CUDA is not available|unknown device",
        ),
        ({"data": np.zeros((5, 1, 3, 3), np.float32)}, r"cannot take inputs of shape \[1, 3, 3\] \(probe batch of 2\)"),
        ({"data": np.zeros((0, 1, 6, 6), np.float32)}, "empty"),
        ({"model": "no-such-model"}, "unknown model"),
        ({"data": "no-such-data"}, "unknown data source"),
        ({"directions": "pca:2", "fit_samples": 0}, "--fit-samples must be at least 1, got 0"),
        ({"directions": "pca:2", "fit_samples": -5}, "--fit-samples must be at least 1, got -5"),
    ],
)
def test_bad_input_is_one_clear_line(kwargs, message):
    args = {"model": TinyConv(), "layers": ["fc"], "data": tiny_data()[0], "directions": "basis", "k": 3}
    args.update(kwargs)
    with pytest.raises(DirscopeError, match=message) as info:
        dirscope.run(
            args.pop("model"),
            args.pop("layers"),
            args.pop("data"),
            args.pop("directions"),
            args.pop("k"),
            progress=False,
            **args,
        )
    assert "\n" not in str(info.value)


def test_directions_file_of_wrong_dimension(tmp_path):
    np.save(tmp_path / "d.npy", np.ones((2, 9), np.float32))
    with pytest.raises(DirscopeError, match="dimension"):
        dirscope.run(TinyConv(), ["fc"], tiny_data()[0], f"file:{tmp_path / 'd.npy'}", k=3, progress=False)


def test_unwritable_output_fails_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DirscopeError, match=r"is a file|cannot write"):
        dirscope.run(TinyConv(), ["fc"], tiny_data()[0], "basis", k=3, out=str(tmp_path / "file"), progress=False)
    with pytest.raises(DirscopeError, match="cannot write"):
        dirscope.run(
            TinyConv(),
            ["fc"],
            tiny_data()[0],
            "basis",
            k=3,
            out=str(tmp_path / "file" / "sub"),
            progress=False,
        )


def test_one_shot_iterable_with_labels_and_pca():
    x, y = tiny_data(90)
    model = TinyConv().eval()

    def batches():
        for s in range(0, 90, 20):
            yield torch.from_numpy(x[s : s + 20]), torch.from_numpy(y[s : s + 20])

    res = dirscope.run(model, ["relu"], batches(), "basis", k=4, progress=False)
    want = brute_topk(activations(model, x)["relu"].reshape(90, 4, -1).max(2), 4, True)
    got = res.topk[res.topk.sign == "max"].sort_values(["direction", "rank"])
    np.testing.assert_array_equal(got["label"].to_numpy().reshape(want.shape), y[want])
    pca = dirscope.run(model, ["relu"], x, "pca:3", k=4, progress=False)
    assert pca.manifest["layers"][0]["direction_info"]["pca:3"]["n_fit"] > 0


def test_torch_dataset_input():
    x, y = tiny_data()

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return torch.from_numpy(x[i]), int(y[i])

    a = dirscope.run(TinyConv(), ["fc"], DS(), "basis", k=3, batch_size=9, progress=False)
    b = dirscope.run(TinyConv(), ["fc"], (x, y), "basis", k=3, batch_size=9, progress=False)
    pd.testing.assert_frame_equal(a.topk, b.topk)


def test_the_scan_runs_the_model_in_eval_mode_and_gives_it_back_in_train_mode():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.9))
    model.train()
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    res = dirscope.run(model, ["1"], x, "basis", k=2, progress=False)
    assert model.training and model[1].training
    with torch.no_grad():
        expected = model[0](torch.from_numpy(x)).numpy()  # no dropout: what eval mode gives
    np.testing.assert_allclose(res.examples("1", 0, "max")["value"], np.sort(expected[:, 0])[::-1][:2], rtol=1e-6)


def test_describe_layers():
    infos = {i.name: i for i in dirscope.describe_layers(TinyConv(), input_shape=(1, 6, 6))}
    assert infos["relu"].shape == (4, 6, 6) and infos["fc"].shape == (5,)
    with pytest.raises(DirscopeError, match="input shape"):
        dirscope.describe_layers(TinyConv())


def test_grid_captions_shorten_long_labels():
    from dirscope.figures import CAPTION_CHARS, short_label

    assert short_label("coffee") == "coffee"
    long = short_label("immunohistochemistry")
    assert len(long) == CAPTION_CHARS and long.endswith("…") and long.startswith("immunohisto")


def test_decoding_workers_leave_results_unchanged(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5), torch.nn.ReLU())
    runs = [
        dirscope.run(model, ["2"], f"folder:{tmp_path}", "basis,random:3", k=3, batch_size=5, workers=w, progress=False)
        for w in (0, 2)
    ]
    pd.testing.assert_frame_equal(runs[0].topk, runs[1].topk)


def test_topk_rows_carry_their_labels_and_label_names():
    from dirscope.data.arrays import ArraySource

    x, y = tiny_data(60)
    y[[3, 7]] = -1  # unknown labels: label and name are NA
    names = ["zero", "one", "two"]
    top = dirscope.run(TinyConv(), ["fc"], ArraySource(x, y, names), "basis", k=60, progress=False).topk
    labels = y[top["index"]]
    assert top["label"].isna().tolist() == (labels < 0).tolist()
    want = [names[v] if v >= 0 else None for v in labels]
    assert top["label_name"].astype(object).where(top["label_name"].notna(), None).tolist() == want


def test_overwrite_removes_the_earlier_runs_outputs_and_never_a_users_files(tmp_path):
    model, (x, y) = TinyConv().eval(), tiny_data()
    out = tmp_path / "run"
    first = dirscope.run(model, ["fc", "relu"], (x, y), "basis,random:3", k=2, out=str(out), progress=False)
    old_figures = [out / f for f in first.manifest["figures"]]
    assert (out / "directions" / "relu.npy").is_file() and any(p.name.startswith("relu-") for p in old_figures)
    mine = [out / "figures" / "my-own-plot.png", out / "directions" / "my-notes.npy", out / "figures" / "relu-x.png"]
    for path in mine:
        path.write_bytes(b"mine")
    scored = [out / "figures" / n for n in ("scores-relu.png", "relu-most-coherent.png", "sweep.png", "profile.png")]
    for path in scored:  # as `dirscope score` leaves them
        path.write_bytes(b"plot")
    (out / "verdict.json").write_text(json.dumps({"settings": {"figures": ["figures/sweep.png"]}}))
    made = ["report.html", "study.html", "study.json", "study-scores.json", "report_images/3.png"]
    (out / "report_images").mkdir()
    for name in made:  # as `dirscope report` and `dirscope study` leave them
        (out / name).write_text("of the earlier run")
    second = dirscope.run(model, ["fc"], (x, y), "basis", k=2, out=str(out), overwrite=True, progress=False)
    assert all(p.read_bytes() == b"mine" for p in mine)  # a user's own files stay, whatever their names
    kept = {out / f for f in second.manifest["figures"]}
    assert not [p for p in old_figures + scored if p.exists() and p not in kept]
    assert not (out / "directions" / "relu.npy").exists() and (out / "directions" / "fc.npy").is_file()
    assert not [n for n in [*made, "report_images", "verdict.json"] if (out / n).exists()]
    assert Result.load(out).layers == ["fc"] and second.manifest["run_id"] != first.manifest["run_id"]


def test_overwrite_refuses_to_leave_an_earlier_runs_cache_to_a_later_from_cache(tmp_path):
    from dirscope.rundir import check_out

    model, (x, y) = TinyConv().eval(), tiny_data()
    out = tmp_path / "run"
    dirscope.run(model, ["fc"], (x, y), "basis", k=2, out=str(out), cache=True, progress=False)
    with pytest.raises(DirscopeError, match=r"cache holds the activation cache of an earlier run; move it, or pass"):
        check_out(out, True, cache=False)
    assert (out / "cache" / "index.json").is_file() and (out / "manifest.json").is_file()
    for reads in (out, out / "cache"):  # a run that reads this very cache keeps it
        check_out(out, True, cache=False, from_cache=reads)
    check_out(out, True, cache=True)  # a run that writes its own replaces it
    assert (out / "cache" / "index.json").is_file()


class _Cast(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return x.flatten(1).to(self.dtype)


class _Empty(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :0]


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (_Cast(torch.complex64), r"layer '0' gives complex values \(torch.complex64\); choose a real-valued layer"),
        (_Empty(), r"layer '0' gives empty activations \(shape \[0\]\); choose another"),
    ],
)
def test_complex_or_empty_layers_are_refused_in_one_line(layer, message):
    """Complex values were cast to real (torch warned) and an empty layer raised a bare ValueError."""
    with pytest.raises(DirscopeError, match=message):
        dirscope.run(nn.Sequential(layer), ["0"], np.zeros((8, 1, 4, 4), np.float32), "basis", k=2, progress=False)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (dict(k=2.5), "k must be a whole number, got 2.5"),
        (dict(k=True), "k must be a whole number, got True"),
        (dict(batch_size=4.5), "batch_size must be a whole number, got 4.5"),
        (dict(limit="10"), "limit must be a whole number, got '10'"),
        (dict(directions=["basis"]), "directions must be a spec string"),
        (dict(checkpoint_every="5"), "checkpoint_every must be a number of seconds (0: no checkpoints), got '5'"),
        (dict(device=None), "device must be a name such as 'cpu' or 'cuda:0', or a torch.device; got None"),
    ],
)
def test_api_settings_of_the_wrong_type_are_one_line(setting, message):
    """They were bare TypeErrors from deep inside numpy."""
    settings = dict(directions="basis", k=2, progress=False) | setting
    with pytest.raises(DirscopeError, match=re.escape(message)):
        dirscope.run(TinyConv().eval(), ["fc"], tiny_data()[0], **settings)


def test_numpy_integer_settings_are_kept_as_ints():
    res = dirscope.run(TinyConv().eval(), ["fc"], tiny_data()[0], "basis", k=np.int64(2), progress=False)
    assert type(res.manifest["config"]["k"]) is int


def _set(key: str, value: object):
    def damage(m: dict) -> dict:
        return {**m, key: value}

    return damage


def _set_in(section: str, key: str, value: object):
    def damage(m: dict) -> dict:
        if section == "layers":
            return {**m, "layers": [{**m["layers"][0], key: value}, *m["layers"][1:]]}
        return {**m, section: {**m[section], key: value}}

    return damage


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: [1], "it must hold a JSON object"),
        (_set("config", None), "config must be an object"),
        (_set("model", None), "model must be an object"),
        (_set("data", None), "data must be an object"),
        (_set("layers", "abc"), "layers must be a non-empty list"),
        (_set_in("config", "seed", "x"), "config.seed must be an integer"),
        (_set_in("config", "k", 2.5), "config.k must be a positive integer"),
        (_set_in("data", "label_counts", {"a": 1}), "data.label_counts must be"),
        (_set_in("layers", "name", 5), "layers[0].name must be a non-empty string"),
        (_set_in("layers", "directions_file", "../../data.npz"), "layers[0].directions_file must be a file in"),
        (_set_in("layers", "directions_file", "/etc/passwd"), "layers[0].directions_file must be a file in"),
        (_set("n", {}), "n.relu must be an integer"),
        (None, "it is nested too deeply"),
    ],
)
def test_a_hand_damaged_manifest_is_one_line_naming_the_key(tmp_path, capsys, damage, message):
    from dirscope.cli import main

    out = tmp_path / "run"
    dirscope.run(TinyConv().eval(), ["relu", "fc"], tiny_data(), "basis,random:3", k=3, out=out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    text = "[" * 100_000 + "]" * 100_000 if damage is None else json.dumps(damage(manifest))
    (out / "manifest.json").write_text(text)
    expected = f"run {out}: manifest.json: {message}"
    with pytest.raises(DirscopeError, match=re.escape(expected)):
        dirscope.load(out)
    for command in ("score", "report", "figures", "study"):
        with pytest.raises(SystemExit) as exit_:
            main([command, str(out)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith(f"error: {expected}") and err.count("\n") == 1, command


class _Crash(Exception):
    pass


class _CrashingConv(TinyConv):
    """TinyConv that raises on its ``at``-th forward (4: after the dry one and two checkpointed batches)."""

    def __init__(self, at: int | None = None) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            raise _Crash
        return super().forward(x)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"layers": ["fcc"]}, "unknown layer 'fcc'"),
        ({"k": 500}, "k=500 is larger than the 60 examples"),
        ({"data": "npz:missing.npz"}, "missing.npz"),
    ],
)
def test_overwrite_with_a_bad_argument_deletes_nothing(tmp_path, bad, message):
    """`--overwrite --layer haed` deleted the unfinished run's checkpoint, then failed on the typo."""
    out = tmp_path / "run"
    settings = dict(layers=["fc"], data=tiny_data(), directions="basis", k=3, batch_size=8, out=out, progress=False)
    with pytest.raises(_Crash):
        dirscope.run(_CrashingConv(4), **settings, checkpoint_every=1e-9)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert any(p.name == "checkpoint.json" for p in before)
    with pytest.raises(DirscopeError, match=re.escape(message)):
        dirscope.run(_CrashingConv(), **{**settings, **bad}, overwrite=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    dirscope.run(_CrashingConv(), **settings, resume=True)
    assert (out / "manifest.json").is_file() and not (out / "checkpoint").exists()
    with pytest.raises(DirscopeError, match=re.escape(message)):  # nor does it leave a directory it made
        dirscope.run(TinyConv(), **{**settings, **bad, "out": tmp_path / "new"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_second_writer_fails_at_once_until_the_holder_of_the_directory_dies(tmp_path):
    """The lock is another process's flock: refused while it lives, gone with it however it ends."""
    import subprocess
    import sys

    out = tmp_path / "run"
    settings = dict(layers=["fc"], data=tiny_data(), directions="basis", k=3, out=out, progress=False)
    dirscope.run(TinyConv(), **settings)
    hold = (
        "import sys\nfrom dirscope.rundir import lock_out\nwith lock_out(sys.argv[1]):\n print(1, flush=True)\n input()"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"1\n"
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        for mode in ({"overwrite": True}, {"resume": True}, {}):
            with pytest.raises(DirscopeError) as err:
                dirscope.run(TinyConv(), **settings, **mode)
            assert str(err.value) == (
                f"{out} is in use by another dirscope process (pid {holder.pid}); wait for it or choose another --out"
            )
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".dirscope.lock").is_file()  # left by the killed holder, blocking nothing
    dirscope.run(TinyConv(), **settings, overwrite=True)
    assert not (out / ".dirscope.lock").exists()


class Signal(nn.Module):
    """A 1-D conv net: ``conv`` and ``relu`` give [C=3, L=6] per example, channels first."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.relu(self.conv(x)))


@pytest.mark.parametrize(
    ("layer", "feature_axis", "dim"),
    [("conv", "auto", 3), ("relu", "auto", 6), ("relu", "first", 3), ("relu", "last", 6), ("bn", "auto", 3)],
)
def test_a_1d_conv_layer_has_its_channels_as_features_and_feature_axis_says_it_for_any_layer(layer, feature_axis, dim):
    """A [C, L] Conv1d output was read as a token layer [T, D]: its "units" were the L positions."""
    model, x = Signal().eval(), np.random.default_rng(0).standard_normal((40, 2, 6)).astype(np.float32)
    res = dirscope.run(model, [layer], x, "basis", k=4, feature_axis=feature_axis, progress=False)
    entry = res.manifest["layers"][0]
    assert entry["dim"] == dim and entry["feature_axis"] == (0 if dim == 3 else 1)
    acts = {}
    model.get_submodule(layer).register_forward_hook(lambda m, i, o: acts.update(a=o.detach().double().numpy()))
    with torch.no_grad():
        model(torch.from_numpy(x))
    per_unit = acts["a"] if dim == 3 else acts["a"].transpose(0, 2, 1)  # [N, features, positions]
    expected = per_unit.max(axis=2)  # max pooling over the positions of each feature
    for d, idx in enumerate(brute_topk(expected, 4, descending=True)):
        rows = res.examples(layer, d, "max")
        assert rows["index"].tolist() == idx.tolist()
        np.testing.assert_allclose(rows["value"], expected[idx, d], rtol=1e-5)


def test_feature_axis_last_reads_a_channels_last_image_layer_and_bad_values_are_refused():
    model, (x, y) = TinyConv().eval(), tiny_data()
    res = dirscope.run(model, ["relu"], (x, y), "basis", k=3, feature_axis="last", progress=False)
    expected = activations(model, x)["relu"].max(axis=(1, 2))  # [N, W]: the last axis as features
    assert res.manifest["layers"][0]["dim"] == 6
    np.testing.assert_allclose(res.examples("relu", 2, "max")["value"], np.sort(expected[:, 2])[::-1][:3])
    with pytest.raises(DirscopeError, match=r"^unknown --feature-axis 'middle'; use one of auto, first, last$"):
        dirscope.run(model, ["relu"], (x, y), "basis", feature_axis="middle", progress=False)


def test_a_cache_keeps_the_feature_axis_it_was_written_with(tmp_path):
    model, x = Signal().eval(), np.random.default_rng(0).standard_normal((30, 2, 6)).astype(np.float32)
    out = tmp_path / "c"
    first = dirscope.run(model, ["relu"], x, "basis", k=3, feature_axis="first", out=out, cache=True, progress=False)
    again = dirscope.run(from_cache=out, directions="basis", k=3, progress=False)  # auto: as the cache says
    pd.testing.assert_frame_equal(again.topk, first.topk)
    with pytest.raises(DirscopeError, match=r"features on axis 0 of \[3, 6\], not --feature-axis last; run the model"):
        dirscope.run(from_cache=out, directions="basis", k=3, feature_axis="last", progress=False)


def test_a_run_gives_the_callers_module_back_in_its_own_train_and_eval_modes():
    model, (x, y) = TinyConv(), tiny_data()
    model.train()
    model.relu.eval()  # a mix, as a user may have set
    dirscope.run(model, ["fc"], (x, y), "basis", k=2, progress=False)
    assert model.training and model.conv.training and model.fc.training and not model.relu.training
    dirscope.describe_layers(model, data=x)
    assert model.training and not model.relu.training


def test_weights_and_preprocess_are_keywords_of_run_and_go_with_a_model_spec(tmp_path):
    model, (x, y) = TinyConv(), tiny_data()
    with pytest.raises(DirscopeError, match=r"^--weights \(weights=\) goes with a model spec string, not"):
        dirscope.run(model, ["fc"], (x, y), "basis", weights="w.pt", progress=False)
    with pytest.raises(DirscopeError, match=r"^--weights and --preprocess \(weights=, preprocess=\) go with a model"):
        dirscope.run(from_cache=tmp_path, directions="basis", preprocess="resize=8", progress=False)
    with pytest.raises(DirscopeError, match=r"model 'mnist-cnn' takes no --weights \(weights=\)"):
        dirscope.run("mnist-cnn", ["fc1"], "mnist", "basis", weights="w.pt", progress=False)


def test_a_scored_result_saves_with_its_scores_verdict_and_plots(tmp_path):
    model, (x, y) = TinyConv().eval(), tiny_data(80)
    res = dirscope.run(model, ["fc"], (x, y), "basis,random:6", k=3, progress=False)
    verdict = res.score(metrics=["label_purity", "kurtosis"], null_draws=50, n_boot=50, n_perm=50)
    saved = Result.load(res.save(tmp_path / "a"))
    rows = [r["row"] for r in verdict.records]
    assert [r["row"] for r in saved.verdict.records] == rows and saved.verdict.conclusions == verdict.conclusions
    assert saved.verdict.settings["figures"]
    pd.testing.assert_frame_equal(saved.scores, res.scores)
    assert all((tmp_path / "a" / f).is_file() for f in saved.verdict.settings["figures"])
    again = Result.load(saved.save(tmp_path / "b"))  # a loaded result saves its scores too
    assert [r["row"] for r in again.verdict.records] == rows
    assert again.verdict.settings["figures"] == saved.verdict.settings["figures"]


def test_a_torch_device_is_recorded_by_its_name(tmp_path):
    """A torch.device passed the checks, then failed writing the manifest (not JSON)."""
    dirscope.run(TinyConv(), ["fc"], tiny_data(), "basis", k=2, device=torch.device("cpu"), out=tmp_path / "r")
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["config"]["device"] == "cpu"


def test_data_without_the_models_channel_axis_is_told_to_add_it():
    with pytest.raises(DirscopeError) as err:
        dirscope.run("mnist-cnn", ["fc1"], np.zeros((4, 28, 28), np.float32), "basis", k=2, progress=False)
    assert str(err.value).startswith("the model cannot take inputs of shape [28, 28] (probe batch of 2): ")
    assert str(err.value).endswith(
        "; the model takes [1, 28, 28] per example: add the channel axis to the data (x[:, None] for an array x of "
        "shape [N, ...])"
    )


class TokenNet(nn.Module):
    """A small text model: an embedding, then a transformer block whose attention's out_proj never runs as a
    module (the block reads its weights directly), then a ReLU applied twice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 8)
        self.block = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 8)

    def forward(self, ids):
        return self.relu(self.fc(self.relu(self.block(self.embed(ids)))))


def token_data(n: int = 50) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 20, size=(n, 6)), rng.integers(0, 3, size=n)


def test_token_model_topk_is_the_brute_force_max_over_tokens():
    x, y = token_data()
    model = TokenNet().eval()
    res = dirscope.run(model, ["block", "fc"], (torch.from_numpy(x), y), "basis,random:3", k=4, progress=False)
    outputs: dict[str, torch.Tensor] = {}
    for name in ("block", "fc"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: outputs.setdefault(name, o))
    with torch.no_grad():
        model(torch.from_numpy(x))
    for layer in ("block", "fc"):
        values = (outputs[layer].double().numpy() @ res.vectors(layer).astype(np.float64).T).max(1)  # [N, K]
        for sign, descending in (("max", True), ("min", False)):
            rows = res.topk[(res.topk["layer"] == layer) & (res.topk["sign"] == sign)]
            got = rows.sort_values(["direction", "rank"])
            want = brute_topk(values, 4, descending)
            np.testing.assert_array_equal(got["index"].to_numpy().reshape(want.shape), want)
            np.testing.assert_array_equal(got["label"].to_numpy().reshape(want.shape), y[want])


def test_layer_all_leaves_out_layers_that_do_not_run_once_per_forward(capsys):
    x, y = token_data()
    res = dirscope.run(TokenNet(), "all", (x, y), "basis:2", k=2, progress=False)
    layers = [layer["name"] for layer in res.manifest["layers"]]
    assert "block.self_attn.out_proj" not in layers and "relu" not in layers
    assert {"embed", "block.linear1", "fc"} <= set(layers)
    err = capsys.readouterr().err
    assert "--layer all leaves out 2 layers that do not run exactly once per forward" in err
    assert "block.self_attn.out_proj, relu" in err
    with pytest.raises(DirscopeError, match="runs 2 times per forward pass"):  # named, it is still refused
        dirscope.run(TokenNet(), ["relu"], (x, y), "basis:2", k=2, progress=False)


def test_token_ids_stored_as_uint8_are_told_to_be_stored_as_another_integer_type():
    x, y = token_data()
    with pytest.raises(DirscopeError) as err:
        dirscope.run(TokenNet(), ["fc"], (x.astype(np.uint8), y), "basis", k=2, progress=False)
    assert str(err.value).endswith(
        "; the model starts with an embedding, which takes token ids: store them as an integer array other than "
        "uint8 (uint8 is read as pixels and scaled to [0, 1]), e.g. x.astype(np.int64)"
    )
    with pytest.raises(DirscopeError, match="the model starts with an embedding, which takes token ids"):
        dirscope.describe_layers(TokenNet(), data=x.astype(np.uint8))


def test_describe_layers_of_a_model_that_starts_with_an_embedding_probes_with_token_ids():
    infos = {i.name: i for i in dirscope.describe_layers(TokenNet(), input_shape=(6,))}
    assert infos["block"].shape == (6, 8) and infos["block.self_attn.out_proj"].calls == 0
