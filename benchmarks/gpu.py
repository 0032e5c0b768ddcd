"""The GPU path in one script: correctness against the CPU run, the device tally against the bf16 GEMM, and
engine throughput against the bare forward. Writes a markdown report (default docs/benchmarks-gpu.md).

    python benchmarks/gpu.py --out docs/benchmarks-gpu.md            # on a CUDA machine: a few minutes
    python benchmarks/gpu.py --device cpu --rows 20000 --out /tmp/g.md   # smoke test of the same code

(a) mnist-cnn at conv2 and fc1 over `mnist` on the device against the CPU (numba) run: top-k and bottom-k
    indices equal, except rank swaps between near-equal values, which are counted and reported.
(b) The issue's case (default 1M rows, D = 2048, K = 4,096, top-64 and bottom-64) with activations made on
    the device: the projection GEMM alone, GEMM + DeviceTally (Triton pass and eager; moments, zeros, histograms
    included), and GEMM + a NetDissect-style running top-k that concatenates and re-selects every batch.
    bf16 on CUDA; float32 on the CPU, whose bf16 GEMMs are emulated. Median of rounds, synchronised.
(c) `dirscope.run` images/s (basis + 2,048 random directions) against the bare forward over the same
    loader: mnist-cnn at fc1 in float32, and a ResNet-18-shaped network at layer4 under bf16 autocast.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dirscope
from benchmarks import pipeline
from dirscope import engine
from dirscope.atomic import write_text
from dirscope.models import load_model
from dirscope.tally.device import DeviceTally

# The section of docs/benchmarks.md (written by run_all.py) that points here.
SECTION = """## GPU

`python benchmarks/gpu.py --out docs/benchmarks-gpu.md` checks and measures the GPU path on a CUDA machine, in
a few minutes, and names the card in what it writes: (a) mnist-cnn at conv2 and fc1 over `mnist` on the GPU
against the CPU run (same top-k and bottom-k indices, except rank swaps between values equal to rounding,
which it counts); (b) the issue's case, 1M rows, D = 2,048, 4,096 directions, top-64 and bottom-64 in bf16:
the projection GEMM alone against GEMM + DeviceTally (moments, zeros and histograms included, its Triton
pass and its eager fallback) and GEMM + a NetDissect-style concatenate-and-reselect top-k, as ratios to the
GEMM, with and without the GEMM's own time (target: the tally at most 3x the GEMM); (c) `dirscope run`
images/s against the bare forward, on mnist-cnn and on a ResNet-18-shaped network under bf16 autocast.
`--device cpu --rows 20000` runs the same code on the CPU as a smoke test. Results, with the card:
[benchmarks-gpu.md](benchmarks-gpu.md)."""

NEAR_EQUAL = 1e-5  # relative difference under which a rank swap counts as rounding, not an error


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def race(contenders: dict[str, Callable[[], object]], rounds: int, device: str) -> dict[str, float]:
    """Median seconds of each contender, alternated ``rounds`` times after one warm-up each (compiles too)."""
    for name, fn in contenders.items():
        say(f"  warm-up: {name}")
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(rounds):
        for name, fn in contenders.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
        say(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {t[-1] * 1e3:.1f} ms" for n, t in times.items()))
    return {name: statistics.median(t) for name, t in times.items()}


# (a) correctness ----------------------------------------------------------------------------------------


def correctness(device: str, directions: str, limit: int | None) -> dict:
    """The device run against the CPU (numba) run; on cpu, the device tally against numba."""
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions would move values by ~1e-3, far beyond rounding
    torch.backends.cuda.matmul.allow_tf32 = False
    common = {"k": 16, "batch_size": 256, "limit": limit, "progress": False, "figures": False}
    say(f"(a) mnist-cnn conv2+fc1, {directions}: CPU run")
    cpu = dirscope.run("mnist-cnn", ["conv2", "fc1"], "mnist", directions, **common)
    say(f"(a) the same on {device} with the device tally")
    dev = dirscope.run("mnist-cnn", ["conv2", "fc1"], "mnist", directions, device=device, tally="device", **common)
    a, b = cpu.topk, dev.topk
    same_index = a["index"].to_numpy() == b["index"].to_numpy()
    va, vb = a["value"].to_numpy().astype(np.float64), b["value"].to_numpy().astype(np.float64)
    rel = np.abs(va - vb) / np.maximum(np.maximum(np.abs(va), np.abs(vb)), 1e-30)
    ulps = np.abs(va - vb) / np.spacing(np.abs(va).astype(np.float32)).astype(np.float64)
    swaps = ~same_index & (rel <= NEAR_EQUAL)
    wrong = ~same_index & (rel > NEAR_EQUAL)
    moments = max(
        float(np.nanmax(np.abs(cpu.stats[m] - dev.stats[m]) / (np.abs(cpu.stats[m]) + 1e-12)))
        for m in ("mean", "std", "skew", "kurtosis")
    )
    extremes = max(
        float(np.max(np.abs(cpu.stats[m] - dev.stats[m]) / np.maximum(np.abs(cpu.stats[m]), 1e-30)))
        for m in ("min", "max")
    )
    counts_equal = bool((cpu.stats["count"] == dev.stats["count"]).all())
    return {
        "rows": len(a),
        "index_equal": int(same_index.sum()),
        "near_equal_swaps": int(swaps.sum()),
        "other_differences": int(wrong.sum()),
        "max_value_ulps": float(ulps.max()),
        "max_moment_rel": moments,
        "max_min_max_rel": extremes,
        "count_equal": counts_equal,
        "zeros_differ": int((cpu.stats["zeros"] != dev.stats["zeros"]).sum()),
        "passed": bool(wrong.sum() == 0) and counts_equal,
    }


# (b) tally against the GEMM ------------------------------------------------------------------------------


def activations(rows: int, dim: int, n_dirs: int, dtype: torch.dtype, device: str):
    """ReLU-of-Gaussian activations and unit directions, made on the device in chunks (never sent from host)."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.empty(rows, dim, dtype=dtype, device=device)
    for s in range(0, rows, 65_536):
        x[s : s + 65_536] = torch.randn(min(65_536, rows - s), dim, generator=g, device=device).relu_().to(dtype)
    v = torch.nn.functional.normalize(torch.randn(n_dirs, dim, generator=g, device=device), dim=1).to(dtype)
    return x, v


