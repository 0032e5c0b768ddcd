"""The streaming engine against its bound (the projection GEMM) and against common alternatives.

Each comparison is measured side by side in one process, alternating the contenders over several rounds
and keeping each one's median, so a busy machine slows both alike. Activations are synthetic
(ReLU of a Gaussian, like a hidden layer), generated once and reused, so only projection and tally count.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dirscope.project import project
from dirscope.tally import Tally


def synthetic(n: int, dim: int, n_dirs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(n, dim, generator=g))
    v = torch.nn.functional.normalize(torch.randn(n_dirs, dim, generator=g), dim=1)
    return x, v


def gemm_only(x: torch.Tensor, v: torch.Tensor, batch: int) -> None:
    for s in range(0, x.shape[0], batch):
        project(x[s : s + batch], v, "max", 0)


def engine(x: torch.Tensor, v: torch.Tensor, batch: int, k: int) -> Tally:
    tally = Tally(v.shape[0], k)
    for s in range(0, x.shape[0], batch):
        tally.update(project(x[s : s + batch], v, "max", 0).numpy(), np.arange(s, min(s + batch, x.shape[0])))
    return tally


def store_all_then_topk(x: torch.Tensor, v: torch.Tensor, batch: int, k: int) -> None:
    """Alternative (a): keep every projection, then one torch.topk per side."""
    values = torch.cat([v @ x[s : s + batch].T for s in range(0, x.shape[0], batch)], dim=1)
    torch.topk(values, k, dim=1)
    torch.topk(values, k, dim=1, largest=False)


def concat_and_resort(x: torch.Tensor, v: torch.Tensor, batch: int, k: int) -> None:
    """Alternative (b): a running top-k that concatenates and re-selects each batch (NetDissect-style)."""
    top = bot = torch.empty(v.shape[0], 0)
    for s in range(0, x.shape[0], batch):
        p = v @ x[s : s + batch].T
        top = torch.topk(torch.cat([top, p], 1), min(k, top.shape[1] + p.shape[1]), dim=1).values
        bot = torch.topk(torch.cat([bot, p], 1), min(k, bot.shape[1] + p.shape[1]), dim=1, largest=False).values


def race(contenders: dict[str, Callable[[], object]], rounds: int = 5) -> dict[str, float]:
    """Median seconds of each contender, run alternately ``rounds`` times after one warm-up each."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def engine_vs_gemm(n: int, dim: int, n_dirs: int, k: int = 64, batch: int = 4096, rounds: int = 5) -> dict:
    x, v = synthetic(n, dim, n_dirs)
    t = race({"gemm": lambda: gemm_only(x, v, batch), "engine": lambda: engine(x, v, batch, k)}, rounds)
    return {"n": n, "dim": dim, "directions": n_dirs, "k": k, **t, "ratio": t["engine"] / t["gemm"]}


def engine_vs_alternatives(n: int, dim: int, n_dirs: int, k: int = 64, batch: int = 4096, rounds: int = 5) -> dict:
    x, v = synthetic(n, dim, n_dirs)
    t = race(
        {
            "gemm": lambda: gemm_only(x, v, batch),
            "engine": lambda: engine(x, v, batch, k),
            "store_all": lambda: store_all_then_topk(x, v, batch, k),
            "concat_resort": lambda: concat_and_resort(x, v, batch, k),
        },
        rounds,
    )
    tally_only = {f"{name}_tally": t[name] - t["gemm"] for name in ("engine", "concat_resort")}
    return {"n": n, "dim": dim, "directions": n_dirs, "k": k, **t, **tally_only}


_PEAK_SCRIPT = """
import sys, numpy as np, torch
from benchmarks.engine import peak_kib, synthetic
from dirscope.project import project
from dirscope.tally import Tally
n, mode = int(sys.argv[1]), sys.argv[2]
dim, n_dirs, k, batch = 512, 1024, 64, 4096
_, v = synthetic(1, dim, n_dirs)
g = torch.Generator().manual_seed(1)
tally, kept = Tally(n_dirs, k), []
warm = Tally(n_dirs, k)
for s in range(0, 8 * batch, batch):  # load the kernels and let the allocators settle before measuring
    x = torch.relu(torch.randn(batch, dim, generator=g))
    warm.update(project(x, v, "max", 0).numpy(), np.arange(s, s + batch))
del warm, x
base = peak_kib()
for s in range(0, n, batch):
    x = torch.relu(torch.randn(min(batch, n - s), dim, generator=g))
    p = project(x, v, "max", 0)
    if mode == "engine":
        tally.update(p.numpy(), np.arange(s, s + x.shape[0]))
    else:
        kept.append(p)
print(peak_kib() - base)
"""


def peak_kib() -> int:
    """VmHWM: this process's own peak RSS in KiB (ru_maxrss would inherit the parent's across exec)."""
    with open("/proc/self/status") as status:
        return int(next(ln.split()[1] for ln in status if ln.startswith("VmHWM")))


def fresh_process(script: str, *args: object) -> str:
    """The last line printed by ``script`` run in a new Python process from the repository root."""
    out = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    return out.strip().splitlines()[-1]


def peak_memory_mib(n: int, mode: str = "engine") -> float:
    """Peak RSS growth (MiB) of a fresh process streaming n synthetic rows through the engine or storing them."""
    return int(fresh_process(_PEAK_SCRIPT, n, mode)) / 1024
