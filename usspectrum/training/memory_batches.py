"""Training batches of small images from memory, augmented with tensor ops.

A CIFAR-size training split (50,000 x 3 x 32 x 32 bytes = 147 MiB) is
decoded once into one uint8 tensor; each batch is then cut, padded-cropped,
flipped and normalised in the training process itself. On a 2-core machine
this beats a DataLoader worker, which decodes JPEGs with PIL on the same
cores the training threads need (``benchmarks/bench_train.py``).

The augmentation is that of :func:`usspectrum.io.data.train_transform` for
small images (zero-padded random crop by 1/8 of the side, horizontal flip
with probability 1/2), drawn per epoch for every item from one seed, so an
item's crop does not depend on which batch or process takes it.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ..io.data import CheckedLoader, ImageSpec, read_image

MAX_BYTES = 2 << 30  # decode into memory only what fits comfortably
MAX_SIDE = 64

_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _files(dataset: Dataset) -> tuple[list, list[int]] | None:
    """(paths or arrays, labels) of an ImageFolder / in-memory dataset or a
    Subset of one; None for sources this module does not read."""
    indices = None
    if isinstance(dataset, Subset):
        dataset, indices = dataset.dataset, list(dataset.indices)
    if hasattr(dataset, "samples"):  # ImageFolder
        items = [dataset.samples[i] for i in (indices or range(len(dataset.samples)))]
        return [p for p, _ in items], [int(t) for _, t in items]
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):  # ArrayImages
        idx = indices or range(len(dataset.labels))
        return [dataset.images[i] for i in idx], [int(dataset.labels[i]) for i in idx]
    return None


_read = CheckedLoader(read_image)


def _decode(source) -> torch.Tensor:
    if isinstance(source, str):
        return _read(source)
    pixels = torch.as_tensor(source)
    return pixels.permute(2, 0, 1).contiguous() if pixels.shape[-1] == 3 else pixels


class MemoryBatches:
    """A training split held as uint8 pixels; :meth:`batches` yields
    augmented, normalised float batches for a batch sampler."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, spec: ImageSpec,
                 flip: bool) -> None:
        self.pixels, self.labels, self.spec, self.flip = pixels, labels, spec, flip
        self.padding = spec.image_size // 8
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.seed = 0

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def load(cls, dataset: Dataset, spec: ImageSpec, flip: bool,
             key: Sequence | None = None) -> "MemoryBatches | None":
        """Decode ``dataset`` (an ImageFolder, built-in array set or a Subset
        of one) when its images are small, all ``spec.image_size`` square and
        fit in memory; None otherwise (use a DataLoader). ``key`` names the
        data for a per-process cache, so repeated runs decode once."""
        if spec.resize is not None or spec.image_size > MAX_SIDE:
            return None
        side = spec.image_size
        if len(dataset) * 3 * side * side > MAX_BYTES:
            return None
        cache_key = None if key is None else (*key, side)
        if cache_key in _cache:
            pixels, labels = _cache[cache_key]
            return cls(pixels, labels, spec, flip)
        found = _files(dataset)
        if found is None:
            return None
        sources, labels = found
        pixels = torch.empty(len(sources), 3, side, side, dtype=torch.uint8)
        for i, source in enumerate(sources):
            image = _decode(source)
            if tuple(image.shape) != (3, side, side):
                return None  # mixed sizes: the DataLoader path resizes them
            pixels[i] = image
        labels_t = torch.tensor(labels, dtype=torch.int64)
        if cache_key is not None:
            _cache[cache_key] = (pixels, labels_t)
        return cls(pixels, labels_t, spec, flip)

    def _epoch_draws(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        offsets = torch.randint(0, 2 * self.padding + 1, (len(self), 2), generator=generator)
        flips = torch.rand(len(self), generator=generator) < 0.5
        return offsets, flips & self.flip

    def augment(self, index: torch.Tensor, offsets: torch.Tensor,
                flips: torch.Tensor) -> torch.Tensor:
        """Float batch of the items ``index`` with their crops and flips."""
        side, pad = self.spec.image_size, self.padding
        padded = F.pad(self.pixels[index], (pad, pad, pad, pad))
        out = torch.empty(len(index), 3, side, side, dtype=torch.uint8)
        for row, (item, (dy, dx)) in enumerate(zip(index.tolist(), offsets[index].tolist())):
            crop = padded[row, :, dy:dy + side, dx:dx + side]
            out[row] = crop.flip(-1) if flips[item] else crop
        return out.to(torch.float32).div_(255).sub_(self.mean).div_(self.std)

    def batches(self, batch_sampler: Iterable[Sequence[int]]
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch: a batch per index list of ``batch_sampler``, augmented
        with the draws of :attr:`seed`."""
        offsets, flips = self._epoch_draws()
        for indices in batch_sampler:
            index = torch.as_tensor(list(indices), dtype=torch.int64)
            yield self.augment(index, offsets, flips), self.labels[index]
