#!/usr/bin/env python3
"""PyTorch reference for `cargo xtask bench`'s `float_epoch_s` and `qat_epoch_s`.

The seed's `Net` (conv 1->40 k3, ReLU, max-pool 2, grouped conv 40->40 k3 groups 20, ReLU,
max-pool 2, linear 1000->10) trained for one epoch on 60,000 MNIST-sized images at batch 64
with SGD (lr 0.01, momentum 0.5), on tensors already in memory (no data loader), with
`torch.set_num_threads(2)`. The QAT epoch fake-quantizes the input, the weights and every
layer output at 4 bits with running min/max observers and an identity STE written in Python
(as the seed does). Random images are enough: the time does not depend on the values.

Not run in CI. Usage (PyTorch installed): python3 torch_reference.py [--threads 2]
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
        return (q - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None


class Observer:
    """Running min/max (min <= 0 <= max), affine unsigned grid of `bits`."""

    def __init__(self, bits):
        self.qmin, self.qmax = 0.0, float(2**bits - 1)
        self.lo, self.hi = 0.0, 0.0

    def __call__(self, x):
        self.lo = min(self.lo, x.detach().min().item())
        self.hi = max(self.hi, x.detach().max().item())
        scale = max((self.hi - self.lo) / (self.qmax - self.qmin), 1e-8)
        zero_point = float(round(self.qmin - self.lo / scale))
        return FakeQuantize.apply(x, scale, zero_point, self.qmin, self.qmax)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 40, 3)
        self.conv2 = nn.Conv2d(40, 40, 3, groups=20)
        self.fc = nn.Linear(5 * 5 * 40, 10)
        self.observers = None

    def quantize(self, bits):
        self.observers = {k: Observer(bits) for k in ["in", "w1", "o1", "w2", "o2", "wf", "of"]}

    def forward(self, x):
        o = self.observers
        if o is None:
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return self.fc(x.flatten(1))
        x = o["in"](x)
        x = o["o1"](F.conv2d(x, o["w1"](self.conv1.weight), self.conv1.bias))
        x = F.max_pool2d(F.relu(x), 2)
        x = o["o2"](F.conv2d(x, o["w2"](self.conv2.weight), self.conv2.bias, groups=20))
        x = F.max_pool2d(F.relu(x), 2)
        return o["of"](F.linear(x.flatten(1), o["wf"](self.fc.weight), self.fc.bias))


def epoch(model, images, labels, batch=64):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images[i : i + batch]), labels[i : i + batch])
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    images = torch.randn(60_000, 1, 28, 28)
    labels = torch.randint(0, 10, (60_000,))
    model = Net()
    print(f"torch {torch.__version__}, {args.threads} threads")
    print(f"float_epoch_s {epoch(model, images, labels):.2f}")
    model.quantize(4)
    print(f"qat_epoch_s {epoch(model, images, labels):.2f}")


if __name__ == "__main__":
    main()
