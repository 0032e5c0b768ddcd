"""The four shipped models: two architectures trained on MNIST and Fashion-MNIST, weights inside the package."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from ..errors import DirscopeError
from .base import MODELS, LoadedModel
from .nets import ARCHITECTURES
from .preprocess import ImagePreprocess

WEIGHTS_DIR = Path(__file__).parent / "weights"
INPUT_SHAPE = (1, 28, 28)
DIGIT_LABELS = [str(i) for i in range(10)]
FASHION_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


@dataclass(frozen=True)
class Builtin:
    """A shipped model: which architecture, trained on which split, judged on which held-out set."""

    name: str
    architecture: str
    train_data: str
    eval_data: str
    label_names: list[str]
    help: str


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin("mnist-cnn", "MnistCNN", "mnist:train", "mnist", DIGIT_LABELS, "convnet trained on MNIST digits"),
        Builtin("mnist-mlp", "MnistMLP", "mnist:train", "mnist", DIGIT_LABELS, "FC200-200-10 trained on MNIST"),
        Builtin(
            "fashion-cnn", "MnistCNN", "fashion-mnist:train", "fashion-mnist", FASHION_LABELS,
            "convnet trained on Fashion-MNIST",
        ),
        Builtin(
            "fashion-mlp", "MnistMLP", "fashion-mnist:train", "fashion-mnist", FASHION_LABELS,
            "FC200-200-10 trained on Fashion-MNIST",
        ),
    )
}  # fmt: skip


def weights_path(name: str) -> Path:
    """Where the package keeps a built-in model's checkpoint."""
    return WEIGHTS_DIR / f"{name}.safetensors"


# A PIL image as the built-ins' input: grayscale, squashed to 28x28 bilinear, float [1, 28, 28] in [0, 1]. As data,
# not a function, so that it is recorded in the manifest and ``--preprocess`` can override any field.
GRAY28_PREPROCESS = ImagePreprocess(resize=(28, 28), crop=None, mean=(0.0,), std=(1.0,), mode="L")


def read_checkpoint(path: Path, train_hint: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors checkpoint (never pickle), with one-line errors."""
    if not path.is_file():
        raise DirscopeError(f"no checkpoint at {path}; run `{train_hint}` to create it")
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
        return safetensors.torch.load_file(str(path)), metadata
    except (OSError, safetensors.SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DirscopeError(f"cannot read checkpoint {path} ({first}); run `{train_hint}` to recreate it") from None


def state_problems(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Why ``state`` does not load strictly into ``module``: its missing, unexpected and mis-shaped keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    return [
        f"{label} {', '.join(items)}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if items
    ]


def misfit_fix(name: str, arg: str, state: dict[str, torch.Tensor], metadata: dict[str, str], hint: str) -> str:
    """What to do about a checkpoint that does not fit built-in ``name``: load it as the built-in (or else the
    architecture) its metadata says it was trained for, when it fits that; retrain only when it does not, since
    retraining to the same path would replace a good checkpoint of another model."""
    trained_for, arch = metadata.get("model", ""), metadata.get("architecture", "")
    named = [trained_for] if trained_for in BUILTINS else [b.name for b in BUILTINS.values() if b.architecture == arch]
    others = [n for n in named if BUILTINS[n].architecture != BUILTINS[name].architecture]
    if others and not state_problems(ARCHITECTURES[BUILTINS[others[0]].architecture](), state):
        what = trained_for if trained_for in BUILTINS else arch
        return f"it is a checkpoint of {what}; use " + " or ".join(f"--model {n}:{arg}" for n in others)
    return f"run `{hint}` to recreate it"


def train_command(name: str) -> str:
    """The CLI line that (re)creates a built-in checkpoint."""
    return f"dirscope train {name}"


def load_builtin(name: str, path: str | Path | None = None) -> LoadedModel:
    """A built-in model with its shipped weights, or with the checkpoint at ``path`` from ``dirscope train``."""
    builtin = BUILTINS[name]
    ckpt = weights_path(name) if path is None else Path(path).expanduser()
    hint = train_command(name) + ("" if path is None else f" --out {ckpt}")
    state, metadata = read_checkpoint(ckpt, hint)
    module = ARCHITECTURES[builtin.architecture]()
    problems = state_problems(module, state)
    if problems:
        fix = misfit_fix(name, str(path), state, metadata, hint)
        raise DirscopeError(f"checkpoint {ckpt} does not fit {builtin.architecture}: {'; '.join(problems)}; {fix}")
    trained_for = metadata.get("model", "")
    if trained_for in BUILTINS and trained_for != name:  # same architecture, other data: its labels would be wrong
        raise DirscopeError(
            f"checkpoint {ckpt} was trained as {trained_for}, not {name}, whose class names it would get; "
            f"use --model {trained_for}:{path}"
        )
    module.load_state_dict(state, strict=True)
    info = {
        **metadata,
        "checkpoint": ckpt.name,
        "checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
        "preprocess": GRAY28_PREPROCESS.describe(),
    }
    return LoadedModel(
        module=module,
        spec=name if path is None else f"{name}:{path}",
        input_shape=INPUT_SHAPE,
        preprocess=GRAY28_PREPROCESS,
        label_names=list(builtin.label_names),
        info=info,
    )


def _builder(name: str) -> Callable[[str | None], LoadedModel]:
    def build(arg: str | None) -> LoadedModel:
        return load_builtin(name, arg or None)

    return build


for _b in BUILTINS.values():
    MODELS.register(
        _b.name,
        help=f"{_b.help}; optional :PATH loads weights saved by `dirscope train`",
        takes_arg=None,
    )(_builder(_b.name))
