"""Model sources, the built-in checkpoints and the deterministic training recipe."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
import warnings

import numpy as np
import pytest
import safetensors
import torch
from PIL import Image
from torch import nn

import dirscope
from dirscope.atomic import write_text
from dirscope.capture import list_layers
from dirscope.data import load_data
from dirscope.errors import DirscopeError
from dirscope.models import MODELS, LoadedModel, MnistCNN, MnistMLP, load_model
from dirscope.models.builtin import BUILTINS, FASHION_LABELS, GRAY28_PREPROCESS, load_builtin
from dirscope.models.train import (
    TrainRecipe,
    accuracy,
    images_digest,
    save_checkpoint,
    train_builtin,
    train_model,
)

TARGETS = {"mnist-cnn": 0.98, "mnist-mlp": 0.96, "fashion-cnn": 0.90, "fashion-mlp": 0.87}
MARGIN = 0.005


def names(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_modules() if n]


def test_cnn_layer_names_and_shapes() -> None:
    net = MnistCNN().eval()
    assert names(net) == [
        "conv1", "conv1.0", "conv1.1", "pool1", "conv2", "conv2.0", "conv2.1", "pool2", "flatten",
        "fc1", "fc1.0", "fc1.1", "fc2",
    ]  # fmt: skip
    shapes = {}
    hooks = [getattr(net, n).register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, o.shape[1:]))
             for n in ("conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "fc2")]  # fmt: skip
    net(torch.zeros(2, 1, 28, 28))
    for h in hooks:
        h.remove()
    assert shapes == {
        "conv1": (32, 28, 28), "pool1": (32, 14, 14), "conv2": (64, 14, 14), "pool2": (64, 7, 7),
        "flatten": (3136,), "fc1": (128,), "fc2": (10,),
    }  # fmt: skip


def test_mlp_layer_names_and_shapes() -> None:
    net = MnistMLP().eval()
    assert names(net) == ["flatten", "fc1", "fc1.0", "fc1.1", "fc2", "fc2.0", "fc2.1", "out"]
    assert net.fc2(net.fc1(net.flatten(torch.zeros(3, 1, 28, 28)))).shape == (3, 200)
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_registry_lists_all_sources() -> None:
    assert {"mnist-cnn", "mnist-mlp", "fashion-cnn", "fashion-mlp", "python", "torchscript"} <= set(MODELS.names())


def held_out(spec: str):
    """The held-out set of a built-in, or a skip when that dataset is not installed here."""
    from dirscope.data import load_data

    try:
        return load_data(spec)
    except DirscopeError as exc:
        pytest.skip(f"{spec} is not available here: {exc}")


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_shipped_checkpoint_loads_and_is_accurate(name: str) -> None:
    loaded = load_model(name)
    assert not any(m.training for m in loaded.module.modules())
    assert loaded.input_shape == (1, 28, 28)
    assert loaded.label_names == (FASHION_LABELS if name.startswith("fashion") else [str(d) for d in range(10)])
    assert loaded.info["architecture"] == type(loaded.module).__name__
    assert loaded.info["train_data"] == BUILTINS[name].train_data
    assert all(p.dtype == torch.float32 for p in loaded.module.state_dict().values())
    data = held_out(BUILTINS[name].eval_data)
    assert accuracy(loaded.module, data) >= TARGETS[name] - MARGIN


@pytest.mark.parametrize("name", ["mnist-cnn", "mnist-mlp"])
def test_mnist_checkpoints_record_the_current_train_split(name: str) -> None:
    from dirscope.data.builtin import mnist_digits, split_digest

    try:
        train, held = mnist_digits(train=True)[0], mnist_digits(train=False)[0]
    except DirscopeError as exc:
        pytest.skip(f"MNIST is not available here: {exc}")
    recorded = load_builtin(name).info["train_split_digest"]
    assert recorded == split_digest(train) != split_digest(held)


def test_preprocess_makes_gray_28x28_in_unit_range() -> None:
    x = GRAY28_PREPROCESS(Image.new("RGB", (40, 50), (255, 255, 255)))
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x, torch.ones_like(x))


def gray28_before(image: Image.Image) -> torch.Tensor:
    """The built-ins' preprocessing when it was a function: their default must still give these very pixels."""
    gray = image.convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0).unsqueeze(0)


