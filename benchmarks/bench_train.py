"""Training throughput (images/s) of each kind of model on this machine.

Runs the real training steps (sandwich rule with inplace distillation for
US-Nets, all four switches for S-Nets, width 1.0 for the individual net) on
CIFAR-10 batches decoded by a DataLoader, side by side in one process, and
prints images/s and the ratio to the individual net.

    python benchmarks/bench_train.py [--data ../shared/data/cifar10] [--steps 20]
"""
from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import torch
import torch.nn as nn

import usspectrum
from usspectrum.data import ImageSpec, make_loader, open_split, seeded_subset, train_transform
from usspectrum.allocator import keep_freed_memory
from usspectrum.training import SandwichSampler, individual_step, param_groups, slimmable_step, us_step

ROOT = Path(__file__).resolve().parents[1]


def measure(kind: str, batches: list, nonuniform: bool = False) -> float:
    torch.manual_seed(0)
    arch = {"us": "us_mobilenet_v1", "slimmable": "s_mobilenet_v1", "individual": "mobilenet_v1"}[kind]
    model = usspectrum.create_model(arch, stem="cifar", num_classes=10).train()
    optimizer = torch.optim.SGD(param_groups(model, 5e-4), lr=0.01, momentum=0.9, nesterov=True)
    sampler = SandwichSampler((0.25, 1.0), 4, len(model.slots), nonuniform, random.Random(0))
    criterion = nn.CrossEntropyLoss()

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        if kind == "us":
            us_step(model, images, labels, sampler.draw(), criterion, True)
        elif kind == "slimmable":
            slimmable_step(model, images, labels, (0.25, 0.5, 0.75, 1.0), criterion)
        else:
            individual_step(model, images, labels, criterion)
        optimizer.step()

    step(*batches[0])  # warm-up
    started = time.perf_counter()
    for images, labels in batches[1:]:
        step(images, labels)
    return sum(len(l) for _, l in batches[1:]) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's defaults instead of what `usspectrum train` sets")
    args = parser.parse_args()

    spec = ImageSpec.for_size(args.image_size)
    train = open_split(args.data, "train", train_transform(spec))
    subset = seeded_subset(train, args.batch_size * (args.steps + 1), 0, "images")
    started = time.perf_counter()
    batches = list(make_loader(subset, args.batch_size, shuffle=True,
                               generator=torch.Generator().manual_seed(0)))
    decode = len(subset) / (time.perf_counter() - started)
    kept = False if args.default_malloc else keep_freed_memory()
    print(f"freed memory kept for reuse (as `usspectrum train` does): {kept}")
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; CIFAR-10 at {args.image_size}x{args.image_size}, "
          f"batch {args.batch_size}, {args.steps} timed steps")
    print(f"data loading (decode + augment): {decode:.0f} images/s")
    rates = {}
    for kind, nonuniform in (("individual", False), ("slimmable", False), ("us", False),
                             ("us", True)):
        name = kind + (" (nonuniform)" if nonuniform else "")
        rates[name] = measure(kind, batches, nonuniform)
    base = rates["individual"]
    for name, rate in rates.items():
        print(f"{name:18s} {rate:8.1f} images/s   {rate / base:5.2f}x individual")


if __name__ == "__main__":
    main()
