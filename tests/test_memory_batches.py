"""Small training splits held in memory: same pixels as the files, the
augmentation of train_transform (checked against torchvision's own crop and
flip), seeded per item, and used by training."""
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import usspectrum
import usspectrum.training.memory_batches as mb
from usspectrum.io.data import ImageSpec, open_split
from usspectrum.errors import USSpectrumError
from usspectrum.training.memory_batches import MemoryBatches

from helpers import make_image_folder


@pytest.fixture(autouse=True)
def _empty_cache():
    mb._cache.clear()
    yield
    mb._cache.clear()


def _load(root: Path, size: int = 16, flip: bool = True) -> MemoryBatches:
    memory = MemoryBatches.load(open_split(root, "train"), ImageSpec.for_size(size), flip)
    assert memory is not None
    return memory


def test_pixels_and_labels_are_the_files(tmp_path):
    root = make_image_folder(tmp_path, per_class=3, size=16)
    memory = _load(root)
    folder = open_split(root, "train")
    assert len(memory) == len(folder.samples) == 9
    for i, (path, label) in enumerate(folder.samples):
        assert torch.equal(memory.pixels[i], TF.pil_to_tensor(Image.open(path).convert("RGB")))
        assert int(memory.labels[i]) == label


def test_augmentation_is_a_padded_crop_and_flip(tmp_path):
    root = make_image_folder(tmp_path, per_class=4, size=16)
    memory = _load(root)
    memory.seed = 5
    offsets, flips = memory._epoch_draws()
    index = torch.arange(len(memory))
    batch = memory.augment(index, offsets, flips)
    spec, pad = memory.spec, memory.padding
    assert pad == 2
    folder = open_split(root, "train")
    for i, (path, _) in enumerate(folder.samples):
        # the reference: torchvision's pad (fill 0), crop, flip, to_tensor, normalize
        image = TF.pad(Image.open(path).convert("RGB"), pad, fill=0)
        image = TF.crop(image, int(offsets[i, 0]), int(offsets[i, 1]), 16, 16)
        if flips[i]:
            image = TF.hflip(image)
        expected = TF.normalize(TF.to_tensor(image), spec.mean, spec.std)
        torch.testing.assert_close(batch[i], expected, rtol=0, atol=1e-6)


def test_draws_cover_every_offset_and_half_the_flips(tmp_path):
    spec = ImageSpec.for_size(32)
    pixels = torch.zeros(4000, 3, 32, 32, dtype=torch.uint8)
    memory = MemoryBatches(pixels, torch.zeros(4000, dtype=torch.int64), spec, flip=True)
    offsets, flips = memory._epoch_draws()
    assert set(offsets.flatten().tolist()) == set(range(9))  # 0..2*4
    assert 0.45 < flips.float().mean().item() < 0.55
    assert not MemoryBatches(pixels, memory.labels, spec, flip=False)._epoch_draws()[1].any()


def test_an_items_crop_does_not_depend_on_its_batch(tmp_path):
    root = make_image_folder(tmp_path, per_class=5, size=16)
    memory = _load(root)
    memory.seed = 11
    whole = torch.cat([x for x, _ in memory.batches([list(range(10))])])
    shards = dict()
    for batch_indices, (x, _) in zip([[9, 3, 1], [0, 2, 4, 5, 6, 7, 8]],
                                     memory.batches([[9, 3, 1], [0, 2, 4, 5, 6, 7, 8]])):
        shards.update({i: x[k] for k, i in enumerate(batch_indices)})
    for i in range(10):
        assert torch.equal(whole[i], shards[i])
    memory.seed = 12
    other = torch.cat([x for x, _ in memory.batches([list(range(10))])])
    assert not torch.equal(whole, other)


def test_large_or_mixed_size_images_are_left_to_the_dataloader(tmp_path):
    root = make_image_folder(tmp_path, per_class=2, size=16)
    assert MemoryBatches.load(open_split(root, "train"), ImageSpec.for_size(224), True) is None
    Image.new("RGB", (20, 16)).save(root / "train" / "ant" / "odd.png")
    assert MemoryBatches.load(open_split(root, "train"), ImageSpec.for_size(16), True) is None


def test_unreadable_image_is_named(tmp_path):
    root = make_image_folder(tmp_path, per_class=2, size=16)
    bad = root / "train" / "ant" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(USSpectrumError, match="broken.png"):
        MemoryBatches.load(open_split(root, "train"), ImageSpec.for_size(16), True)


def test_training_reads_small_images_from_memory(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", per_class=4, size=16)
    calls = []
    real = MemoryBatches.batches
    monkeypatch.setattr(MemoryBatches, "batches",
                        lambda self, sampler: calls.append(1) or real(self, sampler))
    result = usspectrum.train(kind="individual", data=str(root), out=str(tmp_path / "m.pt"),
                              epochs=2, batch_size=4, image_size=16, val_images=4,
                              calib_images=4, workers=0, progress=False)
    assert calls == [1, 1] and list(result.log.epoch) == [1, 2]
