"""One pass over the data: batches -> model with hooks -> projections -> streaming tallies -> a Result."""

from __future__ import annotations

import math
import numbers
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .cache import CACHE_DTYPES, CacheWriter, cache_layout, open_cache
from .capture import LayerInfo, list_layers
from .checkpoint import (
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT,
    Checkpoint,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from .data import load_data
from .directions import DirectionSet, build_directions
from .directions.file import file_digests
from .errors import DirscopeError
from .examples import collect_images
from .feeds import CacheFeed, Feed, ModelFeed, Rows, first_inputs, takes_token_ids, token_hint
from .models import load_model, using_model
from .project import FEATURE_AXES, POOLS, finite_rows, positions, project
from .result import Result
from .rundir import RUN_FORMAT, unpublish
from .seeding import derive_seed, numpy_rng
from .tally import NonFiniteValues, Reservoir, Tally
from .tally.device import DeviceTally

# Rows of per-position activations kept for fitting learned families (e.g. PCA) on a spatial layer.
FIT_ROW_BUDGET = 200_000
FIRST_OFFENDERS = 10
AUTOCASTS = {None: None, "bf16": torch.bfloat16}
TALLIES = ("auto", "numba", "device")


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
    cache: str | None = None  # dtype of the activation cache written, if any
    autocast: str | None = None  # "bf16": the scan's forward and projections under torch.autocast
    tally: str = "auto"  # auto: the numba tally on cpu, the torch DeviceTally on other devices
    feature_axis: str = "auto"  # where a layer's features lie: auto (by shape and module), first or last

    def check(self) -> None:
        self._check_types()
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
        if self.fit_samples < 1:
            raise DirscopeError(f"--fit-samples must be at least 1, got {self.fit_samples}")
        if self.bins < 2:
            raise DirscopeError(f"--bins must be at least 2, got {self.bins}")
        if self.cache is not None and self.cache not in CACHE_DTYPES:
            raise DirscopeError(f"unknown --cache-dtype {self.cache!r}; use one of {', '.join(CACHE_DTYPES)}")
        if self.autocast not in AUTOCASTS:
            raise DirscopeError(f"unknown --autocast {self.autocast!r}; use bf16, or leave it out for float32")
        if self.tally not in TALLIES:
            raise DirscopeError(f"unknown --tally {self.tally!r}; use one of {', '.join(TALLIES)}")
        if self.feature_axis not in FEATURE_AXES:
            raise DirscopeError(f"unknown --feature-axis {self.feature_axis!r}; use one of {', '.join(FEATURE_AXES)}")
        check_device(self.device)

    def _check_types(self) -> None:
        """API callers can pass anything: counts must be whole numbers (numpy's too, kept as int for JSON)."""
        if not isinstance(self.directions, str):
            raise DirscopeError(f"directions must be a spec string such as 'basis,random:64', got {self.directions!r}")
        for name in ("k", "batch_size", "seed", "limit", "bins", "fit_samples", "null_sample"):
            value = getattr(self, name)
            if value is None and name == "limit":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise DirscopeError(f"{name} must be a whole number, got {value!r}")
            setattr(self, name, int(value))
        if isinstance(self.device, torch.device):
            self.device = str(self.device)  # recorded in the manifest and checkpoint, which are JSON

    @property
    def on_device(self) -> bool:
        """Whether the tallies are torch DeviceTallies (kept where the projections are) or numba Tallies."""
        return self.tally == "device" or (self.tally == "auto" and torch.device(self.device).type != "cpu")


@dataclass
class ScanLog:
    """What the pass learns about the data itself: label counts and a seeded null sample of rows."""

    null: Reservoir
    label_counts: dict[int, int] = field(default_factory=dict)
    unlabelled: int = 0

    def add(self, idx: np.ndarray, y: np.ndarray | None) -> None:
        self.null.update(idx)
        self.unlabelled += count_labels(self.label_counts, idx, y)

    def merge(self, other: ScanLog) -> None:
        """Fold in the log of a later, disjoint part of the data (a shard)."""
        self.null = self.null.merge(other.null)
        _add_counts(self.label_counts, other.label_counts)
        self.unlabelled += other.unlabelled


def count_labels(counts: dict[int, int], idx: np.ndarray, y: np.ndarray | None) -> int:
    """Add the labels ``y`` of rows ``idx`` to ``counts``; returns how many rows were unlabelled (None or < 0)."""
    if y is None:
        return int(idx.size)
    labels, n = np.unique(y, return_counts=True)
    _add_counts(counts, {label: count for label, count in zip(labels.tolist(), n.tolist(), strict=True) if label >= 0})
    return int(n[labels < 0].sum())


def _add_counts(counts: dict[int, int], more: dict[int, int]) -> None:
    for label, count in more.items():
        counts[label] = counts.get(label, 0) + count


def null_reservoir(config: RunConfig) -> Reservoir:
    """An empty reservoir of the run's null sample: its size and seed."""
    return Reservoir(config.null_sample, derive_seed(config.seed, "null-sample"))


@dataclass
class Exclusions:
    """A layer's rows with NaN/inf activations: counted, the first named, and what its null must leave out.

    Its top-k sets are drawn from its finite rows only, so its null is those rows: the null sample less the
    rows excluded here, and the label counts less ``labels``. ``sample`` is a reservoir like the null
    sample's (same size and seed) over the excluded rows alone: the null sample holds the smallest keys of
    all rows, so each excluded row in it is among the smallest keys of the excluded rows. Memory stays
    O(null sample), and it merges and resumes exactly, as the null sample does.
    """

    sample: Reservoir
    count: int = 0
    first: list[int] = field(default_factory=list)
    labels: dict[int, int] = field(default_factory=dict)  # labels >= 0 of the excluded rows

    def add(self, idx: np.ndarray, y: np.ndarray | None) -> None:
        self.count += int(idx.size)
        self.first.extend(idx[: FIRST_OFFENDERS - len(self.first)].tolist())
        self.sample.update(idx)
        count_labels(self.labels, idx, y)

    def merge(self, other: Exclusions) -> None:
        """Fold in the exclusions of a later, disjoint part of the rows (a shard)."""
        self.count += other.count
        self.first = (self.first + other.first)[:FIRST_OFFENDERS]
        self.sample = self.sample.merge(other.sample)
        _add_counts(self.labels, other.labels)

    def null_rows(self, null_rows: np.ndarray) -> list[int]:
        """The rows of the final null sample ``null_rows`` excluded here, sorted."""
        return np.intersect1d(null_rows, self.sample.rows).tolist()

    def state(self) -> tuple[dict[str, Any], np.ndarray]:
        """JSON-able values and the sample's rows, for a checkpoint."""
        sample = self.sample.state_dict()
        rows = sample.pop("rows")
        labels = {str(k): v for k, v in self.labels.items()}
        return {"excluded": self.count, "first_excluded": self.first, "excluded_labels": labels, "sample": sample}, rows

    @classmethod
    def from_state(cls, record: dict[str, Any], rows: np.ndarray) -> Exclusions:
        sample = Reservoir.from_state_dict({**record["sample"], "rows": rows})
        labels = {int(k): int(v) for k, v in record["excluded_labels"].items()}
        return cls(sample, int(record["excluded"]), list(record["first_excluded"]), labels)


@dataclass
class LayerPlan:
    """A captured layer: its activation layout, its directions on the device, and its tally."""

    name: str
    shape: tuple[int, ...]
    axis: int
    directions: DirectionSet
    tally: Tally | DeviceTally
    vectors: torch.Tensor
    excluded: Exclusions

    @property
    def dim(self) -> int:
        return self.shape[self.axis]


def check_device(device: str | torch.device) -> None:
    """Refuse devices this machine lacks, before any work; anything but a name or a torch.device in one line."""
    if not isinstance(device, (str, torch.device)):
        raise DirscopeError(f"device must be a name such as 'cpu' or 'cuda:0', or a torch.device; got {device!r}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DirscopeError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DirscopeError("CUDA is not available on this machine; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise DirscopeError(f"unsupported device {device!r}; use cpu or cuda")


def run(
    model: Any = None,
    layers: str | Sequence[str] | None = None,
    data: Any = None,
    directions: str = "basis,random:64",
    k: int = 9,
    *,
    pool: str = "max",
    batch_size: int = 256,
    seed: int = 0,
    limit: int | None = None,
    device: str = "cpu",
    workers: int = 0,
    bins: int = 64,
    fit_samples: int = 10_000,
    null_sample: int = 1_000,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    checkpoint_every: float = 60.0,
    cache: bool = False,
    cache_dtype: str | None = None,
    from_cache: str | Path | None = None,
    autocast: str | None = None,
    tally: str = "auto",
    feature_axis: str = "auto",
    weights: str | None = None,
    preprocess: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    ray_workers: int | None = None,
    figures: bool = True,
    progress: bool = True,
) -> Result:
    """Find the exact top-k and bottom-k examples of every direction at every layer, in one pass.

    ``model``: a spec (``mnist-cnn``, ``python:mod:fn``, ``torchscript:PATH``) or an ``nn.Module``, which
    the scan puts in eval mode and on ``device`` (its train/eval modes are restored afterwards); ``weights``
    is a checkpoint for a spec that takes one (``torchvision:``, ``timm:``, ``efficientnet-lite0``),
    ``preprocess`` overrides its image preprocessing (``resize=256,crop=224``), as the CLI's flags do.
    ``data``: a spec (``mnist``, ``npz:PATH``, ``folder:PATH``), a torch Dataset, arrays, or batches.
    ``directions``: families joined by commas, e.g. ``basis,random:64,rotation,pca:16``.
    ``feature_axis``: where a layer's features lie, for layers of two or more axes per example; ``auto``
    takes channels first for [C,H,W] and the [C,L] output of 1-D conv, norm and pooling modules, last for
    token layers [T,D]; ``first`` or ``last`` says it for every layer (a ReLU after a Conv1d, say).
    ``null_sample`` rows are drawn uniformly (seeded) as the null population that scores compare against.
    ``workers`` processes decode image files ahead of the model (results do not depend on it).
    With ``out``, the run directory is written there (see the README for its format), with a checkpoint every
    ``checkpoint_every`` seconds (0: none) that ``resume=True`` continues from after a crash, giving the
    same results as an uninterrupted run. ``cache=True`` also writes the activations to ``out/cache``;
    ``from_cache`` (a run directory or cache folder) then analyses new directions without model or data pass.
    With ``device="cuda"`` the projections and tallies stay on the GPU (``tally="auto"`` picks the torch
    ``DeviceTally`` off the CPU; ``tally="device"`` forces it on the CPU, ``"numba"`` the CPU tally);
    ``autocast="bf16"`` runs the scan's forward passes and projections under ``torch.autocast`` in bfloat16.
    ``engine="ray"`` scans contiguous shards of the rows in Ray tasks (``ray_workers`` at once, default one per
    CPU, or GPU with ``device="cuda"``) on the cluster at ``ray_address`` (default: this process's connection,
    else as ``ray.init``: RAY_ADDRESS, a ``ray start`` cluster here, a new local one; ``"local"``: a new one)
    and merges them exactly, in order: the same results as ``engine="local"``.
    """
    if cache_dtype is not None and not cache:
        raise DirscopeError(f"--cache-dtype {cache_dtype} needs --cache (it sets the precision of the cache written)")
    cache_as = (cache_dtype or "float32") if cache else None
    config = RunConfig(
        directions, k, pool, batch_size, seed, limit, device, bins, fit_samples, null_sample, cache_as, autocast, tally,
        feature_axis,
    )  # fmt: skip
    config.check()
    _check_sources(model, data, from_cache, cache, weights or preprocess)
    _check_out(out, overwrite, resume, checkpoint_every, cache)
    _check_engine(engine, ray_address, ray_workers, cache)
    from .rundir import check_out, lock_out, write_run

    # the whole run, the Ray driver's included, holds the directory: one writer at a time
    with using_model(model, device, weights, preprocess) as model, lock_out(out):
        out_dir = check_out(out, overwrite, resume, cache=cache, from_cache=from_cache) if out is not None else None
        started = time.time()
        feed = _open_feed(model, layers, data, config, from_cache, workers)
        if engine == "ray":
            from .rayscan import check_shardable

            check_shardable(feed.rows)
        n_rows = _rows_to_scan(feed.rows, config)
        fingerprint = _fingerprint(feed, config)
        checkpoint = _checkpoint_to_resume(out_dir, fingerprint) if resume and out_dir is not None else None
        plans = _plan_layers(feed, config, checkpoint)
        log, start = _restore_log(checkpoint, config)
        if out_dir is not None and overwrite:  # only now, with model, data and directions known good
            remove_checkpoint(out_dir)  # so a command that fails on any of them deletes nothing
        writer = _cache_writer(out_dir, feed, plans, config, checkpoint) if out_dir is not None and cache else None
        saver = _Saver(out_dir, checkpoint_every, fingerprint) if out_dir is not None and checkpoint_every > 0 else None
        scan = _Progress(start, n_rows, progress, saver, writer)
        if engine == "ray":
            from .rayscan import RayJob, scan_on_ray

            job = RayJob(model, layers, data, from_cache, workers, ray_address, ray_workers)
            engine_info = scan_on_ray(feed, plans, config, log, scan, job)
        else:
            _scan(feed, plans, config, log, scan)
            engine_info = {"name": "local"}
        _check_counts(plans, config)
        if writer is not None:
            writer.finish()
        result = _build_result(feed, plans, config, log, started, out_dir)
        result.manifest["engine"] = engine_info
        result.manifest["checkpoints"] = saver.record() if saver is not None else None
        if out_dir is not None:
            write_run(result, out_dir, figures=figures)
            remove_checkpoint(out_dir)
    return result


def _check_sources(model: Any, data: Any, from_cache: Any, cache: bool, model_options: str | None = None) -> None:
    """A run reads either a model over data or an activation cache."""
    if from_cache is None and model is None:
        raise DirscopeError("give a model (--model) or an activation cache (--from-cache RUN_DIR)")
    if from_cache is None and data is None:
        raise DirscopeError("give the data to scan (--data), e.g. --data mnist")
    if from_cache is not None and model is not None:
        raise DirscopeError("give --model or --from-cache, not both: a run from a cache uses no model")
    if from_cache is not None and cache:
        raise DirscopeError("--cache with --from-cache would only copy the cache; drop --cache")
    if model is None and model_options:
        raise DirscopeError("--weights and --preprocess (weights=, preprocess=) go with a model, which this run lacks")


def _check_out(out: Any, overwrite: bool, resume: bool, checkpoint_every: float, cache: bool) -> None:
    if resume and overwrite:
        raise DirscopeError("give --resume (continue the run in --out) or --overwrite (start over), not both")
    if out is None and (resume or cache):
        raise DirscopeError(f"{'--resume' if resume else '--cache'} needs --out, the run directory")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, numbers.Real):  # only from the API
        raise DirscopeError(
            f"checkpoint_every must be a number of seconds (0: no checkpoints), got {checkpoint_every!r}"
        )
    if not (math.isfinite(checkpoint_every) and checkpoint_every >= 0):  # inf breaks the manifest; nan is never due
        raise DirscopeError(
            f"--checkpoint-every must be >= 0 seconds and finite (0: no checkpoints), got {checkpoint_every}"
        )


def _check_engine(engine: str, ray_address: str | None, ray_workers: int | None, cache: bool) -> None:
    if engine not in ("local", "ray"):
        raise DirscopeError(f"unknown engine {engine!r}; use local or ray")
    if engine == "local" and (ray_address is not None or ray_workers is not None):
        raise DirscopeError("--ray-address and --ray-workers go with --engine ray")
    if ray_workers is not None and ray_workers < 1:
        raise DirscopeError(f"--ray-workers must be at least 1, got {ray_workers}")
    if engine == "ray" and cache:
        raise DirscopeError("--cache writes the activations from one process; run it without --engine ray")
    if engine == "ray":
        from .rayscan import require_ray

        require_ray(ray_address)


def _open_feed(model: Any, layers: Any, data: Any, config: RunConfig, from_cache: Any, workers: int = 0) -> Feed:
    names = [layers] if isinstance(layers, str) else list(layers or [])
    if from_cache is not None:
        return CacheFeed(from_cache, names, data, config.pool, config.feature_axis)
    return ModelFeed(model, names, data, config.device, workers, config.feature_axis)


def _fingerprint(feed: Feed, config: RunConfig) -> dict[str, Any]:
    """Everything a checkpoint's state depends on, compared field by field on resume.

    The model's info holds its preprocessing, which changes the activations without changing the weights;
    the layer shapes catch the rest of that; the data's content identity catches a rewritten data file.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "run_format": RUN_FORMAT,
        "model": _model_record(feed),
        "from_cache": feed.model.get("from_cache"),
        "data": {"spec": feed.rows.spec, "size": feed.rows.size, "content": feed.rows.describe().get("content")},
        "layers": feed.names,
        "shapes": {name: list(shape) for name, shape in feed.shapes.items()},
        "layout": feed.axes,  # each layer's feature axis (sorted after "layers", which differs first)
        **config.__dict__,
        "direction_files": file_digests(config.directions),
    }


def _model_record(feed: Feed) -> dict[str, Any]:
    """The model as checkpoints and caches record it: spec, weights digest and any info (e.g. preprocessing)."""
    record = {"spec": feed.model["spec"], "weights_sha256": feed.model["weights_sha256"]}
    info = feed.model.get("info")
    return {**record, "info": info} if info else record


def _checkpoint_to_resume(out: Path, fingerprint: dict[str, Any]) -> Checkpoint:
    """The checkpoint in ``out``, refused unless it was made under this fingerprint."""
    checkpoint = load_checkpoint(out)
    checkpoint.check(fingerprint, out / CHECKPOINT_DIR)
    return checkpoint


def _rows_to_scan(rows: Rows, config: RunConfig) -> int | None:
    n = rows.size
    if n is not None and config.limit is not None:
        n = min(n, config.limit)
    if n is not None and config.k > n:
        raise DirscopeError(f"k={config.k} is larger than the {n} examples to scan; lower --k or use more data")
    return n


def _plan_layers(feed: Feed, config: RunConfig, checkpoint: Checkpoint | None) -> list[LayerPlan]:
    """Each layer's layout, directions (fitted if needed, or as the checkpoint saved them) and tally."""
    fit = _FitActivations(feed, config, feed.axes)
    plans = []
    for i, name in enumerate(feed.names):
        shape, axis = feed.shapes[name], feed.axes[name]
        if checkpoint is not None:
            dirs, tally, excluded = _restore_layer(checkpoint, i)
        else:
            dirs = build_directions(
                config.directions, dim=shape[axis], layer=name, seed=config.seed, fit_data=lambda n=name: fit(n)
            )
            tally, excluded = Tally(len(dirs), config.k, config.bins), Exclusions(null_reservoir(config))
        tally = make_tally(tally, config)
        vectors = torch.from_numpy(dirs.vectors).to(config.device)
        plans.append(LayerPlan(name, shape, axis, dirs, tally, vectors, excluded))
    return plans


def make_tally(tally: Tally, config: RunConfig) -> Tally | DeviceTally:
    """``tally`` as the run tallies: on the device beside the projections (config.on_device), else numba's."""
    return DeviceTally.from_state_dict(tally.state_dict(), config.device) if config.on_device else tally


class _FitActivations:
    """Activations that fitted families (PCA...) learn from, gathered for all layers in one pass on demand.

    Rows are a seeded sample of up to ``fit_samples`` examples. For max pooling on spatial layers each row is
    one position (the space the projection acts in), sampled so at most FIT_ROW_BUDGET rows are kept; for
    mean pooling each row is the example's mean over positions.
    """

    def __init__(self, feed: Feed, config: RunConfig, axes: dict[str, int]) -> None:
        self.feed, self.config, self.axes = feed, config, axes
        self._rows: dict[str, np.ndarray] | None = None

    def __call__(self, layer: str) -> np.ndarray:
        if self._rows is None:
            self._rows = self._gather()
        return self._rows[layer]

    def _subset(self) -> np.ndarray | None:
        n = self.feed.rows.size
        if n is None:
            return None
        n = min(n, self.config.limit or n)
        if n <= self.config.fit_samples:
            return np.arange(n)
        rng = numpy_rng(self.config.seed, "fit-rows")
        return np.sort(rng.choice(n, size=self.config.fit_samples, replace=False))

    def _gather(self) -> dict[str, np.ndarray]:
        """Without a known size, the first ``fit_samples`` rows (within the limit) are the sample."""
        cfg = self.config
        subset = self._subset()
        n_examples = len(subset) if subset is not None else cfg.fit_samples
        first = None if subset is not None else min(cfg.fit_samples, cfg.limit or cfg.fit_samples)
        rng = numpy_rng(cfg.seed, "fit-positions")
        chunks: dict[str, list[np.ndarray]] = {n: [] for n in self.feed.names}
        # under the scan's autocast: fit on the activations that are scanned (and cached, for --from-cache)
        with torch.inference_mode(), autocast_for(cfg.device, cfg.autocast):
            for _, _, acts in self.feed.stream(cfg.batch_size, indices=subset, limit=first):
                for name, act in acts.items():
                    act = act[finite_rows(act)].float()
                    chunks[name].append(self._rows_of(positions(act, self.axes[name]), n_examples, rng))
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


@dataclass
class _Progress:
    """Where the scan starts, how far it goes, and what it reports to along the way."""

    start: int
    total: int | None
    bar: bool
    saver: _Saver | None
    writer: CacheWriter | None


def _scan(feed: Feed, plans: list[LayerPlan], config: RunConfig, log: ScanLog, progress: _Progress) -> None:
    """The one pass: each batch's activations are projected for every layer and folded into its tally."""
    bar = tqdm(
        total=progress.total,
        initial=progress.start,
        unit="ex",
        unit_scale=True,
        disable=not progress.bar,
        desc="scanning",
        file=sys.stderr,
    )
    autocast = autocast_for(config.device, config.autocast)
    next_index = None
    folds = _Folds(plans, config.pool, _fold_lag(config.device))
    with bar, torch.inference_mode(), autocast:
        for idx, y, acts in feed.stream(config.batch_size, start=progress.start, limit=config.limit):
            log.add(idx, y)
            if progress.writer is not None:
                progress.writer.add(idx, y, acts)
            folds.add(idx, y, acts)
            bar.update(idx.size)
            next_index = int(idx[-1]) + 1
            if progress.saver is not None and progress.saver.due():
                folds.flush()
                progress.saver.save(plans, log, next_index, progress.writer)
        folds.flush()
    _settle(plans)
    if progress.saver is not None and next_index is not None:
        progress.saver.save(plans, log, next_index, progress.writer)  # a kill while results are written: no rescan


def autocast_for(device: str, name: str | None) -> torch.autocast:
    """The scan's autocast context for ``--autocast NAME`` (None: disabled, float32)."""
    precision = AUTOCASTS[name]
    return torch.autocast(torch.device(device).type, precision, enabled=precision is not None)


def _check_counts(plans: list[LayerPlan], config: RunConfig) -> None:
    """After the whole scan (not per shard): every layer needs k rows with finite activations."""
    for plan in plans:
        if plan.tally.count < config.k:
            raise DirscopeError(
                f"layer {plan.name!r}: only {plan.tally.count} examples had finite activations, fewer than "
                f"k={config.k}; lower --k or check the data"
            )


@dataclass
class _Projected:
    """One batch's projections for one layer, not yet in its tally: rows with non-finite activations are still
    there, ``finite`` tells them apart."""

    idx: np.ndarray
    labels: np.ndarray | None  # for the label counts of excluded rows
    values: torch.Tensor  # float32 [K, B]
    finite: torch.Tensor  # bool [B]
    all_finite: torch.Tensor  # a bool on the device: reading it waits for the batch's forward pass


class _Folds:
    """Projects each batch at once and folds it into the tallies ``lag`` batches later.

    On a GPU (lag 1) a batch is folded only once the next one's forward is queued: folding reads whether its
    rows were finite, which waits for its forward, and the next forward then keeps the GPU busy meanwhile
    (with lag 0 the GPU would idle while the CPU loads each batch). Projections [K, B] are small to hold.
    """

    def __init__(self, plans: list[LayerPlan], pool: str, lag: int) -> None:
        self.plans, self.pool, self.lag = plans, pool, lag
        self.waiting: list[list[_Projected]] = []

    def add(self, idx: np.ndarray, y: np.ndarray | None, acts: dict[str, torch.Tensor]) -> None:
        """Project the batch and fold those ``lag`` batches old; the labels travel with it to its fold."""
        self.waiting.append([_project(plan, acts[plan.name], idx, y, self.pool) for plan in self.plans])
        while len(self.waiting) > self.lag:
            self._fold_first()

    def flush(self) -> None:
        """Fold every waiting batch (before a checkpoint, and at the scan's end)."""
        while self.waiting:
            self._fold_first()

    def _fold_first(self) -> None:
        for plan, batch in zip(self.plans, self.waiting.pop(0), strict=True):
            _fold(plan, batch)


def _fold_lag(device: str) -> int:
    """Batches a fold waits: one on a GPU (see ``_Folds``), none on the CPU, where reading is free."""
    return int(torch.device(device).type != "cpu")


def _project(plan: LayerPlan, act: torch.Tensor, idx: np.ndarray, labels: np.ndarray | None, pool: str) -> _Projected:
    """Every row projected, non-finite ones too (a row's projections depend on that row only)."""
    act = act.to(plan.vectors.device)  # a cache's rows arrive on the CPU
    finite = finite_rows(act)
    return _Projected(idx, labels, project(act, plan.vectors, pool, plan.axis).float(), finite, finite.all())


def _fold(plan: LayerPlan, batch: _Projected) -> None:
    """The batch's finite rows into the layer's tally; the others into its Exclusions."""
    values, idx = batch.values, batch.idx
    if not bool(batch.all_finite):
        ok = batch.finite.cpu().numpy()
        plan.excluded.add(idx[~ok], None if batch.labels is None else np.asarray(batch.labels)[~ok])
        values, idx = values[:, batch.finite], idx[ok]
        if idx.size == 0:
            return
    with _overflow_named(plan):
        plan.tally.update(values if isinstance(plan.tally, DeviceTally) else values.cpu().numpy(), idx)


def _settle(plans: list[LayerPlan]) -> None:
    """Device tallies check each block one block late (so the GPU keeps working): check the last ones."""
    for plan in plans:
        if isinstance(plan.tally, DeviceTally):
            with _overflow_named(plan):
                plan.tally.settle()


@contextmanager
def _overflow_named(plan: LayerPlan) -> Iterator[None]:
    """A tally's NonFiniteValues as the one-line error a user sees, naming the layer."""
    try:
        yield
    except NonFiniteValues as exc:
        raise DirscopeError(
            f"layer {plan.name!r}: projections overflow float32 for directions {exc.directions[:5].tolist()}; "
            "rescale the activations or the model"
        ) from None


class _Saver:
    """Checkpoints the scan every ``every`` seconds; never per batch, since each writes every tally."""

    def __init__(self, out: Path, every: float, fingerprint: dict[str, Any]) -> None:
        self.out, self.every, self.fingerprint = out, every, fingerprint
        self.last = time.monotonic()
        self.written, self.seconds = 0, 0.0  # by this process, for the manifest

    def due(self) -> bool:
        """Whether ``every`` seconds have passed since the last checkpoint."""
        return time.monotonic() - self.last >= self.every

    def save(self, plans: list[LayerPlan], log: ScanLog, next_index: int, writer: CacheWriter | None) -> None:
        """Checkpoint the scan now: every row before ``next_index`` must be in the tallies."""
        _settle(plans)  # outside the timing: on a GPU it waits for work the scan would wait for anyway
        began = time.perf_counter()
        if writer is not None:
            writer.flush()  # the checkpoint names only chunks on disk
        meta, arrays = _scan_state(plans, log, next_index, writer)
        save_checkpoint(self.out, {"fingerprint": self.fingerprint, **meta}, arrays)
        self.written += 1
        self.seconds += time.perf_counter() - began
        self.last = time.monotonic()

    def record(self) -> dict[str, Any]:
        """What checkpointing cost this process: how many were written and the seconds spent writing them."""
        return {"every_s": self.every, "written": self.written, "seconds": round(self.seconds, 4)}


def _scan_state(
    plans: list[LayerPlan], log: ScanLog, next_index: int, writer: CacheWriter | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The whole scan state as JSON-able values and arrays, for a checkpoint."""
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for i, plan in enumerate(plans):
        arrays.update({f"{i}.tally.{key}": value for key, value in plan.tally.state_dict().items()})
        dirs = plan.directions
        arrays.update({f"{i}.vectors": dirs.vectors, f"{i}.member": dirs.member, f"{i}.unit": dirs.unit})
        excluded, arrays[f"{i}.excluded_rows"] = plan.excluded.state()
        layers.append({"name": plan.name, "family": dirs.family, "specs": dirs.specs, "info": dirs.info, **excluded})
    null = log.null.state_dict()
    arrays["null.rows"] = null.pop("rows")
    meta = {
        "next_index": next_index,
        "layers": layers,
        "null": null,
        "label_counts": {str(k): v for k, v in log.label_counts.items()},
        "unlabelled": log.unlabelled,
        "cache_chunks": None if writer is None else writer.chunks,
    }
    return meta, arrays


def _restore_layer(checkpoint: Checkpoint, i: int) -> tuple[DirectionSet, Tally, Exclusions]:
    record, arrays = checkpoint.meta["layers"][i], checkpoint.arrays
    prefix = f"{i}.tally."
    tally = Tally.from_state_dict({key[len(prefix) :]: v for key, v in arrays.items() if key.startswith(prefix)})
    vectors, member, unit = (arrays[f"{i}.{name}"] for name in ("vectors", "member", "unit"))
    dirs = DirectionSet(vectors, record["family"], member, unit, record["specs"], record["info"])
    return dirs, tally, Exclusions.from_state(record, arrays[f"{i}.excluded_rows"])


def _restore_log(checkpoint: Checkpoint | None, config: RunConfig) -> tuple[ScanLog, int]:
    """The scan log and the dataset index to start from: fresh, or as the checkpoint left them."""
    if checkpoint is None:
        return ScanLog(null_reservoir(config)), 0
    meta = checkpoint.meta
    null = Reservoir.from_state_dict({**meta["null"], "rows": checkpoint.arrays["null.rows"]})
    counts = {int(k): int(v) for k, v in meta["label_counts"].items()}
    return ScanLog(null, counts, int(meta["unlabelled"])), checkpoint.next_index


def _cache_writer(
    out: Path, feed: Feed, plans: list[LayerPlan], config: RunConfig, checkpoint: Checkpoint | None
) -> CacheWriter:
    header = {
        "model": _model_record(feed),
        "data": feed.rows.describe(),
        "pool": config.pool,
        "dtype": config.cache,
        "autocast": config.autocast,  # the activations are those of the scan's forward, under this autocast
        "batch_size": config.batch_size,
        "limit": config.limit,
    }
    layers = [cache_layout(p.name, p.shape, p.axis, config.pool) for p in plans]
    return open_cache(out, header, layers, None if checkpoint is None else checkpoint.meta["cache_chunks"])


def _build_result(
    feed: Feed, plans: list[LayerPlan], config: RunConfig, log: ScanLog, started: float, out: Path | None
) -> Result:
    results = {p.name: p.tally.result() for p in plans}
    null_rows = log.null.result()
    named = [null_rows] + [np.concatenate([r.top_indices.ravel(), r.bottom_indices.ravel()]) for r in results.values()]
    indices = np.unique(np.concatenate(named))
    labels = feed.rows.labels_at(indices)
    if out is not None:
        unpublish(out)
    images = collect_images(indices, labels, feed.rows.images_at, out)
    manifest = _manifest(feed, plans, config, started, null_rows)
    manifest["data"]["label_counts"] = {str(k): v for k, v in sorted(log.label_counts.items())} or None
    manifest["data"]["unlabelled_rows"] = log.unlabelled
    for plan in plans:
        if plan.excluded.count:
            print(
                f"warning: layer {plan.name!r}: {plan.excluded.count} examples with NaN/inf activations excluded "
                f"(first rows: {plan.excluded.first}); see {'manifest.json' if out is not None else 'result.manifest'}",
                file=sys.stderr,
            )
    return Result.from_tallies(
        manifest=manifest,
        directions={p.name: p.directions for p in plans},
        tallies=results,
        indices=indices,
        labels=labels,
        label_names=feed.label_names,
        images=images,
        null_rows=null_rows,
    )


def _manifest(
    feed: Feed, plans: list[LayerPlan], config: RunConfig, started: float, null_rows: np.ndarray
) -> dict[str, Any]:
    import numba
    import pyarrow

    return {
        "format": RUN_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": dict(feed.model),
        "data": feed.rows.describe(),
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
                "excluded_nonfinite": p.excluded.count,
                "first_excluded_rows": p.excluded.first,
                "excluded_label_counts": {str(k): v for k, v in sorted(p.excluded.labels.items())},
                "excluded_null_rows": p.excluded.null_rows(null_rows),
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
    model: Any,
    data: Any = None,
    input_shape: tuple[int, ...] | None = None,
    device: str = "cpu",
    *,
    weights: str | None = None,
    preprocess: str | None = None,
) -> list[LayerInfo]:
    """Every hookable layer of a model with its per-example output shape, from one dry forward.

    The example input comes from ``input_shape``, else the model's own declared shape, else ``data``;
    ``weights`` and ``preprocess`` are as in ``run``.
    """
    check_device(device)
    with using_model(model, device, weights, preprocess) as given:
        loaded = load_model(given, device)
        if input_shape is None and loaded.input_shape is None and data is None:
            raise DirscopeError(
                "cannot tell this model's input shape; pass --data SPEC or --input-shape 3,224,224 "
                "(data=, input_shape= in Python)"
            )
        if input_shape is not None or data is None:
            # a model that starts with an embedding takes token ids: zeros as int64 are valid ids of any vocabulary
            dtype = torch.int64 if takes_token_ids(loaded.module) else torch.float32
            example = torch.zeros((2, *(input_shape or loaded.input_shape)), dtype=dtype)
        else:
            example = first_inputs(load_data(data, preprocess=loaded.preprocess))
        try:
            return list_layers(loaded.module, example.to(device))
        except DirscopeError as exc:
            raise DirscopeError(f"{exc}{token_hint(loaded.module, example)}") from None
