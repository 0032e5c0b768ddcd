"""Szegedy-style image grids: one row per direction, its most extreme examples left to right.

``render_panels`` is the one grid renderer of PNG figures (files and the notebook view). The images are
pasted into one mosaic and drawn with a single ``imshow``, so a grid of hundreds of examples renders in well
under a second. The HTML report draws its grids in the browser from the stored example PNGs instead (one
``imageGrid`` in report/templates/common.js), with the same row titles (``title_of``) and samples
(``pick_directions``): rendering 10,000 directions to PNG up front would make it slow and large.
"""

from __future__ import annotations

import hashlib
import io
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from .atomic import write_bytes
from .errors import DirscopeError
from .result import Result
from .seeding import numpy_rng

FIGURE_ROWS = 16  # directions per family figure
SIDE_BY_SIDE_ROWS = 4  # as in Szegedy et al. Figs. 1-4
_PAD = 0.12  # gap between cells, in cell widths
_CAPTION = 0.32  # caption band under each image, in cell heights
CAPTION_CHARS = 12  # label characters shown under an image
MAX_STEM = 96  # characters of a layer or family name in a file name: two of them and a suffix fit in 255 bytes
_LEFT = 1.5  # row-title margin, inches
_CELL = 0.9  # inches per image
_ASPECT = 2  # longest side of an image cell over its shortest
_RENDERER = RendererAgg(1, 1, 72)  # measures text in points (1/72 inch)


@dataclass
class GridRow:
    """One direction: a title, its images (uint8 HxW or HxWx3) and a caption under each."""

    title: str
    images: list[np.ndarray]
    captions: list[str]


@dataclass
class Panel:
    """A titled block of rows; several panels sit side by side."""

    title: str
    rows: list[GridRow]


def render_panels(panels: Sequence[Panel], title: str | None = None) -> Figure:
    """Draw panels of image rows side by side into one figure."""
    panels = [p for p in panels if p.rows]
    if not panels:
        raise DirscopeError("nothing to draw: no directions with images")
    h, w = _cell_size(panels)
    n_rows = max(len(p.rows) for p in panels)
    n_cols = [max(len(r.images) for r in p.rows) for p in panels]
    cell_w, cell_h = w * (1 + _PAD), h * (1 + _CAPTION + _PAD)
    px = cell_w / _CELL  # mosaic pixels per inch
    # Long row titles (a file family's name, a tie note) and panel titles wider than their panel need more room
    # than the fixed margins, or they are cut off at the figure's edge and run into the neighbouring panel.
    rooms = [max(_LEFT, max(_text_width(r.title, 8) for r in p.rows) + 0.15 * w / px + 0.1) for p in panels]
    spills = [max(0.0, (_text_width(p.title, 11) - c * cell_w / px) / 2) for p, c in zip(panels, n_cols, strict=True)]
    gaps = [max(rooms[i + 1], spills[i] + spills[i + 1] + 0.1) * px for i in range(len(panels) - 1)]
    total_w = sum(c * cell_w for c in n_cols) + sum(gaps)
    mosaic = np.full((int(np.ceil(n_rows * cell_h)), int(np.ceil(total_w)), 3), 255, np.uint8)
    texts: list[tuple[float, float, str, dict]] = []
    x0 = 0.0
    for i, (panel, cols) in enumerate(zip(panels, n_cols, strict=True)):
        # 0.35 of a cell width: a fixed height above the images, as the scale is set by the width
        texts.append((x0 + cols * cell_w / 2, -0.35 * w, panel.title, {"ha": "center", "fontsize": 11}))
        for r, row in enumerate(panel.rows):
            y = r * cell_h
            title_x = x0 - 0.15 * w
            texts.append((title_x, y + h / 2, row.title, {"ha": "right", "va": "center", "fontsize": 8}))
            for c, (img, cap) in enumerate(zip(row.images, row.captions, strict=True)):
                x = x0 + c * cell_w
                _paste(mosaic, _rgb(img), round(y), round(x), h, w)
                texts.append(
                    (
                        x + w / 2,
                        y + h * (1 + _CAPTION / 2),
                        cap,
                        {"ha": "center", "va": "center", "fontsize": 6},
                    )
                )
        x0 += cols * cell_w + (gaps[i] if i < len(gaps) else 0.0)
    inch_per_px = _CELL / cell_w
    left = max(rooms[0], spills[0] + 0.1)
    width = left + mosaic.shape[1] * inch_per_px + max(0.2, spills[-1] + 0.1)
    width = max(width, _text_width(title, 12) + 0.4) if title else width
    height = 0.5 + (0.35 if title else 0) + mosaic.shape[0] * inch_per_px
    fig = plt.figure(figsize=(width, height), dpi=100)
    ax = fig.add_axes(
        (
            left / width,
            0.1 / height,
            mosaic.shape[1] * inch_per_px / width,
            mosaic.shape[0] * inch_per_px / height,
        )
    )
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for tx, ty, text, kw in texts:
        ax.text(tx, ty, text, clip_on=False, parse_math=False, **kw)  # a label like "$5 to $10" is text, not TeX
    if title:
        fig.suptitle(title, fontsize=12, y=1 - 0.1 / height, parse_math=False)
    return fig


