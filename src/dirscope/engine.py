"""One pass over the data: batches -> model with hooks -> projections -> streaming tallies -> a Result."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .capture import Capture, LayerInfo, list_layers, resolve_layers
from .data import DataSource, load_data
from .directions import DirectionSet, build_directions
from .errors import DirscopeError
from .models import LoadedModel, load_model
from .project import POOLS, feature_axis, finite_rows, positions, project
from .result import Result
from .rundir import RUN_FORMAT
from .seeding import numpy_rng
from .tally import NonFiniteValues, Reservoir, Tally

# Rows of per-position activations kept for fitting learned families (e.g. PCA) on a spatial layer.
FIT_ROW_BUDGET = 200_000
FIRST_OFFENDERS = 10


@dataclass
class RunConfig:
    """Every setting of a run, recorded in its manifest."""

    directions: str = "basis,random:64"
    k: int = 9
    pool: str = "max"
    batch_size: int = 256
    seed: int = 0
    limit: int | None = None
    device: str = "cpu"
    bins: int = 64
    fit_samples: int = 10_000
    null_sample: int = 1_000

    def check(self) -> None:
        if self.k < 1:
            raise DirscopeError(f"k must be at least 1, got {self.k}")
        if self.batch_size < 1:
            raise DirscopeError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.pool not in POOLS:
            raise DirscopeError(f"unknown pooling {self.pool!r}; use one of {', '.join(POOLS)}")
        if self.limit is not None and self.limit < 1:
            raise DirscopeError(f"--limit must be at least 1, got {self.limit}")
        if self.null_sample < 0:
            raise DirscopeError(f"--null-sample must be >= 0, got {self.null_sample}")
        if self.bins < 2:
            raise DirscopeError(f"--bins must be at least 2, got {self.bins}")
        check_device(self.device)


@dataclass
class ScanLog:
    """What the pass learns about the data itself: label counts and a seeded null sample of rows."""

    null: Reservoir
    label_counts: dict[int, int] = field(default_factory=dict)
    unlabelled: int = 0

    def add(self, idx: np.ndarray, y: np.ndarray | None) -> None:
        self.null.update(idx)
        if y is None:
            self.unlabelled += idx.size
            return
        labels, counts = np.unique(y, return_counts=True)
        for label, count in zip(labels.tolist(), counts.tolist(), strict=True):
            if label < 0:
                self.unlabelled += count
            else:
                self.label_counts[label] = self.label_counts.get(label, 0) + count


@dataclass
class LayerPlan:
    """A captured layer: its activation layout, its directions on the device, and its tally."""

    name: str
    shape: tuple[int, ...]
    axis: int
    directions: DirectionSet
    tally: Tally
    vectors: torch.Tensor
    excluded: int = 0
    first_excluded: list[int] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return self.shape[self.axis]


def check_device(device: str) -> None:
    """Refuse devices this machine lacks, before any work."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DirscopeError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DirscopeError("CUDA is not available on this machine; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise DirscopeError(f"unsupported device {device!r}; use cpu or cuda")


def run(
    model: Any,
    layers: str | Sequence[str],
    data: Any,
    directions: str = "basis,random:64",
    k: int = 9,
    *,
    pool: str = "max",
    batch_size: int = 256,
    seed: int = 0,
    limit: int | None = None,
    device: str = "cpu",
    bins: int = 64,
    fit_samples: int = 10_000,
    null_sample: int = 1_000,
    out: str | None = None,
    overwrite: bool = False,
    figures: bool = True,
    progress: bool = True,
) -> Result:
    """Find the exact top-k and bottom-k examples of every direction at every layer, in one pass.

    ``model``: a spec (``mnist-cnn``, ``python:mod:fn``, ``torchscript:PATH``) or an ``nn.Module``.
    ``data``: a spec (``mnist``, ``npz:PATH``, ``folder:PATH``), a torch Dataset, arrays, or batches.
    ``directions``: families joined by commas, e.g. ``basis,random:64,rotation,pca:16``.
    ``null_sample`` rows are drawn uniformly (seeded) as the null population that scores compare against.
    With ``out``, the run directory is written there (see the README for its format).
    """
    config = RunConfig(directions, k, pool, batch_size, seed, limit, device, bins, fit_samples, null_sample)
    config.check()
    from .rundir import prepare_out, write_run

    out_dir = prepare_out(out, overwrite) if out is not None else None
    started = time.time()
    loaded = load_model(model, device)
    source = load_data(data, preprocess=loaded.preprocess)
    n_rows = _rows_to_scan(source, config)
    names = resolve_layers(loaded.module, [layers] if isinstance(layers, str) else list(layers))
    plans = _plan_layers(loaded, source, names, config)
    log = _scan(loaded, source, plans, config, n_rows, progress)
    result = _build_result(loaded, source, plans, config, log, started)
    if out_dir is not None:
        write_run(result, out_dir, figures=figures)
    return result


