"""``basis``: the layer's own units e_0..e_{D-1}; ``basis:N``: a seeded sample of N of them."""

from __future__ import annotations

import numpy as np

from ..errors import DirscopeError
from ..seeding import numpy_rng
from ..specs import parse_int
from .base import FAMILIES, FamilyBlock, FamilyContext


@FAMILIES.register(
    "basis",
    help="the layer's units e_0..e_{D-1}; basis:N a seeded sample of N distinct units",
    takes_arg=None,
)
def build(arg: str | None, *, ctx: FamilyContext) -> FamilyBlock:
    """All units, or N distinct ones sorted ascending so rows follow the layer's own order."""
    if arg is None:
        units = np.arange(ctx.dim, dtype=np.int64)
    else:
        n = parse_int(arg, "basis:N")
        if n > ctx.dim:
            raise DirscopeError(
                f"basis:{n} asks for {n} units but layer {ctx.layer!r} has only {ctx.dim}; "
                f"use 'basis' for all of them or N <= {ctx.dim}"
            )
        units = np.sort(numpy_rng(ctx.seed).choice(ctx.dim, size=n, replace=False)).astype(np.int64)
    vectors = np.zeros((len(units), ctx.dim), dtype=np.float32)
    vectors[np.arange(len(units)), units] = 1.0
    return FamilyBlock(vectors, units=units)
