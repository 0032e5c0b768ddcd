"""`dirscope score`: scores, verdict and plots of a run directory, written beside the run's own files.

scores.parquet   layer, direction, family, sign, metric, score, z, percentile, degenerate
verdict.json     format, settings, notices, conclusions {layer: text}, comparisons [records]
figures/         scores-<layer>.png, sweep.png, profile.png, <layer>-{most,least}-coherent-<family>.png
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path, write_json
from .errors import DirscopeError
from .result import Result
from .scoring import Scores, score_run
from .specs import split_list
from .verdict import Verdict, judge, parse_pairs

MAX_NULL_DRAWS = 1_000_000  # percentiles to 1e-6; a null keeps its draws, and 10^8 of them filled 22 GB


def assess(
    run: Result | str | Path,
    *,
    metrics: str | Sequence[str] | None = None,
    references: str | Sequence[str] | None = None,
    compare: str | Sequence[str | tuple[str, str]] | None = (),
    data: object = None,
    null_draws: int = 2000,
    n_boot: int = 2000,
    n_perm: int = 10000,
    seed: int | None = None,
    device: str = "cpu",
    plots: bool = True,
) -> Verdict:
    """Score every direction of a run, compare the families, and (for a saved run) write the results.

    ``metrics`` and ``references`` are lists of names or one string of names joined by commas, as
    ``"kurtosis,label_purity"``; ``compare`` adds family pairs, as (A, B) tuples or ``"A:B"`` strings (a list,
    or one string joined by commas). ``device`` runs the reference models and is checked as ``run`` checks it.
    """
    metrics, references = _names(metrics, "metrics", "kurtosis,label_purity"), _names(references, "references")
    if device != "cpu":  # the check imports torch, which scoring on the CPU never needs
        from .engine import check_device

        check_device(device)
    result = run if isinstance(run, Result) else Result.load(run)
    if not 2 <= null_draws <= MAX_NULL_DRAWS or n_boot < 1 or n_perm < 1:
        raise DirscopeError(
            f"--null-draws must be from 2 to {MAX_NULL_DRAWS:,} (each null keeps its draws) and --n-boot, --n-perm >= 1"
        )
    pairs = parse_pairs(compare, {family for layer in result.layers for family in result.families(layer)})
    seed = int(result.manifest["config"]["seed"] if seed is None else seed)
    start = time.perf_counter()
    scores = score_run(
        result, metrics=metrics, references=references, data=data, null_draws=null_draws, seed=seed, device=device
    )
    verdict = judge(scores, pairs=pairs, seed=seed, n_boot=n_boot, n_perm=n_perm)
    verdict.settings.update(null_draws=null_draws, scoring_seconds=round(time.perf_counter() - start, 3))
    verdict.settings["metrics"] = {  # what Result.save needs to draw the plots again
        m: {"higher_is_better": scores.higher_is_better[m], "kind": scores.kinds[m]} for m in scores.higher_is_better
    }
    result.verdict, result.scores = verdict, scores.table
    if result.path is not None:
        from .rundir import lock_out

        with lock_out(result.path, create=False):  # never beside another process's writes into the run
            _write(result, scores, verdict, plots)
    return verdict


def _names(value: str | Sequence[str] | None, keyword: str, example: str = "pixels,hog") -> list[str] | None:
    """A list of names from the API: one string is split at its commas (as spec lists are), never into letters;
    anything but names is refused in one line, not met as a TypeError deep in scoring."""
    if value is None:
        return None
    if isinstance(value, str):
        return split_list(value, keyword, example)
    usage = f"give a list of names or one string of names joined by commas, e.g. {keyword}={example!r}"
    if not isinstance(value, Iterable):
        raise DirscopeError(f"{keyword}={value!r} is not a list of names; {usage}")
    names = list(value)
    odd = [name for name in names if not isinstance(name, str)]
    if odd:
        raise DirscopeError(f"{keyword} must be names, got a {type(odd[0]).__name__}; {usage}")
    return names


def write_scoring(result: Result, plots: bool = True) -> None:
    """The scores and verdict a result holds in memory, written into its run directory with their plots (which
    a verdict from before ``settings.metrics`` cannot draw again): for ``Result.save`` of a scored result."""
    settings = result.verdict.settings
    metrics = settings.get("metrics") or {}
    known = set(metrics) >= set(result.scores["metric"])
    scores = Scores(
        result.scores,
        {m: bool(v["higher_is_better"]) for m, v in metrics.items()},
        {m: str(v["kind"]) for m, v in metrics.items()},
        list(settings.get("references") or []),
        list(result.verdict.notices),
    )
    _write(result, scores, result.verdict, plots and known)


def _write(result: Result, scores: Scores, verdict: Verdict, plots: bool) -> None:
    """scores.parquet, plots, then verdict.json, tied by a fresh ``scores_id``. The old verdict.json goes first
    and the new one lands last, so a scoring killed midway leaves a run that reads as not scored (with a
    warning), never one scoring's scores beside another's verdict (see ``rundir._read_scores``)."""
    from .plots import write_plots
    from .rundir import SCORES_ID, remove_partials

    out = result.path
    remove_partials(out)  # of a scoring killed midway
    scores_id = uuid.uuid4().hex
    (out / "verdict.json").unlink(missing_ok=True)
    table = pa.Table.from_pandas(scores.table, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), SCORES_ID.encode(): scores_id.encode()})
    with atomic_path(out / "scores.parquet") as tmp:
        pq.write_table(table, tmp)
    files = [str(p.relative_to(out)) for p in write_plots(result, scores, verdict, out / "figures")] if plots else []
    verdict.settings.update(figures=files, scores_id=scores_id)
    write_json(out / "verdict.json", verdict.to_json())
