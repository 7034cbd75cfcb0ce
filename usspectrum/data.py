"""Data sets, preprocessing and the seeded calibration / evaluation subsets.

Two on-disk layouts are read: an ImageFolder root with ``train/`` and
``val/`` (the ImageNet layout) and torchvision's CIFAR-10 python batches
(``cifar-10-batches-py/``). The preprocessing comes from an
:class:`ImageSpec`, stored in every checkpoint.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from .errors import USSpectrumError, UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
SPLITS = ("train", "val")


@dataclass(frozen=True)
class ImageSpec:
    """How images are prepared for a model.

    ``resize`` is the shorter side before the centre crop at evaluation
    (ImageNet style: 256 -> 224); ``None`` means the images are used at
    their own size, as for 32x32 CIFAR models."""

    image_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: int | None = 256

    @classmethod
    def for_size(cls, image_size: int) -> "ImageSpec":
        """The usual spec: ImageNet-style resize/crop from 64 px up, none below."""
        if image_size >= 64:
            return cls(image_size, IMAGENET_MEAN, IMAGENET_STD, round(image_size / 0.875))
        return cls(image_size, CIFAR_MEAN, CIFAR_STD, None)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ImageSpec":
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]),
                   None if d.get("resize") is None else int(d["resize"]))


def eval_transform(spec: ImageSpec) -> transforms.Compose:
    steps: list = []
    if spec.resize is not None:
        steps += [transforms.Resize(spec.resize), transforms.CenterCrop(spec.image_size)]
    else:
        steps += [transforms.Resize((spec.image_size, spec.image_size))]
    return transforms.Compose(steps + [transforms.ToTensor(),
                                       transforms.Normalize(spec.mean, spec.std)])


def train_transform(spec: ImageSpec, flip: bool = True) -> transforms.Compose:
    """Standard augmentation: random-resized crop + flip for ImageNet-size
    inputs, padded random crop (1/8 of the side) + flip for small ones."""
    if spec.resize is not None:
        steps = [transforms.RandomResizedCrop(spec.image_size)]
    else:
        steps = [transforms.Resize((spec.image_size, spec.image_size)),
                 transforms.RandomCrop(spec.image_size, padding=spec.image_size // 8)]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose(steps + [transforms.ToTensor(),
                                       transforms.Normalize(spec.mean, spec.std)])


def first_image_size(dataset: Dataset) -> int:
    """Side length of the first image (used to pick a model's input size)."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    transform, base.transform = base.transform, None
    try:
        image = base[0][0]
    finally:
        base.transform = transform
    return max(image.size)


def _cifar_root(root: Path) -> Path | None:
    if (root / "cifar-10-batches-py").is_dir():
        return root
    if root.name == "cifar-10-batches-py" and root.is_dir():
        return root.parent
    return None


class ArrayImages(Dataset):
    """Images held in memory as uint8 arrays (N, H, W, 3), served as PIL
    images so the usual transforms apply."""

    def __init__(self, images, labels, classes: list[str], transform=None) -> None:
        self.images, self.labels, self.classes = images, list(map(int, labels)), classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        image = Image.fromarray(self.images[index])
        return (self.transform(image) if self.transform else image), self.labels[index]


DIGITS_VAL_FRACTION = 0.25


def digits_split(split: str, transform=None) -> ArrayImages:
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 images, no
    download): a fixed, class-stratified 75/25 train/val split."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    rgb = np.repeat(pixels[..., None], 3, axis=-1)
    rng = np.random.default_rng(0)
    val = np.zeros(len(digits.target), dtype=bool)
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        val[rng.choice(idx, int(round(len(idx) * DIGITS_VAL_FRACTION)), replace=False)] = True
    keep = val if split == "val" else ~val
    return ArrayImages(rgb[keep], digits.target[keep], [str(i) for i in range(10)], transform)


BUILTIN_DATA = {"digits": digits_split}


def open_split(root: str | os.PathLike, split: str, transform=None) -> Dataset:
    """The ``train`` or ``val`` split of the data set at ``root`` (a folder,
    or the name of a built-in data set: ``digits``)."""
    if split not in SPLITS:
        raise UsageError(f"split must be one of {SPLITS}, got {split!r}")
    if str(root) in BUILTIN_DATA and not Path(root).exists():
        return BUILTIN_DATA[str(root)](split, transform)
    root = Path(root)
    if not root.exists():
        raise UsageError(f"data folder {root} does not exist; point --data at a folder "
                         "with train/ and val/ (ImageFolder) or cifar-10-batches-py/")
    if (root / split).is_dir():
        try:
            return datasets.ImageFolder(str(root / split), transform=transform)
        except (FileNotFoundError, RuntimeError) as exc:
            raise USSpectrumError(f"cannot read {root / split} as an ImageFolder: {exc}") from None
    cifar = _cifar_root(root)
    if cifar is not None:
        return datasets.CIFAR10(str(cifar), train=split == "train", transform=transform,
                                download=False)
    raise UsageError(f"{root} has no {split}/ folder (ImageNet layout: {root}/train/<class>/*.jpg "
                     f"and {root}/val/<class>/*.jpg) and no cifar-10-batches-py/; "
                     "point --data at such a folder")


def class_names(dataset: Dataset) -> list[str]:
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    return list(getattr(base, "classes", []))


def check_classes(dataset: Dataset, expected: Sequence[str] | None, where: str) -> None:
    """Refuse data whose class list differs from the checkpoint's."""
    found = class_names(dataset)
    if expected and found and list(expected) != found:
        extra = sorted(set(found) - set(expected))[:3]
        missing = sorted(set(expected) - set(found))[:3]
        detail = f"missing {missing}, unexpected {extra}" if extra or missing else "different order"
        raise USSpectrumError(f"the classes of {where} do not match the checkpoint's "
                              f"({len(found)} vs {len(expected)} classes; {detail}); "
                              "use the data set the model was trained on")


def seeded_subset(dataset: Dataset, count: int | None, seed: int, what: str) -> Dataset:
    """``count`` items drawn without replacement with ``seed`` (all if None)."""
    if count is None:
        return dataset
    if count < 1:
        raise UsageError(f"{what} must be at least 1, got {count}")
    if count > len(dataset):
        raise UsageError(f"{what} is {count} but the split has only {len(dataset)} images; "
                         f"use at most {len(dataset)}")
    if count == len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:count].sort().values
    return Subset(dataset, indices.tolist())


class SeededSamples(Dataset):
    """Each item's random augmentation is seeded by (``seed``, item index),
    so it does not depend on which worker or process loads it: a run split
    over processes sees exactly the images one process would."""

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_033 + int(index)) % (2**63 - 1))
            return self.dataset[index]


def default_workers() -> int:
    """Decoding workers: leave one core for the network on small machines."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def make_loader(dataset: Dataset, batch_size: int, workers: int | None = None,
                shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False, batch_sampler=None) -> DataLoader:
    workers = default_workers() if workers is None else workers
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                          persistent_workers=False, pin_memory=False)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      generator=generator, drop_last=drop_last,
                      persistent_workers=False, pin_memory=False)
