"""The deterministic recipe behind the shipped checkpoints: same recipe, data and thread count, same bits."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..atomic import atomic_path
from ..data import load_data
from ..data.base import DataSource
from ..data.builtin import split_digest
from ..errors import DirscopeError
from ..seeding import derive_seed, torch_generator
from ..specs import suggest
from .builtin import BUILTINS, INPUT_SHAPE, weights_path
from .nets import ARCHITECTURES

TensorData = tuple[torch.Tensor, torch.Tensor]
SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TrainRecipe:
    """Everything besides the data that determines the trained weights; stored in each checkpoint."""

    architecture: str = "MnistCNN"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"  # or "sgd" (momentum 0.9)
    seed: int = 0
    threads: int = 2  # CPU kernels may sum in a different order with another thread count
    shift: int = 0  # augmentation: translate each example by up to this many pixels
    schedule: str = "cosine"  # "cosine" decays the learning rate to 0 over all steps; or "constant"
    # Give every unit's incoming weights zero mean at init. On non-negative inputs (post-ReLU features) a unit
    # whose random weights sum below zero starts, and often stays, dead; centring removes that bias.
    centred_init: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise DirscopeError(f"training {name} must be >= 1, got {getattr(self, name)}")
        if self.shift < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise DirscopeError("training needs shift >= 0, lr > 0 and weight_decay >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise DirscopeError(f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise DirscopeError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


# SGD with momentum and centred init leave almost no dead ReLU units; Adam left about half of fc1 dead, which
# would make many "units" constant and their top-k sets meaningless.
_SGD = {"optimizer": "sgd", "lr": 0.02, "centred_init": True}
RECIPES: dict[str, TrainRecipe] = {
    "mnist-cnn": TrainRecipe("MnistCNN", epochs=20, shift=2, **_SGD),
    "mnist-mlp": TrainRecipe("MnistMLP", epochs=40, shift=1, **_SGD),
    "fashion-cnn": TrainRecipe("MnistCNN", epochs=8, **_SGD),
    "fashion-mlp": TrainRecipe("MnistMLP", epochs=20, **_SGD),
}


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Fix the thread count and force deterministic kernels, restoring both afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


def init_module(recipe: TrainRecipe) -> nn.Module:
    """The architecture with weights drawn from the recipe's seed, leaving the global RNG untouched."""
    arch = ARCHITECTURES.get(recipe.architecture)
    if arch is None:
        raise DirscopeError(
            f"unknown architecture {recipe.architecture!r}{suggest(recipe.architecture, ARCHITECTURES)}"
            f" (known: {', '.join(ARCHITECTURES)})"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(recipe.seed, "init"))
        module = arch()
    if recipe.centred_init:
        with torch.no_grad():
            for layer in module.modules():
                if isinstance(layer, (nn.Linear, nn.Conv2d)):
                    weights = layer.weight.view(layer.weight.shape[0], -1)
                    weights -= weights.mean(dim=1, keepdim=True)
    return module


def gather(data: DataSource | TensorData, batch_size: int = 1024) -> TensorData:
    """The whole labelled dataset as ``(x float32, y int64)`` tensors, read once in dataset order."""
    if isinstance(data, tuple):
        x, y = data
    else:
        xs, ys = [], []
        for batch in data.batches(batch_size):
            if batch.y is None or (batch.y < 0).any():
                raise DirscopeError(f"training needs a label for every example; {data.spec} lacks some")
            xs.append(batch.x)
            ys.append(torch.as_tensor(np.asarray(batch.y, dtype=np.int64)))
        if not xs:
            raise DirscopeError(f"data {data.spec} is empty; choose a dataset with examples")
        x, y = torch.cat(xs), torch.cat(ys)
    return x.float().contiguous(), y.long().contiguous()


