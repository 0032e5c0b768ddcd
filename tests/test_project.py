"""Projection and pooling against brute-force float64: max over positions of <phi_p(x), v>."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dirscope import project as proj
from dirscope.errors import DirscopeError


def brute(act: np.ndarray, dirs: np.ndarray, pool: str, channels_last: bool) -> np.ndarray:
    """[K, B] pooled projections in float64, position by position."""
    a = act.astype(np.float64)
    if a.ndim == 2:
        return dirs.astype(np.float64) @ a.T
    if channels_last:  # [B, T, D]
        per_pos = np.einsum("btd,kd->kbt", a, dirs.astype(np.float64))
    else:  # [B, C, ...spatial]
        per_pos = np.einsum("bcp,kc->kbp", a.reshape(a.shape[0], a.shape[1], -1), dirs.astype(np.float64))
    return per_pos.max(axis=2) if pool == "max" else per_pos.mean(axis=2)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["flat", "conv", "tokens", "conv3d"]),
    st.sampled_from(["max", "mean"]),
    st.integers(1, 7),
    st.integers(1, 9),
    st.integers(1, 6),
    st.integers(0, 2**31),
)
def test_pooled_projection_matches_brute_force(layout, pool, batch, channels, n_dirs, seed):
    rng = np.random.default_rng(seed)
    shape = {
        "flat": (batch, channels),
        "conv": (batch, channels, 3, 4),
        "tokens": (batch, 5, channels),
        "conv3d": (batch, channels, 2, 3, 2),
    }[layout]
    act = rng.normal(size=shape).astype(np.float32)
    dirs = rng.normal(size=(n_dirs, channels)).astype(np.float32)
    axis = proj.feature_axis(shape[1:])
    got = proj.project(torch.from_numpy(act), torch.from_numpy(dirs), pool, axis).numpy()
    np.testing.assert_allclose(got, brute(act, dirs, pool, layout == "tokens"), rtol=1e-5, atol=1e-5)


def test_max_pooling_projects_before_pooling():
    """Pooling the units first and projecting afterwards is a different (wrong) quantity."""
    act = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # [B=1, C=2, H=1, W=2]: unit 0 at p0, unit 1 at p1
    v = torch.tensor([[1.0, -1.0]]) / 2**0.5
    right = proj.project(act, v, "max", 0).item()
    wrong = (v @ act.amax(dim=(2, 3)).T).item()
    assert right == pytest.approx(2**-0.5) and wrong == pytest.approx(0.0)


def test_chunked_max_pooling_equals_unchunked(monkeypatch):
    rng = np.random.default_rng(0)
    act = torch.from_numpy(rng.normal(size=(37, 6, 5, 5)).astype(np.float32))
    dirs = torch.from_numpy(rng.normal(size=(11, 6)).astype(np.float32))
    whole = proj.project(act, dirs, "max", 0)
    monkeypatch.setattr(proj, "_MAX_BLOCK", 11 * 25 * 3)  # three examples per chunk
    # Equal up to float32 rounding: BLAS may sum in another order for another chunk size.
    torch.testing.assert_close(proj.project(act, dirs, "max", 0), whole, rtol=1e-6, atol=1e-6)


def test_feature_axis_rules():
    assert proj.feature_axis((128,)) == 0
    assert proj.feature_axis((32, 7, 7)) == 0
    assert proj.feature_axis((10, 384)) == 1
    with pytest.raises(DirscopeError):
        proj.feature_axis(())


def test_finite_rows():
    act = torch.ones(4, 2, 3)
    act[1, 0, 2] = float("nan")
    act[3, 1, 1] = float("-inf")
    assert proj.finite_rows(act).tolist() == [True, False, True, False]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_rows_whose_sums_overflow_are_still_finite(dtype):
    """The row-sum shortcut must fall back to checking values: huge finite rows overflow their sum (in
    float32, where float16 and bfloat16 rows are summed; float16's largest values do not overflow it)."""
    big = torch.finfo(dtype).max
    act = torch.full((5, 6), big, dtype=dtype)
    act[1, 3] = float("inf")
    act[2, 0], act[2, 1] = float("inf"), float("-inf")
    act[3] = 1.0
    act[4, 5] = float("nan")
    assert torch.isinf(act[0].float().sum()) == (dtype != torch.float16)
    assert proj.finite_rows(act).tolist() == [True, False, False, True, False]


def test_finite_rows_agree_with_a_check_of_every_value():
    gen = torch.Generator().manual_seed(0)
    act = torch.randn(64, 3, 5, generator=gen) * 1e37
    spots = torch.randint(0, act.numel(), (20,), generator=gen)
    act.view(-1)[spots[:10]] = float("nan")
    act.view(-1)[spots[10:]] = float("inf")
    expected = [bool(torch.isfinite(row).all()) for row in act]
    assert proj.finite_rows(act).tolist() == expected
    assert proj.finite_rows(act[torch.tensor(expected)]).all()
