"""``sweep:N``: rotation:ALPHA at N evenly spaced ALPHA from 0 to 1, along one fixed rotation.

Network Dissection's partial rotations: interpretability measured against ALPHA shows how it decays as the
basis turns away from the units. All blocks share the layer's one Q (see ``rotation``).
"""

from __future__ import annotations

import numpy as np

from ..specs import Spec, parse_int
from .base import EXPANSIONS


@EXPANSIONS.register(
    "sweep", help="rotation:ALPHA for N evenly spaced ALPHA in [0, 1], one fixed rotation", takes_arg=True
)
def sweep(arg: str | None) -> list[Spec]:
    n = parse_int(arg, "sweep:N (the number of angles)", minimum=2)
    return [Spec("rotation", np.format_float_positional(round(i / (n - 1), 12), trim="-")) for i in range(n)]
