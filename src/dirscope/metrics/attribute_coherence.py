"""``attribute_coherence``: how much tighter a set is than the population in per-example attributes.

Score = 1 - mean over attributes a of (std of a within the set / std of a in the population). Within-set
std uses ddof=1, whose expectation is still below the population's (by the factor c4(k), e.g. 0.80 at k = 2
for normal attributes), so a uniformly random set scores a little above 0 (about 0.2 at k = 2, 0.06 at 5,
0.02 at 16): scores are read against the null of random sets, which has the same bias. A set of identical
examples scores 1, and a set more spread out than the population below 0. Attributes whose population
std is 0 (or not finite) are skipped; with none left the score is NaN. The score does not change when an
attribute is rescaled or shifted. Higher is more coherent; needs k >= 2. The attributes are any [P, A]
matrix, e.g. the glyph attributes of ``glyphs.glyph_attributes``.
"""

from __future__ import annotations

import numpy as np

from .base import Metric, Pool, register


def reference_std(attributes: np.ndarray) -> np.ndarray:
    """float64 [A]: the population std (ddof=1) per attribute, the pool's ``attribute_std``."""
    return np.asarray(attributes, dtype=np.float64).std(axis=0, ddof=1)


def score(sets: np.ndarray, pool: Pool) -> np.ndarray:
    """1 - mean_a(std within the set / population std) over the attributes that vary in the population."""
    attributes = np.asarray(pool["attributes"], dtype=np.float64)
    scale = np.asarray(pool["attribute_std"], dtype=np.float64)
    if scale.shape != attributes.shape[1:]:
        raise ValueError(f"attribute_std has shape {scale.shape}; expected one std per attribute column")
    kept = np.isfinite(scale) & (scale > 0)
    if not kept.any():
        return np.full(len(sets), np.nan)
    within = attributes[:, kept][sets].std(axis=1, ddof=1)
    return 1.0 - (within / scale[kept]).mean(axis=1)


METRIC = register(
    Metric(
        name="attribute_coherence",
        help="1 - mean over attributes of (std within the set / population std), e.g. glyph shape "
        "(higher = more coherent)",
        needs=("attributes",),
        constants=("attribute_std",),
        score_sets=score,
        min_k=2,
    )
)
