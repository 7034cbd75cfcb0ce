"""MobileNet v2: the authors' channel rule and FLOPs, their released
checkpoint layouts, torchvision's state dicts, residual ties in nonuniform
configs, dense copies and calibration through residual blocks."""
import json
import random

import pandas as pd
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import usspectrum
from usspectrum import make_divisible as md
from usspectrum.spectrum.calibration import Calibrator, DenseCalibrator, get_bn_stats, is_calibrated
from usspectrum.io.checkpoint import load_checkpoint
from usspectrum.cli import cli
from usspectrum.nn.folding import ConvClamp, DenseResidual, to_dense
from usspectrum.errors import UsageError
from usspectrum.nn.layers import slim_batchnorms
from usspectrum.nn.width import WidthConfig

from helpers import dense_v2, randomize_bn, v2_bn_sizes

# The authors' published MFLOPs of US-MobileNet v2 at 224x224 for widths
# 1.0, 0.975, ..., 0.35 (MODEL_ZOO.md of the US-Nets release; the facts file
# quotes four of them).
PUBLISHED_MFLOPS = [300, 299, 284, 274, 269, 268, 254, 235, 222, 213, 209, 185, 173, 165, 161,
                    161, 151, 150, 106, 100, 97, 96, 88, 88, 80, 80, 59]
RELEASE_WIDTHS = [0.35 + 0.025 * i for i in range(27)]
SHALLOW = (1, 2, 2, 2, 2, 1, 1)  # residual adds in stages 2-5, fewer blocks


def randomized(name, **kw):
    torch.manual_seed(0)
    model = usspectrum.create_model(name, **kw).eval()
    randomize_bn(model)
    return model


def test_flops_of_all_27_widths_are_the_published_ones(tmp_path):
    out = tmp_path / "f.csv"
    result = CliRunner().invoke(cli, ["flops", "--model", "us_mobilenet_v2", "--widths",
                                      "0.35:1.0:0.025", "--image-size", "224", "--csv", str(out)])
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out, dtype={"width": str})
    assert len(df) == 27
    assert [int(m) for m in df.mflops[::-1]] == PUBLISHED_MFLOPS


def test_flops_default_widths_are_the_trained_range():
    result = CliRunner().invoke(cli, ["flops", "--model", "us_mobilenet_v2", "--stem", "cifar",
                                      "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["width"] == "0.35" and rows[-1]["width"] == "1.0" and len(rows) == 27


@pytest.mark.parametrize("width", [0.35, 0.5, 0.775, 1.0])
def test_channels_follow_the_authors_rule(width):
    model = usspectrum.create_model("us_mobilenet_v2")
    usspectrum.set_width(model, width)
    seen = {}
    hooks = [bn.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, i[0].shape[1]))
             for name, bn in slim_batchnorms(model)]
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    expected = v2_bn_sizes(width)
    assert {k: seen[k] for k in expected} == expected
    assert seen["features.18.1"] == 1280  # the last conv is never slimmed


def test_expansion_rounds_before_multiplying():
    model = usspectrum.create_model("us_mobilenet_v2")
    usspectrum.set_width(model, 0.35)
    # block 2 reads 16 channels: 6 * md(16 * 0.35) = 48, not md(96 * 0.35) = 32
    assert model.features[2].body[0].out_active == 6 * md(16 * 0.35) == 48
    assert md(96 * 0.35) == 32


@pytest.mark.parametrize("name, width, switch", [
    ("us_mobilenet_v2", 0.35, None), ("us_mobilenet_v2", 0.6, None),
    ("us_mobilenet_v2", 1.0, None), ("s_mobilenet_v2", 0.5, 1), ("mobilenet_v2", 1.0, None),
])
def test_sliced_model_equals_hand_built_network(name, width, switch):
    model = randomized(name, stem="cifar", num_classes=10)
    usspectrum.set_width(model, width)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense_v2(model, width, switch)(x),
                                   rtol=1e-4, atol=1e-5)


def test_cifar_stem_ends_at_2x2_and_default_ranges():
    model = usspectrum.create_model("us_mobilenet_v2", stem="cifar", num_classes=10)
    with torch.no_grad():
        assert model.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (2, 2)
    assert model.width_range == (0.35, 1.0) and model.num_stages == 7
    assert usspectrum.create_model("s_mobilenet_v2").switches == (0.35, 0.5, 0.75, 1.0)


