"""``random:N``: isotropic random directions, the null model of Szegedy et al. (2013) section 3."""

from __future__ import annotations

from ..seeding import numpy_rng
from ..specs import parse_int
from .base import FAMILIES, FamilyBlock, FamilyContext, normalize_rows


@FAMILIES.register("random", help="N normalised Gaussian directions (uniform on the sphere)", takes_arg=True)
def build(arg: str | None, *, ctx: FamilyContext) -> FamilyBlock:
    """Draw row by row from one stream, so ``random:32`` is exactly the first 32 rows of ``random:64``."""
    n = parse_int(arg, "random:N")
    return FamilyBlock(normalize_rows(numpy_rng(ctx.seed).standard_normal((n, ctx.dim))))