def to_png(fig: Figure) -> bytes:
    """PNG bytes of a figure, which is closed afterwards."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    plt.close(fig)
    return buf.getvalue()


def _text_width(text: str, fontsize: float) -> float:
    """Width in inches of the widest line of ``text`` drawn as plain text at ``fontsize`` points."""
    font = FontProperties(size=fontsize)
    return max(_RENDERER.get_text_width_height_descent(line, font, ismath=False)[0] for line in text.split("\n")) / 72


def _cell_size(panels: Sequence[Panel]) -> tuple[int, int]:
    """The box every image is centred in: the largest height and width, at most ``_ASPECT`` times as long as
    wide either way, since the captions, titles and gaps scale with it (a 1 x 64 strip of text-like data made
    rows so thin that every text overlapped, and a 64 x 1 one a figure metres tall)."""
    shapes = [img.shape[:2] for p in panels for r in p.rows for img in r.images]
    h, w = max(s[0] for s in shapes), max(s[1] for s in shapes)
    return max(h, -(-w // _ASPECT)), max(w, -(-h // _ASPECT))


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img


def _paste(canvas: np.ndarray, img: np.ndarray, top: int, left: int, h: int, w: int) -> None:
    """Paste ``img`` centred in an h x w cell whose corner is (top, left)."""
    ih, iw = img.shape[:2]
    t, lft = top + (h - ih) // 2, left + (w - iw) // 2
    canvas[t : t + ih, lft : lft + iw] = img


# ---- from a Result --------------------------------------------------------------------------------------


def direction_title(result: Result, layer: str, direction: int) -> str:
    """``basis: unit 12`` for units, ``random #3`` for other families."""
    meta = result.directions
    row = meta[(meta.layer == layer) & (meta.direction == direction)].iloc[0]
    return title_of(str(row.family), int(row.unit), int(row.member))


def title_of(family: str, unit: int, member: int) -> str:
    """The one naming rule for directions, shared by the figures and the report."""
    return f"{family}: unit {unit}" if unit >= 0 else f"{family} #{member}"


def direction_row(result: Result, layer: str, direction: int, sign: str = "max") -> GridRow:
    """A grid row of one direction's examples, captioned with value and label."""
    ex = result.examples(layer, direction, sign)
    images, captions = [], []
    for index, value, name, label in zip(ex["index"], ex["value"], ex["label_name"], ex["label"], strict=True):
        img = result.images.get(int(index))
        if img is None:
            continue
        images.append(img)
        name = label if pd.isna(name) else name  # data without class names: the label itself, as the report shows
        captions.append(f"{value:.3g}" + ("" if pd.isna(name) else f" · {short_label(str(name))}"))
    title = direction_title(result, layer, direction)
    note = tie_note(ex["value"].to_numpy(), *_ties_of(result, layer, direction))
    return GridRow(title if note is None else f"{title}\n({note})", images, captions)


def tie_note(values: np.ndarray, zeros: int, constant: bool = False) -> str | None:
    """What a set's order says when the dataset index, not the direction, picked its examples (the sets
    scoring flags degenerate): all its values tie (or the direction is ``constant``, which a top-1 cannot
    show), or it holds some of the direction's exact zeros."""
    held = int(np.count_nonzero(values == 0))
    if constant or (len(values) > 1 and np.all(values == values[0])):
        return "all tied: order by index"
    if 0 < held < zeros:
        return f"{held} of its {zeros} zeros, by index"
    return None


def _ties_of(result: Result, layer: str, direction: int) -> tuple[int, bool]:
    """The direction's exact zeros over the data, and whether it is constant there."""
    stats = result.stats
    row = stats.loc[(stats.layer == layer) & (stats.direction == direction)].iloc[0]
    return int(row["zeros"]), bool(row["min"] == row["max"])


