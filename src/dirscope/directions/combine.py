"""Concatenate family blocks into one direction set whose rows remember where they came from."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DirscopeError
from ..seeding import derive_seed
from ..specs import Spec, parse_spec, parse_spec_list, suggest
from .base import EXPANSIONS, FAMILIES, REPEAT_KEYS, FamilyBlock, FamilyContext, FitData


@dataclass
class DirectionSet:
    """Row i of ``vectors`` is direction i; the other fields say which family, block member and unit it is.

    ``info`` maps each spec (``spec#n`` for its n-th repeat) to its family label, row range
    ``[start, stop)``, derived seed and whatever the family recorded (e.g. PCA explained variance).
    """

    vectors: np.ndarray  # float32 [K, D]
    family: list[str]  # label per row: basis, random, pca, rotation, rotation:0.5, file:stem
    member: np.ndarray  # int64 [K], index within its block
    unit: np.ndarray  # int64 [K], the unit index of basis rows, -1 otherwise
    specs: list[str]  # the spec each row came from
    info: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def families(self) -> list[str]:
        """The distinct family labels, in row order."""
        return list(dict.fromkeys(self.family))

    def rows(self, family: str) -> np.ndarray:
        """Row indices (int64) of one family label; an unknown label is a user error with suggestions."""
        rows = np.flatnonzero(np.asarray(self.family) == family).astype(np.int64)
        if not len(rows):
            known = self.families()
            raise DirscopeError(
                f"no directions of family {family!r}{suggest(family, known)} (have: {', '.join(known)})"
            )
        return rows

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per direction, for the run's metadata table."""
        return [
            {"direction": i, "family": f, "member": int(m), "unit": int(u), "spec": s}
            for i, (f, m, u, s) in enumerate(zip(self.family, self.member, self.unit, self.specs, strict=True))
        ]


def _once(fit_data: FitData | None) -> FitData | None:
    """Call ``fit_data`` at most once, however many fitted families ask for it."""
    if fit_data is None:
        return None
    cache: list[np.ndarray] = []

    def fetch() -> np.ndarray:
        if not cache:
            cache.append(fit_data())
        return cache[0]

    return fetch


def _expand(spec: Spec) -> list[Spec]:
    """A shorthand such as ``sweep:6`` as the specs it stands for; any other spec as itself."""
    if spec.name in EXPANSIONS:
        return EXPANSIONS.build(spec)
    if spec.name not in FAMILIES:
        known = FAMILIES.names() + EXPANSIONS.names()
        raise DirscopeError(
            f"unknown direction family {str(spec)!r}{suggest(spec.name, known)} (known: {', '.join(sorted(known))})"
        )
    return [spec]


def repeat_key(spec: Spec) -> str:
    """The key whose earlier specs make ``spec`` a repeat that draws afresh: its family name, unless the
    family shares one draw across args by design (``REPEAT_KEYS``: ``rotation`` per ALPHA)."""
    key = REPEAT_KEYS.get(spec.name)
    return spec.name if key is None else f"{spec.name}/{key(spec.arg)}"


def _check_block(block: FamilyBlock, spec: str, dim: int) -> None:
    """A family's contract, checked here so a new family's bug shows up at its source."""
    v = block.vectors
    if v.dtype != np.float32 or v.ndim != 2 or v.shape[1] != dim:
        raise ValueError(f"family {spec!r} returned {v.dtype} {v.shape}, expected float32 [K, {dim}]")
    if not np.allclose(np.linalg.norm(v.astype(np.float64), axis=1), 1.0, rtol=0.0, atol=1e-5):
        raise ValueError(f"family {spec!r} returned rows that are not unit vectors")
    if block.units is not None and block.units.shape != (len(v),):
        raise ValueError(f"family {spec!r} returned {block.units.shape} units for {len(v)} rows")


def build_directions(
    specs: str | Sequence[Spec | str],
    *,
    dim: int,
    layer: str,
    seed: int,
    fit_data: FitData | None = None,
) -> DirectionSet:
    """Build every family in ``specs`` (e.g. ``"basis,random:64,rotation:0.5"``) for one layer and stack them.

    Each block's seed is ``derive_seed(seed, layer, name, occurrence)``, where ``occurrence`` counts earlier
    specs of the same family (see ``repeat_key``). So ``random:32`` is a prefix of ``random:64`` when each is
    given alone, a repeated family draws afresh (``random:4,random:8``: 12 distinct rows), all
    ``rotation[:ALPHA]`` of different ALPHA share one Q, and layers draw independently.
    """
    if dim < 1:
        raise DirscopeError(f"layer {layer!r} has dimension {dim}; directions need dim >= 1")
    parsed = (
        parse_spec_list(specs, "direction family")
        if isinstance(specs, str)
        else [s if isinstance(s, Spec) else parse_spec(s, "direction family") for s in specs]
    )
    if not parsed:
        raise DirscopeError("empty direction family list; give at least one, e.g. 'basis,random:64'")
    parsed = [part for spec in parsed for part in _expand(spec)]
    for spec in parsed:
        FAMILIES.entry(spec)  # a typo in the last spec fails before an expensive fit
    fetch = _once(fit_data)
    seen: Counter[str] = Counter()  # per repeat key: picks the seed
    seen_text: Counter[str] = Counter()  # per spec text: names the ``info`` entry
    vectors: list[np.ndarray] = []
    units: list[np.ndarray] = []
    family: list[str] = []
    row_specs: list[str] = []
    info: dict[str, dict[str, Any]] = {}
    for spec in parsed:
        text, repeat = str(spec), repeat_key(spec)
        occurrence, repeat_of_text = seen[repeat], seen_text[text]
        seen[repeat] += 1
        seen_text[text] += 1
        block_seed = derive_seed(seed, layer, spec.name, str(occurrence))
        ctx = FamilyContext(dim=dim, seed=block_seed, layer=layer, fit_data=fetch, specs=tuple(parsed))
        block = FAMILIES.build(spec, ctx=ctx)
        _check_block(block, text, dim)
        k = len(block.vectors)
        label = block.label or spec.name
        start = len(family)
        key = text if repeat_of_text == 0 else f"{text}#{repeat_of_text}"
        info[key] = {"family": label, "start": start, "stop": start + k, "seed": block_seed, **block.info}
        vectors.append(block.vectors)
        units.append(np.full(k, -1, np.int64) if block.units is None else block.units.astype(np.int64))
        family += [label] * k
        row_specs += [text] * k
    return DirectionSet(
        vectors=np.concatenate(vectors),
        family=family,
        member=np.concatenate([np.arange(len(v), dtype=np.int64) for v in vectors]),
        unit=np.concatenate(units),
        specs=row_specs,
        info=info,
    )
