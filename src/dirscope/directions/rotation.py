"""``rotation[:ALPHA]``: the rows of a Haar-random rotation Q, or of its fractional power Q^ALPHA.

This is Network Dissection's rotation experiment: Q f(x) is as discriminative as f(x), so if units are
special it is because of their basis, and a sweep over ALPHA moves steadily from the units (ALPHA = 0)
to a random orthonormal basis (ALPHA = 1) along one fixed rotation.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from ..errors import DirscopeError
from ..seeding import numpy_rng
from ..specs import parse_float
from .base import FAMILIES, REPEAT_KEYS, FamilyBlock, FamilyContext, normalize_rows


def haar_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random rotation in SO(dim), float64.

    Plain QR of a Gaussian matrix is not Haar: LAPACK's sign convention for R's diagonal biases Q.
    Folding those signs into Q makes it Haar on O(dim) (Mezzadri 2007). We then negate the last row
    when det(Q) = -1, a fixed reflection that maps Haar on O(dim)'s other half to Haar on SO(dim).
    SO(dim) and not O(dim) because the fractional power Q^alpha, a path of rotations from I to Q,
    exists only for proper rotations: a reflection is not connected to the identity.
    """
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.where(np.diag(r) < 0.0, -1.0, 1.0)  # scale column j by sign(R_jj)
    if np.linalg.slogdet(q)[0] < 0:
        q[-1] = -q[-1]
    return q


def fractional_power(q: np.ndarray, alpha: float) -> np.ndarray:
    """Q^alpha of a rotation Q in SO(D), for 0 <= alpha <= 1, through the real Schur decomposition.

    Q = Z T Z^T with T block-diagonal: 2x2 blocks rotate a plane by theta, 1x1 blocks are +1 or -1.
    Q^alpha = Z T^alpha Z^T turns each plane by alpha*theta. The -1 blocks come in pairs for SO(D) and
    are paired into planes turned by pi. alpha = 0 and 1 return I and Q exactly.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 2 or q.shape[0] != q.shape[1]:
        raise ValueError(f"fractional_power needs a square matrix, got shape {q.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"fractional_power needs 0 <= alpha <= 1, got {alpha}")
    n = q.shape[0]
    if alpha == 0.0:
        return np.eye(n)
    if alpha == 1.0:
        return q.copy()
    if not np.allclose(q @ q.T, np.eye(n), rtol=0.0, atol=1e-8):
        raise ValueError("fractional_power needs an orthogonal matrix")
    t, z = scipy.linalg.schur(q, output="real")
    planes: list[tuple[int, int, float]] = []
    fixed: list[int] = []
    flips: list[int] = []
    i = 0
    while i < n:
        if i + 1 < n and t[i + 1, i] != 0.0:  # LAPACK sets the subdiagonal exactly 0 between blocks
            sin = (t[i + 1, i] - t[i, i + 1]) / 2.0
            cos = (t[i, i] + t[i + 1, i + 1]) / 2.0
            planes.append((i, i + 1, math.atan2(sin, cos)))
            i += 2
        else:
            (flips if t[i, i] < 0.0 else fixed).append(i)
            i += 1
    if len(flips) % 2:
        raise ValueError("fractional_power needs det(Q) = +1: a reflection has no real fractional power")
    planes += [(a, b, math.pi) for a, b in zip(flips[::2], flips[1::2], strict=True)]
    t_alpha = np.zeros((n, n))
    t_alpha[fixed, fixed] = 1.0
    for a, b, theta in planes:
        c, s = math.cos(alpha * theta), math.sin(alpha * theta)
        t_alpha[a, a] = t_alpha[b, b] = c
        t_alpha[a, b], t_alpha[b, a] = -s, s
    return z @ t_alpha @ z.T


def _parse_alpha(arg: str) -> float:
    alpha = parse_float(arg, "rotation:ALPHA")
    if not 0.0 <= alpha <= 1.0:
        raise DirscopeError(f"rotation:ALPHA needs 0 <= ALPHA <= 1 (0 = the units, 1 = the full rotation), got {arg!r}")
    return alpha + 0.0  # turns -0.0 into 0.0


def label(arg: str | None) -> str:
    """``rotation`` or ``rotation:ALPHA`` with ALPHA in its shortest form, so ``.5`` and ``0.50`` are one family."""
    return "rotation" if arg is None else f"rotation:{np.format_float_positional(_parse_alpha(arg), trim='-')}"


# Specs of different ALPHA share one Q (a sweep moves along one rotation); a repeated ALPHA draws a fresh Q.
REPEAT_KEYS["rotation"] = label


@FAMILIES.register(
    "rotation",
    help="rows of a Haar-random rotation Q in SO(D); rotation:ALPHA rows of Q^ALPHA, 0 <= ALPHA <= 1",
    takes_arg=None,
)
def build(arg: str | None, *, ctx: FamilyContext) -> FamilyBlock:
    """Every ALPHA draws the same Q from the block's seed (see ``REPEAT_KEYS``), so a sweep moves along one
    fixed rotation."""
    alpha = 1.0 if arg is None else _parse_alpha(arg)
    q = haar_rotation(ctx.dim, numpy_rng(ctx.seed))
    return FamilyBlock(normalize_rows(fractional_power(q, alpha)), label=label(arg), info={"alpha": alpha})
