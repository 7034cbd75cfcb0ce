"""AutoSlim networks: switches named by budget, the authors' channel lists,
their release layout and their FLOPs."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import usspectrum
from usspectrum import load_checkpoint
from usspectrum.nn.folding import to_dense
from helpers import randomize_bn, release_ops

DATA = Path(usspectrum.__file__).parent / "data" / "autoslim.json"
# the first and last entries of the authors' yml lists (apps/autoslim_*_train_val.yml)
YML_ENDS = {"mobilenet_v1": {"150M": (16, 744), "325M": (16, 1128), "572M": (24, 1128)},
            "mnasnet": {"217M": (16, 1280), "315M": (16, 1920), "532M": (16, 1920)},
            "resnet50": {"570M": (24, 1680), "1000M": (32, 2016), "2006M": (40, 2016),
                         "3005M": (48, 2016)}}


def lists(family):
    return json.loads(DATA.read_text())[family]


def test_shipped_lists_have_the_authors_lengths_and_ends():
    for family, ends in YML_ENDS.items():
        data = lists(family)
        assert list(data) == list(ends)
        for name, (first, last) in ends.items():
            assert data[name][0] == first and data[name][-2] == last and data[name][-1] == 1000
    # v1: stem + 13 blocks + classes; ResNet-50: stem + 4 stage outputs + 16 x 3 + classes
    assert {len(v) for v in lists("mobilenet_v1").values()} == {15}
    assert {len(v) for v in lists("resnet50").values()} == {54}


def test_set_width_by_budget_name_gives_the_listed_channels():
    model = usspectrum.create_model("autoslim_mobilenet_v1")
    for name, values in lists("mobilenet_v1").items():
        usspectrum.set_width(model, name)
        assert model.active_channels() == values[:-1]
    assert model.switches == ("150M", "325M", "572M") and model.kind == "slimmable"
    with pytest.raises(usspectrum.UsageError, match="no switch '200M'.*150M, 325M, 572M"):
        usspectrum.set_width(model, "200M")


def test_autoslim_flops_match_the_authors_profiler():
    # the facts file: their profiler gives 149.9 / 324.8 / 572.1 (v1),
    # 206.9 / 305.2 / 505.0 (v2) and
    # 570.1 / 999.9 / 2006.1 / 3004.6 (ResNet-50) MFLOPs at 224x224
    v1 = usspectrum.FlopCounter(usspectrum.create_model("autoslim_mobilenet_v1"), scaled=True)
    assert [round(v1.at(w).mflops, 1) for w in ("150M", "325M", "572M")] == [149.9, 324.8, 572.1]
    v2 = usspectrum.FlopCounter(usspectrum.create_model("autoslim_mobilenet_v2"), scaled=True)
    assert [round(v2.at(w).mflops, 1) for w in ("207M", "305M", "505M")] == [206.9, 305.2, 505.0]
    r50 = usspectrum.FlopCounter(usspectrum.create_model("autoslim_resnet50"), scaled=True)
    assert ([round(r50.at(w).mflops, 1) for w in ("570M", "1000M", "2006M", "3005M")]
            == [570.1, 999.9, 2006.1, 3004.6])


def hand_v1(state, channels, switch, x):
    """The authors' AutoSlim-MobileNet v1 at one switch, from the release
    state dict and that switch's list alone."""
    s = {k.removeprefix("module."): v for k, v in state.items()}

    def bn(name, y):
        p, c = f"{name}.bn.{switch}.", y.shape[1]
        return F.batch_norm(y, s[p + "running_mean"][:c], s[p + "running_var"][:c],
                            s[p + "weight"][:c], s[p + "bias"][:c], False, 0.0, 1e-5)

    y = F.relu6(bn("features.0.1", F.conv2d(x, s["features.0.0.weight"][:channels[0]], None, 2, 1)))
    strides = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    for i, (out, stride) in enumerate(zip(channels[1:], strides), start=1):
        c = y.shape[1]
        y = F.relu6(bn(f"features.{i}.body.1",
                       F.conv2d(y, s[f"features.{i}.body.0.weight"][:c], None, stride, 1, 1, c)))
        y = F.relu6(bn(f"features.{i}.body.4",
                       F.conv2d(y, s[f"features.{i}.body.3.weight"][:out, :c])))
    y = y.mean((2, 3))
    return F.linear(y, s["classifier.0.weight"][:, :y.shape[1]], s["classifier.0.bias"])


