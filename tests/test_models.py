"""Models at width w must equal a plain dense network cut from their first
channels; the dense copy here is built independently of usspectrum."""
import pytest
import torch

import usspectrum
from usspectrum.nn.layers import SlimConv2d, SwitchableBatchNorm2d

from helpers import dense_copy, randomize_bn


@pytest.mark.parametrize("name, width, switch", [
    ("us_mobilenet_v1", 0.25, None), ("us_mobilenet_v1", 0.6, None),
    ("us_mobilenet_v1", "0.8@s5x0.6", None), ("us_mobilenet_v1", 1.0, None),
    ("mobilenet_v1", 0.5, None), ("s_mobilenet_v1", 0.5, 1), ("s_mobilenet_v1", 0.25, 0),
])
def test_sliced_model_equals_dense_copy(name, width, switch):
    model = usspectrum.create_model(name, stem="cifar", num_classes=10).eval()
    randomize_bn(model)
    config = usspectrum.set_width(model, width)
    channels = config.channels(model.slots)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense_copy(model, channels, switch)(x),
                                   rtol=1e-4, atol=1e-5)


def test_output_averaging_scales_non_depthwise_convs():
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=10,
                                    average_output=True).eval()
    randomize_bn(model)
    channels = usspectrum.set_width(model, 0.5).channels(model.slots)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense_copy(model, channels, average=True)(x),
                                   rtol=1e-4, atol=1e-5)
    assert not any(m.average_output for m in model.modules()
                   if isinstance(m, SlimConv2d) and m.depthwise)


def test_imagenet_stem_shapes_and_channel_rule():
    model = usspectrum.create_model("us_mobilenet_v1").eval()
    usspectrum.set_width(model, 0.275)
    assert model.active_channels()[0] == 8 and model.active_channels()[-1] == 280
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_cifar_stem_ends_at_2x2():
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=10)
    assert model.default_image_size == 32
    with torch.no_grad():
        assert model.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (2, 2)


def test_switchable_bn_between_switches_uses_the_larger_switch():
    bn = SwitchableBatchNorm2d(64, (0.25, 0.5, 0.75, 1.0))
    assert bn.switch_channels == [16, 32, 48, 64]
    assert [bn.switch_index(c) for c in (8, 16, 17, 40, 64)] == [0, 0, 1, 2, 3]


def test_state_dict_keys_follow_the_release_layout():
    keys = usspectrum.create_model("s_mobilenet_v1").state_dict().keys()
    assert "features.0.0.weight" in keys and "features.13.body.3.weight" in keys
    assert "features.1.body.1.bn.3.running_var" in keys and "classifier.0.bias" in keys


@pytest.mark.parametrize("kwargs", [{"switches": (0.5, 1.5)}, {"switches": ()}, {"stem": "mnist"}])
def test_bad_model_arguments(kwargs):
    with pytest.raises(usspectrum.UsageError):
        usspectrum.create_model("s_mobilenet_v1", **kwargs)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(usspectrum.UsageError, match="us_mobilenet_v1"):
        usspectrum.create_model("vgg16")


def test_inverted_width_range_is_refused():
    with pytest.raises(usspectrum.UsageError, match="inverted"):
        usspectrum.create_model("us_mobilenet_v1", width_range=(1.0, 0.25))
