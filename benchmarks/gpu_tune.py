"""Tune and profile the DeviceTally's Triton pass on the issue's case: (tile, warps, step) configurations,
then a kernel table.

    python benchmarks/gpu_tune.py                     # on a CUDA machine: about two minutes
    python benchmarks/gpu_tune.py --best-to best.txt  # also writes "--tile T --warps W --step S" for gpu.py

Each configuration times GEMM + DeviceTally over the same bf16 activations (``gpu.race``: medians of
alternated, synchronised rounds) and is reported as a ratio to the GEMM alone. The fastest then runs once
under ``torch.profiler``, whose table (by device time) shows where the tally's time goes. The library's
default is ``triton_pass.TILE``, ``NUM_WARPS`` and ``STEP``; change it there after a sweep. Registers,
spills and occupancy of each configuration: ``python benchmarks/triton_static.py`` (no GPU needed).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from gpu import activations, gemm_only, race, sync, with_device_tally

CONFIGS = ((256, 4, 1), (256, 4, 2), (256, 4, 4), (128, 4, 2), (128, 4, 4), (256, 8, 4), (512, 8, 2), (128, 2, 4))


def sweep(args: argparse.Namespace) -> tuple[int, int, int]:
    from dirscope.tally import triton_pass  # only where Triton is (checked in main)

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    x, v = activations(args.rows, args.dim, args.directions, dtype, args.device)

    def tally_with(config: tuple[int, int, int]) -> Callable[[], object]:
        def run() -> object:
            triton_pass.TILE, triton_pass.NUM_WARPS, triton_pass.STEP = config
            return with_device_tally(x, v, args.batch, args.k, fused=True)

        return run

    contenders = {"gemm": lambda: gemm_only(x, v, args.batch)} | {config: tally_with(config) for config in CONFIGS}
    timed = race(contenders, args.rounds, args.device)
    gemm = timed.pop("gemm")
    print(f"GEMM alone: {gemm * 1e3:.1f} ms", flush=True)
    for (tile, warps, step), seconds in timed.items():
        config = f"tile {tile:5d}, {warps} warps, step {step}"
        alone = (seconds - gemm) / gemm
        print(f"{config}: {seconds * 1e3:7.1f} ms = {seconds / gemm:.2f} x GEMM (tally alone {alone:.2f})", flush=True)
    best = min(timed, key=timed.get)
    triton_pass.TILE, triton_pass.NUM_WARPS, triton_pass.STEP = best
    print(f"fastest: tile {best[0]}, {best[1]} warps, step {best[2]}", flush=True)
    if args.device.startswith("cuda"):
        profile(x[: args.profile_rows], v, args)
    return best


def profile(x: torch.Tensor, v: torch.Tensor, args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with_device_tally(x, v, args.batch, args.k, fused=True)
        sync(args.device)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--directions", type=int, default=4096)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16_384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile-rows", type=int, default=262_144, help="rows of the profiled run")
    parser.add_argument("--best-to", type=Path, help="write the fastest as gpu.py's --tile/--warps/--step")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available here; run on a GPU machine")
    if importlib.util.find_spec("triton") is None:
        parser.error("Triton is not installed; it comes with CUDA builds of torch (or: pip install triton)")
    tile, warps, step = sweep(args)
    if args.best_to:
        args.best_to.write_text(f"--tile {tile} --warps {warps} --step {step}")


if __name__ == "__main__":
    main()