def test_per_layer_configs_tie_residual_chains():
    model = randomized("us_mobilenet_v2", stem="cifar", num_classes=10)
    # stem + 7 stage outputs + 16 expansions
    assert len(model.slots) == 24
    rng = random.Random(0)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(3):
        config = WidthConfig.per_layer([rng.uniform(0.35, 1.0) for _ in model.slots])
        model.set_width(config)
        outs = {k: model.features[k].body[-2].out_active for k in (2, 3)}  # stage 2's blocks
        assert outs[2] == outs[3]  # block 3 adds block 2's output to its own
        with torch.no_grad():
            torch.testing.assert_close(to_dense(model)(x), model(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(UsageError, match="24 slimmable layers"):
        model.set_width(WidthConfig.per_layer([0.5] * 23))


@pytest.mark.parametrize("fold", [True, False])
def test_dense_copy_keeps_the_residual_adds(fold):
    model = randomized("us_mobilenet_v2", stem="cifar", num_classes=10, repeats=SHALLOW,
                       average_output=True)
    usspectrum.calibrate(model, [torch.randn(8, 3, 32, 32)], [0.5], dense=False)
    x = torch.randn(4, 3, 32, 32)
    for width in [0.35, 0.5, "0.75@s4x0.6", 1.0]:
        model.set_width(width)
        net = to_dense(model, fold_bn=fold)
        assert sum(isinstance(m, DenseResidual) for m in net.modules()) == 4
        fused = to_dense(model, fold_bn=fold, fuse_activations=True)
        # with BN folded, the convs inside residual blocks fuse with their ReLU6
        assert fold == any(isinstance(m, ConvClamp) for r in fused
                           if isinstance(r, DenseResidual) for m in r)
        with torch.no_grad():
            expected = model(x)
            torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["us_mobilenet_v2", "s_mobilenet_v2"])
def test_dense_calibration_equals_sliced_calibration(name):
    widths = [0.35, 0.6, "0.75@s5x0.6", 1.0]
    batches = [torch.randn(5, 3, 32, 32) * 2 + 0.3 for _ in range(3)]
    fast = randomized(name, stem="cifar", num_classes=10, repeats=SHALLOW)
    slow = randomized(name, stem="cifar", num_classes=10, repeats=SHALLOW)
    for model, calibrator in ((fast, DenseCalibrator), (slow, Calibrator)):
        with calibrator(model, widths) as cal:
            for x in batches:
                cal.update(x)
    a, b = get_bn_stats(fast), get_bn_stats(slow)
    assert set(a) == set(b) and len(a) == 4
    for key in a:
        assert set(a[key]) == set(b[key]) == {n for n, _ in slim_batchnorms(fast)}
        for name_ in a[key]:
            for u, v in zip(a[key][name_], b[key][name_]):
                torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


# --- the authors' released checkpoints ---------------------------------------------

def release_us_v2_state(model):
    """The US-MobileNet v2 release layout: shared affine per BN, per-width
    statistics ``bn.{i}.running_*`` for the 27 widths, the 1280-channel
    conv's BN a plain BatchNorm2d; all under ``module.``."""
    g = torch.Generator().manual_seed(1)
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()
             if not (k.endswith(("running_mean", "running_var")) and not k.startswith("features.18"))}
    state["module.features.18.1.num_batches_tracked"] = torch.tensor(7)
    stats = {}
    for i, w in enumerate(RELEASE_WIDTHS):
        for name, c in v2_bn_sizes(w).items():
            mean, var = torch.randn(c, generator=g) * 0.2, torch.rand(c, generator=g) + 0.5
            state[f"module.{name}.bn.{i}.running_mean"] = mean
            state[f"module.{name}.bn.{i}.running_var"] = var
            state[f"module.{name}.bn.{i}.num_batches_tracked"] = torch.tensor(100)
            stats[(i, name)] = (mean, var)
    return state, stats


