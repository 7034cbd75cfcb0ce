"""FLOPs must agree with the paper: checked against the authors' published
numbers and against an analytic count written independently of fvcore."""
import random

import pytest

import usspectrum
from usspectrum import WidthConfig, make_divisible, parse_width_list

PUBLISHED = {1.0: 568, 0.75: 325, 0.5: 149, 0.25: 41}  # MFLOPs, usnets-facts.md

STAGES = [(64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)]


def analytic_macs(channels, image_size, stem_stride, num_classes):
    """Multiply-adds of MobileNet v1 with the given 14 slot widths, by hand."""
    strides = [s if i == 0 else 1 for _, n, s in STAGES for i in range(n)]
    side = (image_size + 2 - 3) // stem_stride + 1
    macs = side * side * channels[0] * 3 * 9
    for i, stride in enumerate(strides, start=1):
        side = (side + 2 - 3) // stride + 1
        macs += side * side * channels[i - 1] * 9          # depthwise
        macs += side * side * channels[i - 1] * channels[i]  # pointwise
    macs += side * side * channels[-1]                     # global average pool
    return macs + channels[-1] * num_classes               # classifier


def hand_channels(ratios):
    bases = [32] + [c for c, n, _ in STAGES for _ in range(n)]
    return [make_divisible(b * r) for b, r in zip(bases, ratios)]


@pytest.fixture(scope="module")
def counter():
    return usspectrum.FlopCounter(usspectrum.create_model("us_mobilenet_v1"), 224)


@pytest.mark.parametrize("width, mflops", sorted(PUBLISHED.items()))
def test_published_mflops_at_224(counter, width, mflops):
    assert int(counter.at(width).mflops) == mflops


def test_every_width_of_the_spectrum_matches_the_hand_count(counter):
    for config in parse_width_list("0.25:1.0:0.025"):
        expected = analytic_macs(hand_channels([config.width] * 14), 224, 2, 1000)
        assert counter.at(config).flops == expected, str(config)


def test_nonuniform_config_matches_the_hand_count(counter):
    rng = random.Random(3)
    for _ in range(3):
        ratios = [round(rng.uniform(0.25, 1.0), 3) for _ in range(14)]
        expected = analytic_macs(hand_channels(ratios), 224, 2, 1000)
        assert counter.at(WidthConfig.per_layer(ratios)).flops == expected


def test_stage_ratio_counts_like_the_equivalent_per_layer_config(counter):
    stage_of = [0] + [k for k, (_, n, _) in enumerate(STAGES, 1) for _ in range(n)]
    ratios = [0.75 * (0.6 if s == 5 else 1.0) for s in stage_of]
    assert counter.at("0.75@s5x0.6").flops == analytic_macs(hand_channels(ratios), 224, 2, 1000)
    assert counter.at("0.75@s5x0.6").flops < counter.at(0.75).flops


def test_cifar_stem_at_32():
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=10)
    for w in (0.25, 0.6, 1.0):
        cost = usspectrum.count_flops(model, w, 32)
        assert cost.flops == analytic_macs(hand_channels([w] * 14), 32, 1, 10)


def test_bn_and_activations_are_not_counted(counter):
    cost = counter.at(1.0)
    conv_and_linear = sum(v for k, v in cost.by_module.items()
                          if k.endswith((".body.0", ".body.3", "features.0.0", "classifier.0")))
    assert cost.flops == conv_and_linear + 1024 * 7 * 7  # only the pool on top


def test_active_params_match_a_dense_count():
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=10)
    ch = hand_channels([0.5] * 14)
    params = ch[0] * 27 + 2 * ch[0]
    for i in range(1, 14):
        params += ch[i - 1] * 9 + 2 * ch[i - 1] + ch[i - 1] * ch[i] + 2 * ch[i]
    params += ch[-1] * 10 + 10
    assert usspectrum.count_flops(model, 0.5).params == params


def test_count_restores_the_models_width(counter):
    counter.model.set_width(0.4)
    counter.at(0.9)
    assert str(counter.model.width_config) == "0.4"


@pytest.mark.parametrize("kind", ["us_mobilenet_v1", "s_mobilenet_v1", "mobilenet_v1"])
def test_dense_trace_counts_like_the_sliced_trace(kind):
    # the counter traces the width's dense copy; tracing the slimmable model
    # itself is the slow way that must give the same numbers
    model = usspectrum.create_model(kind, stem="cifar", num_classes=10, average_output=True) \
        if kind.startswith("us_") else usspectrum.create_model(kind, stem="cifar", num_classes=10)
    widths = (0.5, 1.0) if kind.startswith("s_") else ("0.4", "0.75@s5x0.6", 1.0)
    if kind == "mobilenet_v1":
        widths = (1.0,)
    for w in widths:
        model.set_width(w)
        fast = usspectrum.FlopCounter(model, 32)._count_dense()
        slow = usspectrum.FlopCounter(model, 32)._count_sliced()
        assert (fast.flops, fast.params) == (slow.flops, slow.params)
        for name, flops in slow.by_module.items():
            if flops:
                assert fast.by_module[name] == flops, name


@pytest.mark.parametrize("name, kw", [("us_mobilenet_v1", {}), ("us_mobilenet_v2", {}),
                                      ("us_mobilenet_v1", {"repeats": (1, 1, 2, 1, 1)}),
                                      ("us_resnet50", {"repeats": (1, 2, 1, 1)}),
                                      ("autoslim_mobilenet_v2", {})])
def test_scaled_counts_equal_fvcore_traces(name, kw):
    from usspectrum.spectrum.flops import FlopCounter

    model = usspectrum.create_model(name, stem="cifar", num_classes=10, **kw)
    traced, scaled = FlopCounter(model, 32), FlopCounter(model, 32, scaled=True)
    rng = random.Random(1)
    named = list(model.switches) if name.startswith("autoslim") else []
    configs = [0.25, 0.5, 1.0, "0.7@s3x0.6", *named] + [
        WidthConfig.per_layer([rng.uniform(0.25, 1.0) for _ in model.slots]) for _ in range(3)]
    for config in configs:
        a, b = traced.at(config), scaled.at(config)
        assert (a.flops, a.params) == (b.flops, b.params), config
