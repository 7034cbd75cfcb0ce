"""S-ShuffleNet: the authors' release layout, their FLOPs, widths above 1.0,
and the split/shuffle/concat blocks through folding and calibration."""
import pytest
import torch
import torch.nn.functional as F

import usspectrum
from usspectrum import load_checkpoint
from usspectrum.errors import UsageError
from usspectrum.nn.folding import to_dense
from usspectrum.spectrum.calibration import calibrate, get_bn_stats
from helpers import randomize_bn, release_ops

SWITCHES = (0.5, 1.0, 2.0)
SMALL = (1, 2, 1)
# (output channels, stride) of each block of SMALL, per the authors' block_setting
SMALL_BLOCKS = [(240, 2), (480, 2), (480, 1), (960, 2)]


def release_state(model):
    return {f"module.{k}": v.clone() for k, v in model.state_dict().items()}


def hand_shufflenet(state, blocks, width, switch, x):
    """The authors' S-ShuffleNet forward at ``switch`` (index) and ``width``,
    written from their model's rules and the release state dict alone:
    per-group 1x1 convs on ``torch.split`` chunks (the first block's groups
    each read the whole input), mid = out // 4, a shuffle of 3 groups, and
    an average-pool concat where the shape changes."""
    s, bn, conv = release_ops(state, switch)
    inp = int(24 * width)
    heads = [F.max_pool2d(F.relu(bn(f"head_{i}.1", conv(f"head_{i}.0", x, inp // 3, 2))), 3, 2)
             for i in range(3)]
    y = torch.cat(heads, 1)
    for k, (c, stride) in enumerate(blocks):
        p, outp = f"features.{k}", int(c * width)
        residual = stride == 1 and inp == outp
        block_out = outp if residual else outp - inp
        whole = k == 0  # the block right after the stem (first_group = 1)
        mid = outp // 4
        parts = [y] * 3 if whole else torch.split(y, y.shape[1] // 3, 1)
        h = torch.cat([F.relu(bn(f"{p}.a_{i}.1", conv(f"{p}.a_{i}.0", parts[i], mid // 3)))
                       for i in range(3)], 1)
        n, ch, hh, ww = h.shape
        h = h.view(n, 3, ch // 3, hh, ww).transpose(1, 2).contiguous().view(n, -1, hh, ww)
        h = bn(f"{p}.b.2", conv(f"{p}.b.1", h, mid, stride, groups=mid))
        parts = torch.split(h, h.shape[1] // 3, 1)
        h = torch.cat([bn(f"{p}.c_{i}.1", conv(f"{p}.c_{i}.0", parts[i], block_out // 3))
                       for i in range(3)], 1)
        y = F.relu(h + y) if residual else torch.cat([F.relu(h), F.avg_pool2d(y, 3, 2, 1)], 1)
        inp = outp
    y = y.mean((2, 3))
    return F.linear(y, s["classifier.0.weight"][:, :y.shape[1]], s["classifier.0.bias"])


def test_s_shufflenet_flops_match_the_authors_profiler():
    # the facts file: 37.8 / 137.7 / 524.2 MFLOPs at 0.5 / 1.0 / 2.0, 224x224
    # (their profiler counts the concat shortcut's 3x3 average pool too)
    model = usspectrum.create_model("s_shufflenet")
    counter = usspectrum.FlopCounter(model, scaled=True)
    assert [round(counter.at(w).mflops, 1) for w in SWITCHES] == [37.8, 137.7, 524.2]


def test_release_s_shufflenet_gives_the_authors_logits_at_every_switch(tmp_path):
    source = usspectrum.create_model("s_shufflenet", num_classes=10, repeats=SMALL).eval()
    randomize_bn(source)
    state = release_state(source)
    assert "module.head_2.1.bn.2.running_var" in state
    assert "module.features.0.a_0.0.weight" in state and "module.features.3.c_2.1.bn.0.bias" in state
    assert state["module.features.0.a_0.0.weight"].shape[1] == 48  # reads the whole stem
    assert state["module.features.1.a_0.0.weight"].shape[1] == 160  # a third of 480
    torch.save({"model": state}, tmp_path / "s_shufflenet.pt")
    model = load_checkpoint(tmp_path / "s_shufflenet.pt")
    assert model.arch["name"] == "s_shufflenet" and model.arch["kwargs"]["repeats"] == SMALL
    assert model.kind == "slimmable" and model.switches == SWITCHES
    x = torch.randn(2, 3, 64, 64)
    for switch, width in enumerate(SWITCHES):
        usspectrum.set_width(model, width)
        with torch.no_grad():
            expected = hand_shufflenet(state, SMALL_BLOCKS, width, switch, x)
            got = model(x)
            folded = to_dense(model)(x)
        scale = expected.abs().max()
        assert (got - expected).abs().max() <= 1e-4 * scale
        assert (folded - expected).abs().max() <= 1e-4 * scale


def test_widths_above_the_built_width_are_refused():
    model = usspectrum.create_model("s_shufflenet", num_classes=10, repeats=SMALL)
    with pytest.raises(UsageError, match=r"full width is 2.0; give widths in \(0, 2.0\]"):
        model.set_width(2.5)
    v1 = usspectrum.create_model("us_mobilenet_v1", num_classes=10)
    with pytest.raises(UsageError, match=r"give widths in \(0, 1.0\]"):
        v1.set_width(2.0)


def test_stage_widths_keep_the_residual_chains_whole():
    # a narrower stage 2 shrinks what its first block adds; its later blocks
    # follow, so every sum and every 3-way split still fits
    model = usspectrum.create_model("s_shufflenet", num_classes=10, repeats=SMALL,
                                    stem="cifar").eval()
    model.set_width("1.0@s2x0.5")
    first, second = model.features[1], model.features[2]
    # stage 1 gives int(240 * 1.0) = 240 channels; stage 2's first block adds
    # 3 * int(80 * 0.5) = 120 of its own, so its second block adds up 360
    assert [c[0].out_active for c in first.c] == [40] * 3
    assert [c[0].out_active for c in second.c] == [120] * 3
    with torch.no_grad():
        y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10)


def test_dense_calibration_equals_the_sliced_model_on_split_and_concat_blocks():
    torch.manual_seed(0)
    model = usspectrum.create_model("s_shufflenet", num_classes=10, repeats=SMALL,
                                    stem="cifar").eval()
    randomize_bn(model)
    batches = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    widths = ["1.0", "0.75"]
    calibrate(model, batches, widths, dense=True)
    dense = get_bn_stats(model, widths)
    calibrate(model, batches, widths, dense=False)
    sliced = get_bn_stats(model, widths)
    assert dense.keys() == sliced.keys()
    for key in widths:
        assert dense[key].keys() == sliced[key].keys()
        assert any(name.startswith("features.3.c_2") for name in dense[key])
        for name, (mean, var) in sliced[key].items():
            torch.testing.assert_close(dense[key][name][0], mean, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(dense[key][name][1], var, rtol=1e-4, atol=1e-5)


def test_flops_cli_runs_widths_above_one(tmp_path):
    from click.testing import CliRunner
    from usspectrum.cli import cli
    import pandas as pd

    result = CliRunner().invoke(cli, ["flops", "--model", "s_shufflenet", "--widths",
                                      "0.5,1.0,2.0", "--image-size", "64", "--csv",
                                      str(tmp_path / "f.csv")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "f.csv", dtype={"width": str})
    assert list(table.width) == ["0.5", "1.0", "2.0"]
    assert table.mflops.is_monotonic_increasing
    # the stem keeps int(24 w) channels, three heads of a third each
    assert [int(c.split("/")[0]) for c in table.channels] == [4, 8, 16]
