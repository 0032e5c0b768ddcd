"""`make bench`: run every benchmark and write docs/benchmarks.md (numbers from this machine, this run)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import engine as eng
from benchmarks import example_images, gpu, imagenet, pipeline, resume
from dirscope.atomic import write_text


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r[key]) for key, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def engine_section(rows: int) -> str:
    say("engine against the GEMM ...")
    bound = [eng.engine_vs_gemm(rows, dim, n_dirs) for dim in (512, 2048) for n_dirs in (256, 1024, 4096)]
    say("engine against the alternatives ...")
    alts = [eng.engine_vs_alternatives(rows, 512, n_dirs) for n_dirs in (256, 1024)]
    for row in alts:
        row["speedup_vs_resort"] = row["concat_resort"] / row["engine"]
        row["tally_speedup_vs_resort"] = row["concat_resort_tally"] / row["engine_tally"]
    bound_cols = [
        ("dim", "D"),
        ("directions", "K"),
        ("gemm", "GEMM s"),
        ("engine", "engine s"),
        ("ratio", "ratio"),
        ("ratio_spread", "rounds' quartiles"),
    ]
    alt_cols = [
        ("directions", "K"),
        ("gemm", "GEMM s"),
        ("engine", "engine s"),
        ("store_all", "(a) store-all s"),
        ("concat_resort", "(b) concat+resort s"),
        ("speedup_vs_resort", "speed-up vs (b)"),
        ("engine_tally", "engine tally s"),
        ("store_all_tally", "(a) tally s"),
        ("concat_resort_tally", "(b) tally s"),
        ("tally_speedup_vs_resort", "tally speed-up vs (b)"),
    ]
    return f"""## Engine against its bound: projection GEMM alone vs GEMM + full tally

The tally is top-64, bottom-64, mean/variance/skewness/kurtosis, exact zeros and a 64-bin histogram per
direction. The times are medians over 5 rounds; `ratio` is the median over rounds of engine time / GEMM time in
the same round, so a load that comes and goes slows both sides of a ratio alike (targets: issue 2, at most 1.5x
at K = 1,024, D = 512; issue 5, at most 1.3x for K >= 1,024), and the quartiles show how far single rounds
scatter. The engine does the same GEMM, so a ratio below 1 is this shared machine's noise (about 10% between
rounds at times), not a tally that costs less than nothing.

{table(bound, bound_cols)}

## Engine against common alternatives (D = 512)

(a) `store_all`: keep every projection, then `torch.topk` on both sides (memory grows with N).
(b) `concat_resort`: a running top-k that concatenates the batch and re-selects, as research code does.
The engine also computes moments and histograms; the alternatives compute only the top and bottom values.
All contenders include the same projection GEMM, which on a CPU takes most of the time, so the whole-run
speed-up cannot go far above 1. The `tally` columns are a second race, on the same projection blocks
computed once and kept in memory: what each design costs beyond the matrix product, measured directly, which
is what the issue's target (at least 2x faster than (b)) is about. ((a)'s tally is the concatenation and
the two `torch.topk` calls; its memory is the next section.)

{table(alts, alt_cols)}"""


def memory_section() -> str:
    say("peak memory ...")
    memory = [
        {"n": n, "engine_mib": eng.peak_memory_mib(n, "engine"), "store_all_mib": eng.peak_memory_mib(n, "store")}
        for n in (10_000, 100_000, 1_000_000)
    ]
    # (a) would hold 3M x 1,024 float32 projections (12 GiB, twice that while concatenating): not run.
    memory += [
        {"n": n, "engine_mib": eng.peak_memory_mib(n, "engine"), "store_all_mib": "not run"}
        for n in (3_000_000, 10_000_000)
    ]
    cols = [("n", "N"), ("engine_mib", "engine MiB"), ("store_all_mib", "store-all MiB")]
    return f"""## Peak memory against N (K = 1,024, D = 512, k = 64)

Peak RSS growth of a fresh process streaming N rows (generated batch by batch, never stored) through the
engine, against keeping every projection as (a) does. The engine's growth is allocator arenas and kernel
warm-up: tens of MiB that vary from run to run (one process each), not with N. (a) at 3M rows would need
12 GiB for the projections alone (40 GiB at 10M), so it is not run.

{table(memory, cols)}

{examples_table()}"""


def examples_table() -> str:
    say("example images ...")
    rows = example_images.compare()
    cols = [
        ("n", "thumbnails"),
        ("decoded_mib", "decoded MiB"),
        ("stream_mib", "stream MiB"),
        ("stream_s", "stream s"),
        ("memory_mib", "memory MiB"),
        ("memory_s", "memory s"),
    ]
    return f"""### {example_images.__doc__.splitlines()[0]}