def _rows_to_scan(source: DataSource, config: RunConfig) -> int | None:
    n = source.size
    if n is not None and config.limit is not None:
        n = min(n, config.limit)
    if n is not None and config.k > n:
        raise DirscopeError(f"k={config.k} is larger than the {n} examples to scan; lower --k or use more data")
    return n


def _first_batch(source: DataSource, config: RunConfig) -> torch.Tensor:
    for batch in source.batches(min(2, config.batch_size)):
        return batch.x
    raise DirscopeError(f"data {source.spec!r} yielded no examples; check the dataset")


def _plan_layers(loaded: LoadedModel, source: DataSource, names: list[str], config: RunConfig) -> list[LayerPlan]:
    """One dry forward for the layers' shapes, then each layer's directions (fitting them if needed)."""
    example = _first_batch(source, config).to(config.device)
    infos = {info.name: info for info in list_layers(loaded.module, example)}
    fit = _FitActivations(loaded, source, names, config)
    plans = []
    for name in names:
        info = infos[name]
        if info.shape is None:
            raise DirscopeError(f"layer {name!r} did not produce a tensor in a dry forward; choose another layer")
        if info.calls > 1:
            raise DirscopeError(f"layer {name!r} runs {info.calls} times per forward pass; hook one of its callers")
        axis = feature_axis(info.shape)
        fit.axes[name] = axis
        dirs = build_directions(
            config.directions,
            dim=info.shape[axis],
            layer=name,
            seed=config.seed,
            fit_data=lambda n=name: fit(n),
        )
        vectors = torch.from_numpy(dirs.vectors).to(config.device)
        plans.append(LayerPlan(name, info.shape, axis, dirs, Tally(len(dirs), config.k, config.bins), vectors))
    return plans


