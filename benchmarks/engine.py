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
from collections.abc import Callable, Iterable, Iterator
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


def projections(x: torch.Tensor, v: torch.Tensor, batch: int) -> Iterator[torch.Tensor]:
    """The projection blocks [K, B] of the rows of ``x``, batch by batch: the GEMM every contender shares."""
    for s in range(0, x.shape[0], batch):
        yield project(x[s : s + batch], v, "max", 0)


def gemm_only(blocks: Iterable[torch.Tensor]) -> None:
    for _ in blocks:
        pass


def engine(blocks: Iterable[torch.Tensor], k: int) -> Tally | None:
    tally, start = None, 0
    for p in blocks:
        if tally is None:
            tally = Tally(p.shape[0], k)
        tally.update(p.numpy(), np.arange(start, start + p.shape[1]))
        start += p.shape[1]
    return tally


def store_all_then_topk(blocks: Iterable[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Alternative (a): keep every projection, then one torch.topk per side."""
    values = torch.cat(list(blocks), dim=1)
    return torch.topk(values, k, dim=1).values, torch.topk(values, k, dim=1, largest=False).values


def concat_and_resort(blocks: Iterable[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Alternative (b): a running top-k that concatenates and re-selects each batch (NetDissect-style)."""
    top = bot = None
    for p in blocks:
        top = p if top is None else torch.cat([top, p], 1)
        bot = p if bot is None else torch.cat([bot, p], 1)
        top = torch.topk(top, min(k, top.shape[1]), dim=1).values
        bot = torch.topk(bot, min(k, bot.shape[1]), dim=1, largest=False).values
    return top, bot


def race_rounds(contenders: dict[str, Callable[[], object]], rounds: int = 5) -> dict[str, list[float]]:
    """Seconds of each contender in each of ``rounds`` rounds, after one warm-up each. Every round runs all
    contenders, in reverse order every other round, so neither goes first on a machine that drifts."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(t) for name, t in times.items()}


def race(contenders: dict[str, Callable[[], object]], rounds: int = 5) -> dict[str, float]:
    """Median seconds of each contender over ``race_rounds``."""
    return medians(race_rounds(contenders, rounds))


def paired_ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    """The median over rounds of ``name``'s time over ``base``'s in the same round: a load that comes and
    goes over minutes slows both runs of a round, and cancels, where a ratio of the two medians keeps it."""
    return statistics.median(round_ratios(times, name, base))


def round_ratios(times: dict[str, list[float]], name: str, base: str) -> list[float]:
    """``name``'s time over ``base``'s in each round."""
    return [t / b for t, b in zip(times[name], times[base], strict=True)]


def spread(values: list[float], minus: float = 0.0) -> str:
    """The first and third quartiles, less ``minus``, as "q1 to q3" (the value itself, for one value)."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return f"{q1 - minus:.3f} to {q3 - minus:.3f}"


def overheads(times: dict[str, list[float]], name: str = "dirscope", base: str = "forward") -> dict[str, float | str]:
    """``name``'s time over ``base``'s, minus 1, two ways: the median of per-round ratios (``paired_ratio``),
    and the ratio of the two medians (which keeps a drift that the pairing cancels), shown side by side;
    ``overhead_spread`` is the quartiles of the per-round ratios, minus 1, which show how far rounds scatter."""
    med = medians(times)
    return {
        "overhead": paired_ratio(times, name, base) - 1,
        "overhead_of_medians": med[name] / med[base] - 1,
        "overhead_spread": spread(round_ratios(times, name, base), minus=1),
    }


def engine_vs_gemm(n: int, dim: int, n_dirs: int, k: int = 64, batch: int = 4096, rounds: int = 5) -> dict:
    """Median seconds of each, and the engine's time over the GEMM's: the median of per-round ratios
    (``paired_ratio``), with the quartiles of those ratios as ``ratio_spread``."""
    x, v = synthetic(n, dim, n_dirs)
    times = race_rounds(
        {"gemm": lambda: gemm_only(projections(x, v, batch)), "engine": lambda: engine(projections(x, v, batch), k)},
        rounds,
    )
    return {
        "n": n,
        "dim": dim,
        "directions": n_dirs,
        "k": k,
        **medians(times),
        "ratio": paired_ratio(times, "engine", "gemm"),
        "ratio_spread": spread(round_ratios(times, "engine", "gemm")),
    }


def engine_vs_alternatives(n: int, dim: int, n_dirs: int, k: int = 64, batch: int = 4096, rounds: int = 5) -> dict:
    """Two races: the whole run (GEMM and tally, as a user sees it), and the tallies alone on the same
    stored projection blocks (what each design costs beyond the GEMM, measured directly)."""
    x, v = synthetic(n, dim, n_dirs)
    designs = {"engine": engine, "store_all": store_all_then_topk, "concat_resort": concat_and_resort}
    whole = race(
        {"gemm": lambda: gemm_only(projections(x, v, batch))}
        | {name: (lambda fn=fn: fn(projections(x, v, batch), k)) for name, fn in designs.items()},
        rounds,
    )
    stored = list(projections(x, v, batch))
    alone = race({f"{name}_tally": (lambda fn=fn: fn(stored, k)) for name, fn in designs.items()}, rounds)
    return {"n": n, "dim": dim, "directions": n_dirs, "k": k, **whole, **alone}


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
