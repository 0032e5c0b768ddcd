"""Direction families: unit rows, Haar rotations and their powers, PCA, files, and the seeding rules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dirscope.directions import (
    FAMILIES,
    DirectionSet,
    FamilyContext,
    build_directions,
    fractional_power,
    haar_rotation,
)
from dirscope.errors import DirscopeError
from dirscope.seeding import derive_seed, numpy_rng
from dirscope.specs import Spec


def build(specs: str, dim: int = 8, layer: str = "conv5", seed: int = 0, **kw) -> DirectionSet:
    return build_directions(specs, dim=dim, layer=layer, seed=seed, **kw)


def one_line_error(match: str, fn: Callable[[], object]) -> str:
    """Run ``fn``, expect a DirscopeError whose single-line message contains ``match``."""
    with pytest.raises(DirscopeError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    assert match in message, message
    return message


def rotation_with_flips(dim: int, n_flips: int, seed: int) -> np.ndarray:
    """V B V^T with B = diag(-1 x n_flips, a rotation by 1.1 rad, +1 ...): -1 eigenvalues by hand."""
    b = np.eye(dim)
    b[np.arange(n_flips), np.arange(n_flips)] = -1.0
    if dim - n_flips >= 2:
        c, s = np.cos(1.1), np.sin(1.1)
        b[n_flips : n_flips + 2, n_flips : n_flips + 2] = [[c, -s], [s, c]]
    v = haar_rotation(dim, numpy_rng(seed, "conjugate"))
    return v @ b @ v.T


def assert_orthogonal(q: np.ndarray, atol: float = 1e-10) -> None:
    np.testing.assert_allclose(q @ q.T, np.eye(len(q)), atol=atol)
    assert np.linalg.det(q) > 0


# --- every family -----------------------------------------------------------------------------------


def fit_data_for(dim: int) -> Callable[[], np.ndarray]:
    return lambda: numpy_rng(1, "fit").standard_normal((50, dim)).astype(np.float32)


@pytest.mark.parametrize("dim", [1, 2, 7, 32])
def test_every_family_gives_unit_rows(dim: int, tmp_path: Path) -> None:
    path = tmp_path / "mine.npy"
    np.save(path, numpy_rng(2, "file").standard_normal((3, dim)) * 7.0)
    specs = f"basis,basis:1,random:5,rotation,rotation:0.3,pca:1,file:{path}"
    d = build(specs, dim=dim, fit_data=fit_data_for(dim))
    assert d.vectors.dtype == np.float32
    assert d.vectors.shape == (dim + 1 + 5 + 2 * dim + 1 + 3, dim)
    np.testing.assert_allclose(np.linalg.norm(d.vectors.astype(np.float64), axis=1), 1.0, atol=1e-6)
    assert set(FAMILIES.names()) == {"basis", "file", "pca", "random", "rotation"}


def test_dimension_one_edge_cases(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.array([-3.0]))
    d = build(
        f"basis,random:3,rotation,rotation:0.5,pca:1,file:{tmp_path / 'd.npy'}",
        dim=1,
        fit_data=fit_data_for(1),
    )
    assert d.vectors[d.rows("basis")].tolist() == [[1.0]]
    assert np.abs(d.vectors[d.rows("random")]).tolist() == [[1.0]] * 3
    assert d.vectors[d.rows("rotation")].tolist() == [[1.0]]  # SO(1) = {1}
    assert d.vectors[d.rows("rotation:0.5")].tolist() == [[1.0]]
    assert d.vectors[d.rows("pca")].tolist() == [[1.0]]
    assert d.vectors[d.rows("file:d")].tolist() == [[-1.0]]
    for seed in range(20):
        assert haar_rotation(1, numpy_rng(seed)).tolist() == [[1.0]]


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 40), seed=st.integers(0, 2**32), alpha=st.floats(0.0, 1.0))
def test_unit_norm_property(dim: int, seed: int, alpha: float) -> None:
    d = build(f"basis:{dim},random:3,rotation:{alpha!r}", dim=dim, seed=seed)
    np.testing.assert_allclose(np.linalg.norm(d.vectors.astype(np.float64), axis=1), 1.0, atol=1e-6)


# --- basis --------------------------------------------------------------------------------------------


def test_basis_is_the_identity_with_units() -> None:
    d = build("basis", dim=5)
    assert np.array_equal(d.vectors, np.eye(5, dtype=np.float32))
    assert d.unit.tolist() == [0, 1, 2, 3, 4]
    assert d.member.tolist() == [0, 1, 2, 3, 4]
    assert np.array_equal(build("basis", dim=5, seed=9, layer="other").vectors, d.vectors)


def test_basis_sample_is_seeded_sorted_and_distinct() -> None:
    d = build("basis:10", dim=100)
    units = d.unit
    assert len(set(units.tolist())) == 10 and units.tolist() == sorted(units.tolist())
    assert np.array_equal(d.vectors, np.eye(100, dtype=np.float32)[units])
    assert np.array_equal(build("basis:10", dim=100).unit, units)
    assert not np.array_equal(build("basis:10", dim=100, seed=1).unit, units)
    assert not np.array_equal(build("basis:10", dim=100, layer="fc6").unit, units)
    assert build("basis:100", dim=100).unit.tolist() == list(range(100))
    one_line_error("has only 100", lambda: build("basis:101", dim=100))
    one_line_error("integer >= 1", lambda: build("basis:0", dim=100))
    one_line_error("integer >= 1", lambda: build("basis:x", dim=100))


# --- random -------------------------------------------------------------------------------------------


def test_random_prefix_property_and_repeats() -> None:
    small, large = build("random:32", dim=16), build("random:64", dim=16)
    assert np.array_equal(small.vectors, large.vectors[:32])
    twice = build("random:64,random:64", dim=16)
    assert np.array_equal(twice.vectors[:64], large.vectors)
    assert not np.allclose(twice.vectors[:64], twice.vectors[64:])
    assert twice.member.tolist() == list(range(64)) * 2
    assert set(twice.info) == {"random:64", "random:64#1"}
    assert (twice.unit == -1).all()


def test_random_needs_a_count() -> None:
    one_line_error("needs an argument", lambda: build("random"))
    one_line_error("integer >= 1", lambda: build("random:-3"))


def test_random_is_isotropic() -> None:
    v = build("random:20000", dim=4).vectors.astype(np.float64)
    np.testing.assert_allclose(v.mean(axis=0), 0.0, atol=0.02)
    np.testing.assert_allclose(v.T @ v / len(v), np.eye(4) / 4, atol=0.01)


# --- seeding rules ------------------------------------------------------------------------------------


def test_same_seed_same_bits() -> None:
    specs = "basis:3,random:10,rotation,rotation:0.25"
    a, b = build(specs, seed=5), build(specs, seed=5)
    assert a.vectors.tobytes() == b.vectors.tobytes()
    assert a.info == b.info
    assert build(specs, seed=6).vectors.tobytes() != a.vectors.tobytes()


def test_layers_draw_independently() -> None:
    specs = "random:10,rotation"
    a, b = build(specs, layer="conv4"), build(specs, layer="conv5")
    assert not np.allclose(a.vectors, b.vectors)


def test_a_block_ignores_its_neighbours() -> None:
    """Adding a family never shifts another family's draws."""
    alone = build("random:10")
    assert np.array_equal(build("basis,rotation,random:10").vectors[-10:], alone.vectors)


