"""The two built-in architectures. Submodule names are the hook points users see, so they are part of the API."""

from __future__ import annotations

import torch
from torch import nn


class MnistCNN(nn.Module):
    """The paper's MNIST convnet setting: two 5x5 conv+ReLU+pool stages, a 128-unit hidden layer, 10 logits.

    ``conv1``, ``conv2`` and ``fc1`` are post-ReLU hidden layers; ``conv1.0`` etc. are their pre-activations.
    """

    dirscope_input_shape = (1, 28, 28)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU())
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Sequential(nn.Conv2d(32, 64, 5, padding=2), nn.ReLU())
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Sequential(nn.Linear(3136, 128), nn.ReLU())
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        return self.fc2(self.fc1(self.flatten(x)))


class MnistMLP(nn.Module):
    """A fully connected net like Szegedy et al.'s FC200-200-10; ``fc1`` and ``fc2`` are post-ReLU."""

    dirscope_input_shape = (1, 28, 28)

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Sequential(nn.Linear(784, 200), nn.ReLU())
        self.fc2 = nn.Sequential(nn.Linear(200, 200), nn.ReLU())
        self.out = nn.Linear(200, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc2(self.fc1(self.flatten(x))))


ARCHITECTURES: dict[str, type[nn.Module]] = {"MnistCNN": MnistCNN, "MnistMLP": MnistMLP}
