"""Label-free statistics per direction, from a run's ``stats`` and ``topk`` tables (whole dataset).

- ``kurtosis``: Pearson kurtosis as in ``stats`` (about 3 in a non-privileged basis, Elhage et al. 2023).
- ``zero_fraction``: share of exact zeros.
- ``near_zero_fraction``: share of values *known from the stored histogram* to satisfy |v| <= B with
  B = ``eps`` x max(|min|, |max|): the values in bins [lo, lo + w) lying entirely inside [-B, B], plus
  the exact zeros even when their bin [0, w) is wider than B. So a value v counts iff v == 0 or
  -B <= floor(v / w) w and floor(v / w) w + w <= B; zero_fraction <= near_zero_fraction <= the true
  share of |v| <= B, and the bound tightens as bins narrow (about span / bins wide).
- ``selectivity``: (mean of the top-k values - mean) / std, NaN where std is 0 or no top rows exist.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DirscopeError

NEAR_ZERO_EPS = 0.1
_STATS_COLUMNS = (
    "layer",
    "direction",
    "family",
    "count",
    "mean",
    "std",
    "kurtosis",
    "min",
    "max",
    "zeros",
    "hist_start",
    "hist_width",
    "hist_counts",
)
_TOPK_COLUMNS = ("layer", "direction", "sign", "rank", "value")
_KEY = ["layer", "direction"]


def direction_statistics(
    stats: pd.DataFrame, topk: pd.DataFrame, *, k: int | None = None, eps: float = NEAR_ZERO_EPS
) -> pd.DataFrame:
    """One row per (layer, direction), in ``stats`` order: layer, direction, family, kurtosis,
    zero_fraction, near_zero_fraction, selectivity. ``k`` limits selectivity to the top k ranks (all
    stored ones by default)."""
    if k is not None and k < 1:
        raise DirscopeError(f"selectivity needs k >= 1 top examples, got k={k}")
    _require(stats, _STATS_COLUMNS, "stats")
    _require(topk, _TOPK_COLUMNS, "topk")
    count = stats["count"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        zero_fraction = stats["zeros"].to_numpy(dtype=np.float64) / count
        near_zero = near_zero_counts(stats, eps) / count
    out = stats[["layer", "direction", "family", "kurtosis"]].reset_index(drop=True)
    out["zero_fraction"] = zero_fraction
    out["near_zero_fraction"] = near_zero
    out["selectivity"] = selectivity(stats, topk, k)
    return out


def near_zero_counts(stats: pd.DataFrame, eps: float = NEAR_ZERO_EPS) -> np.ndarray:
    """float64 [rows]: values in histogram bins inside [-B, B], B = eps max|v|, plus exact zeros elsewhere.

    Zero always falls in the bin [0, w), which lies inside the band iff w <= B.
    """
    if not 0 <= eps <= 1:
        raise DirscopeError(f"the near-zero band eps must lie in [0, 1], got {eps}")
    if stats.empty:
        return np.zeros(0)
    counts = np.stack([np.asarray(c, dtype=np.int64) for c in stats["hist_counts"]])
    start = stats["hist_start"].to_numpy(dtype=np.float64)
    width = stats["hist_width"].to_numpy(dtype=np.float64)
    extent = np.maximum(np.abs(stats["min"].to_numpy(np.float64)), np.abs(stats["max"].to_numpy(np.float64)))
    band = eps * extent
    lo = start[:, None] + np.arange(counts.shape[1]) * width[:, None]  # exact: multiples of a power of two
    inside = (lo >= -band[:, None]) & (lo + width[:, None] <= band[:, None])
    zeros_elsewhere = np.where(width <= band, 0, stats["zeros"].to_numpy(dtype=np.int64))
    return ((counts * inside).sum(axis=1) + zeros_elsewhere).astype(np.float64)


def selectivity(stats: pd.DataFrame, topk: pd.DataFrame, k: int | None = None) -> np.ndarray:
    """float64 [rows]: (mean of the top-k values - mean) / std for each stats row."""
    top = topk[topk["sign"] == "max"]
    if k is not None:
        top = top[top["rank"] < k]
    top_mean = top.assign(value=top["value"].astype(np.float64)).groupby(_KEY)["value"].mean()
    keys = pd.MultiIndex.from_frame(stats[_KEY])
    peak = top_mean.reindex(keys).to_numpy(dtype=np.float64)
    std = stats["std"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(std > 0, (peak - stats["mean"].to_numpy(dtype=np.float64)) / std, np.nan)


def _require(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DirscopeError(f"the run's {name} table lacks {', '.join(missing)}; rerun `dirscope run` to rebuild it")
