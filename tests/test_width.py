import pytest

import usspectrum
from usspectrum import UsageError, WidthConfig, make_divisible, parse_width_list
from usspectrum.nn.width import LayerSlot, stage_variants


@pytest.mark.parametrize("value, expected", [
    (32 * 0.25, 8),       # exact multiple
    (1024 * 0.275, 280),  # 281.6 rounds to 280 (loses < 10%)
    (64 * 0.275, 16),     # 17.6 -> 16
    (12, 16),             # ties round up: int(16) // 8 * 8
    (11.9, 16),           # rounds to 8, but 8 < 0.9 * 11.9 = 10.71, so +8
    (3, 9),               # rounds to 0, floored to 1, then 1 < 2.7 -> +8
    (100, 104),
])
def test_make_divisible_follows_the_release_rule(value, expected):
    # expected values worked by hand from the facts file's rule
    assert make_divisible(value) == expected


@pytest.mark.parametrize("text", ["0.75", "1.0", "0.275", "0.75@s5x0.6",
                                  "0.5@s1x0.6@s5x0.8", "layers:0.25/0.5/1.0"])
def test_string_form_round_trips(text):
    config = WidthConfig.parse(text)
    assert str(config) == text
    assert WidthConfig.parse(str(config)) == config


def test_stage_modifiers_are_ordered_by_stage():
    assert str(WidthConfig.parse("0.5@s5x0.8@s1x0.6")) == "0.5@s1x0.6@s5x0.8"


@pytest.mark.parametrize("bad", ["0", "-0.2", "abc", "inf", "0.5@s5", "0.5@x0.6",
                                 "0.5@s5x1.2", "0.5@s0x0.5", "0.5@s2x0.5@s2x0.6",
                                 "layers:", "layers:0.5/0"])
def test_bad_widths_are_usage_errors(bad):
    with pytest.raises(UsageError):
        WidthConfig.parse(bad)


def test_range_is_inclusive_and_exact():
    widths = parse_width_list("0.25:1.0:0.025")
    assert len(widths) == 31
    assert str(widths[0]) == "0.25" and str(widths[-1]) == "1.0"
    assert str(widths[1]) == "0.275"
    assert [str(w) for w in parse_width_list("0.5,0.25:0.5:0.25")] == ["0.5", "0.25"]


@pytest.mark.parametrize("bad", ["1.0:0.25:0.25", "0.25:1.0", "0.25:1.0:0", "a:b:c", ""])
def test_bad_ranges(bad):
    with pytest.raises(UsageError):
        parse_width_list(bad)


SLOTS = [LayerSlot("stem", 32, 0), LayerSlot("a", 64, 1), LayerSlot("b", 1024, 2)]


def test_channels_use_the_product_of_ratios():
    config = WidthConfig.parse("0.5@s2x0.6")
    # stage 2: 1024 * 0.3 = 307.2 -> 304
    assert config.channels(SLOTS) == [16, 32, 304]


def test_per_layer_config_needs_one_ratio_per_slot():
    assert WidthConfig.per_layer([0.25, 0.5, 1.0]).channels(SLOTS) == [8, 32, 1024]
    with pytest.raises(UsageError, match="3 slimmable layers"):
        WidthConfig.per_layer([0.5, 0.5]).channels(SLOTS)


def test_stage_out_of_range_names_the_model_stages():
    with pytest.raises(UsageError, match="stages 1 to 2"):
        WidthConfig.parse("0.5@s3x0.5").channels(SLOTS)


def test_stage_variants():
    variants = stage_variants(parse_width_list("0.5,1.0"), [1, 5], 0.6)
    assert [str(v) for v in variants] == ["0.5@s1x0.6", "1.0@s1x0.6", "0.5@s5x0.6", "1.0@s5x0.6"]
    with pytest.raises(UsageError):
        stage_variants(parse_width_list("0.5"), [1], 1.5)


def test_a_family_declares_its_channel_rounding():
    # 0.35 of 64: the nearest multiple of 8 is 24; int() gives 22 (the authors' ResNet rule)
    assert LayerSlot("a", 64, 1).active(0.35) == 24
    assert LayerSlot("a", 64, 1, rounding="int").active(0.35) == 22
    assert LayerSlot("a", 64, 1, rounding="int").active(0.001) == 1
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=10,
                                    repeats=(1, 1, 1, 1, 1))
    assert {s.rounding for s in model.slots} == {"make_divisible"}
