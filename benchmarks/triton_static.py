"""The DeviceTally's Triton kernels compiled for a GPU on a machine without one: registers, spills, shared
memory and occupancy per (tile, warps, step) configuration, from ptxas's own output (cuobjdump).

    python benchmarks/triton_static.py          # the table for gpu_tune's configurations on sm_90 (H100/H200)
    python benchmarks/triton_static.py --check  # the library's configuration only: fails on spills

Triton compiles to machine code without a device (the driver is needed only to load it), and its wheel
ships ptxas and cuobjdump, so this runs anywhere Triton installs. The tests use ``--check``: it catches a
kernel that runs in Triton's interpreter (what CPU tests use) but does not compile for a GPU, and
registers spilled to a stack in local memory, which slow the pass on every card. It says nothing about
time: gpu_tune.py measures that. The kernels are compiled from the arguments the library passes
(``pass_arguments``, ``count_arguments``), with the specialisations Triton's launcher would make for them
(16-byte aligned tensors).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: Triton's interpreter replaces the compiler this script runs")

import triton
from gpu_tune import CONFIGS
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from dirscope.tally import triton_pass
from dirscope.tally.device import DeviceTally, candidate_capacity

TYPES = {
    torch.float64: "fp64",
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int8: "i8",
    torch.bool: "i1",
}
REGISTERS_PER_SM, MAX_WARPS_PER_SM, MAX_CTAS_PER_SM = 65_536, 64, 32  # sm_90


def source(fn: triton.JITFunction, args: tuple, constants: dict) -> ASTSource:
    """The kernel as Triton's launcher would compile it for these arguments."""
    names = [p.name for p in fn.params if p.name not in constants]
    signature, attrs = {}, {}
    for i, (name, arg) in enumerate(zip(names, args, strict=True)):
        if isinstance(arg, torch.Tensor):
            signature[name] = "*" + TYPES[arg.dtype]
            aligned = arg.data_ptr() % 16 == 0
        else:
            signature[name] = "i32" if -(2**31) <= arg < 2**31 else "i64"
            aligned = arg % 16 == 0 and name not in fn.do_not_specialize
        if aligned:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn, signature | dict.fromkeys(constants, "constexpr"), constants, attrs)


def resources(fn: triton.JITFunction, args: tuple, constants: dict, warps: int, arch: int) -> dict:
    """Registers and stack bytes (spilled registers) a thread, shared bytes, and how many warps fit an SM."""
    kernel = triton.compile(
        source(fn, args, constants), target=GPUTarget("cuda", arch, 32), options={"num_warps": warps}
    )
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        usage = subprocess.run([str(tool), "-res-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
    found = dict(re.findall(r"(REG|STACK|SHARED):(\d+)", usage))
    registers = int(found["REG"])
    per_warp = -(-registers * 32 // 256) * 256  # registers are given to a warp in units of 256
    ctas = min(REGISTERS_PER_SM // (per_warp * warps), MAX_WARPS_PER_SM // warps, MAX_CTAS_PER_SM)
    return {
        "registers": registers,
        "stack": int(found["STACK"]),
        "shared": int(found["SHARED"]),
        "warps_per_sm": ctas * warps,
    }


def kernels() -> list[tuple[str, triton.JITFunction, tuple, dict]]:
    """The block pass (rows counted from ``first_row``, and rows listed) and the recount, with arguments
    as in the issue's case (4,096 directions, blocks of 16,384 bf16 rows, k = 64), built on the CPU: only
    their dtypes and alignment reach the compiler."""
    n_dirs, n_cols, k = 4096, 16_384, 64
    tally = DeviceTally(n_dirs, k, 64, "cpu")
    v = torch.empty(n_dirs, n_cols, dtype=torch.bfloat16)  # never read or written
    thresholds = torch.zeros(n_dirs)
    found = []
    for label, rows in (("pass (contiguous rows)", None), ("pass (listed rows)", torch.arange(n_cols))):
        _, args, constants = triton_pass.pass_arguments(
            tally, v, rows, 0, thresholds, thresholds, candidate_capacity(k)
        )
        found.append((label, triton_pass._block_pass, args, constants | {"SORT_BY_RANK": False}))  # compiled: sorts
    grids = torch.ones(8, dtype=torch.float64), torch.zeros(8, dtype=torch.int64)
    _, args, constants = triton_pass.count_arguments(v, torch.arange(8), *grids, 64)
    return [*found, ("recount", triton_pass._count_rows, args, constants)]


def table(configs: list[tuple[int, int, int]], arch: int) -> list[dict]:
    """One row per kernel and configuration, printed as it is compiled (a few seconds each)."""
    rows = []
    for label, fn, args, constants in kernels():
        stepped = "STEP" in constants  # the recount reads one tile at a time
        for tile, warps, step in dict.fromkeys(config if stepped else (*config[:2], None) for config in configs):
            fixed = constants | {"TILE": tile} | ({"STEP": step} if stepped else {})
            used = resources(fn, args, fixed, warps, arch)
            rows.append({"kernel": label, "tile": tile, "warps": warps, "step": step or "-"} | used)
            print(", ".join(f"{key} {value}" for key, value in rows[-1].items()), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100, H200)")
    parser.add_argument("--check", action="store_true", help="only the library's configuration; exit 1 on spills")
    args = parser.parse_args(argv)
    configs = [(triton_pass.TILE, triton_pass.NUM_WARPS, triton_pass.STEP)] if args.check else list(CONFIGS)
    rows = table(configs, args.arch)
    spilled = [row for row in rows if row["stack"] > 0]
    if args.check and spilled:
        sys.exit(
            f"{spilled[0]['kernel']} spills registers to a {spilled[0]['stack']}-byte stack a thread on sm_{args.arch}"
        )


if __name__ == "__main__":
    main()
