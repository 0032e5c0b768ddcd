"""The whole pipeline against the bare model: `dirscope.run` images/s against the model's own forward pass.

Both contenders read the same in-memory images through the same loader (`load_data(...).batches`), so the
difference is what dirscope adds: hooks, projections onto every direction, tallies and the null sample.
Two models: the built-in convnet (`mnist-cnn` at `fc1`, over 10 copies of MNIST's held-out digits) and a
ResNet-18-shaped network with random weights (torchvision's layout and widths, written out here so that
torchvision is not needed) at `layer4`, the last block, over random 224 x 224 images. dirscope stops the
forward at the hooked layer, so the run skips ResNet's pooling and classifier that the bare forward does;
both are tiny.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import dirscope
from benchmarks.engine import medians, overheads, race_rounds
from dirscope.data import load_data
from dirscope.engine import autocast_for
from dirscope.feeds import to_device
from dirscope.models import load_model


class BasicBlock(nn.Module):
    """ResNet's two-convolution residual block, with a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + skip)


def resnet18(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """ResNet-18 (11.7M parameters, 1.8 GFLOPs at 224 x 224) with seeded random weights, in eval mode."""
    torch.manual_seed(seed)

    def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))

    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(3, 64, 7, 2, 3, bias=False))
    net.add_module("bn1", nn.BatchNorm2d(64))
    net.add_module("relu", nn.ReLU(inplace=True))
    net.add_module("maxpool", nn.MaxPool2d(3, 2, 1))
    for i, (cin, cout, stride) in enumerate([(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)], 1):
        net.add_module(f"layer{i}", stage(cin, cout, stride))
    net.add_module("avgpool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc", nn.Linear(512, num_classes))
    return net.eval()


def bare_forward(
    module: nn.Module, images: np.ndarray, batch: int, device: str = "cpu", autocast: str | None = None
) -> None:
    """The model alone over the loader dirscope reads, each batch moved to ``device`` as a run moves it."""
    with torch.inference_mode(), autocast_for(device, autocast):
        for b in load_data(images).batches(batch):
            module(to_device(b.x, device))


def dirscope_run(model, layer: str, images: np.ndarray, batch: int, directions: str) -> None:
    dirscope.run(model, [layer], images, directions, k=64, batch_size=batch, progress=False)


def compare(model, module: nn.Module, layer: str, images: np.ndarray, directions: str, batch: int, rounds: int):
    """Images/s of the bare forward and the dirscope run (medians, alternated after one warm-up each) and
    the run's overhead, from the two runs of each round (``overheads``)."""
    contenders = {
        "forward": lambda: bare_forward(module, images, batch),
        "dirscope": lambda: dirscope_run(model, layer, images, batch, directions),
    }
    times = race_rounds(contenders, rounds)
    med = medians(times)
    n = images.shape[0]
    return {
        "images": n,
        "batch": batch,
        "layer": layer,
        "directions": directions,
        "rounds": rounds,
        "forward_ips": n / med["forward"],
        "dirscope_ips": n / med["dirscope"],
        **overheads(times),
    }


def builtin_convnet(copies: int = 10, directions: str = "random:2048", rounds: int = 15) -> dict:
    """mnist-cnn at fc1 over ``copies`` copies of the held-out MNIST digits, so that the run's fixed costs
    (start-up, and the result tables, which grow with K x k, not with N) weigh as over a real dataset."""
    loaded = load_model("mnist-cnn")
    digits = np.concatenate([b.x.numpy() for b in load_data("mnist").batches(1000)])
    images = np.concatenate([digits] * copies)
    return {"model": "mnist-cnn", **compare(loaded, loaded.module, "fc1", images, directions, 256, rounds)}


def resnet18_shaped(n: int = 512, directions: str = "random:2048", rounds: int = 7) -> dict:
    """ResNet-18 with random weights at layer4 (512 channels, 7 x 7, max-pooled projections) over n images."""
    net = resnet18()
    images = np.random.default_rng(0).standard_normal((n, 3, 224, 224), dtype=np.float32)
    return {"model": "ResNet-18 (random weights)", **compare(net, net, "layer4", images, directions, 64, rounds)}
