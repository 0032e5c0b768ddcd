"""ImageNet model sources: preprocessing rules, shipped class names, Lite0's predictions, weights errors."""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dirscope.errors import DirscopeError
from dirscope.models import ImagePreprocess, imagenet_classes, load_model
from dirscope.models import imagenet as imagenet_module

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def random_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def normalised(pixels: np.ndarray) -> np.ndarray:
    return ((pixels / 255.0 - MEAN) / STD).transpose(2, 0, 1)


@pytest.mark.parametrize(
    ("w", "h", "size", "box"),
    [
        (300, 200, (384, 256), (80, 16)),  # landscape: the longer side truncates 256 * 1.5 = 384
        (200, 301, (256, 385), (16, 80)),  # portrait: int(256 * 301 / 200) = 385; top = round(80.5) = 80
        (256, 256, (256, 256), (16, 16)),
    ],
)
def test_resize_and_crop_follow_torchvision_rules(w, h, size, box):
    image = random_image(w, h)
    got = ImagePreprocess()(image).numpy()
    resized = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    left, top = box
    expected = normalised(resized[top : top + 224, left : left + 224])
    assert got.shape == (3, 224, 224)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_crop_pads_small_images_with_black():
    image = random_image(100, 300, seed=1)
    got = ImagePreprocess(resize=None, crop=224)(image).numpy()
    pixels = np.zeros((224, 224, 3))
    pixels[:, 62:162] = np.asarray(image, dtype=np.float64)[38:262]  # pad (224-100)//2 = 62; top round(76/2)
    np.testing.assert_allclose(got, normalised(pixels), atol=1e-5)


def test_exact_resize_grayscale_and_override():
    pre = ImagePreprocess(resize=(20, 30), crop=None, mean=(0.5,), std=(0.25,), mode="L")
    image = random_image(64, 48)
    got = pre(image).numpy()
    gray = np.asarray(image.convert("L").resize((30, 20), Image.Resampling.BILINEAR), dtype=np.float64)
    np.testing.assert_allclose(got[0], (gray / 255 - 0.5) / 0.25, atol=1e-5)
    assert pre.output_shape == (1, 20, 30)
    changed = ImagePreprocess().override("resize=300, crop=288, interpolation=bicubic, mean=0.5/0.5/0.5")
    assert (changed.resize, changed.crop, changed.interpolation, changed.mean) == (300, 288, "bicubic", (0.5,) * 3)
    assert changed.std == ImagePreprocess().std


@pytest.mark.parametrize(
    ("text", "match"),
    [("size=3", "bad --preprocess item"), ("crop=abc", "bad --preprocess value"), ("mean=0.5", "needs 3 mean")],
)
def test_bad_override_is_one_line(text, match):
    with pytest.raises(DirscopeError, match=match):
        ImagePreprocess().override(text)


def test_imagenet_classes_are_the_standard_list():
    classes = imagenet_classes()
    assert len(classes.wnids) == 1000 == len(set(classes.wnids))
    assert all(re.fullmatch(r"n\d{8}", w) for w in classes.wnids)
    assert (classes.wnids[0], classes.names[0]) == ("n01440764", "tench")
    assert (classes.names[285], classes.names[967]) == ("Egyptian cat", "espresso")
    assert classes.index_of_wnid()["n01440764"] == 0


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet-lite0")


@pytest.mark.parametrize(("photo", "expected"), [("chelsea", "Egyptian cat"), ("coffee", "espresso")])
def test_lite0_knows_the_scikit_image_photos(lite0, photo, expected):
    import skimage.data

    image = Image.fromarray(getattr(skimage.data, photo)())
    with torch.inference_mode():
        probs = lite0.module(lite0.preprocess(image)[None]).softmax(1)[0]
    assert lite0.label_names[int(probs.argmax())] == expected
    assert probs.max() > 0.7
    assert lite0.info["preprocess"]["resize"] == [224, 224]


def test_lite0_with_preprocess_override(lite0):
    loaded = load_model("efficientnet-lite0", preprocess="resize=256,crop=224")
    assert loaded.preprocess.crop == 224 and loaded.info["preprocess"]["resize"] == 256


def test_weights_are_recorded_as_an_absolute_path(tmp_path, monkeypatch, lite0):
    """Scoring reloads the model from the manifest, maybe from another directory."""
    torch.save(lite0.module.state_dict(), tmp_path / "lite0.pt")
    monkeypatch.chdir(tmp_path)
    loaded = load_model("efficientnet-lite0", weights="lite0.pt")
    assert loaded.info["weights"] == str(tmp_path.resolve() / "lite0.pt")


def test_missing_optional_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(DirscopeError, match=r"needs efficientnet_lite_pytorch, which is not installed; .*imagenet"):
        load_model("efficientnet-lite0")


def test_mismatched_weights_name_the_keys(tmp_path, lite0):
    state = lite0.module.state_dict()
    state["_fc.renamed"] = state.pop("_fc.bias")
    state["_conv_stem.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(DirscopeError) as err:
        load_model("efficientnet-lite0", weights=str(path))
    text = str(err.value)
    assert "\n" not in text
    assert "missing 1 (_fc.bias)" in text and "unexpected 1 (_fc.renamed)" in text
    assert "wrong shape 1 (_conv_stem.weight (1, 1, 1, 1) vs (32, 3, 3, 3))" in text


def test_weights_refused_where_the_source_takes_none():
    with pytest.raises(DirscopeError, match="takes no --weights"):
        load_model("mnist-cnn", weights="x.pt")


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1000))