def shifted(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image translated by a random offset in [-shift, shift] pixels, zero-filled."""
    h, w = x.shape[-2:]
    padded = nn.functional.pad(x, (shift, shift, shift, shift))
    offsets = torch.randint(0, 2 * shift + 1, (len(x), 2), generator=generator).tolist()
    return torch.stack([padded[i, ..., dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


@torch.no_grad()
def accuracy(module: nn.Module, data: DataSource | TensorData, batch_size: int = 1000) -> float:
    """Top-1 accuracy of the module's logits on labelled data."""
    x, y = gather(data)
    module.eval()
    pairs = zip(x.split(batch_size), y.split(batch_size), strict=True)
    return sum(int((module(xb).argmax(1) == yb).sum()) for xb, yb in pairs) / len(y)


def train_model(
    recipe: TrainRecipe,
    train_data: DataSource | TensorData,
    eval_data: DataSource | TensorData | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """Train ``recipe.architecture`` on labelled data; returns the eval-mode module and its metrics."""
    x, y = gather(train_data)
    start = time.perf_counter()
    with deterministic(recipe.threads):
        module = init_module(recipe)
        loss = _fit(module, x, y, recipe, progress)
    seconds = round(time.perf_counter() - start, 1)
    module.eval()
    metrics: dict = {"train_loss": loss, "train_size": len(y), "train_seconds": seconds}
    if eval_data is not None:
        metrics["eval_accuracy"] = accuracy(module, eval_data)
    return module, metrics


def _fit(module: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: TrainRecipe, progress: bool) -> float:
    """The training loop on shuffled minibatches; returns the mean loss of the last epoch."""
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(module.parameters(), lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.Adam(module.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    order_rng = torch_generator(recipe.seed, "shuffle")
    shift_rng = torch_generator(recipe.seed, "shift")
    steps = recipe.epochs * -(-len(y) // recipe.batch_size)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if recipe.schedule == "cosine" else None
    module.train()
    epoch_loss = float("nan")
    with tqdm(total=steps, desc=f"train {recipe.architecture}", disable=not progress, unit="step") as bar:
        for epoch in range(recipe.epochs):
            total = 0.0
            for idx in torch.randperm(len(y), generator=order_rng).split(recipe.batch_size):
                xb = shifted(x[idx], recipe.shift, shift_rng) if recipe.shift else x[idx]
                loss = nn.functional.cross_entropy(module(xb), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if decay is not None:
                    decay.step()
                total += loss.item() * len(idx)
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}", refresh=False)
            epoch_loss = total / len(y)
    return epoch_loss


def save_checkpoint(module: nn.Module, path: str | Path, metadata: dict[str, object]) -> Path:
    """Write the module's float32 weights with string metadata as safetensors, atomically."""
    tensors = {k: v.detach().cpu().float().contiguous() for k, v in module.state_dict().items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=meta)
    return path


def images_digest(x: torch.Tensor) -> str:
    """The data package's ``split_digest`` of inputs that are 8-bit images scaled to [0, 1]."""
    scaled = x.numpy().astype(np.float64) * 255.0
    pixels = np.rint(scaled)
    if len(x) == 0 or np.abs(scaled - pixels).max() > 1e-3 or pixels.min() < 0 or pixels.max() > 255:
        return "none: inputs are not 8-bit images in [0, 1]"
    return split_digest(pixels.astype(np.uint8))


def train_builtin(
    name: str,
    out: str | Path | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    data: str | None = None,
) -> Path:
    """Train a built-in model with its recipe (``data`` overrides the training split) and save it to ``out``."""
    if name not in RECIPES:
        raise DirscopeError(f"unknown built-in model {name!r}{suggest(name, RECIPES)} (known: {', '.join(RECIPES)})")
    builtin = BUILTINS[name]
    overrides = {k: v for k, v in (("epochs", epochs), ("seed", seed)) if v is not None}
    recipe = dataclasses.replace(RECIPES[name], **overrides)
    train_spec = data or builtin.train_data
    x, y = gather(load_data(train_spec))
    if tuple(x.shape[1:]) != INPUT_SHAPE or y.min() < 0 or y.max() >= len(builtin.label_names):
        raise DirscopeError(
            f"{name} trains on [1, 28, 28] inputs with labels 0-9; {train_spec} gives {list(x.shape[1:])}"
            f" with labels {int(y.min())}-{int(y.max())}"
        )
    module, metrics = train_model(recipe, (x, y), load_data(builtin.eval_data), progress)
    path = weights_path(name) if out is None else Path(out).expanduser()
    if path.is_dir():
        path = path / weights_path(name).name
    return save_checkpoint(module, path, checkpoint_metadata(name, recipe, train_spec, x, metrics))


def checkpoint_metadata(name: str, recipe: TrainRecipe, train_spec: str, x: torch.Tensor, metrics: dict) -> dict:
    """What a built-in checkpoint records so anyone can tell how, and on which examples, it was trained."""
    return {
        "model": name,
        "architecture": recipe.architecture,
        "recipe": recipe.to_json(),
        "train_data": train_spec,
        "train_size": str(len(x)),
        "train_split_digest": images_digest(x),
        "heldout_data": BUILTINS[name].eval_data,
        "heldout_accuracy": f"{metrics['eval_accuracy']:.4f}",
        "train_seconds": str(metrics["train_seconds"]),
        "threads": str(recipe.threads),
        "dirscope_version": __version__,
        "torch_version": torch.__version__,
    }