def test_seed_and_layer_leave_deterministic_families_alone(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.ones((2, 8)))
    specs = f"basis,pca:3,file:{tmp_path / 'f.npy'}"
    a = build(specs, fit_data=fit_data_for(8))
    b = build(specs, seed=99, layer="conv5_again", fit_data=fit_data_for(8))
    assert np.array_equal(a.vectors, b.vectors)


def test_every_rotation_spec_shares_one_q() -> None:
    d = build("rotation,rotation:1,rotation:0.5,rotation:0", dim=12)
    q = d.vectors[d.rows("rotation")]
    assert np.array_equal(d.vectors[d.rows("rotation:1")], q)
    assert np.array_equal(d.vectors[d.rows("rotation:0")], np.eye(12, dtype=np.float32))
    half = d.vectors[d.rows("rotation:0.5")].astype(np.float64)
    np.testing.assert_allclose(half @ half, q, atol=1e-5)
    assert len({d.info[k]["seed"] for k in d.info}) == 1


# --- rotation -----------------------------------------------------------------------------------------


def test_rotation_is_a_proper_rotation() -> None:
    for seed in range(20):
        d = build("rotation", dim=9, seed=seed)
        q = d.vectors
        np.testing.assert_allclose(q @ q.T, np.eye(9), atol=1e-5)
        assert np.linalg.det(q.astype(np.float64)) == pytest.approx(1.0, abs=1e-5)
        q64 = haar_rotation(9, numpy_rng(seed, "direct"))
        assert np.linalg.det(q64) == pytest.approx(1.0, abs=1e-12)


