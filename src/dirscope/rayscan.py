"""``--engine ray``: contiguous shards of the rows scanned by Ray tasks with the engine's own code, merged exactly.

The driver opens the feed and plans every layer first, so fitted families (PCA) are fitted once and each
task receives the directions as arrays. A task rebuilds the feed from the arguments the driver got (spec
strings are built again on the worker, Python objects arrive pickled), checks it built the same model and
data, scans rows [start, stop) with ``engine._scan``, and returns what a checkpoint stores: the tallies'
state_dicts, the NaN/inf exclusions (with their labels and null-sample candidates), the label counts and the
null sample. The driver merges shards in row order as they finish, with ``Tally.merge`` (exact) and
checkpoints the merged prefix as a local run would. The driver, not Ray, reruns a shard whose worker or node
died: Ray does not tell a driver how often it ran a task, and the one-line failure says how often it did.
Shards are cut only where the local pass starts a batch (multiples of the batch size, or for a cache the
writing run's batch starts, cut to the batch size), so every shard sees the batches of a single pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import IterableSource
from .directions import DirectionSet
from .engine import (
    Exclusions,
    LayerPlan,
    RunConfig,
    ScanLog,
    _open_feed,
    _Progress,
    _restore_log,
    _scan,
    make_tally,
    null_reservoir,
)
from .errors import DirscopeError
from .feeds import CacheFeed, Feed, Rows
from .tally import Reservoir, Tally

# Shards per concurrent task: small enough that a slow or retried shard delays little, large enough that
# rebuilding the model per shard costs little (see docs/scaling.md).
SHARDS_PER_WORKER = 4
# Times the driver reruns a shard whose worker process or node died; the task's own errors are not retried.
RETRIES = 3
# Ray's own variable; set to 1 or true, it turns Ray's worker and raylet messages on the driver back on (_connect).
LOG_TO_DRIVER = "RAY_LOG_TO_DRIVER"
PROBE_TIMEOUT_S = 5.0
INSTALL_HINT = "pip install 'dirscope[ray]'"


@dataclass
class RayJob:
    """What the tasks rebuild the feed from (as the user gave it), and where and how wide to run."""

    model: Any
    layers: Any
    data: Any
    from_cache: Any
    workers: int
    address: str | None
    width: int | None  # tasks at once; None: one per CPU (or GPU) of the cluster


@dataclass
class _Task:
    """Everything a shard's task needs besides its row range; put in the object store once."""

    job: RayJob
    config: RunConfig
    layers: list[tuple[str, tuple[int, ...], int, DirectionSet]]  # name, shape, feature axis, directions
    expect: dict[str, Any]  # the driver's model, shapes and data size, which the worker must reproduce
    cwd: str  # the driver's working directory, where relative paths and python: modules are found


@dataclass
class ShardState:
    """One shard's mergeable result: what checkpoints store, the tallies as state_dicts."""

    tallies: list[dict[str, np.ndarray]]
    excluded: list[Exclusions]
    label_counts: dict[int, int]
    unlabelled: int
    null: dict[str, Any]


@dataclass(frozen=True)
class Target:
    """Where ``ray.init`` connects (None: a new local cluster), what named that address, and how to change it."""

    address: str | None
    source: str
    fix: str

    def __str__(self) -> str:
        return "a new local cluster" if self.address in (None, "local") else f"{self.address} (from {self.source})"


def ray_target(address: str | None) -> Target:
    """The cluster a run without a connection of its own uses, found the way ``ray.init`` finds it.

    --ray-address, else RAY_ADDRESS (Ray Jobs set it for their entrypoint), else the cluster ``ray start`` last
    started on this machine, else a new local cluster; ``local`` asks for a new local cluster whatever is set.
    Resolved here so every address can be checked quickly and named in the manifest and in errors.
    """
    explicit = Target(address, "--ray-address", "start one with `ray start --head` or check --ray-address")
    if address not in (None, "auto"):
        return explicit
    if os.environ.get("RAY_ADDRESS"):  # Ray reads it for address None and auto alike
        return Target(
            os.environ["RAY_ADDRESS"],
            "RAY_ADDRESS",
            "start one there, or unset RAY_ADDRESS or give --ray-address local for a new local cluster",
        )
    recorded = _started_cluster()
    if recorded is not None:
        return Target(
            recorded[0],
            f"the `ray start` cluster recorded in {recorded[1]}",
            "`ray stop` forgets it, or give --ray-address local for a new local cluster",
        )
    return explicit if address == "auto" else Target(None, "", "")  # auto: Ray looks further, or says none runs


