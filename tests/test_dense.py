"""Dense sub-networks: same outputs, same statistics, same predictions as the
sliced path; standalone exports; resume inside a pass; latency columns."""
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import usspectrum
import usspectrum.spectrum.sweep as spectrum
from usspectrum.spectrum.calibration import Calibrator, DenseCalibrator, get_bn_stats
from usspectrum.io.checkpoint import save_checkpoint
from usspectrum.cli import cli
from usspectrum.nn.folding import ConvClamp, to_dense
from usspectrum.spectrum.evaluate import evaluate
from usspectrum.spectrum.passstate import state_path
from usspectrum.io.results import RowWriter

from helpers import CLASSES, make_image_folder, randomize_bn

WIDTHS = [0.25, 0.4, 0.6, "0.75@s5x0.6", 1.0]


def randomized(name, num_classes=7, **kw):
    torch.manual_seed(0)
    model = usspectrum.create_model(name, stem="cifar", num_classes=num_classes, **kw).eval()
    randomize_bn(model)
    return model


MODELS = {
    "us-averaged": lambda: randomized("us_mobilenet_v1", average_output=True),
    "s-net": lambda: randomized("s_mobilenet_v1"),
    "individual": lambda: randomized("mobilenet_v1"),
}


@pytest.mark.parametrize("kind", MODELS)
def test_fused_conv_clamp_computes_what_conv_then_relu6_computes(kind):
    model = MODELS[kind]()
    x = torch.randn(5, 3, 32, 32) * 3
    for width in WIDTHS:
        plain = to_dense(model, width)
        fused = to_dense(model, width, fuse_activations=True)
        convs = sum(isinstance(m, nn.Conv2d) for m in plain)
        assert sum(isinstance(m, ConvClamp) for m in fused) == convs  # every conv has a ReLU6
        assert not any(isinstance(m, nn.ReLU6) for m in fused)
        with torch.no_grad():
            expected = plain(x)
            torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-6)
            # float64 takes the conv-then-clamp route
            torch.testing.assert_close(fused.double()(x.double()).float(), expected,
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("fold", [True, False])
def test_dense_copy_computes_what_the_sliced_model_computes(kind, fold):
    model = MODELS[kind]()
    calibrate_at = [0.4, "0.75@s5x0.6"]  # stored statistics must be the ones folded in
    usspectrum.calibrate(model, [torch.randn(8, 3, 32, 32)], calibrate_at, dense=False)
    x = torch.randn(6, 3, 32, 32)
    for width in WIDTHS:
        model.set_width(width)
        with torch.no_grad():
            expected = model(x)
            net = to_dense(model, fold_bn=fold)
            got = net(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        has_bn = any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        assert has_bn != fold
        convs = [m for m in net if isinstance(m, nn.Conv2d)]
        assert convs[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert convs[-1].out_channels == model.active_channels()[-1]


def test_dense_copy_is_independent_of_the_model():
    model = MODELS["us-averaged"]()
    net = to_dense(model, 0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        for p in model.parameters():
            p.add_(1.0)
        assert torch.equal(net(x), before)
    assert str(model.width_config) == "1.0"


@pytest.mark.parametrize("kind", MODELS)
def test_dense_calibration_equals_sliced_calibration(kind):
    batches = [torch.randn(5, 3, 32, 32) * 2 + 0.3 for _ in range(3)]
    fast, slow = MODELS[kind](), MODELS[kind]()
    for model, calibrator in ((fast, DenseCalibrator), (slow, Calibrator)):
        with calibrator(model, WIDTHS) as cal:
            for x in batches:
                cal.update(x)
        assert cal.images == 15
    a, b = get_bn_stats(fast), get_bn_stats(slow)
    assert set(a) == set(b) == {str(usspectrum.WidthConfig.coerce(w)) for w in WIDTHS}
    for key in a:
        assert set(a[key]) == set(b[key])
        for name in a[key]:
            torch.testing.assert_close(a[key][name][0], b[key][name][0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(a[key][name][1], b[key][name][1], rtol=1e-4, atol=1e-5)


def test_interrupted_dense_calibration_stores_nothing():
    model = MODELS["us-averaged"]()
    with pytest.raises(KeyboardInterrupt):
        with DenseCalibrator(model, [0.5]) as cal:
            cal.update(torch.randn(4, 3, 32, 32))
            raise KeyboardInterrupt
    assert get_bn_stats(model) == {}


def test_dense_and_sliced_evaluation_give_the_same_predictions():
    model = MODELS["s-net"]()
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 32, 32, generator=generator),
                torch.randint(0, 7, (16,), generator=generator)) for _ in range(4)]
    dense = evaluate(model, batches, WIDTHS)
    sliced = evaluate(model, batches, WIDTHS, dense=False)
    for key in sliced:
        assert (dense[key].top1_correct, dense[key].top5_correct, dense[key].images) == \
            (sliced[key].top1_correct, sliced[key].top5_correct, sliced[key].images)
        assert dense[key].images == 64


FAST = dict(calib_images=9, eval_images=9, batch_size=2, workers=0, progress=False)


@pytest.fixture
def setup(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=3)
    model = randomized("us_mobilenet_v1", num_classes=3, average_output=True)
    ckpt = tmp_path / "us.pt"
    save_checkpoint(model, ckpt, class_names=CLASSES)
    return tmp_path, data, ckpt


def test_sweep_dense_path_matches_sliced_path(setup):
    tmp, data, ckpt = setup
    fast = usspectrum.sweep(ckpt, data, "0.25,0.5,0.8,1.0", **FAST)
    slow = usspectrum.sweep(ckpt, data, "0.25,0.5,0.8,1.0", dense=False, widths_per_pass=1, **FAST)
    cols = ["width", "top1", "top5", "calib_images", "eval_images", "mflops", "bn"]
    pd.testing.assert_frame_equal(fast[cols], slow[cols])
    assert (fast.load_seconds >= 0).all() and (fast.eval_seconds > 0).all()
    assert (fast.calib_seconds > 0).all()


def test_sweep_interrupted_inside_a_pass_resumes_from_its_batch(setup, monkeypatch):
    tmp, data, ckpt = setup
    widths = "0.25,0.5,1.0"
    reference = usspectrum.sweep(ckpt, data, widths, **FAST)

    real_eval = spectrum.evaluate_nets
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(spectrum, "evaluate_nets", flaky)
    with pytest.raises(KeyboardInterrupt):
        usspectrum.sweep(ckpt, data, widths, tmp / "s.csv", **FAST)
    partial = state_path(tmp / "s.csv")
    assert partial.exists() and not (tmp / "s.csv").exists()

    calibrations, batches = [], []
    real_calibrate = spectrum._calibrate_pass
    monkeypatch.setattr(spectrum, "_calibrate_pass",
                        lambda *a: calibrations.append(1) or real_calibrate(*a))
    monkeypatch.setattr(spectrum, "evaluate_nets",
                        lambda *a, **k: batches.append(1) or real_eval(*a, **k))
    df = usspectrum.sweep(ckpt, data, widths, tmp / "s.csv", **FAST)
    assert calibrations == []  # the statistics came from the partial file
    assert len(batches) == 3  # 9 images in batches of 2 = 5 batches, 2 done before
    cols = ["width", "top1", "top5", "calib_images", "eval_images", "bn"]
    pd.testing.assert_frame_equal(df[cols], reference[cols])
    assert not partial.exists()


def test_partial_file_of_other_settings_is_ignored(setup):
    tmp, data, ckpt = setup
    partial = state_path(tmp / "s.csv")
    partial.write_bytes(b"not a torch file")
    df = usspectrum.sweep(ckpt, data, "0.5", tmp / "s.csv", **FAST)
    assert df.eval_images.tolist() == [9] and not partial.exists()


def test_latency_columns_and_latency_plot(setup):
    tmp, data, ckpt = setup
    df = usspectrum.sweep(ckpt, data, "0.25,1.0", tmp / "lat.csv", latency=True, **FAST)
    # measured values (their ratios are the benchmarks' business: a timing
    # comparison in a unit test fails on a busy machine)
    assert (df.latency_ms > 0).all() and (df.throughput > 0).all()
    result = CliRunner().invoke(cli, ["plot", str(tmp / "lat.csv"), "-o", str(tmp / "p"),
                                      "--x", "latency"])
    assert result.exit_code == 0, result.output
    assert (tmp / "p.png").stat().st_size > 0
    plain = usspectrum.sweep(ckpt, data, "0.5", tmp / "plain.csv", **FAST)
    assert plain.latency_ms.isna().all()
    result = CliRunner().invoke(cli, ["plot", str(tmp / "plain.csv"), "-o", str(tmp / "q"),
                                      "--x", "latency"])
    assert result.exit_code == 2 and "--latency" in result.output


def test_x_latency_without_latency_is_a_usage_error(setup):
    tmp, data, ckpt = setup
    result = CliRunner().invoke(cli, ["sweep", str(ckpt), "--data", str(data), "--x", "latency",
                                      "--quiet"])
    assert result.exit_code == 2 and "--latency" in result.output


def test_csv_of_an_older_version_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.csv"
    pd.DataFrame({"width": ["0.25"], "top1": [50.0], "fingerprint": ["f"]}).to_csv(path, index=False)
    writer = RowWriter(path, ["width", "top1", "latency_ms", "fingerprint"])
    writer.append({"width": "0.5", "top1": 60.0, "latency_ms": 1.5, "fingerprint": "f"})
    df = pd.read_csv(path, dtype={"width": str})
    assert df.width.tolist() == ["0.25", "0.5"] and df.top1.tolist() == [50.0, 60.0]
    assert pd.isna(df.latency_ms.iloc[0]) and df.latency_ms.iloc[1] == 1.5


LOAD_WITHOUT_USSPECTRUM = """
import json, sys, torch
sys.modules["usspectrum"] = None  # importing it would fail
path, fmt, x_path, out_path = sys.argv[1:]
x = torch.load(x_path, weights_only=True)
if fmt == "torchscript":
    files = {"usspectrum.json": ""}
    net = torch.jit.load(path, _extra_files=files)
else:
    files = {"usspectrum.json": ""}
    net = torch.export.load(path, extra_files=files).module()
meta = json.loads(files["usspectrum.json"])
torch.save({"y": net(x), "meta": meta}, out_path)
"""


@pytest.mark.parametrize("suffix, fmt", [(".pt", "torchscript"), (".pt2", "export")])
def test_export_loads_without_usspectrum_and_matches(setup, suffix, fmt):
    tmp, data, ckpt = setup
    out = tmp / f"slim{suffix}"
    result = CliRunner().invoke(cli, ["export", str(ckpt), "--width", "0.6", "-o", str(out),
                                      "--data", str(data), "--calib-images", "6"])
    assert result.exit_code == 0, result.output
    assert fmt in result.output
    x = torch.randn(5, 3, 32, 32)
    torch.save(x, tmp / "x.pt")
    script = tmp / "load.py"
    script.write_text(LOAD_WITHOUT_USSPECTRUM)
    subprocess.run([sys.executable, str(script), str(out), fmt, str(tmp / "x.pt"),
                    str(tmp / "y.pt")], check=True, cwd=tmp)
    loaded = torch.load(tmp / "y.pt", weights_only=True)
    # the same statistics, calibrated the same way, in the sliced model
    model, _ = usspectrum.spectrum.calibrate.prepare_width(ckpt, 0.6, data, calib_images=6)
    model.set_width(0.6)
    with torch.no_grad():
        torch.testing.assert_close(loaded["y"], model(x), rtol=1e-4, atol=1e-5)
    assert loaded["meta"]["width"] == "0.6" and loaded["meta"]["class_names"] == CLASSES
    assert loaded["meta"]["channels"][0] == 24  # make_divisible(32 * 0.6) by the facts file


def test_export_errors_are_one_line(setup):
    tmp, data, ckpt = setup
    result = CliRunner().invoke(cli, ["export", str(ckpt), "--width", "0.1", "-o", str(tmp / "a.pt")])
    assert result.exit_code == 2 and "--allow-extrapolate" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(cli, ["export", str(ckpt), "--width", "0.5", "-o", str(tmp / "b.pt")])
    assert result.exit_code == 0 and "no calibrated BN statistics" in result.output