def haar_statistics_hold(sample: Callable[[int], np.ndarray], dim: int, n: int = 3000) -> bool:
    """Haar on SO(dim) gives each entry mean 0 and variance 1/dim; check two entries to ~4 standard errors."""
    qs = np.stack([sample(seed) for seed in range(n)])
    ok = True
    for i, j in [(0, 0), (dim - 1, dim - 1)]:
        x = qs[:, i, j]
        ok &= abs(x.mean()) < 4.0 * np.sqrt(1.0 / dim / n)
        ok &= abs(x.var() - 1.0 / dim) < 0.015
    return bool(ok)


def test_haar_statistics_and_that_plain_qr_fails_them() -> None:
    dim = 6
    assert haar_statistics_hold(lambda s: haar_rotation(dim, numpy_rng(s, "haar")), dim)

    def plain_qr(seed: int) -> np.ndarray:
        return np.linalg.qr(numpy_rng(seed, "haar").standard_normal((dim, dim)))[0]

    assert not haar_statistics_hold(plain_qr, dim)


def test_fractional_power_ends_are_exact() -> None:
    q = haar_rotation(10, numpy_rng(0))
    assert np.array_equal(fractional_power(q, 0.0), np.eye(10))
    assert np.array_equal(fractional_power(q, 1.0), q)


@pytest.mark.parametrize("dim", [2, 5, 16, 33])
def test_fractional_powers_compose(dim: int) -> None:
    q = haar_rotation(dim, numpy_rng(dim))
    for a, b in [(0.2, 0.3), (0.5, 0.5), (0.1, 0.9), (0.7, 0.25)]:
        qa, qb = fractional_power(q, a), fractional_power(q, b)
        assert_orthogonal(qa)
        np.testing.assert_allclose(qa @ qb, fractional_power(q, a + b), atol=1e-10)
    np.testing.assert_allclose(fractional_power(q, 0.5) @ fractional_power(q, 0.5), q, atol=1e-10)


@pytest.mark.parametrize(("dim", "n_flips"), [(2, 2), (4, 4), (4, 2), (5, 2), (7, 4), (9, 2)])
def test_fractional_power_pairs_minus_one_eigenvalues(dim: int, n_flips: int) -> None:
    q = rotation_with_flips(dim, n_flips, seed=dim)
    assert np.sum(np.isclose(np.linalg.eigvals(q), -1.0)) == n_flips
    half = fractional_power(q, 0.5)
    assert_orthogonal(half)
    np.testing.assert_allclose(half @ half, q, atol=1e-10)
    third = fractional_power(q, 1 / 3)
    np.testing.assert_allclose(third @ third @ third, q, atol=1e-10)


def test_fractional_power_pairs_minus_ones_that_are_not_adjacent() -> None:
    q = np.diag([-1.0, 1.0, -1.0])  # already in Schur form, so the -1 blocks stay apart
    half = fractional_power(q, 0.5)
    assert_orthogonal(half)
    np.testing.assert_allclose(half @ half, q, atol=1e-12)
    assert half[1, 1] == 1.0  # the +1 axis stays fixed


