"""A small MobileNet v2 on CIFAR-10 through every path v1 takes: training
(US nonuniform), sweep, compare, slim-stage, export, a 2-process torchrun
sweep; and torchvision's mobilenet_v2 through ``usspectrum sweep``."""
import subprocess
import sys

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import usspectrum
from usspectrum.io.checkpoint import load_checkpoint, save_checkpoint
from usspectrum.cli import cli

from conftest import require_cifar
from helpers import make_image_folder
from test_dense import LOAD_WITHOUT_USSPECTRUM
from test_distributed import one_process, torchrun

SMALL = (1, 2, 1, 1, 1, 1, 1)  # one residual add (stage 2), 8 blocks


@pytest.fixture(scope="module")
def v2_models(tmp_path_factory):
    cifar = require_cifar()
    tmp = tmp_path_factory.mktemp("v2")
    result = usspectrum.train(kind="us", model="mobilenet_v2", nonuniform=True, data=str(cifar),
                              out=str(tmp / "us.pt"), epochs=1, batch_size=32, lr=0.05,
                              repeats=SMALL, train_images=96, val_images=64, calib_images=64,
                              workers=0, progress=False, warmup_epochs=0.0)
    assert len(result.log) == 1
    names = sorted(p.name for p in (cifar / "train").iterdir())
    for name in ("s_mobilenet_v2", "mobilenet_v2"):
        model = usspectrum.create_model(name, stem="cifar", num_classes=10, repeats=SMALL)
        save_checkpoint(model, tmp / f"{name}.pt", class_names=names)
    return tmp, cifar


FAST = ["--calib-images", 64, "--eval-images", 64, "--batch-size", 32, "--workers", 0,
        "--quiet", "--no-plot"]


def cli_ok(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.data
def test_trained_v2_checkpoint_describes_itself(v2_models):
    tmp, _ = v2_models
    model = load_checkpoint(tmp / "us.pt")
    assert model.arch["name"] == "us_mobilenet_v2" and model.width_range == (0.35, 1.0)
    assert model.meta["train"]["recipe"]["nonuniform"] is True
    assert model.meta["train"]["recipe"]["width_range"] == [0.35, 1.0]  # the family's default


@pytest.mark.data
def test_sweep_compare_and_slim_stage(v2_models):
    tmp, data = v2_models
    cli_ok("sweep", tmp / "us.pt", "--data", data, "--widths", "0.35,0.6,1.0", "-o",
           tmp / "sweep.csv", "--latency", *FAST)
    df = pd.read_csv(tmp / "sweep.csv", dtype={"width": str})
    assert list(df.width) == ["0.35", "0.6", "1.0"] and (df.eval_images == 64).all()
    assert df.mflops.is_monotonic_increasing and (df.latency_ms > 0).all()

    cli_ok("compare", tmp / "us.pt", tmp / "s_mobilenet_v2.pt", tmp / "mobilenet_v2.pt",
           "--data", data, "--widths", "0.35,0.5,1.0", "-o", tmp / "cmp", *FAST)
    cmp = pd.read_csv(tmp / "cmp" / "compare.csv", dtype={"width": str})
    assert len(cmp) == 9 and cmp.groupby("model").mflops.apply(tuple).nunique() == 1

    cli_ok("slim-stage", tmp / "us.pt", "--stage", "7", "--stage", "2", "--ratio", "0.6",
           "--data", data, "--widths", "0.5,1.0", "-o", tmp / "stage.csv", *FAST)
    stage = pd.read_csv(tmp / "stage.csv", dtype={"width": str})
    assert set(stage.width) == {"0.5", "1.0", "0.5@s7x0.6", "1.0@s7x0.6", "0.5@s2x0.6",
                                "1.0@s2x0.6"}
    flops = dict(zip(stage.width, stage.mflops))
    assert flops["1.0@s7x0.6"] < flops["1.0"] and flops["1.0@s2x0.6"] < flops["1.0"]


@pytest.mark.data
def test_export_of_a_per_stage_width_runs_without_usspectrum(v2_models):
    tmp, data = v2_models
    out = tmp / "v2.pt2"
    cli_ok("export", tmp / "us.pt", "--width", "0.6@s5x0.6", "-o", out, "--data", data,
           "--calib-images", 64)
    x = torch.randn(3, 3, 32, 32)
    torch.save(x, tmp / "x.pt")
    (tmp / "load.py").write_text(LOAD_WITHOUT_USSPECTRUM)
    subprocess.run([sys.executable, str(tmp / "load.py"), str(out), "export", str(tmp / "x.pt"),
                    str(tmp / "y.pt")], check=True, cwd=tmp)
    loaded = torch.load(tmp / "y.pt", weights_only=True)
    model, _ = usspectrum.spectrum.calibrate.prepare_width(tmp / "us.pt", "0.6@s5x0.6", data,
                                               calib_images=64)
    model.set_width("0.6@s5x0.6")
    with torch.no_grad():
        torch.testing.assert_close(loaded["y"], model(x), rtol=1e-4, atol=1e-5)
    assert loaded["meta"]["arch"] == "us_mobilenet_v2"


@pytest.mark.data
def test_two_process_sweep_equals_one_process(v2_models):
    tmp, data = v2_models
    args = ["-m", "usspectrum", "sweep", "us.pt", "--data", data, "--widths", "0.35,0.7,1.0",
            "--calib-images", 96, "--eval-images", 101, "--batch-size", 32, "--workers", 0,
            "--quiet", "--no-plot"]
    two = torchrun(*args, "-o", "two.csv", cwd=tmp)
    assert two.returncode == 0, two.stderr[-3000:]
    one = one_process(*args, "-o", "one.csv", cwd=tmp)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (pd.read_csv(tmp / f, dtype={"width": str}) for f in ("one.csv", "two.csv"))
    cols = ["width", "top1", "top5", "calib_images", "eval_images", "mflops"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_torchvision_state_dict_sweeps_from_the_cli(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    data = make_image_folder(tmp_path / "data", per_class=2)
    net = torchvision.models.mobilenet_v2(weights=None, num_classes=3).eval()
    torch.save(net.state_dict(), tmp_path / "tv.pt")
    result = cli_ok("sweep", tmp_path / "tv.pt", "--data", data, "-o",
                    tmp_path / "tv.csv", "--calib-images", 6, "--eval-images", 6,
                    "--batch-size", 6, "--workers", 0, "--quiet", "--no-plot")
    df = pd.read_csv(tmp_path / "tv.csv", dtype={"width": str})
    assert list(df.width) == ["1.0"]
    # the 224 crop: the published 300 MFLOPs, less 997 classes of the 1280-input linear layer
    assert int(df.mflops.iloc[0] + 1280 * 997 / 1e6) == 300
    assert df.arch.iloc[0] == "mobilenet_v2" and "tv" in result.output
