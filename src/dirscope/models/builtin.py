"""The four shipped models: two architectures trained on MNIST and Fashion-MNIST, weights inside the package."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch
from PIL import Image

from ..errors import DirscopeError
from .base import MODELS, LoadedModel
from .nets import ARCHITECTURES

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


def preprocess_gray28(image: Image.Image) -> torch.Tensor:
    """A PIL image as the built-ins' input: grayscale, 28x28 bilinear, float [1, 28, 28] in [0, 1]."""
    gray = image.convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0).unsqueeze(0)


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


def check_state(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, train_hint: str) -> None:
    """Fail with one line naming missing, unexpected and mis-shaped keys before a strict load."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    problems = [
        f"{label} {', '.join(items)}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if items
    ]
    if problems:
        raise DirscopeError(
            f"checkpoint {path} does not fit {type(module).__name__}: {'; '.join(problems)}; "
            f"run `{train_hint}` to recreate it"
        )


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
    check_state(module, state, ckpt, hint)
    module.load_state_dict(state, strict=True)
    info = {**metadata, "checkpoint": ckpt.name, "checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    return LoadedModel(
        module=module,
        spec=name if path is None else f"{name}:{path}",
        input_shape=INPUT_SHAPE,
        preprocess=preprocess_gray28,
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
