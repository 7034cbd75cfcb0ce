"""Image decoding and evaluation preprocessing: the fast path must give the
floats of the plain PIL + ToTensor + Normalize pipeline."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets, transforms

from usspectrum.io.data import ImageSpec, eval_transform, open_split, read_image


def reference_transform(spec: ImageSpec) -> transforms.Compose:
    """The textbook torchvision pipeline, written out independently."""
    if spec.resize is not None:
        geometry = [transforms.Resize(spec.resize), transforms.CenterCrop(spec.image_size)]
    else:
        geometry = [transforms.Resize((spec.image_size, spec.image_size))]
    return transforms.Compose(geometry + [transforms.ToTensor(),
                                          transforms.Normalize(spec.mean, spec.std)])


def pil_pixels(path) -> torch.Tensor:
    return torch.from_numpy(np.array(datasets.folder.pil_loader(str(path)))).permute(2, 0, 1)


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    files = {}
    for name, image in {
        "rgb.png": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
        "grey.png": Image.fromarray(rgb[..., 0]),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "rgb.jpg": Image.fromarray(rgb),
        "grey.jpg": Image.fromarray(rgb[..., 1]),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "rgb.bmp": Image.fromarray(rgb),
    }.items():
        image.save(tmp_path / name)
        files[name] = tmp_path / name
    return files


def test_read_image_gives_the_pixels_of_pil(image_files):
    for name, path in image_files.items():
        ours, theirs = read_image(str(path)), pil_pixels(path)
        assert ours.dtype == torch.uint8 and ours.shape == theirs.shape == (3, 20, 28), name
        if name.endswith(".jpg"):
            # lossy: two decoders may round differently; both here are libjpeg-turbo
            assert (ours.int() - theirs.int()).abs().max() <= 1, name
        else:
            assert torch.equal(ours, theirs), name


@pytest.mark.parametrize("size", [20, 24, 64])
def test_eval_transform_equals_the_textbook_pipeline(image_files, size):
    # 20: no resize (tensor path); 24: resize; 64: ImageNet-style resize + crop
    spec = ImageSpec.for_size(size)
    if size == 20:
        spec = ImageSpec(20, spec.mean, spec.std, None)
    ours, theirs = eval_transform(spec), reference_transform(spec)
    for name, path in image_files.items():
        image = Image.fromarray(pil_pixels(path).permute(1, 2, 0).numpy())
        expected = theirs(image)
        assert torch.equal(ours(image), expected), name  # a PIL image in
        assert torch.equal(ours(pil_pixels(path)), expected), name  # decoded pixels in


def test_eval_transform_keeps_nonsquare_images_on_the_resize_path(image_files):
    spec = ImageSpec(28, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), None)
    out = eval_transform(spec)(pil_pixels(image_files["rgb.png"]))  # 20x28, not 28x28
    assert out.shape == (3, 28, 28)


def test_image_folder_split_matches_pil_pipeline_on_cifar(cifar_root):
    spec = ImageSpec.for_size(32)
    ours = open_split(cifar_root, "val", eval_transform(spec))
    theirs = datasets.ImageFolder(str(cifar_root / "val"), transform=reference_transform(spec))
    assert ours.samples == theirs.samples
    for i in range(0, len(ours), 97):
        x, y = ours[i]
        x_ref, y_ref = theirs[i]
        assert y == y_ref
        assert torch.equal(x, x_ref), ours.samples[i][0]