def test_fractional_power_refuses_reflections_and_non_rotations() -> None:
    reflection = np.diag([1.0, 1.0, -1.0])
    with pytest.raises(ValueError, match="det"):
        fractional_power(reflection, 0.5)
    with pytest.raises(ValueError, match="orthogonal"):
        fractional_power(np.diag([1.0, 2.0]), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        fractional_power(np.eye(2), 1.5)


@settings(max_examples=60, deadline=None)
@given(
    dim=st.integers(1, 40),
    seed=st.integers(0, 2**32),
    a=st.floats(0.0, 0.5),
    b=st.floats(0.0, 0.5),
    n_flips=st.integers(0, 3),
)
def test_fractional_power_property(dim: int, seed: int, a: float, b: float, n_flips: int) -> None:
    n_flips = min(2 * n_flips, dim - dim % 2)
    q = rotation_with_flips(dim, n_flips, seed) if n_flips else haar_rotation(dim, numpy_rng(seed))
    qa, qb = fractional_power(q, a), fractional_power(q, b)
    assert_orthogonal(qa)
    np.testing.assert_allclose(qa @ qb, fractional_power(q, a + b), atol=1e-9)


def test_rotation_alpha_labels_and_errors() -> None:
    d = build("rotation:.5,rotation:1e-1,rotation:0,rotation:-0,rotation:1.0")
    assert d.families() == ["rotation:0.5", "rotation:0.1", "rotation:0", "rotation:1"]
    assert d.info["rotation:.5"]["alpha"] == 0.5
    for bad in ["1.5", "-0.1", "nan", "inf"]:
        one_line_error("0 <= ALPHA <= 1", lambda bad=bad: build(f"rotation:{bad}"))
    one_line_error("needs a number", lambda: build("rotation:half"))


# --- pca ----------------------------------------------------------------------------------------------


def test_pca_matches_svd_on_known_covariance() -> None:
    rng = numpy_rng(3, "pca-test")
    dim, m = 6, 4000
    basis = haar_rotation(dim, rng)
    scales = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    data = (rng.standard_normal((m, dim)) * scales) @ basis + 10.0  # rows of `basis` are the true axes
    calls: list[int] = []

    def fit_data() -> np.ndarray:
        calls.append(1)
        return data.astype(np.float32)

    d = build("pca:4,pca:2", dim=dim, fit_data=fit_data)
    assert len(calls) == 1  # fetched once for both blocks
    components = d.vectors[d.rows("pca")][:4].astype(np.float64)
    centred = data.astype(np.float32).astype(np.float64)
    centred -= centred.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(np.sum(components * vt[:4], axis=1)), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.abs(np.sum(components * basis[:4], axis=1)), 1.0, atol=0.01)
    info = d.info["pca:4"]
    np.testing.assert_allclose(info["explained_variance_ratio"], (s**2 / np.sum(s**2))[:4], rtol=1e-6)
    np.testing.assert_allclose(info["explained_variance"], (s**2 / (m - 1))[:4], rtol=1e-6)
    assert info["n_fit"] == m
    peaks = components[np.arange(4), np.abs(components).argmax(axis=1)]
    assert (peaks > 0).all()
    assert np.array_equal(d.vectors[4:6], d.vectors[:2])


def test_pca_is_not_fetched_unless_asked() -> None:
    def fail() -> np.ndarray:
        raise AssertionError("fit data fetched")

    build("basis,random:3", fit_data=fail)


def test_pca_errors() -> None:
    one_line_error("has only 8", lambda: build("pca:9", fit_data=fit_data_for(8)))
    one_line_error("needs activations", lambda: build("pca:2"))
    one_line_error("at least 2", lambda: build("pca:2", fit_data=lambda: np.ones((1, 8), np.float32)))
    one_line_error("constant", lambda: build("pca:2", fit_data=lambda: np.ones((5, 8), np.float32)))
    nan = np.full((5, 8), np.nan, np.float32)
    one_line_error("NaN", lambda: build("pca:2", fit_data=lambda: nan))


def test_unknown_family_fails_before_any_fit() -> None:
    def fail() -> np.ndarray:
        raise AssertionError("fit data fetched")

    message = one_line_error("did you mean 'rotation'", lambda: build("pca:2,rotaton", fit_data=fail))
    assert "known:" in message


# --- file ---------------------------------------------------------------------------------------------


