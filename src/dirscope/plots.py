"""Verdict plots: score distributions per family, the rotation sweep, the layer profile, and the most and
least coherent directions of each family as image grids (one figure each per layer)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .atomic import write_bytes
from .compare import mean_ci
from .figures import Panel, direction_row, file_stems, render_panels, to_png
from .result import Result
from .scoring import Scores
from .seeding import numpy_rng
from .verdict import Verdict

_ALPHA = re.compile(r"^rotation:([0-9.]+)$")
EXTREME_ROWS = 4


def write_plots(result: Result, scores: Scores, verdict: Verdict, out_dir: Path) -> list[Path]:
    """Every verdict plot of a run into ``out_dir``; returns the files written."""
    seed = int(verdict.settings.get("seed", 0))
    written = []
    stems = file_stems(result.layers)
    for layer in result.layers:
        written.append(_save(out_dir / f"scores-{stems[layer]}.png", distributions(scores, layer, seed)))
        written += _extremes(result, scores, layer, out_dir, stems[layer])
    sweep = sweep_figure(scores, seed)
    if sweep is not None:
        written.append(_save(out_dir / "sweep.png", sweep))
    profile = profile_figure(verdict)
    if profile is not None:
        written.append(_save(out_dir / "profile.png", profile))
    return written


def _save(path: Path, fig: Figure) -> Path:
    write_bytes(path, to_png(fig))
    return path


def _top_sets(scores: Scores, layer: str | None = None) -> pd.DataFrame:
    table = scores.table
    keep = table["sign"].isin(["max", "all"]) & ~table["degenerate"]
    if layer is not None:
        keep &= table["layer"] == layer
    return table[keep]


def _panels(count: int) -> tuple[Figure, list]:
    """A figure with one small panel per metric, three to a row; the spare panels are hidden."""
    cols = min(3, max(1, count))
    rows = max(1, -(-count // cols))
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), dpi=100, layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[count:]:
        ax.set_axis_off()
    return fig, axes[:count]


def distributions(scores: Scores, layer: str, seed: int) -> Figure:
    """One panel per metric: every direction's score as a jittered point, per family, with the family mean."""
    rows = _top_sets(scores, layer)
    metrics = list(dict.fromkeys(rows["metric"]))
    fig, axes = _panels(len(metrics))
    rng = numpy_rng(seed, "jitter", layer)
    for ax, metric in zip(axes, metrics, strict=True):
        part = rows[rows.metric == metric]
        families = list(dict.fromkeys(part["family"]))
        for i, family in enumerate(families):
            values = part.loc[part.family == family, "score"].to_numpy(np.float64)
            values = values[np.isfinite(values)]
            ax.scatter(i + rng.uniform(-0.18, 0.18, values.size), values, s=6, alpha=0.45)
            if values.size:
                ax.hlines(values.mean(), i - 0.3, i + 0.3, color="black", linewidth=2)
        ax.set_xticks(
            range(len(families)),
            [_family_label(f) for f in families],
            rotation=30,
            ha="right",
            fontsize=8,
            parse_math=False,  # names are text: a "$" in a file family's name is no TeX
        )
        if metric == "kurtosis":
            ax.set_yscale("log")  # heavy-tailed units reach hundreds; a Gaussian direction sits at 3
        better = "higher" if scores.higher_is_better[metric] else "lower"
        ax.set_title(f"{metric}\n({better} = more {_meaning(scores, metric)})", fontsize=9, parse_math=False)
    fig.suptitle(f"{layer}: scores per direction (top-k sets; bars = means)", fontsize=11, parse_math=False)
    return fig


def _family_label(family: str) -> str:
    """``units`` for the basis family; any other name as it is (``file:pca_basis`` is no unit family)."""
    return "units" if family == "basis" else family


def _meaning(scores: Scores, metric: str) -> str:
    return "coherent" if scores.kinds[metric] == "coherence" else "unit-like"