class _FitActivations:
    """Activations that fitted families (PCA...) learn from, gathered for all layers in one pass on demand.

    Rows are a seeded sample of up to ``fit_samples`` examples. For max pooling on spatial layers each row is
    one position (the space the projection acts in), sampled so at most FIT_ROW_BUDGET rows are kept; for
    mean pooling each row is the example's mean over positions.
    """

    def __init__(self, loaded: LoadedModel, source: DataSource, names: list[str], config: RunConfig) -> None:
        self.loaded, self.source, self.names, self.config = loaded, source, names, config
        self.axes: dict[str, int] = {}
        self._rows: dict[str, np.ndarray] | None = None

    def __call__(self, layer: str) -> np.ndarray:
        if self._rows is None:
            self._rows = self._gather()
        return self._rows[layer]

    def _subset(self) -> np.ndarray | None:
        n = self.source.size
        if n is None:
            return None
        n = min(n, self.config.limit or n)
        if n <= self.config.fit_samples:
            return np.arange(n)
        rng = numpy_rng(self.config.seed, "fit-rows")
        return np.sort(rng.choice(n, size=self.config.fit_samples, replace=False))

    def _gather(self) -> dict[str, np.ndarray]:
        cfg = self.config
        subset = self._subset()
        n_examples = len(subset) if subset is not None else cfg.fit_samples
        rng = numpy_rng(cfg.seed, "fit-positions")
        chunks: dict[str, list[np.ndarray]] = {n: [] for n in self.names}
        seen = 0
        with Capture(self.loaded.module, self.names) as capture, torch.inference_mode():
            for batch in self.source.batches(cfg.batch_size, subset):
                x = batch.x[: cfg.fit_samples - seen]
                for name, act in capture.run(x.to(cfg.device)).items():
                    act = act[finite_rows(act)].float()
                    chunks[name].append(self._rows_of(positions(act, self.axes[name]), n_examples, rng))
                seen += x.shape[0]
                if seen >= cfg.fit_samples:
                    break
        return {n: np.concatenate(c) if c else np.zeros((0, 0), np.float32) for n, c in chunks.items()}

    def _rows_of(self, x: torch.Tensor, n_examples: int, rng: np.random.Generator) -> np.ndarray:
        """[B, D, P] activations -> rows [M, D] to fit on."""
        if x.shape[2] == 1 or self.config.pool == "mean":
            return x.mean(dim=2).cpu().numpy()
        per_example = max(1, FIT_ROW_BUDGET // max(1, n_examples))
        if per_example >= x.shape[2]:
            return x.permute(0, 2, 1).reshape(-1, x.shape[1]).cpu().numpy()
        picks = torch.from_numpy(np.sort(rng.random((x.shape[0], x.shape[2])).argsort(1)[:, :per_example], 1))
        chosen = torch.gather(x, 2, picks.to(x.device)[:, None, :].expand(-1, x.shape[1], -1))
        return chosen.permute(0, 2, 1).reshape(-1, x.shape[1]).cpu().numpy()


def _scan(
    loaded: LoadedModel,
    source: DataSource,
    plans: list[LayerPlan],
    config: RunConfig,
    n_rows: int | None,
    progress: bool,
) -> ScanLog:
    """The one pass: forward each batch, project every layer's activations, fold them into its tally."""
    bar = tqdm(total=n_rows, unit="img", unit_scale=True, disable=not progress, desc="scanning", file=sys.stderr)
    limit = config.limit
    log = ScanLog(Reservoir(config.null_sample, numpy_rng(config.seed, "null-sample")))
    with bar, Capture(loaded.module, [p.name for p in plans]) as capture, torch.inference_mode():
        for batch in source.batches(config.batch_size):
            x, idx, y = batch.x, batch.indices, batch.y
            if limit is not None and idx[-1] >= limit:
                keep = idx < limit
                x, idx, y = x[torch.from_numpy(keep)], idx[keep], None if y is None else y[keep]
            if idx.size:
                log.add(idx, y)
                acts = capture.run(x.to(config.device, non_blocking=True))
                for plan in plans:
                    _fold(plan, acts[plan.name], idx, config.pool)
                bar.update(idx.size)
            if limit is not None and batch.indices[-1] >= limit - 1:
                break
    for plan in plans:
        if plan.tally.count < config.k:
            raise DirscopeError(
                f"layer {plan.name!r}: only {plan.tally.count} examples had finite activations, fewer than "
                f"k={config.k}; lower --k or check the data"
            )
    return log


def _fold(plan: LayerPlan, act: torch.Tensor, idx: np.ndarray, pool: str) -> None:
    ok = finite_rows(act)
    if not bool(ok.all()):
        ok_np = ok.cpu().numpy()
        bad = idx[~ok_np]
        plan.excluded += int(bad.size)
        plan.first_excluded.extend(bad[: FIRST_OFFENDERS - len(plan.first_excluded)].tolist())
        act, idx = act[ok], idx[ok_np]
        if idx.size == 0:
            return
    values = project(act, plan.vectors, pool, plan.axis).cpu().numpy()
    try:
        plan.tally.update(values, idx)
    except NonFiniteValues as exc:
        raise DirscopeError(
            f"layer {plan.name!r}: projections overflow float32 for directions {exc.directions[:5].tolist()}; "
            "rescale the activations or the model"
        ) from None


def _build_result(
    loaded: LoadedModel, source: DataSource, plans: list[LayerPlan], config: RunConfig, log: ScanLog, started: float
) -> Result:
    results = {p.name: p.tally.result() for p in plans}
    null_rows = log.null.result()
    named = [null_rows] + [np.concatenate([r.top_indices.ravel(), r.bottom_indices.ravel()]) for r in results.values()]
    indices = np.unique(np.concatenate(named))
    labels = source.labels_at(indices)
    images = source.images_at(indices)
    manifest = _manifest(loaded, source, plans, config, started)
    manifest["data"]["label_counts"] = {str(k): v for k, v in sorted(log.label_counts.items())} or None
    manifest["data"]["unlabelled_rows"] = log.unlabelled
    for plan in plans:
        if plan.excluded:
            print(
                f"warning: layer {plan.name!r}: {plan.excluded} examples with NaN/inf activations excluded "
                f"(first rows: {plan.first_excluded}); see manifest.json",
                file=sys.stderr,
            )
    return Result.from_tallies(
        manifest=manifest,
        directions={p.name: p.directions for p in plans},
        tallies=results,
        indices=indices,
        labels=labels,
        label_names=source.label_names or loaded.label_names,
        images=images,
        null_rows=null_rows,
    )


def _manifest(
    loaded: LoadedModel, source: DataSource, plans: list[LayerPlan], config: RunConfig, started: float
) -> dict[str, Any]:
    import numba
    import pyarrow

    return {
        "format": RUN_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"spec": loaded.spec, **({"info": loaded.info} if loaded.info else {})},
        "data": source.describe(),
        "config": {**config.__dict__},
        "n": {p.name: p.tally.count for p in plans},
        "layers": [
            {
                "name": p.name,
                "shape": list(p.shape),
                "feature_axis": p.axis,
                "dim": p.dim,
                "positions": int(np.prod(p.shape)) // p.dim,
                "directions": len(p.directions),
                "families": p.directions.families(),
                "direction_info": p.directions.info,
                "excluded_nonfinite": p.excluded,
                "first_excluded_rows": p.first_excluded,
            }
            for p in plans
        ],
        "versions": {
            "dirscope": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "numba": numba.__version__,
            "pyarrow": pyarrow.__version__,
        },
        "platform": platform.platform(),
        "wall_time_s": round(time.time() - started, 3),
    }


def describe_layers(
    model: Any, data: Any = None, input_shape: tuple[int, ...] | None = None, device: str = "cpu"
) -> list[LayerInfo]:
    """Every hookable layer of a model with its per-example output shape, from one dry forward.

    The example input comes from ``input_shape``, else the model's own declared shape, else ``data``.
    """
    check_device(device)
    loaded = load_model(model, device)
    if input_shape is None and loaded.input_shape is None and data is None:
        raise DirscopeError("cannot tell this model's input shape; pass --data SPEC or --input-shape 3,224,224")
    if input_shape is not None or data is None:
        shape = input_shape or loaded.input_shape
        example = torch.zeros((2, *shape))
    else:
        example = _first_batch(load_data(data, preprocess=loaded.preprocess), RunConfig())
    return list_layers(loaded.module, example.to(device))