def test_file_rows_are_normalised(tmp_path: Path) -> None:
    rows = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, -2.0], [1e-300, 0.0, 1e-300], [1e300, 1e300, 0.0]])
    np.save(tmp_path / "mine.npy", rows)
    np.save(tmp_path / "one.npy", np.array([0, 5, 0], dtype=np.int32))
    d = build(f"file:{tmp_path / 'mine.npy'},file:{tmp_path / 'one.npy'}", dim=3)
    r = np.sqrt(0.5)
    expected = [[0.6, 0.8, 0.0], [0.0, 0.0, -1.0], [r, 0.0, r], [r, r, 0.0], [0.0, 1.0, 0.0]]
    np.testing.assert_allclose(d.vectors, expected, atol=1e-7)
    assert d.families() == ["file:mine", "file:one"]
    assert d.specs[0] == f"file:{tmp_path / 'mine.npy'}"


def test_file_errors(tmp_path: Path) -> None:
    def load(name: str, dim: int = 3) -> DirectionSet:
        return build(f"file:{tmp_path / name}", dim=dim)

    one_line_error("not found", lambda: load("missing.npy"))
    (tmp_path / "text.npy").write_text("not\nan array\n")
    one_line_error("not a readable .npy", lambda: load("text.npy"))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    one_line_error("not a readable .npy", lambda: load("objects.npy"))
    np.savez(tmp_path / "archive.npz", a=np.ones(3))
    one_line_error(".npz", lambda: load("archive.npz"))
    np.save(tmp_path / "words.npy", np.array(["a", "b", "c"]))
    one_line_error("real numbers", lambda: load("words.npy"))
    np.save(tmp_path / "cube.npy", np.ones((2, 2, 3)))
    one_line_error("[K, D]", lambda: load("cube.npy"))
    np.save(tmp_path / "empty.npy", np.ones((0, 3)))
    one_line_error("no rows", lambda: load("empty.npy"))
    np.save(tmp_path / "wide.npy", np.ones((2, 5)))
    message = one_line_error("dimension 5", lambda: load("wide.npy"))
    assert "wide.npy" in message and "'conv5' has dimension 3" in message
    np.save(tmp_path / "zero.npy", np.array([[1.0, 0, 0], [0, 0, 0]]))
    one_line_error("all-zero rows 1", lambda: load("zero.npy"))
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan, 0], [1, 1, 1], [np.inf, 0, 0]]))
    one_line_error("rows 0, 2", lambda: load("nan.npy"))
    one_line_error("needs an argument", lambda: build("file"))


# --- the direction set --------------------------------------------------------------------------------


def test_direction_set_bookkeeping(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.ones((2, 4)))
    d = build_directions(
        [Spec("basis", "2"), "random:3", "rotation:0.50", f"file:{tmp_path / 'w.npy'}"],
        dim=4,
        layer="l",
        seed=1,
    )
    assert len(d) == 2 + 3 + 4 + 2 and d.dim == 4
    assert d.families() == ["basis", "random", "rotation:0.5", "file:w"]
    assert d.rows("random").tolist() == [2, 3, 4]
    assert d.member.tolist() == [0, 1, 0, 1, 2, 0, 1, 2, 3, 0, 1]
    assert (d.unit[:2] >= 0).all() and (d.unit[2:] == -1).all()
    assert d.member.dtype == d.unit.dtype == np.int64
    records = d.to_records()
    assert records[2] == {"direction": 2, "family": "random", "member": 0, "unit": -1, "spec": "random:3"}
    assert [r["spec"] for r in records] == d.specs
    assert d.info["rotation:0.50"]["start"] == 5 and d.info["rotation:0.50"]["stop"] == 9
    one_line_error("did you mean 'random'", lambda: d.rows("randon"))
    one_line_error("empty direction family list", lambda: build(" , "))


def test_family_context_carries_the_layer() -> None:
    ctx = FamilyContext(dim=3, seed=0, layer="fc7")
    one_line_error("'fc7'", lambda: FAMILIES.build("basis:4", ctx=ctx))