def fake_torchvision(with_transforms: bool) -> types.ModuleType:
    tv = types.ModuleType("torchvision")

    def get_model_weights(name):
        if not with_transforms:
            raise ValueError("no weights enum")
        transform = types.SimpleNamespace(
            resize_size=[232], crop_size=[224], mean=[0.4, 0.4, 0.4], std=[0.2, 0.2, 0.2], interpolation="bicubic"
        )
        return types.SimpleNamespace(DEFAULT=types.SimpleNamespace(transforms=lambda: transform))

    tv.models = types.SimpleNamespace(
        list_models=lambda: ["alexnet", "resnet50"],
        get_model=lambda name, weights=None: tiny_net(),
        get_model_weights=get_model_weights,
    )
    return tv


@pytest.mark.parametrize("with_transforms", [True, False])
def test_torchvision_source_loads_user_weights(tmp_path, monkeypatch, with_transforms):
    monkeypatch.setitem(sys.modules, "torchvision", fake_torchvision(with_transforms))
    torch.manual_seed(0)
    reference = tiny_net()
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    loaded = load_model("torchvision:resnet50", weights=str(tmp_path / "w.pth"))
    torch.testing.assert_close(loaded.module[0].weight, reference[0].weight)
    assert len(loaded.label_names) == 1000 and loaded.input_shape == (3, 224, 224)
    expected = (232, "bicubic", (0.4,) * 3) if with_transforms else (256, "bilinear", (0.485, 0.456, 0.406))
    assert (loaded.preprocess.resize, loaded.preprocess.interpolation, loaded.preprocess.mean) == expected


def test_torchvision_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", fake_torchvision(True))
    with pytest.raises(DirscopeError, match="needs --weights PATH"):
        load_model("torchvision:alexnet")
    with pytest.raises(DirscopeError, match=r"no model 'resnet5'.*resnet50"):
        load_model("torchvision:resnet5", weights="w.pth")
    with pytest.raises(DirscopeError, match=r"weights file .* not found"):
        load_model("torchvision:alexnet", weights=str(tmp_path / "none.pth"))

    def broken(name, *args, **kwargs):
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(imagenet_module.importlib, "import_module", broken)
    with pytest.raises(
        DirscopeError, match=r"failed to import \(RuntimeError: operator torchvision::nms.*matches torch"
    ):
        load_model("torchvision:alexnet", weights="w.pth")


def test_timm_source_uses_its_data_config(tmp_path, monkeypatch):
    timm = types.ModuleType("timm")
    timm.list_models = lambda: ["vit_small_patch16_224"]
    timm.create_model = lambda name, pretrained=False: tiny_net()
    config = {"input_size": (3, 224, 224), "crop_pct": 0.9, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    timm.data = types.SimpleNamespace(resolve_data_config=lambda args, model: {**config, "interpolation": "bicubic"})
    monkeypatch.setitem(sys.modules, "timm", timm)
    torch.save({"state_dict": tiny_net().state_dict()}, tmp_path / "w.pth")  # a training checkpoint wrapper
    loaded = load_model("timm:vit_small_patch16_224", weights=str(tmp_path / "w.pth"))
    assert (loaded.preprocess.resize, loaded.preprocess.crop) == (248, 224)  # floor(224 / 0.9)
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(DirscopeError, match="needs timm, which is not installed"):
        load_model("timm:vit_small_patch16_224", weights="w.pth")


def test_cli_runs_lite0_on_photos_with_overridden_preprocessing(tmp_path, monkeypatch, capsys):
    import json
    import shlex

    from dirscope.cli import main

    def cli(line: str) -> tuple[int, str, str]:
        try:
            main(shlex.split(line))
            code = 0
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err

    monkeypatch.setenv("DIRSCOPE_HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    code, stdout, err = cli(
        f"run --model efficientnet-lite0 --preprocess resize=64,crop=64 --data photos:2 --layer _dropout "
        f"--directions basis:8,random:8 --k 3 --out {out} --quiet --no-figures"
    )
    assert code == 0, err
    assert "_dropout: D=1280, 26 examples; basis 8, random 8" in stdout
    model = json.loads((out / "manifest.json").read_text())["model"]
    assert model["spec"] == "efficientnet-lite0" and model["info"]["preprocess"]["crop"] == 64
    assert model["info"]["weights"].endswith(".pth")
    state = torch.load(model["info"]["weights"], weights_only=True)
    state["extra.bias"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    code, _, err = cli(f"layers efficientnet-lite0 --weights {tmp_path / 'w.pt'}")
    assert code == 2 and "unexpected 1 (extra.bias)" in err and err.count("\n") == 1
    code, _, err = cli("layers mnist-cnn --preprocess crop=20")  # the built-ins' preprocessing is overridable too
    assert code == 2 and "cannot take inputs of shape [1, 20, 20]" in err and err.count("\n") == 1
