"""Projection of activations onto directions, then pooling over positions.

For a spatial layer the projection is taken at every position first and pooled afterwards: with max
pooling, value(x, v) = max_p <phi_p(x), v>, a direction's true maximal response. (Pooling the units first
and projecting afterwards is a different quantity.) Mean pooling commutes with the projection, so the
positions are averaged first, which is cheaper and equal up to rounding.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .errors import DirscopeError

Pool = Literal["max", "mean"]
POOLS = ("max", "mean")
# Elements of the [b, K, positions] block built per chunk of a max-pooled projection (~256 MiB of float32).
_MAX_BLOCK = 1 << 26


FEATURE_AXES = ("auto", "first", "last")
# Modules whose 2-D per-example output is [C, L] (channels first), unlike the [T, D] of a token layer; the lazy
# and transposed variants are subclasses of these.
CHANNELS_FIRST_1D: tuple[type[nn.Module], ...] = (
    *(nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, nn.InstanceNorm1d, nn.MaxPool1d, nn.AvgPool1d, nn.LPPool1d),
    *(nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool1d, nn.MaxUnpool1d, nn.ConstantPad1d, nn.ReflectionPad1d),
    *(nn.ReplicationPad1d, nn.CircularPad1d, nn.Dropout1d),
)


def feature_axis(shape: tuple[int, ...], layout: str = "auto", module: nn.Module | None = None) -> int:
    """Where the features of a per-example activation live. ``auto``: [D] -> 0; [C,H,W] or [C,D,H,W] -> 0
    (channels first, as conv layers); [T,D] -> 1 (channels last, as token sequences), except the [C,L]
    output of a 1-D conv, norm or pooling ``module`` -> 0. ``first`` and ``last`` say it for every layer of
    two or more axes, where the shape alone cannot."""
    if not shape:
        raise DirscopeError("a layer with a scalar output per example has no directions; choose another layer")
    if len(shape) == 1 or layout == "first":
        return 0
    if layout == "last":
        return len(shape) - 1
    if len(shape) == 2:
        return 0 if isinstance(module, CHANNELS_FIRST_1D) else 1
    return 0


def positions(act: torch.Tensor, axis: int) -> torch.Tensor:
    """View a batch of activations as [B, D, P]: features by positions (P = 1 for flat layers)."""
    moved = act.movedim(axis + 1, 1) if axis != 0 else act
    return moved.reshape(moved.shape[0], moved.shape[1], -1)


def project(act: torch.Tensor, directions: torch.Tensor, pool: Pool, axis: int) -> torch.Tensor:
    """Pooled projections [K, B] (float32) of a batch of activations onto directions [K, D]."""
    x = positions(act.float(), axis)
    if x.shape[2] == 1 or pool == "mean":
        return directions @ x.mean(dim=2).T if x.shape[2] > 1 else directions @ x[:, :, 0].T
    n_dirs, n_pos = directions.shape[0], x.shape[2]
    chunk = max(1, _MAX_BLOCK // max(1, n_dirs * n_pos))
    out = torch.empty(n_dirs, x.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], chunk):
        block = torch.matmul(directions, x[start : start + chunk])  # [b, K, P]
        out[:, start : start + chunk] = block.amax(dim=2).T
    return out


def finite_rows(act: torch.Tensor) -> torch.Tensor:
    """Boolean [B]: rows whose activations are all finite.

    On the CPU the row sums answer first, at a fraction of the cost: a NaN or an infinity makes its row's
    sum non-finite, so finite sums clear every row. Only when some sum is not finite (a non-finite value, or
    finite values whose sum overflows; float16 is summed in float32, so that is rare) is each value checked.
    On a GPU that test would wait for the batch's forward pass, so every value is checked there.
    """
    flat = act.reshape(act.shape[0], -1)
    if flat.device.type == "cpu":
        sums_finite = torch.isfinite(flat.sum(dim=1, dtype=torch.promote_types(flat.dtype, torch.float32)))
        if bool(sums_finite.all()):
            return sums_finite
    return torch.isfinite(flat).all(dim=1)