def short_label(name: str, limit: int = CAPTION_CHARS) -> str:
    """A label that fits under one grid cell: long class names would run into their neighbours."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def pick_directions(result: Result, layer: str, family: str, n: int) -> list[int]:
    """A seeded, unbiased sample of n directions of a family (all of them when there are fewer)."""
    if n < 1:
        raise DirscopeError(f"a figure needs at least 1 row of directions, got {n}")
    rows = result.rows_of(layer, family)
    if rows.size <= n:
        return rows.tolist()
    rng = numpy_rng(int(result.manifest["config"]["seed"]), "figure", layer, family)
    return sorted(rng.choice(rows, size=n, replace=False).tolist())


def family_figure(
    result: Result,
    layer: str,
    family: str | None = None,
    directions: Sequence[int] | None = None,
    n: int = FIGURE_ROWS,
    sign: str = "max",
) -> Figure:
    """Grid of one family's directions (a seeded sample of n), or of the given direction ids of that family
    (without ``family``, the one family they belong to)."""
    _need_images(result)
    if directions is None:
        family = family or result.families(layer)[0]
        chosen = pick_directions(result, layer, family, n)
    else:
        family, chosen = _family_directions(result, layer, family, directions)
    rows = [direction_row(result, layer, d, sign) for d in chosen]
    what = "top" if sign == "max" else "bottom"
    return render_panels([Panel("", rows)], f"{layer} · {family} · {what}-{_k(result)} examples")


def _family_directions(
    result: Result, layer: str, family: str | None, directions: Sequence[int]
) -> tuple[str, list[int]]:
    """The family and direction ids a figure of given directions shows: the title names the family, so every
    id must be one of its directions (a unit titled ``random`` would mislabel the picture)."""
    meta = result.directions[result.directions.layer == layer]
    try:
        chosen = [operator.index(d) for d in directions]
    except TypeError:
        raise DirscopeError(f"directions must be direction ids (integers), got {directions!r}") from None
    if family is None:
        found = list(dict.fromkeys(meta.loc[meta.direction.isin(chosen), "family"]))
        if len(found) > 1:
            raise DirscopeError(f"directions {chosen} are of families {', '.join(found)}; give family= and its ids")
        family = found[0] if found else result.families(layer)[0]
    own = result.rows_of(layer, family)  # an unknown family: one line naming the layer's families
    outside = [d for d in chosen if d not in set(own.tolist())]
    if outside:
        raise DirscopeError(
            f"layer {layer!r} family {family!r} has no direction {outside[0]}; its directions are {_id_span(own)} "
            f"(families: {', '.join(result.families(layer))})"
        )
    return family, chosen


def _id_span(ids: np.ndarray) -> str:
    """``16 to 19`` for a family's consecutive ids (as runs number them), else the ids themselves."""
    ids = np.sort(ids)
    if ids.size and ids[-1] - ids[0] == ids.size - 1:
        return f"{ids[0]} to {ids[-1]}" if ids.size > 1 else str(ids[0])
    return ", ".join(str(i) for i in ids[:10]) + (", ..." if ids.size > 10 else "")


def side_by_side_figure(result: Result, layer: str, n: int = SIDE_BY_SIDE_ROWS, sign: str = "max") -> Figure:
    """Units next to random directions (Szegedy Figs. 1 and 2 in one picture); else the first two families."""
    _need_images(result)
    families = result.families(layer)
    pair = ["basis", "random"] if {"basis", "random"} <= set(families) else families[:2]
    panels = [
        Panel(
            _panel_title(f),
            [direction_row(result, layer, d, sign) for d in pick_directions(result, layer, f, n)],
        )
        for f in pair
    ]
    return render_panels(
        panels,
        f"{layer}: top-{_k(result)} examples, units vs random directions"
        if pair == ["basis", "random"]
        else f"{layer}: top-{_k(result)} examples",
    )


def write_figures(result: Result, out_dir: Path, n: int = FIGURE_ROWS) -> list[Path]:
    """Per layer: one figure per family and one side-by-side figure. Returns the files written."""
    if not result.images:
        return []
    written = []
    layer_stems = file_stems(result.layers)
    for layer in result.layers:
        stem = layer_stems[layer]
        family_stems = file_stems(result.families(layer), reserved=["side-by-side"])
        for family in result.families(layer):
            path = out_dir / f"{stem}-{family_stems[family]}.png"
            write_bytes(path, to_png(family_figure(result, layer, family, n=n)))
            written.append(path)
        if len(result.families(layer)) > 1:
            path = out_dir / f"{stem}-side-by-side.png"
            write_bytes(path, to_png(side_by_side_figure(result, layer)))
            written.append(path)
    return written


def safe_name(name: str) -> str:
    """A file-name-safe form of a layer or family name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def file_stems(names: Sequence[str], reserved: Sequence[str] = ()) -> dict[str, str]:
    """A distinct file-name-safe stem per name, never one of ``reserved``: ``a b`` and ``a_b`` would share
    one, so a clash gets ``-2``, ``-3``... in the order given (every writer and reader passes the run's order).
    A name longer than ``MAX_STEM`` is cut and ends in a hash of the whole name."""
    taken, stems = set(reserved), {}
    for name in dict.fromkeys(names):
        base = safe_name(name)
        if len(base) > MAX_STEM:  # file names end at 255 bytes; a stem still has suffixes to take
            base = f"{base[: MAX_STEM - 17]}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"
        stem, n = base, 1
        while stem in taken:
            n += 1
            stem = f"{base}-{n}"
        taken.add(stem)
        stems[name] = stem
    return stems


def _panel_title(family: str) -> str:
    return {"basis": "units (natural basis)", "random": "random directions"}.get(family, family)


def _k(result: Result) -> int:
    return int(result.manifest["config"]["k"])


def _need_images(result: Result) -> None:
    if not result.images:
        raise DirscopeError("this run has no example images (the data is not image-like or was one-shot)")