def _started_cluster() -> tuple[str, str] | None:
    """The address ``ray start`` recorded on this machine and the file it is in, as ``ray.init()`` reads it.

    Ray's lookup is private: with a Ray that lacks it, ``ray.init(address=None)`` still finds the cluster, unchecked.
    """
    try:
        from ray._private.services import find_bootstrap_address
        from ray._private.utils import get_ray_address_file
    except ImportError:
        return None
    try:
        found = find_bootstrap_address(None)
    except OSError:  # unreadable: ray.init(address=None) says so
        return None
    return (found, get_ray_address_file(None)) if found else None


def require_ray(address: str | None) -> None:
    """Fail before any work when Ray is missing or the cluster address does not answer."""
    try:
        import ray
    except ImportError:
        raise DirscopeError(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    if address is None and ray.is_initialized():
        return  # the run uses this process's connection
    target = ray_target(address)
    if target.address not in (None, "auto", "local"):
        _probe(target)


def _probe(target: Target) -> None:
    """A TCP connect with a short timeout: Ray itself waits minutes on an address where nothing listens."""
    address = str(target.address)
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise DirscopeError(f"{target.source} {address!r} is not HOST:PORT, ray://HOST:PORT, auto or local")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise DirscopeError(f"no Ray cluster answers at {target} ({exc.strerror or exc}); {target.fix}") from None


def check_shardable(rows: Rows) -> None:
    """Shards need rows that can be read from any index, and a known count to cut."""
    if rows.size is None or isinstance(rows, IterableSource):
        raise DirscopeError(
            f"--engine ray cuts the data into shards by row, but {rows.spec} is an iterable of batches; "
            "give a data spec, arrays or a map-style Dataset, or drop --engine ray"
        )


def cut_shards(
    start: int, stop: int, batch_size: int, count: int, starts: Sequence[int] | None = None
) -> list[tuple[int, int]]:
    """Up to ``count`` contiguous row ranges covering [start, stop) exactly, as even in rows as the cut points allow.

    Shards are cut only where the feed starts a batch, so each shard sees the batches of a single pass:
    ``starts`` (the dataset indices where ``feed.stream`` starts one), or by default every multiple of
    ``batch_size``. The cut points are ``start``, those strictly inside (start, stop), and ``stop``; each
    inner cut is the point nearest to an even split of the rows (the lower one on a tie), or the next
    free one where nearer points are taken.
    """
    if stop <= start:
        return []
    if starts is None:
        inner = np.arange((start // batch_size + 1) * batch_size, stop, batch_size, dtype=np.int64)
    else:
        points = np.unique(np.asarray(starts, dtype=np.int64))
        inner = points[(points > start) & (points < stop)]
    count = max(1, min(count, len(inner) + 1))
    cuts, low = [], 0  # low: the first point still free, so every cut is a different point
    for j in range(1, count):
        target = start * count + (stop - start) * j  # count times the j-th even split, in integers
        pos = int(np.searchsorted(inner, -(-target // count)))  # the first point at or above it
        above = pos < len(inner) and (pos == 0 or inner[pos] * count - target < target - inner[pos - 1] * count)
        pos = min(max(pos if above else pos - 1, low), len(inner) - (count - j))  # leave a point per later cut
        cuts.append(int(inner[pos]))
        low = pos + 1
    bounds = [start, *cuts, stop]
    return list(itertools.pairwise(bounds))


def batch_starts(feed: Feed, batch_size: int, start: int, stop: int) -> np.ndarray | None:
    """Where the local pass over rows [start, stop) starts a batch, when not at every multiple of the batch size:
    a cache is read in the writing run's batches (each cut to ``batch_size``), not at multiples of it."""
    if isinstance(feed, CacheFeed):
        return feed.reader.batch_starts(batch_size, start=start, limit=stop)
    return None


def scan_on_ray(
    feed: Feed, plans: list[LayerPlan], config: RunConfig, log: ScanLog, progress: _Progress, job: RayJob
) -> dict[str, Any]:
    """Scan rows ``progress.start`` to ``progress.total`` on Ray and fold them into ``plans`` and ``log``.

    Returns what the manifest records about the engine.
    """
    import ray

    with _quiet(ray, own=not ray.is_initialized()):  # through ray.shutdown: late messages arrive until then
        started_here, address = _connect(ray, job.address)
        try:
            width = job.width or _cluster_width(ray, config.device)
            start, stop = progress.start, progress.total or 0
            starts = batch_starts(feed, config.batch_size, start, stop)
            shards = cut_shards(start, stop, config.batch_size, width * SHARDS_PER_WORKER, starts)
            expect = {"model": _model_id(feed), "shapes": feed.shapes, "size": feed.rows.size}
            layers = [(p.name, p.shape, p.axis, p.directions) for p in plans]
            task = ray.put(_Task(dataclasses.replace(job, address=None), config, layers, expect, os.getcwd()))
            gpus = 1 if config.device.startswith("cuda") else 0
            # max_retries=0: the driver reruns a shard itself (_fetch), so it knows how often it ran
            remote = ray.remote(scan_shard).options(num_cpus=1 - gpus, num_gpus=gpus, max_retries=0)
            _run_shards(ray, remote, task, shards, width, plans, log, progress)
        finally:
            if started_here:
                ray.shutdown()
    return {"name": "ray", "address": address, "workers": width, "shards": len(shards)}


def _connect(ray: Any, address: str | None) -> tuple[bool, str | None]:
    """Use this process's Ray connection if it has one, else connect as ``ray.init`` does (``ray_target`` names it).

    ``address`` goes to ``ray.init`` as given: Ray reads RAY_ADDRESS and its ``ray start`` record itself, and
    authenticates to a cluster it found on its own (with an explicit address it would not).
    Returns whether the connection is new, and the address for the manifest (None: a new local cluster).
    Ray's own messages stay in its log files unless RAY_LOG_TO_DRIVER asks for them: a dying worker's raylet
    sends the driver a state dump of dozens of lines, and a failed shard is reported in one line (_fetch).
    """
    if ray.is_initialized():
        return False, address
    target = ray_target(address)
    loud = _loud()
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING if loud else logging.ERROR,
            log_to_driver=loud,
        )
    except Exception as exc:  # not SystemExit: that is Ray's SIGTERM handler, and the run must stop
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DirscopeError(f"cannot connect to Ray at {target} ({first})") from None
    return True, None if target.address in (None, "local") else target.address


@contextlib.contextmanager
def _quiet(ray: Any, own: bool) -> Iterator[None]:
    """Keep the raylet's error messages (a dying worker's state dump) off a connection this run opens (``own``).

    ``log_to_driver=False`` stops only the workers' output; Ray's debugger turns the rest off with this flag.
    Another Ray without it, RAY_LOG_TO_DRIVER on, or the caller's own connection: left as it is.
    """
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    if not own or _loud() or not hasattr(worker, "_worker_logs_enabled"):
        yield
        return
    worker._worker_logs_enabled = False
    try:
        yield
    finally:
        worker._worker_logs_enabled = True


def _loud() -> bool:
    """Ray's own reading of RAY_LOG_TO_DRIVER, which dirscope's default (off) yields to."""
    return os.environ.get(LOG_TO_DRIVER, "").lower() in ("1", "true")


def _cluster_width(ray: Any, device: str) -> int:
    resource = "GPU" if device.startswith("cuda") else "CPU"
    width = int(ray.cluster_resources().get(resource, 0))
    if width < 1:
        raise DirscopeError(f"the Ray cluster has no {resource}s for --device {device}; add nodes or change --device")
    return width


def _run_shards(
    ray: Any,
    remote: Any,
    task: Any,
    shards: list[tuple[int, int]],
    width: int,
    plans: list[LayerPlan],
    log: ScanLog,
    progress: _Progress,
) -> None:
    """At most ``width`` tasks in flight (Ray's ray.wait pattern); finished shards merge in row order.

    A shard that finishes before an earlier one waits in the driver's memory. No new task starts while
    ``width`` such shards wait, so the driver holds at most 2 x width states however slow one shard is.
    The next shard to merge was submitted before all later ones, so it is always in flight: no deadlock.
    A shard to rerun (its worker or node died) is submitted again at once, in the place it held.
    """
    todo, pending, finished, merged = list(enumerate(shards))[::-1], {}, {}, 0
    tries = [0] * len(shards)

    def submit(j: int) -> None:
        tries[j] += 1
        pending[remote.remote(task, *shards[j])] = j

    bar = tqdm(total=progress.total, initial=progress.start, unit="ex", unit_scale=True, disable=not progress.bar)
    with bar:
        while todo or pending:
            while todo and len(pending) < width and len(finished) < width:
                submit(todo.pop()[0])
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            j = pending.pop(ready)
            state = _fetch(ray, ready, shards[j], tries[j], list(pending))
            if state is None:
                submit(j)
                continue
            finished[j] = state
            while merged in finished:
                absorb(plans, log, finished.pop(merged))
                bar.update(shards[merged][1] - shards[merged][0])
                if progress.saver is not None and (progress.saver.due() or merged == len(shards) - 1):
                    progress.saver.save(plans, log, shards[merged][1], None)
                merged += 1


def _fetch(ray: Any, ref: Any, shard: tuple[int, int], tries: int, others: list[Any]) -> ShardState | None:
    """A shard's state, or None to run it again (a lost worker or node, fewer than RETRIES reruns so far).

    Any other failure cancels the other tasks and becomes one line naming the tries made (bugs keep their
    traceback).
    """
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        _cancel(ray, others)
        if isinstance(exc.cause, DirscopeError):
            raise DirscopeError(str(exc.cause)) from None
        raise
    except ray.exceptions.RayError as exc:
        if tries <= RETRIES and isinstance(exc, _rerun_errors(ray)):
            return None
        _cancel(ray, others)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        times = "on its first try" if tries == 1 else f"{tries} times"
        raise DirscopeError(
            f"the Ray task for rows {shard[0]}-{shard[1] - 1} failed {times} ({type(exc).__name__}: {first}); "
            "the last checkpoint in --out stays usable with --resume"
        ) from None


def _rerun_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """What Ray's max_retries reruns: the task's worker or node was lost, or the shard's result with it.

    Not a dead local raylet (nothing can run on this node then), a cancel, or an environment that fails to set up.
    """
    errors = ray.exceptions
    return (errors.WorkerCrashedError, errors.NodeDiedError, errors.OutOfMemoryError, errors.ObjectLostError)


def _cancel(ray: Any, refs: list[Any]) -> None:
    for ref in refs:
        ray.cancel(ref, force=True)


def absorb(plans: list[LayerPlan], log: ScanLog, shard: ShardState) -> None:
    """Merge the next shard (in row order) into the driver's tallies and log."""
    for plan, state, excluded in zip(plans, shard.tallies, shard.excluded, strict=True):
        plan.tally = plan.tally.merge(Tally.from_state_dict(state))
        plan.excluded.merge(excluded)
    log.merge(ScanLog(Reservoir.from_state_dict(shard.null), dict(shard.label_counts), shard.unlabelled))


def scan_shard(task: _Task, start: int, stop: int) -> ShardState:
    """Runs in a Ray worker: scan rows [start, stop) with fresh tallies, exactly as the single pass would."""
    job, config = task.job, dataclasses.replace(task.config, limit=stop)
    if os.path.isdir(task.cwd):  # a local cluster or a shared filesystem: relative specs mean what they meant
        os.chdir(task.cwd)
    feed = _open_feed(job.model, job.layers, job.data, config, job.from_cache, job.workers)
    _check_same(feed, task.expect)
    plans = [
        LayerPlan(
            name, shape, axis, dirs, _fresh_tally(dirs, config), _vectors(dirs, config.device), _no_exclusions(config)
        )
        for name, shape, axis, dirs in task.layers
    ]
    log = _restore_log(None, config)[0]
    _scan(feed, plans, config, log, _Progress(start, None, False, None, None))
    return ShardState(
        [p.tally.state_dict() for p in plans],
        [p.excluded for p in plans],
        log.label_counts,
        log.unlabelled,
        log.null.state_dict(),
    )


def _fresh_tally(dirs: DirectionSet, config: RunConfig) -> Any:
    """The kind of tally the driver would scan with (on the GPU with --device cuda)."""
    return make_tally(Tally(len(dirs), config.k, config.bins), config)


def _no_exclusions(config: RunConfig) -> Exclusions:
    """A layer's exclusions before any row: its sample a reservoir like the run's null sample."""
    return Exclusions(null_reservoir(config))


def _vectors(dirs: DirectionSet, device: str) -> torch.Tensor:
    """A copy: arrays from Ray's object store are read-only."""
    return torch.tensor(dirs.vectors, device=device)


def _model_id(feed: Feed) -> dict[str, Any]:
    return {"spec": feed.model["spec"], "weights_sha256": feed.model["weights_sha256"]}


def _check_same(feed: Feed, expect: dict[str, Any]) -> None:
    """A worker with another install, weights file or copy of the data would silently change the result."""
    found = {"model": _model_id(feed), "shapes": feed.shapes, "size": feed.rows.size}
    for what, value in found.items():
        if value != expect[what]:
            raise DirscopeError(
                f"the Ray worker on {socket.gethostname()} built another {what} than the driver "
                f"({value} instead of {expect[what]}); install the same dirscope, model weights and data "
                "(at the same paths) on every node"
            )