def test_sweep_expands_to_rotation_powers_of_one_fixed_rotation():
    d = build_directions("sweep:6,rotation", dim=7, layer="l", seed=3)
    alphas = ["0", "0.2", "0.4", "0.6", "0.8", "1"]
    assert d.families() == [f"rotation:{a}" for a in alphas] + ["rotation"]
    np.testing.assert_array_equal(d.vectors[d.rows("rotation:0")], np.eye(7, dtype=np.float32))
    np.testing.assert_array_equal(d.vectors[d.rows("rotation:1")], d.vectors[d.rows("rotation")])
    half = build_directions("rotation:0.4", dim=7, layer="l", seed=3)
    np.testing.assert_array_equal(d.vectors[d.rows("rotation:0.4")], half.vectors)
    with pytest.raises(DirscopeError, match="sweep"):
        build_directions("sweep:1", dim=7, layer="l", seed=3)
    with pytest.raises(DirscopeError, match="did you mean 'sweep'"):
        build_directions("swep:3", dim=7, layer="l", seed=3)


# --- repeats --------------------------------------------------------------------------------------------


def test_repeated_family_draws_its_own_stream() -> None:
    """``random:4,random:8`` once gave rows 0-3 equal to rows 4-7: the seed counted spec text, not family."""
    d = build("random:4,random:8", dim=10)
    assert np.array_equal(d.vectors[:4], build("random:4", dim=10).vectors)  # the first block is as alone
    assert not np.isclose(np.abs(d.vectors @ d.vectors.T)[np.triu_indices(12, 1)], 1.0).any()
    assert d.info["random:4"]["seed"] != d.info["random:8"]["seed"]
    samples = build("basis:3,basis:5", dim=10)
    assert np.array_equal(samples.unit[:3], build("basis:3", dim=10).unit)
    assert samples.info["basis:3"]["seed"] != samples.info["basis:5"]["seed"]
    assert samples.info["basis:5"]["seed"] == build("basis:5,basis:5", dim=10).info["basis:5#1"]["seed"]


def test_specs_without_repeats_keep_their_seeds() -> None:
    d = build("basis:3,random:10,rotation,rotation:0.25,sweep:3", seed=5)
    names = {"basis:3": "basis", "random:10": "random"}
    for key, entry in d.info.items():
        assert entry["seed"] == derive_seed(5, "conv5", names.get(key, "rotation"), "0"), key


def test_a_repeated_alpha_draws_a_fresh_rotation() -> None:
    d = build("rotation:0.5,rotation:.50,sweep:3,sweep:3", dim=6)
    assert d.families() == ["rotation:0.5", "rotation:0", "rotation:1"]
    seeds = [entry["seed"] for entry in d.info.values()]
    assert seeds[0] != seeds[1] and seeds[2] == seeds[0] and seeds[4] == seeds[0]  # 0.5 twice; 0 and 1 on Q
    assert seeds[5] == seeds[1] and seeds[6] != seeds[1] and seeds[7] == seeds[1]  # second sweep: next Q per ALPHA
    half = d.vectors[d.rows("rotation:0.5")].astype(np.float64)
    assert not np.allclose(half[:6], half[6:12])


def test_files_of_one_name_stay_apart(tmp_path: Path) -> None:
    for folder, rows in [("fa", np.eye(6)[:2]), ("fb", -np.eye(6)[3:5]), ("x/fa", np.eye(6)[5])]:
        (tmp_path / folder).mkdir(parents=True)
        np.save(tmp_path / folder / "dirs.npy", rows)
    d = build(f"file:{tmp_path / 'fa/dirs.npy'},file:{tmp_path / 'fb/dirs.npy'}", dim=6)
    assert d.families() == ["file:fa/dirs", "file:fb/dirs"]
    assert d.member.tolist() == [0, 1, 0, 1]
    deep = build(f"file:{tmp_path / 'fa/dirs.npy'},file:{tmp_path / 'x/fa/dirs.npy'}", dim=6)
    assert deep.families() == [f"file:{tmp_path.name}/fa/dirs", "file:x/fa/dirs"]
    same = build(f"file:{tmp_path / 'fa/dirs.npy'},file:{tmp_path / 'fa/../fa/dirs.npy'}", dim=6)
    assert same.families() == ["file:dirs"]  # one file twice is one family, a repeat like pca:4,pca:2