def test_release_autoslim_v1_is_detected_and_gives_the_authors_logits(tmp_path):
    source = usspectrum.create_model("autoslim_mobilenet_v1", num_classes=10).eval()
    randomize_bn(source)
    state = {f"module.{k}": v.clone() for k, v in source.state_dict().items()}
    assert state["module.features.0.0.weight"].shape[0] == 24  # the largest switch's stem
    assert "module.features.13.body.4.bn.2.running_var" in state
    torch.save({"model": state}, tmp_path / "autoslim_v1.pt")
    model = load_checkpoint(tmp_path / "autoslim_v1.pt")
    assert model.arch["name"] == "autoslim_mobilenet_v1" and model.meta["source"] == "release"
    x = torch.randn(2, 3, 64, 64)
    for switch, (name, values) in enumerate(lists("mobilenet_v1").items()):
        usspectrum.set_width(model, name)
        with torch.no_grad():
            expected = hand_v1(state, values[:-1], switch, x)
            assert (model(x) - expected).abs().max() <= 1e-4 * expected.abs().max()
            assert (to_dense(model)(x) - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_sweep_refuses_widths_that_are_not_switches(tmp_path):
    from usspectrum.spectrum.sweep import check_trained_range, default_widths
    model = usspectrum.create_model("autoslim_mobilenet_v1", num_classes=3)
    assert default_widths(model) == "150M,325M,572M"
    check_trained_range(model, usspectrum.WidthConfig.parse("325M"))
    with pytest.raises(usspectrum.UsageError, match="not a switch.*--allow-extrapolate"):
        check_trained_range(model, usspectrum.WidthConfig(0.5))


def test_autoslim_v2_release_layout_is_detected_and_follows_the_lists(tmp_path):
    source = usspectrum.create_model("autoslim_mobilenet_v2", num_classes=10).eval()
    randomize_bn(source)
    state = {f"module.{k}": v.clone() for k, v in source.state_dict().items()}
    # the base network: the last conv keeps 1920 channels (1280 in MobileNet v2 1.0x)
    # and every BN holds one BN per switch, the last one included
    assert state["module.features.18.0.weight"].shape[0] == 1920
    assert "module.features.18.1.bn.2.running_var" in state
    assert "module.features.1.body.3.weight" in state  # the first block: no expansion
    assert "module.features.1.body.6.weight" not in state
    torch.save({"model": state}, tmp_path / "autoslim_v2.pt")
    model = load_checkpoint(tmp_path / "autoslim_v2.pt")
    assert model.arch["name"] == "autoslim_mobilenet_v2"
    x = torch.randn(2, 3, 64, 64)
    for name, values in lists("mobilenet_v2").items():
        usspectrum.set_width(model, name)
        convs = [m for m in model.modules() if isinstance(m, usspectrum.nn.layers.SlimConv2d)
                 and not m.depthwise]
        seen = {}
        hooks = [c.register_forward_hook(lambda m, i, o, c=c: seen.__setitem__(c, o.shape[1]))
                 for c in convs]
        with torch.no_grad():
            out = model(x)
        for h in hooks:
            h.remove()
        # the authors' list, in their order: each non-depthwise conv's outputs
        assert [seen[c] for c in convs] == list(values[:-1])
        source.set_width(name)
        with torch.no_grad():
            torch.testing.assert_close(out, source(x))
            torch.testing.assert_close(to_dense(model)(x), out, rtol=1e-4, atol=1e-4)


def test_search_refuses_an_autoslim_net_and_points_to_reference(tmp_path):
    from usspectrum.spectrum.search import search
    model = usspectrum.create_model("autoslim_mobilenet_v1", num_classes=3)
    with pytest.raises(usspectrum.UsageError,
                       match="fixed switches.*--reference autoslim_mobilenet_v1"):
        search(model, tmp_path, tmp_path / "search.csv")


# the authors' block_setting of AutoSlim-MNasNet: (t, c, n, s, k) per block
MNASNET_BLOCKS = [(1, 16, 1, 1, 3), (3, 24, 1, 2, 3), (3, 24, 1, 1, 3), (3, 24, 1, 1, 3),
                  (3, 40, 1, 2, 5), (3, 40, 1, 1, 5), (3, 40, 1, 1, 5), (6, 80, 1, 2, 5),
                  (6, 80, 1, 1, 5), (6, 80, 1, 1, 5), (6, 96, 1, 1, 3), (6, 96, 1, 1, 3),
                  (6, 192, 1, 2, 5), (6, 192, 1, 1, 5), (6, 192, 1, 1, 5), (6, 192, 1, 1, 5),
                  (6, 320, 1, 1, 3)]


def hand_mnasnet(state, all_lists, switch, x):
    """The authors' AutoSlim-MNasNet at switch number ``switch`` from the
    release state dict and the lists alone: channels popped in their order,
    an expansion where a block's mid list differs from its input list, a
    residual add where the stride is 1 and the input and output lists agree."""
    s, bn, conv = release_ops(state, switch)
    lists_ = [list(v[:-1]) for v in all_lists]

    def pop():
        return tuple(v.pop(0) for v in lists_)

    inp = pop()
    y = F.relu6(bn("features.0.1", conv("features.0.0", x, inp[switch], 2)))
    for i, (_, _, _, stride, k) in enumerate(MNASNET_BLOCKS, start=1):
        mid, out = (inp, pop()) if i == 1 else (pop(), pop())
        p, h, j = f"features.{i}.body", y, 0
        if mid != inp:
            h, j = F.relu6(bn(f"{p}.1", conv(f"{p}.0", h, mid[switch]))), 3
        assert s[f"{p}.{j}.weight"].shape[-1] == k
        c = h.shape[1]
        h = F.relu6(bn(f"{p}.{j + 1}", conv(f"{p}.{j}", h, c, stride, groups=c)))
        h = bn(f"{p}.{j + 4}", conv(f"{p}.{j + 3}", h, out[switch]))
        y = h + y if stride == 1 and inp == out else h
        inp = out
    y = F.relu6(bn("features.18.1", conv("features.18.0", y, pop()[switch])))
    y = y.mean((2, 3))
    return F.linear(y, s["classifier.0.weight"][:, :y.shape[1]], s["classifier.0.bias"])


def test_autoslim_mnasnet_flops_match_the_published_budgets():
    # published: 217M / 315M / 532M (the yml's comment on the third says 539M)
    model = usspectrum.create_model("autoslim_mnasnet")
    counter = usspectrum.FlopCounter(model, scaled=True)
    assert [round(counter.at(w).mflops) for w in ("217M", "315M", "532M")] == [217, 315, 532]


def test_release_autoslim_mnasnet_is_told_from_v2_and_gives_the_authors_logits(tmp_path):
    source = usspectrum.create_model("autoslim_mnasnet", num_classes=10).eval()
    randomize_bn(source)
    state = {f"module.{k}": v.clone() for k, v in source.state_dict().items()}
    # the same keys as AutoSlim-MobileNet v2, with a 1920-channel last conv too
    assert state["module.features.18.0.weight"].shape[0] == 1920
    assert state["module.features.5.body.3.weight"].shape[-2:] == (5, 5)
    torch.save({"model": state}, tmp_path / "autoslim_mnasnet.pt")
    model = load_checkpoint(tmp_path / "autoslim_mnasnet.pt")
    assert model.arch["name"] == "autoslim_mnasnet"
    x = torch.randn(2, 3, 64, 64)
    all_lists = list(lists("mnasnet").values())
    for switch, name in enumerate(lists("mnasnet")):
        usspectrum.set_width(model, name)
        with torch.no_grad():
            expected = hand_mnasnet(state, all_lists, switch, x)
            assert (model(x) - expected).abs().max() <= 1e-4 * expected.abs().max()
            assert (to_dense(model)(x) - expected).abs().max() <= 1e-4 * expected.abs().max()
