"""Training throughput (images/s) against a plain PyTorch MobileNet v1.

Side by side in one process, rounds interleaved, medians printed:

- ``plain PyTorch``: MobileNet v1 written here from ``nn.Conv2d``,
  ``nn.BatchNorm2d`` and ``nn.ReLU6`` (NCHW, SGD with Nesterov momentum),
  what a user would write, timed on batches already in memory;
- the project's ``individual``, ``slimmable`` (4 switches), ``us`` (sandwich
  rule, n=4, inplace distillation) and ``us nonuniform`` training, each timed
  as ``usspectrum train`` runs it (``usspectrum.train``, DataLoader decoding
  and augmentation included; images/s of its training loop);
- the project's individual and US steps on the old path (NCHW, generic
  convolutions: :func:`usspectrum.nn.kernels.disabled`) on the same in-memory
  batches, to show what the training kernels and channels-last buy.

It then prints the ratios to the plain net and the fraction of this CPU's
float32 matmul peak that the individual step reaches (3 x forward MACs per
image: forward, input gradient, weight gradient).

    python benchmarks/bench_train.py [--data ../shared/data/cifar10] [--steps 25] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

import usspectrum
from usspectrum.nn import kernels
from usspectrum.runtime.allocator import keep_freed_memory
from usspectrum.io.data import ImageSpec, make_loader, open_split, seeded_subset, train_transform
from usspectrum.spectrum.flops import count_flops
from usspectrum.training.steps import SandwichSampler, local_step, param_groups

ROOT = Path(__file__).resolve().parents[1]
STAGES = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2))


def plain_mobilenet_v1(num_classes: int = 10) -> nn.Sequential:
    """MobileNet v1 with the CIFAR stem (stride 1), as a user writes it."""
    def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> list:
        return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU6(inplace=True)]

    layers, cin = conv_bn(3, 32, 3, 1), 32
    for cout, repeats, first_stride in STAGES:
        for i in range(repeats):
            layers += conv_bn(cin, cin, 3, first_stride if i == 0 else 1, groups=cin)
            layers += conv_bn(cin, cout, 1, 1)
            cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


def in_memory_rate(step, batches: list) -> float:
    step(*batches[0])  # warm-up
    started = time.perf_counter()
    for images, labels in batches[1:]:
        step(images, labels)
    return sum(len(labels) for _, labels in batches[1:]) / (time.perf_counter() - started)


def plain_rate(batches: list) -> float:
    torch.manual_seed(0)
    model = plain_mobilenet_v1().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        criterion(model(images), labels).backward()
        optimizer.step()
    return in_memory_rate(step, batches)


def old_path_rate(kind: str, batches: list) -> float:
    """The project's step as it ran before the training kernels: NCHW, F.conv2d."""
    torch.manual_seed(0)
    arch = "us_mobilenet_v1" if kind == "us" else "mobilenet_v1"
    model = usspectrum.create_model(arch, stem="cifar", num_classes=10).train()
    optimizer = torch.optim.SGD(param_groups(model, 5e-4), lr=0.01, momentum=0.9, nesterov=True)
    sampler = SandwichSampler((0.25, 1.0), 4, len(model.slots), False, random.Random(0))
    criterion = nn.CrossEntropyLoss()

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        if kind == "us":
            local_step(model, "us", images, labels, criterion, sampler.draw(), True)
        else:
            local_step(model, "individual", images, labels, criterion)
        optimizer.step()
    with kernels.disabled():
        return in_memory_rate(step, batches)


def train_rate(kind: str, nonuniform: bool, data: str, images: int, batch: int,
               workdir: Path) -> float:
    """images/s of ``usspectrum train``'s loop for one short epoch."""
    out = workdir / f"{kind}{'-nu' if nonuniform else ''}.pt"
    result = usspectrum.train(kind=kind, nonuniform=nonuniform, data=data, out=str(out),
                              epochs=1, batch_size=batch, train_images=images, val_images=50,
                              calib_images=50, progress=False, lr=0.01)
    return float(result.log["images_per_s"].iloc[-1])


def matmul_peak(n: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--steps", type=int, default=25, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    keep_freed_memory()  # as `usspectrum train` does
    spec = ImageSpec.for_size(32)
    train = open_split(args.data, "train", train_transform(spec))
    subset = seeded_subset(train, args.batch_size * (args.steps + 1), 0, "images")
    batches = list(make_loader(subset, args.batch_size, shuffle=True,
                               generator=torch.Generator().manual_seed(0)))
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; CIFAR-10 32x32, full-depth MobileNet v1 "
          f"(CIFAR stem), batch {args.batch_size}, {args.steps} timed steps, "
          f"median of {args.rounds} interleaved rounds")

    paths = {
        "plain PyTorch (in memory)": lambda: plain_rate(batches),
        "old path individual (in memory)": lambda: old_path_rate("individual", batches),
        "old path us (in memory)": lambda: old_path_rate("us", batches),
    }
    with tempfile.TemporaryDirectory() as tmp:
        images = args.batch_size * args.steps
        for name, kind, nonuniform in (("individual", "individual", False),
                                       ("slimmable", "slimmable", False),
                                       ("us", "us", False), ("us nonuniform", "us", True)):
            paths[f"usspectrum train {name}"] = (
                lambda k=kind, nu=nonuniform: train_rate(k, nu, args.data, images,
                                                         args.batch_size, Path(tmp)))
        rates: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, measure in paths.items():
                rates[name].append(measure())
    medians = {name: statistics.median(values) for name, values in rates.items()}
    base = medians["plain PyTorch (in memory)"]
    print(f"\n{'path':36s} {'images/s (median)':>18s} {'rounds':>24s} {'vs plain':>9s}")
    for name, values in rates.items():
        spread = " ".join(f"{v:.1f}" for v in values)
        print(f"{name:36s} {medians[name]:18.1f} {spread:>24s} {medians[name] / base:8.2f}x")

    macs = count_flops(usspectrum.create_model("mobilenet_v1", stem="cifar", num_classes=10),
                       1.0, 32).flops
    peak = matmul_peak()
    for name in ("plain PyTorch (in memory)", "usspectrum train individual"):
        achieved = medians[name] * 3 * 2 * macs / 1e9
        print(f"{name}: {achieved:.1f} GFLOP/s = {100 * achieved / peak:.1f}% of the "
              f"float32 matmul peak ({peak:.1f} GFLOP/s, 4096^3)")
    us = medians["usspectrum train us"]
    print(f"target: US sandwich step >= 0.70x plain: {us / base:.2f}x "
          f"({'met' if us / base >= 0.7 else 'not met'})")


if __name__ == "__main__":
    main()
