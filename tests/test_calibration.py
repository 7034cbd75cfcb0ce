"""BN calibration: cumulative averages of batch statistics, nothing else touched."""
import copy

import pytest
import torch
import torch.nn.functional as F

import usspectrum
from usspectrum.spectrum.calibration import (BatchStats, Calibrator, DenseCalibrator, batch_moments, calibrate,
                                    get_bn_stats, is_calibrated)
from usspectrum.io.checkpoint import load_checkpoint, save_checkpoint

from helpers import CLASSES, make_image_folder, randomize_bn


def tiny_model():
    return usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=3).eval()


def test_statistics_are_the_cumulative_average_of_batch_statistics():
    model = tiny_model()
    batches = [torch.randn(6, 3, 32, 32), torch.randn(10, 3, 32, 32) + 0.5]
    calibrate(model, batches, [0.5])
    mean, var = model.features[0][1].calibrated["0.5"]
    stem = model.features[0][0]
    means, variances = [], []
    for x in batches:  # stem conv output at width 0.5 (16 channels), by hand
        y = F.conv2d(x, stem.weight[:16], stride=1, padding=1)
        means.append(y.mean(dim=(0, 2, 3)))
        variances.append(y.transpose(0, 1).reshape(16, -1).var(dim=1, unbiased=True))
    torch.testing.assert_close(mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(var, torch.stack(variances).mean(0), rtol=1e-4, atol=1e-5)


def test_calibration_changes_nothing_but_the_store():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_width(0.7)
    calibrate(model, [torch.randn(4, 3, 32, 32)], [0.3, 0.5])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert str(model.width_config) == "0.7" and not model.training
    assert is_calibrated(model, 0.3) and is_calibrated(model, 0.5) and not is_calibrated(model, 0.7)


def test_many_widths_in_one_pass_equal_one_width_at_a_time():
    batches = [torch.randn(5, 3, 32, 32) for _ in range(3)]
    joint, single = tiny_model(), tiny_model()
    single.load_state_dict(joint.state_dict())
    calibrate(joint, batches, [0.25, 0.6, 1.0])
    for w in (0.25, 0.6, 1.0):
        calibrate(single, batches, [w])
    a, b = get_bn_stats(joint), get_bn_stats(single)
    for key in a:
        for name in a[key]:
            torch.testing.assert_close(a[key][name][0], b[key][name][0])
            torch.testing.assert_close(a[key][name][1], b[key][name][1])


def test_calibrated_width_is_used_in_eval_and_interrupt_keeps_nothing_half():
    model = tiny_model()
    x = torch.randn(4, 3, 32, 32)
    model.set_width(0.5)
    with torch.no_grad():
        plain = model(x)
    try:
        with Calibrator(model, [0.5]) as cal:
            cal.update(x)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert not is_calibrated(model, 0.5)
    calibrate(model, [x], [0.5])
    with torch.no_grad():
        assert not torch.allclose(model(x), plain)


def test_same_seed_gives_identical_statistics(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=6)
    model = tiny_model()
    save_checkpoint(model, tmp_path / "m.pt", class_names=CLASSES)
    for name in ("a.pt", "b.pt"):
        usspectrum.calibrate_checkpoint(str(tmp_path / "m.pt"), str(data), "0.25,0.5",
                                        str(tmp_path / name), calib_images=10, seed=3,
                                        batch_size=4, workers=0, progress=False)
    a = get_bn_stats(load_checkpoint(tmp_path / "a.pt"))
    b = get_bn_stats(load_checkpoint(tmp_path / "b.pt"))
    assert set(a) == {"0.25", "0.5"}
    for key in a:
        for name in a[key]:
            assert torch.equal(a[key][name][0], b[key][name][0])
            assert torch.equal(a[key][name][1], b[key][name][1])


def test_calibration_images_are_augmented_reproducibly_or_plain_on_request(tmp_path):
    from usspectrum.io.data import ImageSpec, calibration_images, eval_transform, open_split
    from usspectrum.errors import UsageError

    data = make_image_folder(tmp_path / "data", per_class=4)
    spec = ImageSpec.for_size(32)
    first = calibration_images(data, spec, 8, seed=5)
    again = calibration_images(data, spec, 8, seed=5)
    plain = calibration_images(data, spec, 8, seed=5, augment="none")
    other_seed = calibration_images(data, spec, 8, seed=6)
    assert len(first) == len(plain) == 8
    images = [first[i][0] for i in range(8)]
    assert all(torch.equal(a, again[i][0]) for i, a in enumerate(images))
    assert all(a.shape == plain[i][0].shape == (3, 32, 32) for i, a in enumerate(images))
    # the padded random crops move the pixels: not every image can match its plain copy
    assert sum(not torch.equal(a, plain[i][0]) for i, a in enumerate(images)) >= 4
    # the plain images are exactly what evaluation sees
    reference = open_split(data, "train", eval_transform(spec))
    assert torch.equal(plain[0][0], reference[plain.indices[0]][0])
    assert {other_seed.dataset.indices[i] for i in range(8)} != \
        {first.dataset.indices[i] for i in range(8)} or \
        any(not torch.equal(a, other_seed[i][0]) for i, a in enumerate(images))
    with pytest.raises(UsageError, match="--calib-augment"):
        calibration_images(data, spec, 8, seed=5, augment="flip")


def test_calibration_flips_only_images_of_models_trained_with_flips(tmp_path):
    from torchvision import transforms

    from usspectrum.io.data import ImageSpec, calibration_images, trained_with_flips

    assert trained_with_flips({}) is True  # the authors' release says nothing: ImageNet flips
    assert trained_with_flips({"train": {"recipe": {"flip": False}}}) is False
    data = make_image_folder(tmp_path / "data", per_class=2)

    def steps(flip):
        images = calibration_images(data, ImageSpec.for_size(32), 4, seed=0, flip=flip)
        return [type(t) for t in images.dataset.dataset.transform.transforms]
    assert transforms.RandomHorizontalFlip in steps(True)
    assert transforms.RandomHorizontalFlip not in steps(False)
    assert transforms.RandomCrop in steps(False)


def test_dense_calibration_is_as_accurate_as_the_sliced_path():
    # inputs far from zero mean: float32 sums that add one element after
    # another lose digits here (PyTorch's channels-last BN kernel is off by
    # about 4e-5 standard deviations on this case)
    torch.manual_seed(0)
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=10).eval()
    randomize_bn(model)
    g = torch.Generator().manual_seed(1)
    batches = [torch.rand(64, 3, 32, 32, generator=g) * 2 + 1 for _ in range(2)]
    truth_model = copy.deepcopy(model).double()
    with Calibrator(truth_model, [0.5]) as cal:
        for x in batches:
            cal.update(x.double())
    truth = get_bn_stats(truth_model, ["0.5"])["0.5"]

    def error(calibrator):
        m = copy.deepcopy(model)
        with calibrator(m, [0.5]) as cal:
            for x in batches:
                cal.update(x)
        stats = get_bn_stats(m, ["0.5"])["0.5"]
        mean_err = max(((stats[k][0].double() - t[0]).abs() / t[1].sqrt()).max().item()
                       for k, t in truth.items())
        var_err = max(((stats[k][1].double() - t[1]).abs() / t[1]).max().item()
                      for k, t in truth.items())
        return mean_err, var_err

    dense, sliced = error(DenseCalibrator), error(Calibrator)
    assert dense[0] < 1e-5 and dense[0] <= 3 * sliced[0]
    assert dense[1] < 1e-4 and dense[1] <= 3 * sliced[1]


