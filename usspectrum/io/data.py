"""Data sets, preprocessing and the seeded calibration / evaluation subsets.

Two on-disk layouts are read: an ImageFolder root with ``train/`` and
``val/`` (the ImageNet layout) and torchvision's CIFAR-10 python batches
(``cifar-10-batches-py/``). The preprocessing comes from an
:class:`ImageSpec`, stored in every checkpoint.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms
import torchvision.transforms.functional as TF
from PIL import Image

try:  # deprecated in torchvision 0.29 (superseded by TorchCodec); PIL is the fallback
    from torchvision.io import ImageReadMode as _ImageReadMode
    from torchvision.io import decode_image as _decode_image, read_file as _read_file
except ImportError:  # pragma: no cover - torchvision without image decoders
    _decode_image = None

from ..errors import USSpectrumError, UsageError, note

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


class EvalTransform:
    """Evaluation preprocessing: resize/crop as ``spec`` says, then a float
    tensor normalised with the spec's mean and std.

    Takes PIL images or uint8 ``(3, H, W)`` tensors (see :func:`read_image`)
    and gives exactly the floats of ``ToTensor()`` + ``Normalize()``: the
    same float32 operations in the same order. A tensor that already has the
    model's size and needs no resize skips PIL altogether."""

    accepts_tensors = True  # open_split may hand it decoded tensors

    def __init__(self, spec: ImageSpec) -> None:
        self.spec = spec
        size = spec.image_size
        self.geometry = ([transforms.Resize(spec.resize), transforms.CenterCrop(size)]
                         if spec.resize is not None else [transforms.Resize((size, size))])
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            size = self.spec.image_size
            if self.spec.resize is None and tuple(image.shape[-2:]) == (size, size):
                return self._to_float(image)
            image = TF.to_pil_image(image)
        for step in self.geometry:
            image = step(image)
        return self._to_float(TF.pil_to_tensor(image))

    def _to_float(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(torch.float32).div_(255).sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        steps = ", ".join(map(repr, self.geometry))
        return f"EvalTransform([{steps}], mean={self.spec.mean}, std={self.spec.std})"


def eval_transform(spec: ImageSpec) -> EvalTransform:
    """The evaluation preprocessing of ``spec`` (see :class:`EvalTransform`)."""
    return EvalTransform(spec)


_DECODED_AS_TENSORS = (".jpg", ".jpeg", ".png")


def read_image(path: str) -> torch.Tensor:
    """An image file as RGB uint8 ``(3, H, W)`` pixels: the pixels
    ImageFolder's PIL loader gives, without its float conversions.

    JPEG and PNG files are decoded by torchvision while it still can (it
    deprecated its decoders in 0.29): half PIL's time, and on this project's
    machine the same pixels for all 10,000 CIFAR-10 validation JPEGs. PNGs
    with palettes, alpha or 16 bits, CMYK JPEGs, other formats, and
    torchvision builds without decoders go through PIL."""
    if _decode_image is not None and path.lower().endswith(_DECODED_AS_TENSORS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            data = _read_file(path)
            try:
                pixels = (_decode_image(data, mode=_ImageReadMode.UNCHANGED)
                          if _plain_colours(data) else None)
            except RuntimeError:
                pixels = None
        if pixels is not None and pixels.dtype == torch.uint8 and pixels.ndim == 3:
            if pixels.shape[0] == 3:
                return pixels
            if pixels.shape[0] == 1:  # greyscale: PIL's convert("RGB") repeats it
                return pixels.repeat(3, 1, 1)
    return TF.pil_to_tensor(open_rgb(path))


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def open_rgb(path: str) -> Image.Image:
    """An image file as an 8-bit RGB PIL image, whatever mode Pillow opens
    it in: palette, grey, alpha (dropped, as ``convert("RGB")`` does) and
    CMYK as Pillow converts them; 16-bit grey scaled to 8 bits (Pillow's own
    conversion clips it, turning most of the image white)."""
    with open(path, "rb") as f:
        image = Image.open(f)
        image.load()
    if image.mode in _SIXTEEN_BIT:
        import numpy as np

        wide = np.asarray(image, dtype=np.float64)
        scale = 257.0 if wide.max(initial=0) > 255 or image.mode != "I" else 1.0
        image = Image.fromarray(np.clip(np.rint(wide / scale), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


_PNG_SIGNATURE = bytes([137, 80, 78, 71, 13, 10, 26, 10])


def _plain_colours(data: torch.Tensor) -> bool:
    """False for PNGs other than 8-bit grey or RGB (palettes, alpha, 16 bits),
    whose conversion to RGB is left to PIL."""
    if data.numel() < 26 or bytes(data[:8].tolist()) != _PNG_SIGNATURE:
        return True  # not a PNG: JPEG channels are checked after decoding
    return int(data[24]) == 8 and int(data[25]) in (0, 2)


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
    return max(image.shape[-2:]) if isinstance(image, torch.Tensor) else max(image.size)


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
            loader = CheckedLoader(read_image if getattr(transform, "accepts_tensors", False)
                                   else open_rgb)
            return datasets.ImageFolder(str(root / split), transform=transform, loader=loader)
        except (FileNotFoundError, RuntimeError, PermissionError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0].split(" Supported ")[0]
            raise USSpectrumError(f"cannot read {root / split} as an ImageFolder ({reason}); "
                                  f"it needs one folder per class with image files in it, "
                                  f"e.g. {root / split}/<class>/0001.jpg") from None
    cifar = _cifar_root(root)
    if cifar is not None:
        return _cifar10(cifar, split, transform)
    raise UsageError(f"{root} has no {split}/ folder (ImageNet layout: {root}/train/<class>/*.jpg "
                     f"and {root}/val/<class>/*.jpg) and no cifar-10-batches-py/; "
                     "point --data at such a folder")


def _cifar10(root: Path, split: str, transform) -> Dataset:
    """torchvision's CIFAR-10 python batches, with failures named in one line
    (torchvision's own advice, to download, does not apply offline)."""
    folder = root / "cifar-10-batches-py"
    try:
        dataset = datasets.CIFAR10(str(root), train=split == "train", transform=transform,
                                   download=False)
    except Exception as exc:  # corrupt pickles, failed checksums, missing files
        reason = (str(exc).splitlines() or [""])[0].split(". You can use")[0] or type(exc).__name__
        raise USSpectrumError(f"cannot read the CIFAR-10 python batches in {folder} ({reason}); "
                              "replace the folder with an intact extract of "
                              "cifar-10-python.tar.gz, or point --data at an ImageFolder "
                              "(usspectrum never downloads)") from None
    if dataset.data.ndim != 4 or dataset.data.shape[1:] != (32, 32, 3):
        raise USSpectrumError(f"the CIFAR-10 batches in {folder} hold images of shape "
                              f"{tuple(dataset.data.shape[1:])}, not 32x32x3; replace the "
                              "folder with an intact extract of cifar-10-python.tar.gz")
    return dataset


SKIP_HINT = "remove or replace the file, or pass --skip-bad-images to leave such files out"


class BadImageError(USSpectrumError):
    """An image file that cannot be decoded, named in one line.

    Raised in a DataLoader worker, it reaches the main process rebuilt from
    the worker's whole traceback text; the message is cut back to its own
    line there."""

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            last = [line for line in message.splitlines() if line.strip()][-1]
            message = last.split("BadImageError: ", 1)[-1]
        super().__init__(message)


class CheckedLoader:
    """An image loader whose failures name the file (a class, so DataLoader
    workers can unpickle it)."""

    def __init__(self, load) -> None:
        self.load = load

    def __call__(self, path: str):
        try:
            return self.load(path)
        except Exception as exc:  # PIL and torchvision raise many kinds
            reason = (str(exc).splitlines() or [""])[0] or type(exc).__name__
            raise BadImageError(f"cannot read image {path} ({reason}); {SKIP_HINT}") from None


def without_bad_images(dataset: Dataset, what: str = "images",
                       progress: bool = False) -> tuple[Dataset, list[str]]:
    """``dataset`` minus the files its loader cannot decode, and their paths.

    Every file is decoded once to find out (a truncated JPEG passes a header
    check), so this costs one extra pass over the files; it is what
    ``--skip-bad-images`` runs. Data sets not read from files pass through."""
    if isinstance(dataset, SeededSamples):  # the seeds follow the kept images' positions
        kept, bad = without_bad_images(dataset.dataset, what, progress)
        return (dataset if not bad else SeededSamples(kept, dataset.seed)), bad
    base, indices = ((dataset.dataset, list(dataset.indices)) if isinstance(dataset, Subset)
                     else (dataset, list(range(len(dataset)))))
    if not hasattr(base, "samples") or not hasattr(base, "loader"):
        return dataset, []
    from tqdm.auto import tqdm

    keep, bad = [], []
    for i in tqdm(indices, desc=f"checking {what}", unit="image", disable=not progress,
                  leave=False):
        path = base.samples[i][0]
        try:
            base.loader(path)
        except Exception:
            bad.append(path)
        else:
            keep.append(i)
    if not bad:
        return dataset, []
    return Subset(base, keep), bad


def warn_skipped(paths: Sequence[str], what: str) -> None:
    """One warning naming every skipped file."""
    if paths:
        shown = ", ".join(paths[:20]) + (f" and {len(paths) - 20} more" if len(paths) > 20 else "")
        warnings.warn(f"--skip-bad-images: left out {len(paths)} unreadable {what}: {shown}",
                      stacklevel=2)


def class_names(dataset: Dataset) -> list[str]:
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    return list(getattr(base, "classes", []))


WORDNET_ID = re.compile(r"^n\d{8}$")


def check_classes(dataset: Dataset, expected: Sequence[str] | None, where: str,
                  outputs: int | None = None) -> None:
    """Refuse data whose classes cannot be the checkpoint's: a class list
    that differs from the one it records, or a class count that differs
    from its ``outputs`` (its accuracy would mean nothing)."""
    found = class_names(dataset)
    if outputs is not None and found and len(found) != outputs:
        if outputs == 1000 and len(found) < 1000 and all(WORDNET_ID.match(c) for c in found):
            raise USSpectrumError(
                f"{where} holds {len(found)} ImageNet classes (WordNet ids) but the checkpoint "
                "predicts all 1000; usspectrum does not map a subset of ImageNet's classes onto "
                "its 1000 outputs: evaluate on a folder with all 1000 class folders")
        raise USSpectrumError(f"{where} has {len(found)} classes but the checkpoint predicts "
                              f"{outputs}; use the data set the model was trained on")
    if expected and found and list(expected) != found:
        extra = sorted(set(found) - set(expected))[:3]
        missing = sorted(set(expected) - set(found))[:3]
        detail = f"missing {missing}, unexpected {extra}" if extra or missing else "different order"
        raise USSpectrumError(f"the classes of {where} do not match the checkpoint's "
                              f"({len(found)} vs {len(expected)} classes; {detail}); "
                              "use the data set the model was trained on")


def fitted_count(requested: int | None, default: int | None, available: int,
                 option: str, what: str) -> int | None:
    """How many images to draw: ``requested`` when the user set it (a
    number above ``available`` is refused later, by :func:`seeded_subset`);
    else ``default`` (``None``: all), lowered to ``available`` with a
    one-line note when the split is smaller."""
    if requested is not None:
        return requested
    if default is not None and default > available:
        note(f"{option}: {what} has only {available} images, so all {available} are used "
             f"(default {default})")
        return available
    return default


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


CALIB_AUGMENTS = ("train", "none")


def calibration_images(data: str | os.PathLike, spec: ImageSpec, count: int | None, seed: int,
                       augment: str = "train", expected_classes: Sequence[str] | None = None,
                       indices: Sequence[int] | None = None, flip: bool = True,
                       default: int | None = None, outputs: int | None = None) -> Dataset:
    """The training images BN statistics are calibrated on: ``count`` seeded
    draws from ``data``'s train split (or exactly ``indices``). With
    ``count=None``: ``default`` images, or all when the split has fewer
    (:func:`fitted_count`; all of them when ``default`` is None too).

    ``augment="train"`` (the default) gives each image the training
    augmentation, seeded per image so every run sees the same pixels. The
    layers after each BN were trained on statistics of augmented images (the
    padded crops of CIFAR add black borders; the authors calibrate on their
    training loader too), and statistics of plain images cost a CIFAR-10
    MobileNet v1 3-4 points of top-1. ``"none"``: the evaluation
    preprocessing. ``flip=False`` for models trained without flips (see
    :func:`trained_with_flips`)."""
    check_calib_augment(augment)
    train = open_split(data, "train", train_transform(spec, flip) if augment == "train"
                       else eval_transform(spec))
    check_classes(train, expected_classes, f"{data}/train", outputs)
    if indices is None:
        count = fitted_count(count, default, len(train), "--calib-images", f"{data}/train")
    subset = (Subset(train, list(indices)) if indices is not None
              else seeded_subset(train, count, seed, "--calib-images"))
    return SeededSamples(subset, seed) if augment == "train" else subset


def check_calib_augment(augment: str) -> None:
    """Refuse an unknown ``--calib-augment`` value."""
    if augment not in CALIB_AUGMENTS:
        raise UsageError(f"--calib-augment must be one of {', '.join(CALIB_AUGMENTS)}, "
                         f"got {augment!r}")


def checkpoint_calibration_images(data: str | os.PathLike, meta: dict, count: int | None,
                                  seed: int, augment: str = "train",
                                  indices: Sequence[int] | None = None,
                                  default: int | None = None) -> Dataset:
    """:func:`calibration_images` for a loaded checkpoint: its image spec,
    class names, class count and flips come from its ``meta``."""
    return calibration_images(data, meta["image"], count, seed, augment, meta.get("class_names"),
                              indices, flip=trained_with_flips(meta), default=default,
                              outputs=meta.get("num_outputs"))


def trained_with_flips(meta: dict) -> bool:
    """Whether a checkpoint's training recipe flipped images (True when it
    does not say, as for the authors' release)."""
    return bool(((meta.get("train") or {}).get("recipe") or {}).get("flip", True))


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
