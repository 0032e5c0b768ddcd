"""`dirscope score`: scores, verdict and plots of a run directory, written beside the run's own files.

scores.parquet   layer, direction, family, sign, metric, score, z, percentile, degenerate
verdict.json     format, settings, notices, conclusions {layer: text}, comparisons [records]
figures/         scores-<layer>.png, sweep.png, profile.png, <layer>-{most,least}-coherent-<family>.png
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path, write_json
from .errors import DirscopeError
from .result import Result
from .scoring import score_run
from .verdict import Verdict, judge

MAX_NULL_DRAWS = 1_000_000  # percentiles to 1e-6; a null keeps its draws, and 10^8 of them filled 22 GB


def assess(
    run: Result | str | Path,
    *,
    metrics: Sequence[str] | None = None,
    references: Sequence[str] | None = None,
    compare: Sequence[tuple[str, str]] = (),
    data: object = None,
    null_draws: int = 2000,
    n_boot: int = 2000,
    n_perm: int = 10000,
    seed: int | None = None,
    device: str = "cpu",
    plots: bool = True,
) -> Verdict:
    """Score every direction of a run, compare the families, and (for a saved run) write the results."""
    result = run if isinstance(run, Result) else Result.load(run)
    if not 2 <= null_draws <= MAX_NULL_DRAWS or n_boot < 1 or n_perm < 1:
        raise DirscopeError(
            f"--null-draws must be from 2 to {MAX_NULL_DRAWS:,} (each null keeps its draws) and --n-boot, --n-perm >= 1"
        )
    seed = int(result.manifest["config"]["seed"] if seed is None else seed)
    start = time.perf_counter()
    scores = score_run(
        result, metrics=metrics, references=references, data=data, null_draws=null_draws, seed=seed, device=device
    )
    verdict = judge(scores, pairs=compare, seed=seed, n_boot=n_boot, n_perm=n_perm)
    verdict.settings.update(null_draws=null_draws, scoring_seconds=round(time.perf_counter() - start, 3))
    result.verdict, result.scores = verdict, scores.table
    if result.path is not None:
        from .rundir import lock_out

        with lock_out(result.path, create=False):  # never beside another process's writes into the run
            _write(result, scores, verdict, plots)
    return verdict


def _write(result: Result, scores, verdict: Verdict, plots: bool) -> None:
    """scores.parquet, plots, then verdict.json, tied by a fresh ``scores_id``. The old verdict.json goes first
    and the new one lands last, so a scoring killed midway leaves a run that reads as not scored (with a
    warning), never one scoring's scores beside another's verdict (see ``rundir._read_scores``)."""
    from .plots import write_plots
    from .rundir import SCORES_ID

    out = result.path
    scores_id = uuid.uuid4().hex
    (out / "verdict.json").unlink(missing_ok=True)
    table = pa.Table.from_pandas(scores.table, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), SCORES_ID.encode(): scores_id.encode()})
    with atomic_path(out / "scores.parquet") as tmp:
        pq.write_table(table, tmp)
    files = [str(p.relative_to(out)) for p in write_plots(result, scores, verdict, out / "figures")] if plots else []
    verdict.settings.update(figures=files, scores_id=scores_id)
    write_json(out / "verdict.json", verdict.to_json())