def test_batch_stats_average_like_batchnorm_with_cumulative_momentum():
    bn = torch.nn.BatchNorm2d(4, momentum=None).train()
    stats = BatchStats(torch.nn.BatchNorm2d(4))
    g = torch.Generator().manual_seed(0)
    for size in (3, 5):
        x = torch.randn(size, 4, 6, 6, generator=g) * 3 + 2
        expected = bn(x)
        torch.testing.assert_close(stats(x), expected, rtol=1e-4, atol=1e-5)
    mean, var = stats.statistics()
    torch.testing.assert_close(mean, bn.running_mean)
    torch.testing.assert_close(var, bn.running_var)


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_stats_with_its_relu6_equal_batchnorm_then_relu6(channels_last):
    bn = torch.nn.BatchNorm2d(5, momentum=None).train()
    with torch.no_grad():
        bn.weight.uniform_(-4, 4)  # negative scales flip the clamp's side
        bn.bias.uniform_(-1, 1)
    stats = BatchStats(bn, clamp=(0.0, 6.0))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 7, 7, generator=g) * 4 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = torch.nn.functional.relu6(bn(x))
        out = stats(x)
    assert out.shape == expected.shape
    assert out.min() >= 0 and out.max() <= 6 and (out == 6).any() and (out == 0).any()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 32, 32, 32), (8, 8, 16, 16)])
def test_batch_moments_are_float64_accurate(shape):
    # the first shape takes the chunked kernel path, the second Tensor.sum
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 0.5 + 0.2).contiguous(memory_format=torch.channels_last)
    mean, var = batch_moments(x)
    truth = x.double()
    true_mean = truth.mean((0, 2, 3))
    true_var = truth.var((0, 2, 3), unbiased=False)
    assert mean.dtype == var.dtype == torch.float64
    assert ((mean - true_mean).abs() / true_var.sqrt()).max() < 1e-6
    assert ((var - true_var).abs() / true_var).max() < 2e-6
    if shape[0] == 64:  # the same kernel over the whole batch at once is less accurate
        _, whole = torch.batch_norm_update_stats(x, None, None, 0.0)
        assert ((whole.double() - true_var).abs() / true_var).max() > 3 * ((var - true_var).abs() / true_var).max()