def release_weight_keys():
    """The release's parameter keys, from the facts file's layout."""
    keys = {"features.0.0.weight", "features.0.1.weight", "features.0.1.bias",
            "features.18.0.weight", "classifier.0.weight", "classifier.0.bias"}
    keys |= {f"features.18.1.{f}" for f in ("weight", "bias", "running_mean", "running_var",
                                             "num_batches_tracked")}
    for k in range(1, 18):
        convs, bns = ((0, 3), (1, 4)) if k == 1 else ((0, 3, 6), (1, 4, 7))
        keys |= {f"features.{k}.body.{j}.weight" for j in convs}
        keys |= {f"features.{k}.body.{j}.{f}" for j in bns for f in ("weight", "bias")}
    return keys


def test_release_us_v2_checkpoint_gives_the_authors_logits(tmp_path):
    source = randomized("us_mobilenet_v2")
    state, stats = release_us_v2_state(source)
    assert {k.removeprefix("module.") for k in state if ".bn." not in k} == release_weight_keys()
    torch.save({"model": state}, tmp_path / "us_v2.pt")
    model = load_checkpoint(tmp_path / "us_v2.pt")
    assert model.arch["name"] == "us_mobilenet_v2" and model.meta["source"] == "release"
    x = torch.randn(2, 3, 64, 64)
    bns = dict(slim_batchnorms(model))
    for index in (0, 6, 17, 26):  # widths 0.35, 0.5, 0.775, 1.0
        width = RELEASE_WIDTHS[index]
        assert is_calibrated(model, width)
        usspectrum.set_width(model, width)
        override = {id(bns[n]): stats[(index, n)] for n in v2_bn_sizes(width)}
        reference = dense_v2(model, width, stats=override, stem_stride=2)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
    # the plain BN keeps the release's single statistics at every width
    torch.testing.assert_close(bns["features.18.1"].eval_stats(1280)[0],
                               state["module.features.18.1.running_mean"])


def test_release_s_v2_checkpoint(tmp_path):
    source = randomized("s_mobilenet_v2")
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.features.18.1.num_batches_tracked"] = torch.tensor(7)  # a plain BN there
    assert "module.features.5.body.7.bn.3.running_var" in state
    torch.save({"model": state}, tmp_path / "s_v2.pt")
    model = load_checkpoint(tmp_path / "s_v2.pt")
    assert model.kind == "slimmable" and model.switches == (0.35, 0.5, 0.75, 1.0)
    x = torch.randn(2, 3, 64, 64)
    # every switch: at 0.5 and 1.0 some layers keep as many channels as at
    # 0.35 and 0.75 (8 and 16 of 16), and the switch's own BN must still be used
    for switch, width in enumerate((0.35, 0.5, 0.75, 1.0)):
        usspectrum.set_width(model, width)
        with torch.no_grad():
            torch.testing.assert_close(model(x), dense_v2(model, width, switch, stem_stride=2)(x),
                                       rtol=1e-4, atol=1e-4)


def test_release_with_the_wrong_width_list_is_refused(tmp_path):
    state, _ = release_us_v2_state(randomized("us_mobilenet_v2"))
    torch.save({"model": state}, tmp_path / "us_v2.pt")
    with pytest.raises(usspectrum.USSpectrumError, match="27 widths"):
        load_checkpoint(tmp_path / "us_v2.pt", widths=[0.25 + 0.025 * i for i in range(31)])


# --- torchvision's mobilenet_v2 ----------------------------------------------------

def torchvision_v2(num_classes):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    net = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return net


def test_torchvision_state_dict_gives_torchvisions_logits(tmp_path):
    net = torchvision_v2(1000)
    torch.save(net.state_dict(), tmp_path / "tv.pt")
    model = load_checkpoint(tmp_path / "tv.pt")
    assert model.kind == "individual" and model.arch["name"] == "mobilenet_v2"
    assert model.meta["source"] == "torchvision"
    spec = model.meta["image"]
    assert (spec.image_size, spec.resize) == (224, 256)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), rtol=1e-4, atol=1e-4)
        # and its dense, BN-folded copy, the path sweeps take
        torch.testing.assert_close(to_dense(model, 1.0, fuse_activations=True)(x), net(x),
                                   rtol=1e-4, atol=1e-4)
