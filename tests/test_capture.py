"""Hooks on named (nested) modules: layer listing, name errors, multi-layer capture and early stopping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dirscope.capture import Capture, list_layers, resolve_layers
from dirscope.errors import DirscopeError


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        self.act = nn.Tanh()

    def forward(self, x):
        return self.act(self.mlp(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), nn.Linear(6, 4)])
        self.pair = PairOut()
        self.head = nn.Linear(4, 3)
        self.head_calls = 0

    def forward(self, x):
        x = self.blocks[1](self.blocks[0](x))
        x, _ = self.pair(x)
        self.head_calls += 1
        return self.head(x)


class PairOut(nn.Module):
    def forward(self, x):
        return (x * 2, "aux")


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(3, 3)

    def forward(self, x):
        return self.shared(self.shared(x))


def test_list_layers_names_nested_modules_with_shapes():
    infos = {i.name: i for i in list_layers(Net().eval(), torch.zeros(2, 4))}
    assert infos["blocks.0.mlp.1"].shape == (6,) and infos["blocks.0.mlp.1"].type == "ReLU"
    assert infos["blocks.0.act"].shape == (6,)
    assert infos["pair"].shape == (4,)  # first tensor of a tuple output
    assert infos["head"].calls == 1


def test_list_layers_reports_repeated_calls():
    infos = {i.name: i for i in list_layers(Twice(), torch.zeros(1, 3))}
    assert infos["shared"].calls == 2


def test_unknown_layer_suggests_close_names():
    with pytest.raises(DirscopeError, match=r"unknown layer 'blocks.0.mpl'.*did you mean 'blocks.0.mlp'"):
        resolve_layers(Net(), ["blocks.0.mpl"])
    with pytest.raises(DirscopeError, match="twice"):
        resolve_layers(Net(), ["head", "head"])


def test_multi_layer_capture_equals_separate_captures():
    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(5, 4)
    with Capture(net, ["blocks.0.mlp.0", "blocks.1", "pair"]) as cap:
        together = cap.run(x)
    for name, act in together.items():
        with Capture(net, [name]) as cap:
            torch.testing.assert_close(cap.run(x)[name], act, rtol=0, atol=0)
    assert torch.equal(together["pair"], net.blocks[1](net.blocks[0](x)) * 2)


class InPlace(nn.Module):
    """A residual block as torchvision writes them: in-place ReLU, then ``out += x``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        out = self.fc(x)
        self.relu(out)
        out += x
        return self.head(out)


def test_later_in_place_ops_do_not_change_captured_activations():
    torch.manual_seed(0)
    net, x = InPlace().eval(), torch.randn(8, 4)
    with torch.inference_mode(), Capture(net, ["fc", "relu", "head"]) as cap:
        got = cap.run(x)
    expected = net.fc(x)
    assert (expected < 0).any()
    assert torch.equal(got["fc"], expected)
    assert torch.equal(got["relu"], expected.relu())


def test_forward_stops_after_the_last_requested_layer():
    net = Net().eval()
    with Capture(net, ["blocks.0.act"]) as cap:
        cap.run(torch.randn(2, 4))
    assert net.head_calls == 0
    with Capture(net, ["head"]) as cap:
        cap.run(torch.randn(2, 4))
    assert net.head_calls == 1


def test_hooks_are_removed_on_exit():
    net = Net()
    with Capture(net, ["head"]):
        pass
    assert all(not m._forward_hooks for m in net.modules())


def test_wrong_input_shape_is_one_line():
    with (
        pytest.raises(DirscopeError, match=r"cannot take inputs of shape \[7\]") as info,
        Capture(Net(), ["head"]) as cap,
    ):
        cap.run(torch.zeros(2, 7))
    assert "\n" not in str(info.value)


def test_a_layer_returning_a_dict_gives_its_first_tensor():
    """Blocks that return dicts (Hugging Face's ModelOutput is an OrderedDict) are hookable like tuples."""

    class Block(nn.Module):
        def forward(self, x):
            return {"mask": None, "hidden": x * 2, "attn": x * 3}

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(x)["hidden"].sum()

    x = torch.arange(6.0).reshape(2, 3)
    assert [(i.name, i.shape) for i in list_layers(Outer(), x)] == [("block", (3,))]
    with Capture(Outer(), ["block"]) as cap:
        assert torch.equal(cap.run(x)["block"], x * 2)


def test_a_failing_input_assert_is_one_line():
    """Models (timm's among them) check input shapes with ``assert``; that is a user's error, not a traceback."""

    class Checks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            assert x.shape[-1] == 8, f"Input width ({x.shape[-1]}) doesn't match model (8)."
            return self.fc(x)

    with pytest.raises(DirscopeError, match=r"cannot take inputs of shape \[4\].*Input width \(4\)") as info:
        list_layers(Checks(), torch.zeros(2, 4))
    assert "\n" not in str(info.value)


def test_a_float64_model_is_told_to_convert_not_blamed_on_the_shape():
    with pytest.raises(DirscopeError, match=r"has torch.float64 weights but its inputs are torch.float32.*\.float\(\)"):
        list_layers(nn.Sequential(nn.Linear(8, 2)).double(), torch.zeros(2, 8))
    with pytest.raises(DirscopeError, match=r"cannot take inputs of shape \[7\]"):  # a float32 model: the shape
        list_layers(nn.Sequential(nn.Linear(8, 2)), torch.zeros(2, 7))


def test_all_means_every_leaf_that_computes_something():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.1), nn.Linear(8, 3))
    assert resolve_layers(net, ["all"]) == ["0", "1", "4"]
    assert resolve_layers(Net(), ["all"]) == [
        "blocks.0.mlp.0",
        "blocks.0.mlp.1",
        "blocks.0.act",
        "blocks.1",
        "pair",
        "head",
    ]


def test_layer_info_says_where_auto_finds_the_features():
    model = nn.Sequential(nn.Conv1d(2, 3, 1), nn.ReLU(), nn.Flatten(), nn.Linear(15, 4))
    infos = {i.name: i for i in list_layers(model, torch.zeros(2, 2, 5))}
    assert (infos["0"].dim, infos["0"].positions) == (3, 5)  # a Conv1d's [C, L]: channels first
    assert (infos["1"].dim, infos["1"].positions) == (5, 3)  # a bare [T, D]: read as tokens
    assert (infos["3"].dim, infos["3"].positions) == (4, 1)