@pytest.fixture
def image_folder(tmp_path):
    """Three small images of other sizes and modes than the built-ins take, unlabelled."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (50, 20), dtype=np.uint8)).save(folder / "b.png")
    Image.fromarray(rng.integers(0, 256, (28, 28, 4), dtype=np.uint8)).save(folder / "c.png")
    return folder


def folder_inputs(folder, preprocess) -> torch.Tensor:
    return torch.cat([b.x for b in load_data(f"folder:{folder}", preprocess=preprocess).batches(8)])


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_preprocessing_is_recorded_and_overridable(name: str, image_folder) -> None:
    """Like the ImageNet sources, the built-ins carry their preprocessing as data: the manifest records it and
    --preprocess overrides it; its default is the squash to 28x28 grayscale they always did, pixel for pixel."""
    paths = sorted(image_folder.iterdir())
    loaded = load_model(name)
    assert loaded.info["preprocess"] == {
        "resize": [28, 28], "crop": None, "mean": [0.0], "std": [1.0], "interpolation": "bilinear", "mode": "L",
    }  # fmt: skip
    before = torch.stack([gray28_before(Image.open(p)) for p in paths])
    assert torch.equal(folder_inputs(image_folder, loaded.preprocess), before)
    loaded = load_model(name, preprocess="interpolation=nearest,mean=0.5,std=0.25")
    assert loaded.info["preprocess"]["interpolation"] == "nearest" and loaded.info["preprocess"]["mean"] == [0.5]
    assert loaded.input_shape == (1, 28, 28)
    nearest = [np.asarray(Image.open(p).convert("L").resize((28, 28), Image.Resampling.NEAREST)) for p in paths]
    expected = (torch.from_numpy(np.stack(nearest)[:, None] / 255.0).float() - 0.5) / 0.25
    assert torch.allclose(folder_inputs(image_folder, loaded.preprocess), expected)


def test_a_bare_module_has_no_preprocessing_to_override() -> None:
    with pytest.raises(DirscopeError, match="no configurable image preprocessing to override"):
        load_model(MnistMLP(), preprocess="crop=20")


def test_a_run_records_the_builtin_preprocessing(image_folder) -> None:
    result = dirscope.run("mnist-mlp", ["fc1"], f"folder:{image_folder}", "basis:2", k=1, progress=False, figures=False)
    assert result.manifest["model"]["info"]["preprocess"]["resize"] == [28, 28]
    result = dirscope.run(
        "mnist-mlp", ["fc1"], f"folder:{image_folder}", "basis:2", k=1, preprocess="mode=L,resize=28/28,std=0.5",
        progress=False, figures=False,
    )  # fmt: skip
    assert result.manifest["model"]["info"]["preprocess"]["std"] == [0.5]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("mode=rgb", "mode must be L .gray. or RGB, got 'rgb'"),
        ("mode=RGBA", "mode must be L"),
        ("resize=0", "resize must be none, a size N or H/W.*got 0$"),
        ("resize=-3", "resize must be"),
        ("resize=10/0", "resize must be.*got 10/0$"),
        ("crop=0", "crop must be none or a whole number >= 1, got 0"),
        ("crop=-5", "crop must be"),
        ("mean=nan/0/0", "mean must be finite"),
        ("std=inf/1/1", "std must be finite and positive"),
        ("std=0.2/0/0.2", "std must be finite and positive"),
    ],
)
def test_preprocess_override_refuses_values_every_image_would_fail_on(override: str, field: str) -> None:
    from dirscope.models.imagenet import IMAGENET_PREPROCESS

    with pytest.raises(DirscopeError, match=f"^preprocess {field}") as excinfo:
        IMAGENET_PREPROCESS.override(override)
    assert "\n" not in str(excinfo.value)


def test_preprocess_accepts_good_sizes_and_modes() -> None:
    from dirscope.models.imagenet import IMAGENET_PREPROCESS

    gray = IMAGENET_PREPROCESS.override("mode=L,mean=0.5,std=0.25,resize=20/30,crop=none")
    assert gray.output_shape == (1, 20, 30) and IMAGENET_PREPROCESS.override("resize=none,crop=1").crop == 1


def synthetic(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def tiny(arch: str = "MnistCNN", seed: int = 0) -> TrainRecipe:
    return TrainRecipe(arch, epochs=2, batch_size=16, seed=seed, threads=1, shift=1)


@pytest.mark.parametrize("arch", ["MnistCNN", "MnistMLP"])
def test_training_is_bitwise_deterministic(arch: str) -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    a, metrics = train_model(tiny(arch), synthetic(), eval_data=synthetic(16, 1), progress=False)
    b, _ = train_model(tiny(arch), synthetic(), progress=False)
    c, _ = train_model(tiny(arch, seed=1), synthetic(), progress=False)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not a.training and 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, det)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the global RNG was left alone


def test_recipe_rejects_bad_values() -> None:
    with pytest.raises(DirscopeError, match="epochs"):
        TrainRecipe(epochs=0)
    with pytest.raises(DirscopeError, match="schedule"):
        TrainRecipe(schedule="step")
    with pytest.raises(DirscopeError, match="architecture"):
        train_model(TrainRecipe("MnistCNNN", epochs=1), synthetic(8), progress=False)


def test_checkpoint_round_trip_with_path_spec(tmp_path) -> None:
    module, _ = train_model(TrainRecipe("MnistMLP", epochs=1, threads=1), synthetic(16), progress=False)
    path = save_checkpoint(module, tmp_path / "m.safetensors", {"architecture": "MnistMLP", "epochs": 1})
    with safetensors.safe_open(str(path), "pt") as fh:
        assert fh.metadata() == {"architecture": "MnistMLP", "epochs": "1"}
    loaded = load_model(f"mnist-mlp:{path}")
    assert loaded.spec == f"mnist-mlp:{path}" and loaded.info["checkpoint"] == "m.safetensors"
    x = synthetic(4)[0]
    assert torch.equal(loaded.module(x), module(x))


def test_checkpoint_has_the_mode_of_every_other_written_file(tmp_path) -> None:
    """safetensors writes a new 0600 file in place of the atomic helper's temporary file; the helper must still
    give the checkpoint the usual permissions (0644 under umask 022), as every other file dirscope writes."""
    umask = os.umask(0)
    os.umask(umask)
    path = save_checkpoint(MnistMLP(), tmp_path / "m.safetensors", {})
    write_text(tmp_path / "other.txt", "x")
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "other.txt").stat().st_mode) == 0o666 & ~umask


def test_missing_checkpoint_says_how_to_train(tmp_path) -> None:
    with pytest.raises(DirscopeError, match="dirscope train mnist-cnn") as err:
        load_model(f"mnist-cnn:{tmp_path / 'none.safetensors'}")
    assert "\n" not in str(err.value)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(DirscopeError, match="cannot read checkpoint"):
        load_model(f"mnist-cnn:{tmp_path / 'junk.safetensors'}")


def test_wrong_weights_name_the_keys(tmp_path) -> None:
    path = save_checkpoint(MnistMLP(), tmp_path / "mlp.safetensors", {})
    with pytest.raises(DirscopeError) as err:
        load_model(f"mnist-cnn:{path}")
    msg = str(err.value)
    assert "missing keys conv1.0.bias" in msg and "unexpected keys" in msg and "out.weight" in msg
    assert "shape mismatches fc1.0.bias (200,) vs (128,)" in msg and "\n" not in msg
    assert msg.endswith(f"run `dirscope train mnist-cnn --out {path}` to recreate it")


def test_a_checkpoint_trained_as_a_builtin_of_the_same_architecture_is_named(tmp_path) -> None:
    """A fashion-cnn checkpoint loaded as mnist-cnn (same weights' shapes) loaded silently with digit class names."""
    path = save_checkpoint(MnistCNN(), tmp_path / "f.safetensors", {"model": "fashion-cnn", "architecture": "MnistCNN"})
    with pytest.raises(DirscopeError) as err:
        load_model(f"mnist-cnn:{path}")
    assert str(err.value) == (
        f"checkpoint {path} was trained as fashion-cnn, not mnist-cnn, whose class names it would get; "
        f"use --model fashion-cnn:{path}"
    )
    assert load_model(f"fashion-cnn:{path}").label_names[0] == "T-shirt/top"


def test_a_checkpoint_of_another_builtin_is_named_not_retrained(tmp_path) -> None:
    """Retraining to the same path, as the hint used to say, would replace a good checkpoint of another model."""
    cnn = save_checkpoint(MnistCNN(), tmp_path / "my.safetensors", {"model": "mnist-cnn", "architecture": "MnistCNN"})
    with pytest.raises(DirscopeError, match=r"unexpected keys conv1\.0\.bias") as err:
        load_model(f"mnist-mlp:{cnn}")
    assert str(err.value).endswith(f"; it is a checkpoint of mnist-cnn; use --model mnist-cnn:{cnn}")
    assert "dirscope train" not in str(err.value) and "\n" not in str(err.value)
    mlp = save_checkpoint(MnistMLP(), tmp_path / "mlp.safetensors", {"architecture": "MnistMLP"})
    with pytest.raises(DirscopeError) as err:
        load_model(f"fashion-cnn:{mlp}")
    assert str(err.value).endswith(
        f"; it is a checkpoint of MnistMLP; use --model mnist-mlp:{mlp} or --model fashion-mlp:{mlp}"
    )
    # metadata naming a built-in the weights do not fit either: retraining is the one remedy
    wrong = save_checkpoint(nn.Linear(2, 2), tmp_path / "wrong.safetensors", {"model": "mnist-cnn"})
    with pytest.raises(DirscopeError) as err:
        load_model(f"mnist-mlp:{wrong}")
    assert str(err.value).endswith(f"; run `dirscope train mnist-mlp --out {wrong}` to recreate it")


@pytest.fixture(autouse=True)
def forget_user_modules():
    """Each test imports its own copy of the temporary user modules."""
    yield
    for name in ("usermodels", "failing", "needsdep"):
        sys.modules.pop(name, None)


def write_module(tmp_path, monkeypatch, source: str, name: str = "usermodels") -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.chdir(tmp_path)
    return name


USER_MODULE = """
    import torch
    from dirscope.models import LoadedModel

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)
            self.drop = torch.nn.Dropout(0.5)
            self.dirscope_input_shape = (3,)

        def forward(self, x):
            return self.drop(self.fc(x))

    def build():
        return Net().train()

    def build_loaded():
        return LoadedModel(Net(), spec="mine", label_names=["a", "b"])

    def bad_shape():
        net = Net()
        net.dirscope_input_shape = "big"
        return net

    def broken():
        raise ValueError("no weights\\nhere")

    def wrong():
        return 42

    NOT_CALLABLE = 3
"""


def test_python_source_imports_from_cwd(tmp_path, monkeypatch) -> None:
    mod = write_module(tmp_path, monkeypatch, USER_MODULE)
    loaded = load_model(f"python:{mod}:build")
    assert loaded.spec == f"python:{mod}:build" and loaded.input_shape == (3,)
    assert not any(m.training for m in loaded.module.modules())
    mine = load_model(f"python:{mod}:build_loaded")
    assert mine.spec == "mine" and mine.label_names == ["a", "b"]


@pytest.mark.parametrize(
    ("arg", "pattern"),
    [
        ("usermodels", "python:MODULE:CALLABLE"),
        ("usermodels:", "python:MODULE:CALLABLE"),
        ("no_such_mod_xyz:build", "no module named 'no_such_mod_xyz'.*PYTHONPATH"),
        ("usermodels:biuld", "no attribute 'biuld'; did you mean 'build'"),
        ("usermodels:NOT_CALLABLE", "not callable"),
        ("usermodels:wrong", "returned a value of type int; it must return a torch.nn.Module"),
        ("usermodels:broken", r"broken\(\) raised ValueError: no weights here"),
        ("usermodels:bad_shape", "dirscope_input_shape"),
        ("failing:build", "importing 'failing' failed with ZeroDivisionError"),
        ("needsdep:build", "importing 'needsdep' failed with ModuleNotFoundError"),
    ],
)
def test_python_source_errors(tmp_path, monkeypatch, arg: str, pattern: str) -> None:
    write_module(tmp_path, monkeypatch, USER_MODULE)
    write_module(tmp_path, monkeypatch, "x = 1 / 0\n", "failing")
    write_module(tmp_path, monkeypatch, "import not_installed_dep_xyz\n", "needsdep")
    with pytest.raises(DirscopeError, match=pattern) as err:
        load_model(f"python:{arg}")
    assert "\n" not in str(err.value)


def test_torchscript_round_trip(tmp_path) -> None:
    net = MnistMLP().eval()
    net.dirscope_input_shape = (1, 28, 28)
    path = tmp_path / "mlp.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), str(path))
    loaded = load_model(f"torchscript:{path}")
    x = synthetic(4)[0]
    assert loaded.input_shape == (1, 28, 28)
    assert torch.allclose(loaded.module(x), net(x))
    assert "fc1.0" in names(loaded.module)


def test_a_torchscript_model_is_scanned_at_its_output(tmp_path) -> None:
    """TorchScript takes no hooks, so its one layer is its output: the same scan as the module's last layer."""
    torch.manual_seed(0)
    net = MnistMLP().eval()
    path = tmp_path / "mlp.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), str(path))
    x = synthetic(64)[0].numpy()
    infos = list_layers(load_model(f"torchscript:{path}").module, torch.from_numpy(x[:2]))
    assert [(i.name, i.shape) for i in infos] == [("output", (10,))]
    scripted = dirscope.run(f"torchscript:{path}", "all", x, "basis", k=3, progress=False, figures=False)
    plain = dirscope.run(net, ["out"], x, "basis", k=3, progress=False, figures=False)
    assert scripted.layers == ["output"]
    with pytest.raises(DirscopeError, match="TorchScript model takes no hooks, so its one layer is 'output'"):
        dirscope.run(f"torchscript:{path}", ["fc1"], x, "basis", progress=False)
    columns = ["direction", "sign", "rank", "index", "value"]
    np.testing.assert_array_equal(scripted.topk[columns].to_numpy(), plain.topk[columns].to_numpy())


def test_torchscript_errors(tmp_path) -> None:
    with pytest.raises(DirscopeError, match="not found"):
        load_model(f"torchscript:{tmp_path / 'missing.pt'}")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(DirscopeError, match=r"cannot load .* as TorchScript") as err:
        load_model(f"torchscript:{tmp_path / 'bad.pt'}")
    assert "\n" not in str(err.value)


def test_load_model_wraps_modules_in_eval_mode() -> None:
    net = MnistCNN().train()
    loaded = load_model(net)
    assert loaded.spec == "<python object: MnistCNN>" and loaded.input_shape == (1, 28, 28)
    assert loaded.module is net and not any(m.training for m in net.modules())
    again = LoadedModel(MnistMLP().train(), spec="x")
    again.module.train()
    assert load_model(again) is again and not again.module.training


def test_load_model_rejects_other_objects() -> None:
    with pytest.raises(DirscopeError, match=r"spec string, a torch\.nn\.Module or a LoadedModel"):
        load_model(42)  # type: ignore[arg-type]
    with pytest.raises(DirscopeError, match="unknown model 'mnist-cnm'; did you mean 'mnist-cnn'"):
        load_model("mnist-cnm")
    with pytest.raises(DirscopeError, match="device"):
        load_model(MnistMLP(), device="nonsense")


def test_images_digest_matches_the_data_package() -> None:
    from dirscope.data.builtin import split_digest

    pixels = torch.randint(0, 256, (5, 28, 28), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    assert images_digest(pixels[:, None].float() / 255) == split_digest(pixels.numpy())
    assert images_digest(torch.full((2, 1, 28, 28), 0.5001)).startswith("none")


def test_train_builtin_writes_a_loadable_checkpoint(tmp_path) -> None:
    held_out("mnist:train")
    path = train_builtin("mnist-mlp", out=tmp_path, epochs=1, seed=3, progress=False)
    assert path == tmp_path / "mnist-mlp.safetensors"
    info = load_model(f"mnist-mlp:{path}").info
    assert json.loads(info["recipe"])["epochs"] == 1 and json.loads(info["recipe"])["seed"] == 3
    assert info["train_split_digest"] == load_builtin("mnist-mlp").info["train_split_digest"]
    assert float(info["heldout_accuracy"]) > 0.5 and info["threads"] == "2"  # one epoch: well above chance (0.1)
    with pytest.raises(DirscopeError, match="did you mean 'mnist-cnn'"):
        train_builtin("mnist-cn", out=tmp_path)