{doc_body(example_images)}
Peak RSS growth of each process; `stream` holds about 64 MiB of decoded pixels at a time (its chunk) and
16 row groups of PNGs when reading, so it stays flat in n; `memory` grows with it.

{table(rows, cols)}"""


def pipeline_section() -> str:
    say("pipeline against the bare model ...")
    models = [pipeline.builtin_convnet(), pipeline.resnet18_shaped()]
    cols = [
        ("model", "model"),
        ("layer", "layer"),
        ("images", "images"),
        ("batch", "batch"),
        ("forward_ips", "bare forward img/s"),
        ("dirscope_ips", "dirscope run img/s"),
        ("rounds", "rounds"),
        ("overhead", "overhead"),
        ("overhead_spread", "rounds' quartiles"),
        ("overhead_of_medians", "of medians"),
    ]
    return f"""## Pipeline against the bare model

{doc_body(pipeline)}
Directions `{models[0]["directions"]}`, k = 64. `overhead` = dirscope run / bare forward - 1, the median over
rounds of the two runs' ratio within a round (the issue's target: at most 10%), which cancels a load that
slows both runs of a round; `rounds' quartiles` are the quartiles of those ratios - 1, which show how far
single rounds scatter on this shared machine; images/s are each contender's median, and `of medians` is
their ratio - 1, which keeps such a load (shown for comparison). The run's start-up (a dry forward on two
examples for the layer shapes, hashing the weights) counts in its time.

{table(models, cols)}"""


def resume_section() -> str:
    say("resume cost ...")
    saving = resume.checkpoint_cost()
    kills = resume.kill_cost()
    cols = [
        ("fraction", "killed at"),
        ("whole_s", "uninterrupted s"),
        ("killed_s", "until kill s"),
        ("resumed_s", "resumed run s"),
        ("lost_s", "lost s"),
        ("saved_rows", "rows in the checkpoint"),
        ("state_mib", "checkpoint MiB"),
    ]
    return f"""## Resume cost

{doc_body(resume)}
(a) Over {saving["rows"]:,} rows, {saving["checkpoints"]} checkpoints a run, {saving["run_s"]:.2f} s a run with
them: each checkpoint costs {saving["per_checkpoint_s"] * 1e3:.1f} ms (median of 3 runs). At the default interval of
60 s that is {saving["per_checkpoint_s"] / 60:.3%} of the scan.

(b) {kills[0]["rows"]:,} rows, `--checkpoint-every {kills[0]["every_s"]:g}`; `killed at` is the fraction of the
uninterrupted wall time (the median of 3 runs); each row is the median of 3 kills and resumes. A run killed
before its first checkpoint starts over with `--overwrite`.

{table(kills, cols)}"""


def natural_section() -> str:
    say("EfficientNet-Lite0 over a JPEG folder ...")
    natural = [imagenet.compare(workers=w) for w in (0, 1)]
    cols = [
        ("workers", "workers"),
        ("decode_ips", "decode only img/s"),
        ("forward_ips", "bare forward img/s"),
        ("dirscope_ips", "dirscope run img/s"),
        ("rounds", "rounds"),
        ("overhead", "overhead"),
        ("overhead_spread", "rounds' quartiles"),
        ("overhead_of_medians", "of medians"),
    ]
    first = natural[0]
    return f"""## Natural images: EfficientNet-Lite0 over a JPEG folder

{doc_body(imagenet)}
{first["images"]} images, batches of {first["batch"]}, directions `{first["directions"]}` at `{imagenet.LAYER}`
(1,280 units), k = 64. `overhead` = dirscope run / bare forward - 1, the median over rounds of the ratio
within a round (the issue's target: at most 10%); `rounds' quartiles` and `of medians` as above.
`workers` = DataLoader processes decoding the JPEGs (0: in the main process).

{table(natural, cols)}"""


def doc_body(module: object) -> str:
    """A benchmark module's docstring without its first line: the description of what it measures."""
    return str(module.__doc__).split("\n", 2)[2].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--rows", type=int, default=262_144, help="rows of synthetic activations per case")
    args = parser.parse_args()
    sections = [
        engine_section(args.rows),
        memory_section(),
        pipeline_section(),
        resume_section(),
        natural_section(),
        gpu.SECTION,
    ]
    text = (
        f"""# Benchmarks

Written by `make bench` (`python benchmarks/run_all.py`) on {datetime.now(timezone.utc):%Y-%m-%d}.
Machine: {machine()}; {platform.platform()}.
Every figure below was measured in the same run; each comparison alternates its contenders over several
rounds (in reverse order every other round) and reports the median. Synthetic activations: ReLU of a
Gaussian, float32, {args.rows:,} rows, batches of 4,096; directions are random unit vectors; k = 64 (top
and bottom).

"""
        + "\n\n".join(sections)
        + "\n"
    )
    write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