def gemm_only(x: torch.Tensor, v: torch.Tensor, batch: int) -> None:
    for s in range(0, x.shape[0], batch):
        v @ x[s : s + batch].T


def with_device_tally(
    x: torch.Tensor, v: torch.Tensor, batch: int, k: int, fused: bool, settle_each: bool = False
) -> DeviceTally:
    """``settle_each`` checks every block before the next is launched (the GPU waits for the CPU each time)
    instead of one block late; the last block is checked either way, as a run does."""
    tally = DeviceTally(v.shape[0], k, device=x.device, fused=fused)
    for s in range(0, x.shape[0], batch):
        tally.update(v @ x[s : s + batch].T, np.arange(s, min(s + batch, x.shape[0])))
        if settle_each:
            tally.settle()
    tally.settle()
    return tally


def concat_and_reselect(x: torch.Tensor, v: torch.Tensor, batch: int, k: int) -> torch.Tensor:
    """NetDissect-style running top-k and bottom-k: concatenate the batch, select again, every batch."""
    top = bot = torch.empty(v.shape[0], 0, dtype=torch.float32, device=x.device)
    for s in range(0, x.shape[0], batch):
        p = (v @ x[s : s + batch].T).float()
        top = torch.topk(torch.cat([top, p], 1), min(k, top.shape[1] + p.shape[1]), dim=1).values
        bot = torch.topk(torch.cat([bot, p], 1), min(k, bot.shape[1] + p.shape[1]), dim=1, largest=False).values
    return top


def tally_vs_gemm(args: argparse.Namespace, dtype: torch.dtype) -> dict:
    say(f"(b) {args.rows:,} rows, D = {args.dim}, K = {args.directions}, k = {args.k}, {dtype}")
    x, v = activations(args.rows, args.dim, args.directions, dtype, args.device)
    contenders = {
        "gemm": lambda: gemm_only(x, v, args.batch),
        "device_tally": lambda: with_device_tally(x, v, args.batch, args.k, fused=True),
        "device_tally_settle_each": lambda: with_device_tally(x, v, args.batch, args.k, True, settle_each=True),
        "device_tally_eager": lambda: with_device_tally(x, v, args.batch, args.k, fused=False),
        "concat_reselect": lambda: concat_and_reselect(x, v, args.batch, args.k),
    }
    t = race(contenders, args.rounds, args.device)
    fused = with_device_tally(x, v, args.batch, args.k, fused=True).result()
    same_top = bool(np.array_equal(fused.top_values, concat_and_reselect(x, v, args.batch, args.k).cpu().numpy()))
    return {"times": t, "same_top_values": same_top, "dtype": str(dtype).removeprefix("torch.")}


# (c) engine throughput -----------------------------------------------------------------------------------


@dataclass
class Case:
    """One model of (c): what runs, at which layer, over which images, in which precision."""

    name: str
    model: object  # what dirscope.run gets: a loaded model or an nn.Module
    module: torch.nn.Module  # what the bare forward calls
    layer: str
    images: np.ndarray
    batch: int
    autocast: str | None  # "bf16" or None (float32)


