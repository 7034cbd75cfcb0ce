"""The ResNet, ShuffleNet and AutoSlim families through the paths MobileNets
take: train (US-ResNet), flops, sweep, compare, export."""
import subprocess
import sys

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import usspectrum
from usspectrum.cli import cli
from usspectrum.io.checkpoint import load_checkpoint, save_checkpoint

from conftest import require_cifar
from test_dense import LOAD_WITHOUT_USSPECTRUM

SMALL = (1, 1, 1, 1)
FAST = ["--calib-images", 32, "--eval-images", 32, "--batch-size", 32, "--workers", 0,
        "--quiet", "--no-plot"]


def cli_ok(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    cifar = require_cifar()
    tmp = tmp_path_factory.mktemp("families")
    # the ImageNet stem (stride 4 in all) keeps ResNet-50's cost small at 32 px;
    # the CIFAR stem's layers are checked in test_resnet.py
    result = usspectrum.train(kind="us", model="resnet50", data=str(cifar), out=str(tmp / "us.pt"),
                              epochs=1, batch_size=32, lr=0.05, repeats=SMALL, train_images=64,
                              val_images=32, calib_images=32, workers=0, progress=False,
                              warmup_epochs=0.0, stem="imagenet")
    assert len(result.log) == 1
    names = sorted(p.name for p in (cifar / "train").iterdir())
    s_net = usspectrum.create_model("s_resnet50", num_classes=10, repeats=SMALL)
    save_checkpoint(s_net, tmp / "s.pt", class_names=names)
    autoslim = usspectrum.create_model("autoslim_mobilenet_v1", stem="cifar", num_classes=10)
    save_checkpoint(autoslim, tmp / "autoslim.pt", class_names=names)
    shuffle = usspectrum.create_model("s_shufflenet", num_classes=10, stem="cifar",
                                      repeats=(1, 2, 1))
    save_checkpoint(shuffle, tmp / "shuffle.pt", class_names=names)
    return tmp, cifar


@pytest.mark.data
def test_us_resnet_trains_and_sweeps(family_models):
    tmp, data = family_models
    model = load_checkpoint(tmp / "us.pt")
    assert model.arch["name"] == "us_resnet50" and model.channel_rounding == "int"
    assert model.width_range == (0.25, 1.0)
    cli_ok("sweep", tmp / "us.pt", "--data", data, "--widths", "0.25,0.6,1.0", "-o",
           tmp / "sweep.csv", *FAST)
    df = pd.read_csv(tmp / "sweep.csv", dtype={"width": str})
    assert list(df.width) == ["0.25", "0.6", "1.0"] and df.mflops.is_monotonic_increasing
    assert ((df.top1 >= 0) & (df.top1 <= 100)).all() and (df.eval_images == 32).all()


@pytest.mark.data
def test_compare_runs_an_autoslim_model_at_its_switches(family_models):
    tmp, data = family_models
    cli_ok("compare", tmp / "us.pt", tmp / "s.pt", tmp / "autoslim.pt", "--data", data,
           "--widths", "0.25,1.0", "-o", tmp / "cmp", *FAST)
    cmp = pd.read_csv(tmp / "cmp" / "compare.csv", dtype={"width": str})
    widths = cmp.groupby("model").width.apply(list).to_dict()
    assert widths == {"us": ["0.25", "1.0"], "s": ["0.25", "1.0"],
                      "autoslim": ["150M", "325M", "572M"]}
    # the switches' MFLOPs rise with the budgets they are named by
    assert cmp[cmp.model == "autoslim"].mflops.is_monotonic_increasing


def exported_matches_calibrated(tmp, data, ckpt, width):
    """Export ``ckpt`` at ``width`` (TorchScript), run the file where
    usspectrum cannot be imported and check its logits against the
    calibrated model's; returns the file's metadata."""
    out = tmp / f"{ckpt.stem}-{width}.pt"
    cli_ok("export", ckpt, "--width", width, "-o", out, "--data", data, "--calib-images", 32)
    x = torch.randn(3, 3, 32, 32)
    torch.save(x, tmp / "x.pt")
    (tmp / "load.py").write_text(LOAD_WITHOUT_USSPECTRUM)
    subprocess.run([sys.executable, str(tmp / "load.py"), str(out), "torchscript", str(tmp / "x.pt"),
                    str(tmp / "y.pt")], check=True, cwd=tmp)
    loaded = torch.load(tmp / "y.pt", weights_only=True)
    model, _ = usspectrum.spectrum.calibrate.prepare_width(ckpt, width, data, calib_images=32)
    model.set_width(width)
    with torch.no_grad():
        torch.testing.assert_close(loaded["y"], model(x), rtol=1e-4, atol=1e-5)
    assert loaded["meta"]["width"] == width
    return loaded["meta"]


@pytest.mark.data
def test_export_of_an_autoslim_switch_runs_without_usspectrum(family_models):
    tmp, data = family_models
    meta = exported_matches_calibrated(tmp, data, tmp / "autoslim.pt", "325M")
    assert meta["channels"][:2] == [16, 16]  # stem, then the first depthwise conv


def test_flops_cli_reads_budget_names(tmp_path):
    cli_ok("flops", "--model", "autoslim_mobilenet_v1", "--widths", "150M,325M,572M",
           "--csv", tmp_path / "flops.csv")
    table = pd.read_csv(tmp_path / "flops.csv", dtype={"width": str})
    assert list(table.width) == ["150M", "325M", "572M"]
    assert list(table.mflops.round(1)) == [149.9, 324.8, 572.1]


@pytest.mark.data
def test_s_shufflenet_sweeps_its_switches_and_exports_width_2(family_models):
    tmp, data = family_models
    cli_ok("sweep", tmp / "shuffle.pt", "--data", data, "--widths", "0.5,1.0,2.0", "-o",
           tmp / "shuffle.csv", *FAST)
    df = pd.read_csv(tmp / "shuffle.csv", dtype={"width": str})
    assert list(df.width) == ["0.5", "1.0", "2.0"] and df.mflops.is_monotonic_increasing
    assert (df.bn == "calibrated").all() and (df.eval_images == 32).all()
    meta = exported_matches_calibrated(tmp, data, tmp / "shuffle.pt", "2.0")
    assert meta["channels"][:3] == [16, 16, 16]  # the three stem heads at 2.0


@pytest.mark.data
def test_s_shufflenet_slims_a_stage(family_models):
    tmp, data = family_models
    cli_ok("slim-stage", tmp / "shuffle.pt", "--data", data, "--stage", 2, "--ratio", 0.5,
           "--widths", "1.0,2.0", "-o", tmp / "stage.csv", *FAST)
    df = pd.read_csv(tmp / "stage.csv", dtype={"width": str}).set_index("width")
    assert sorted(df.index) == ["1.0", "1.0@s2x0.5", "2.0", "2.0@s2x0.5"]
    for w in ("1.0", "2.0"):
        assert df.mflops[f"{w}@s2x0.5"] < df.mflops[w]


@pytest.mark.data
def test_compare_runs_each_model_at_the_widths_it_holds(family_models):
    tmp, data = family_models
    result = cli_ok("compare", tmp / "s.pt", tmp / "shuffle.pt", "--data", data, "--widths",
                    "1.0,2.0", "-o", tmp / "cmp-wide", *FAST)
    assert "s holds widths up to 1.0; compared without 2.0" in result.output
    cmp = pd.read_csv(tmp / "cmp-wide" / "compare.csv", dtype={"width": str})
    assert cmp.groupby("model").width.apply(list).to_dict() == {"s": ["1.0"],
                                                                "shuffle": ["1.0", "2.0"]}
