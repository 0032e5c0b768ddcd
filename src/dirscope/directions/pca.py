"""``pca:N``: the top principal directions of the layer's activations (Dey et al. compare them to units)."""

from __future__ import annotations

import numpy as np

from ..errors import DirscopeError
from ..specs import parse_int
from .base import FAMILIES, FamilyBlock, FamilyContext, normalize_rows


def principal_directions(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvectors (rows, float64) of the centred covariance by decreasing eigenvalue, and the eigenvalues.

    The sign of each component is fixed (largest-magnitude entry positive) so runs are reproducible
    across LAPACK builds.
    """
    x = np.asarray(data, dtype=np.float64)
    x = x - x.mean(axis=0)
    cov = x.T @ x / (len(x) - 1)
    values, vectors = np.linalg.eigh(cov)  # ascending
    components = vectors[:, ::-1].T.copy()
    peaks = components[np.arange(len(components)), np.abs(components).argmax(axis=1)]
    components *= np.where(peaks < 0.0, -1.0, 1.0)[:, None]
    return components, np.clip(values[::-1], 0.0, None)


@FAMILIES.register("pca", help="the top N principal directions of the layer's activations", takes_arg=True)
def build(arg: str | None, *, ctx: FamilyContext) -> FamilyBlock:
    """Fit on ``ctx.fit_data()``, fetched only here since gathering activations costs a pass over data."""
    n = parse_int(arg, "pca:N")
    if n > ctx.dim:
        raise DirscopeError(f"pca:{n} asks for {n} components but layer {ctx.layer!r} has only {ctx.dim}")
    if ctx.fit_data is None:
        raise DirscopeError(f"pca:{n} needs activations to fit on; give fitting data for layer {ctx.layer!r}")
    data = np.asarray(ctx.fit_data())
    if data.ndim != 2 or data.shape[1] != ctx.dim:
        raise ValueError(f"fit data for layer {ctx.layer!r} has shape {data.shape}, expected [M, {ctx.dim}]")
    if len(data) < 2:
        raise DirscopeError(
            f"pca:{n} needs at least 2 activation rows of layer {ctx.layer!r}, got {len(data)}; fit on more"
        )
    if not np.isfinite(data).all():
        raise DirscopeError(f"activations of layer {ctx.layer!r} hold NaN or inf; pca cannot fit on them")
    if not np.ptp(data, axis=0).any():
        raise DirscopeError(
            f"activations of layer {ctx.layer!r} are constant over the fit data; pca directions are undefined"
        )
    components, variance = principal_directions(data)
    return FamilyBlock(
        normalize_rows(components[:n]),
        info={
            "n_fit": len(data),
            "explained_variance": variance[:n].tolist(),
            "explained_variance_ratio": (variance[:n] / variance.sum()).tolist(),
        },
    )