def bare_forward(case: Case, device: str) -> None:
    pipeline.bare_forward(case.module, case.images, case.batch, device, case.autocast)
    sync(device)


def engine_run(case: Case, device: str, directions: str, lag: int | None = None) -> None:
    """``lag`` 0: each batch folded into the tallies at once, waiting for its forward (the engine's own
    choice, ``_fold_lag``, folds it after the next batch's forward is queued on a GPU)."""
    chosen = engine._fold_lag
    if lag is not None:
        engine._fold_lag = lambda _device: lag
    try:
        dirscope.run(
            case.model, [case.layer], case.images, directions, k=64, batch_size=case.batch, device=device,
            autocast=case.autocast, progress=False,
        )  # fmt: skip
    finally:
        engine._fold_lag = chosen
    sync(device)


def cases(args: argparse.Namespace) -> list[Case]:
    """mnist-cnn at fc1 in float32, and a ResNet-18-shaped network at layer4 under bf16 autocast (a model
    whose forward, not the run's fixed costs, sets the time)."""
    loaded = load_model("mnist-cnn", args.device)
    digits = np.random.default_rng(0).random((args.images, 1, 28, 28), dtype=np.float32)
    out = [Case("mnist-cnn", loaded, loaded.module, "fc1", digits, args.batch_images, None)]
    if args.resnet_images:
        net = pipeline.resnet18().to(args.device)
        photos = np.random.default_rng(1).standard_normal((args.resnet_images, 3, 224, 224), dtype=np.float32)
        out.append(Case("ResNet-18 (random weights)", net, net, "layer4", photos, 256, "bf16"))
    return out


def throughput(args: argparse.Namespace) -> list[dict]:
    directions = f"basis,random:{args.engine_directions}"
    return [case_throughput(case, args, directions) for case in cases(args)]


def case_throughput(case: Case, args: argparse.Namespace, directions: str) -> dict:
    n = len(case.images)
    say(f"(c) {case.name} over {n:,} images on {args.device}: dirscope run vs bare forward")
    contenders = {
        "forward": lambda: bare_forward(case, args.device),
        "dirscope": lambda: engine_run(case, args.device, directions),
        "folded_at_once": lambda: engine_run(case, args.device, directions, lag=0),
    }
    t = race(contenders, args.rounds, args.device)
    return {
        "model": case.name, "layer": case.layer, "images": n, "batch": case.batch,
        "precision": case.autocast or "float32", "directions": directions,
        "forward_ips": n / t["forward"], "dirscope_ips": n / t["dirscope"],
        "overhead": t["dirscope"] / t["forward"] - 1, "at_once_overhead": t["folded_at_once"] / t["forward"] - 1,
    }  # fmt: skip


# report ----------------------------------------------------------------------------------------------------


def card(device: str) -> str:
    if device.startswith("cuda"):
        import triton

        from dirscope.tally.triton_pass import NUM_WARPS, STEP, TILE

        name = torch.cuda.get_device_name(device)
        kernel = f"Triton {triton.__version__} (tile {TILE}, {NUM_WARPS} warps, {STEP} tiles a step)"
        return f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, {kernel}"
    return f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"


def check_table(check: dict) -> str:
    columns = {
        "top/bottom rows": f"{check['rows']:,}",
        "same index": f"{check['index_equal']:,}",
        "near-equal swaps": check["near_equal_swaps"],
        "other differences": check["other_differences"],
        "max value diff (ULP)": f"{check['max_value_ulps']:.0f}",
        "max moment rel. diff": f"{check['max_moment_rel']:.2e}",
        "max min/max rel. diff": f"{check['max_min_max_rel']:.2e}",
        "counts equal": check["count_equal"],
        "directions whose zero counts differ": check["zeros_differ"],
        "passed": f"**{check['passed']}**",
    }
    cells = [" | ".join(columns), "|".join("---" for _ in columns), " | ".join(str(v) for v in columns.values())]
    return "\n".join(f"| {c} |" if not c.startswith("-") else f"|{c}|" for c in cells)


def ratio_rows(times: dict[str, float]) -> str:
    """The table of (b): each contender's time, as a ratio to the GEMM with the GEMM in it (as timed) and
    without it (what the contender adds to the GEMM, the tally's own cost)."""
    gemm = times["gemm"]
    return "\n".join(
        f"| {name} | {s * 1e3:.1f} | {s / gemm:.2f} | {'-' if name == 'gemm' else f'{(s - gemm) / gemm:.2f}'} |"
        for name, s in times.items()
    )


