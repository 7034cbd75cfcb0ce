"""ResNet-50: the authors' S-ResNet-50 release, torchvision's resnet50, the
US variant, and FLOPs in the authors' convention."""
import pytest
import torch
import torch.nn.functional as F

import usspectrum
from usspectrum import load_checkpoint
from usspectrum.nn.folding import to_dense
from helpers import randomize_bn

SWITCHES = (0.25, 0.5, 0.75, 1.0)


def release_state(model):
    """A model's state dict in the release layout (DataParallel prefixes)."""
    return {f"module.{k}": v.clone() for k, v in model.state_dict().items()}


def hand_resnet(state, width, switch, x, stem_stride=2, maxpool=True):
    """The authors' S-ResNet forward at switch ``switch`` written from the
    release state dict alone: every layer keeps its first ``int(C * width)``
    channels (mid = out // 4) and uses BN number ``switch``."""
    s = {k.removeprefix("module."): v for k, v in state.items()}

    def bn(name, y):
        p = f"{name}.bn.{switch}."
        c = y.shape[1]
        return F.batch_norm(y, s[p + "running_mean"][:c], s[p + "running_var"][:c],
                            s[p + "weight"][:c], s[p + "bias"][:c], False, 0.0, 1e-5)

    def conv(name, y, out, stride=1):
        w = s[f"{name}.weight"]
        k = w.shape[-1]
        return F.conv2d(y, w[:out, :y.shape[1]], None, stride, k // 2)

    y = F.relu(bn("features.0.1", conv("features.0.0", x, int(64 * width), stem_stride)))
    if maxpool:
        y = F.max_pool2d(y, 3, 2, 1)
    k = 1
    while f"features.{k}.body.0.weight" in s:
        p = f"features.{k}"
        out = int(s[f"{p}.body.6.weight"].shape[0] * width)
        mid = out // 4
        stride = 2 if f"{p}.shortcut.0.weight" in s and k > 1 else 1
        h = F.relu(bn(f"{p}.body.1", conv(f"{p}.body.0", y, mid)))
        h = F.relu(bn(f"{p}.body.4", conv(f"{p}.body.3", h, mid, stride)))
        h = bn(f"{p}.body.7", conv(f"{p}.body.6", h, out))
        if f"{p}.shortcut.0.weight" in s:
            y = bn(f"{p}.shortcut.1", conv(f"{p}.shortcut.0", y, out, stride))
        y = F.relu(h + y)
        k += 1
    y = y.mean((2, 3))
    return F.linear(y, s["classifier.0.weight"][:, :y.shape[1]], s["classifier.0.bias"])


def test_s_resnet50_flops_match_the_authors_profiler():
    # the facts file: their profiler on S-ResNet-50 at 224x224 gives
    # 278.1 / 1052.4 / 2322.8 / 4089.3 MFLOPs at the four switches
    model = usspectrum.create_model("s_resnet50")
    counter = usspectrum.FlopCounter(model, scaled=True)
    mflops = [round(counter.at(w).mflops, 1) for w in SWITCHES]
    assert mflops == [278.1, 1052.4, 2322.8, 4089.3]


def test_release_s_resnet_gives_the_authors_logits_at_every_switch(tmp_path):
    source = usspectrum.create_model("s_resnet50", num_classes=10, repeats=(1, 2, 1, 1)).eval()
    randomize_bn(source)
    state = release_state(source)
    assert "module.features.2.body.7.bn.3.running_var" in state
    assert "module.features.4.shortcut.1.bn.0.weight" in state
    assert "module.features.3.shortcut.0.weight" not in state  # identity
    torch.save({"model": state}, tmp_path / "s_resnet.pt")
    model = load_checkpoint(tmp_path / "s_resnet.pt")
    assert model.arch["name"] == "s_resnet50" and model.arch["kwargs"]["repeats"] == (1, 2, 1, 1)
    assert model.kind == "slimmable" and model.switches == SWITCHES
    x = torch.randn(2, 3, 64, 64)
    for switch, width in enumerate(SWITCHES):
        usspectrum.set_width(model, width)
        with torch.no_grad():
            expected = hand_resnet(state, width, switch, x)
            got = model(x)
            folded = to_dense(model)(x)
        assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
        assert (folded - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_torchvision_resnet50_loads_as_the_individual_baseline(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet50(num_classes=7).eval()
    randomize_bn(reference)
    torch.save(reference.state_dict(), tmp_path / "tv.pt")
    model = load_checkpoint(tmp_path / "tv.pt")
    assert model.arch["name"] == "resnet50" and model.kind == "individual"
    assert model.meta["source"] == "torchvision"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)


def test_torchvision_basic_block_resnet_is_refused_by_name(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    with pytest.raises(usspectrum.USSpectrumError, match="basic blocks"):
        load_checkpoint(tmp_path / "r18.pt")


def test_us_resnet_channels_use_int_rounding_and_fold_exactly():
    model = usspectrum.create_model("us_resnet50", stem="cifar", num_classes=10,
                                    repeats=(1, 2, 1, 1)).eval()
    randomize_bn(model)
    usspectrum.set_width(model, 0.3)
    # int(64 * 0.3) = 19 (make_divisible would give 24), int(256 * 0.3) = 76
    assert model.active_channels()[:4] == [19, 19, 19, 76]
    config = "layers:" + "/".join(["0.4", "0.9", "0.55"] * (len(model.slots) // 3)
                                  + ["0.7"] * (len(model.slots) % 3))
    x = torch.randn(2, 3, 32, 32)
    for width in (0.3, config):
        usspectrum.set_width(model, width)
        with torch.no_grad():
            torch.testing.assert_close(to_dense(model)(x), model(x), rtol=1e-4, atol=1e-4)
    # every residual chain is one slot: its blocks' outputs are added together
    model.set_width(config)
    blocks = [b for b in model.features if hasattr(b, "post_relu")]
    assert blocks[1].body[6].out_active == blocks[2].body[6].out_active \
        == blocks[1].shortcut[0].out_active