def sweep_figure(scores: Scores, seed: int) -> Figure | None:
    """Mean score (95% CI) against the rotation power alpha, one line per layer (Network Dissection's sweep)."""
    rows = _top_sets(scores)
    alpha = rows["family"].str.extract(_ALPHA, expand=False).astype(float)
    rows = rows.assign(alpha=alpha).dropna(subset=["alpha"])
    if rows["alpha"].nunique() < 2:
        return None
    metrics = list(dict.fromkeys(rows["metric"]))
    fig, axes = _panels(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        for layer, part in rows[rows.metric == metric].groupby("layer", sort=False):
            points = sorted(part.groupby("alpha")["score"])
            stats = [mean_ci(g.to_numpy(), rng=numpy_rng(seed, "sweep", str(layer), metric, str(a))) for a, g in points]
            xs = [a for a, _ in points]
            means, lows, highs = (np.array(v) for v in zip(*stats, strict=True))
            ax.plot(xs, means, marker="o", label=str(layer))
            ax.fill_between(xs, lows, highs, alpha=0.2)
        ax.set_xlabel("rotation power α (0 = units, 1 = random rotation)", fontsize=8)
        ax.set_title(metric, fontsize=9, parse_math=False)
        for text in ax.legend(fontsize=7).get_texts():
            text.set_parse_math(False)  # layer names
    fig.suptitle("Rotation sweep: mean score with 95% CI", fontsize=11)
    return fig


def profile_figure(verdict: Verdict) -> Figure | None:
    """Effect (units minus the other family) with its 95% CI at each layer, one panel per metric."""
    records = [r for r in verdict.records if r["family_a"] == "basis" and r["sign"] in ("max", "all")]
    if not records:
        return None
    frame = pd.DataFrame(records)
    other = "random" if (frame.family_b == "random").any() else frame.family_b.iloc[0]
    frame = frame[frame.family_b == other]
    metrics = list(dict.fromkeys(frame["metric"]))
    layers = list(dict.fromkeys(frame["layer"]))
    fig, axes = _panels(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        part = frame[frame.metric == metric].set_index("layer").reindex(layers)
        x = np.arange(len(layers))
        effect = part["effect"].astype(float).to_numpy()
        low = effect - part["ci_low"].astype(float).to_numpy()
        high = part["ci_high"].astype(float).to_numpy() - effect
        ax.errorbar(x, effect, yerr=[low, high], marker="o", capsize=3)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks(x, layers, rotation=30, ha="right", fontsize=8, parse_math=False)
        ax.set_title(f"{metric}: units − {other}", fontsize=9, parse_math=False)
    fig.suptitle("Layer profile: effect with 95% CI (above 0: units score higher)", fontsize=11)
    return fig


def _extremes(result: Result, scores: Scores, layer: str, out_dir: Path, stem: str) -> list[Path]:
    """The most and the least coherent directions of each family side by side, by the first coherence metric."""
    if not result.images:
        return []
    rows = _top_sets(scores, layer)
    coherence = [m for m in dict.fromkeys(rows["metric"]) if scores.kinds[m] == "coherence"]
    if not coherence:
        return []
    metric = coherence[0]
    sign = 1.0 if scores.higher_is_better[metric] else -1.0
    ranked = {
        family: part.assign(key=sign * part["score"]).dropna(subset=["key"]).sort_values("key")["direction"]
        for family, part in rows[rows.metric == metric].groupby("family", sort=False)
    }
    written = []
    for which in ("most", "least"):
        panels = [
            Panel(
                f"{_family_label(family)}: {which} coherent",
                [direction_row(result, layer, d) for d in (order[::-1] if which == "most" else order)[:EXTREME_ROWS]],
            )
            for family, order in ranked.items()
        ]
        fig = render_panels(panels, f"{layer}: the {which} coherent directions of each family by {metric}")
        written.append(_save(out_dir / f"{stem}-{which}-coherent.png", fig))
    return written