def report(args: argparse.Namespace, check: dict, bound: dict, speeds: list[dict], wall: float) -> str:
    rows = ratio_rows(bound["times"])
    throughput_rows = "\n".join(
        f"| {r['model']} | {r['layer']} | {r['precision']} | {r['images']:,} | {r['batch']} | "
        f"{r['forward_ips']:,.0f} | {r['dirscope_ips']:,.0f} | {r['overhead']:+.1%} | {r['at_once_overhead']:+.1%} |"
        for r in speeds
    )
    return f"""# GPU benchmarks

Written by `python benchmarks/gpu.py` on {datetime.now(timezone.utc):%Y-%m-%d} in {wall:.0f} s.
Device: **{card(args.device)}**.

## (a) Correctness: mnist-cnn at conv2 and fc1, the device run against the CPU (numba) run

Directions `{args.check_directions}`, k = 16, {"all 3,996" if args.check_limit is None else args.check_limit} held-out
digits, TF32 off. A differing index counts as a rank swap when the two values differ by at most
{NEAR_EQUAL:g} relative (rounding of a different summation order); anything else is an error.

{check_table(check)}

## (b) The tally against the projection GEMM

{args.rows:,} rows, D = {args.dim:,}, K = {args.directions:,} directions, top-{args.k} and bottom-{args.k},
{bound["dtype"]} activations and directions made on the device, batches of {args.batch:,} rows; median of
{args.rounds} alternated rounds, synchronised. Every contender includes the GEMM. `device_tally` is the
DeviceTally with its per-block Triton pass (moments, zeros, min/max, histograms and candidates in one read,
then one sort of the candidates), whose flags are read one block late; `_settle_each` reads them before
launching the next block, so the GPU waits for the CPU once per block; `_eager` the same in eager torch, its
fallback without Triton;
`concat_reselect` keeps only top and bottom values, re-selecting every batch as NetDissect's runningstats does.
`x GEMM` is the contender's time over the GEMM's; `tally alone` subtracts the GEMM first (the time that
the tally adds). Issue target: the whole tally at most 3x the GEMM; read as the tally's own time, that is
`tally alone` <= 3, while `x GEMM` <= 3 is the stricter reading (tally alone <= 2).
Top-{args.k} values of the device tally equal the baseline's: **{bound["same_top_values"]}**.

| contender | ms | x GEMM | tally alone x GEMM |
|---|---|---|---|
{rows}

## (c) Engine throughput: `dirscope run` against the bare forward

Random images in memory, the same loader (pinned copies to the device) for both; directions
`{speeds[0]["directions"]}`, k = 64; median of {args.rounds} alternated rounds. The run stops its forward at the
layer and also does its start-up (a dry forward, hashing the weights) and builds its result (null sample,
example images, tables), costs that do not grow with the images: mnist-cnn's forward is so short that they
dominate; the ResNet-18-shaped network (random weights, under bf16 autocast in both) is the realistic case.
`folded at once`: the run's overhead when each batch is folded into the tallies as soon as it arrives, which
waits for its forward (on a GPU the run folds it once the next batch's forward is queued).

| model | layer | precision | images | batch | bare forward img/s | dirscope run img/s | overhead | folded at once |
|---|---|---|---|---|---|---|---|---|
{throughput_rows}
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks-gpu.md"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--directions", type=int, default=4096)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16_384, help="rows per block in (b)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=60_000, help="mnist-cnn images in (c)")
    parser.add_argument("--resnet-images", type=int, default=4096, help="ResNet-18 images in (c); 0: skip it")
    parser.add_argument("--batch-images", type=int, default=1024)
    parser.add_argument("--engine-directions", type=int, default=2048)
    parser.add_argument("--check-directions", default="basis,random:256")
    parser.add_argument("--check-limit", type=int, default=None, help="digits in (a); default all")
    parser.add_argument("--tile", type=int, help="values per tile of the Triton pass (default: the library's)")
    parser.add_argument("--warps", type=int, help="warps per program of the Triton pass (default: the library's)")
    parser.add_argument("--step", type=int, help="tiles the Triton pass loads at once (default: the library's)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available here; run on a GPU machine, or pass --device cpu for a smoke test")
    if args.device.startswith("cuda"):  # Triton is imported only where the kernel runs
        from dirscope.tally import triton_pass

        triton_pass.TILE = args.tile or triton_pass.TILE
        triton_pass.NUM_WARPS = args.warps or triton_pass.NUM_WARPS
        triton_pass.STEP = args.step or triton_pass.STEP
    started = time.perf_counter()
    say(f"device: {card(args.device)}")
    check = correctness(args.device, args.check_directions, args.check_limit)
    say(f"(a) {check}")
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    bound = tally_vs_gemm(args, dtype)
    speeds = throughput(args)
    text = report(args, check, bound, speeds, time.perf_counter() - started)
    write_text(args.out, text)
    say(f"wrote {args.out}")
    print(text)


if __name__ == "__main__":
    main()
