"""The sweep: rows per width, resume, plots, and bad input."""
import pandas as pd
import pytest
from click.testing import CliRunner

import usspectrum
import usspectrum.spectrum.sweep as sweep_module
from usspectrum.io.checkpoint import save_checkpoint
from usspectrum.cli import cli
from usspectrum.errors import USSpectrumError, UsageError

from helpers import CLASSES, make_image_folder

FAST = dict(calib_images=6, eval_images=6, batch_size=4, workers=0, progress=False)


@pytest.fixture
def setup(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=3)
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=3)
    ckpt = tmp_path / "us.pt"
    save_checkpoint(model, ckpt, class_names=CLASSES)
    return tmp_path, data, ckpt


def test_sweep_writes_one_row_per_width(setup):
    tmp, data, ckpt = setup
    df = usspectrum.sweep(ckpt, data, "0.25,0.5,1.0", tmp / "s.csv", widths_per_pass=2, **FAST)
    on_disk = pd.read_csv(tmp / "s.csv", dtype={"width": str})
    assert list(df.width) == list(on_disk.width) == ["0.25", "0.5", "1.0"]
    for column in ("model", "kind", "width", "mflops", "params_m", "top1", "top5",
                   "calib_images", "eval_images", "seconds"):
        assert column in on_disk.columns
    assert (on_disk.kind == "us").all() and (on_disk.eval_images == 6).all()
    assert (on_disk.calib_images == 6).all() and (on_disk.bn == "calibrated").all()
    assert on_disk.mflops.is_monotonic_increasing
    assert on_disk.top1.between(0, 100).all() and (on_disk.top5 >= on_disk.top1).all()


def test_interrupted_sweep_resumes_without_recomputing(setup, monkeypatch):
    tmp, data, ckpt = setup
    real = sweep_module._run_pass
    calls = []

    def flaky(model, chunk, *args):
        calls.append([str(c) for c in chunk])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, chunk, *args)

    monkeypatch.setattr(sweep_module, "_run_pass", flaky)
    with pytest.raises(KeyboardInterrupt):
        usspectrum.sweep(ckpt, data, "0.25,0.5,0.75,1.0", tmp / "s.csv", widths_per_pass=2, **FAST)
    kept = pd.read_csv(tmp / "s.csv", dtype={"width": str})
    assert list(kept.width) == ["0.25", "0.5"]

    calls.clear()
    df = usspectrum.sweep(ckpt, data, "0.25,0.5,0.75,1.0", tmp / "s.csv", widths_per_pass=2, **FAST)
    assert calls == [["0.75", "1.0"]]
    assert list(df.width) == ["0.25", "0.5", "0.75", "1.0"]
    assert df.iloc[:2].top1.tolist() == kept.top1.tolist()


def test_stored_statistics_skip_calibration(setup):
    tmp, data, ckpt = setup
    usspectrum.calibrate_checkpoint(str(ckpt), str(data), "0.5", str(tmp / "cal.pt"),
                                    calib_images=6, batch_size=4, workers=0, progress=False)
    df = usspectrum.sweep(tmp / "cal.pt", data, "0.5,0.6", **FAST)
    assert df.set_index("width").bn.to_dict() == {"0.5": "stored", "0.6": "calibrated"}


def test_bad_inputs(setup):
    tmp, data, ckpt = setup
    with pytest.raises(UsageError, match="no val/ folder"):
        usspectrum.sweep(ckpt, tmp, "0.5", **FAST)
    with pytest.raises(UsageError, match="--allow-extrapolate"):
        usspectrum.sweep(ckpt, data, "0.2", **FAST)
    with pytest.raises(UsageError, match="only 9 images"):
        usspectrum.sweep(ckpt, data, "0.5", **{**FAST, "calib_images": 50})
    other = make_image_folder(tmp / "other", classes=["x", "y", "z"], per_class=1)
    with pytest.raises(USSpectrumError, match="do not match the checkpoint"):
        usspectrum.sweep(ckpt, other, "0.5", **FAST)
    (tmp / "file").write_text("x")
    with pytest.raises(USSpectrumError, match="cannot create folder"):
        usspectrum.sweep(ckpt, data, "0.5", tmp / "file" / "s.csv", **FAST)


def test_existing_csv_of_another_checkpoint_is_refused(setup):
    tmp, data, ckpt = setup
    usspectrum.sweep(ckpt, data, "0.5", tmp / "s.csv", **FAST)
    before = (tmp / "s.csv").read_text()
    other = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=3)
    save_checkpoint(other, tmp / "other.pt", class_names=CLASSES)
    with pytest.raises(USSpectrumError, match="another checkpoint"):
        usspectrum.sweep(tmp / "other.pt", data, "0.5,1.0", tmp / "s.csv", **FAST)
    assert (tmp / "s.csv").read_text() == before


def test_csv_calibrated_with_another_augmentation_is_refused(setup):
    tmp, data, ckpt = setup
    usspectrum.sweep(ckpt, data, "0.5", tmp / "s.csv", calib_augment="none", **FAST)
    on_disk = pd.read_csv(tmp / "s.csv")
    assert list(on_disk.calib_augment) == ["none"]
    before = (tmp / "s.csv").read_text()
    with pytest.raises(USSpectrumError, match="--calib-augment none"):
        usspectrum.sweep(ckpt, data, "0.5,1.0", tmp / "s.csv", **FAST)
    assert (tmp / "s.csv").read_text() == before
    # a CSV from before the column existed was calibrated on plain images
    on_disk.drop(columns="calib_augment").to_csv(tmp / "old.csv", index=False)
    with pytest.raises(USSpectrumError, match="--calib-augment none"):
        usspectrum.sweep(ckpt, data, "0.5,1.0", tmp / "old.csv", **FAST)
    df = usspectrum.sweep(ckpt, data, "0.5,1.0", tmp / "old.csv", calib_augment="none", **FAST)
    assert list(df.width) == ["0.5", "1.0"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_sweep_writes_csv_and_plots(setup):
    tmp, data, ckpt = setup
    result = run("sweep", ckpt, "--data", data, "--widths", "0.25,1.0", "-o", tmp / "cli.csv",
                 "--calib-images", 6, "--eval-images", 6, "--workers", 0, "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp / "cli.png").stat().st_size > 0 and (tmp / "cli.svg").stat().st_size > 0
    assert len(pd.read_csv(tmp / "cli.csv")) == 2


@pytest.mark.parametrize("make_args, code, needle", [
    (lambda t, d, c: ["sweep", t / "none.pt", "--data", d, "--quiet"], 1, "does not exist"),
    (lambda t, d, c: ["sweep", c, "--data", t / "nowhere", "--quiet"], 2, "does not exist"),
    (lambda t, d, c: ["sweep", c, "--data", d, "--widths", "0.1", "--quiet"], 2, "--allow-extrapolate"),
    (lambda t, d, c: ["sweep", c, "--data", d, "--widths", "0.5", "--calib-images", 99, "--quiet"], 2, "only 9"),
    (lambda t, d, c: ["sweep", c, "--data", d, "--device", "cuda:7", "--quiet"], 2, "no CUDA GPU"),
    (lambda t, d, c: ["plot", t / "none.csv", "-o", t / "p"], 2, "does not exist"),
])
def test_cli_errors_are_one_line(setup, make_args, code, needle):
    tmp, data, ckpt = setup
    result = run(*make_args(tmp, data, ckpt))
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output


def test_plot_refuses_a_csv_without_the_columns(tmp_path):
    pd.DataFrame({"width": [0.5], "top1": [50]}).to_csv(tmp_path / "x.csv", index=False)
    result = run("plot", tmp_path / "x.csv", "-o", tmp_path / "p")
    assert result.exit_code == 2 and "mflops" in result.output


@pytest.mark.data
def test_sweep_on_real_cifar10(cifar_root, tmp_path):
    names = sorted(p.name for p in (cifar_root / "train").iterdir())
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=10)
    save_checkpoint(model, tmp_path / "c.pt", class_names=names)
    df = usspectrum.sweep(tmp_path / "c.pt", cifar_root, "0.25,1.0", tmp_path / "c.csv",
                          calib_images=64, eval_images=64, batch_size=32, workers=0,
                          progress=False)
    assert list(df.eval_images) == [64, 64] and list(df.calib_images) == [64, 64]
    assert df.mflops.tolist() == pytest.approx([_cifar_mflops(0.25), _cifar_mflops(1.0)],
                                               abs=5e-4)
    assert ((0 <= df.top1) & (df.top1 <= 100)).all() and (df.top1 <= df.top5).all()


def _cifar_mflops(width: float) -> float:
    """MobileNet v1 with the CIFAR stem on 32x32, counted by hand: every
    conv's k*k*(cin/groups)*cout*H*W multiply-adds, the average pool's one
    add per input value, and the classifier (the paper's convention)."""
    from usspectrum import make_divisible

    stages = [(64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)]
    side, cin = 32, make_divisible(32 * width)
    macs = 3 * 3 * 3 * cin * side * side
    for channels, repeats, stride in stages:
        for i in range(repeats):
            side //= stride if i == 0 else 1
            cout = make_divisible(channels * width)
            macs += 3 * 3 * cin * side * side + cin * cout * side * side
            cin = cout
    return (macs + side * side * cin + cin * 10) / 1e6


def test_csv_keeps_the_checkpoint_path_as_given(setup, monkeypatch):
    tmp, data, ckpt = setup
    monkeypatch.chdir(tmp)
    result = CliRunner().invoke(cli, ["sweep", "us.pt", "--data", "data", "--widths", "0.5",
                                      "--calib-images", "6", "--eval-images", "6",
                                      "--workers", "0", "-o", "rel.csv", "--quiet"])
    assert result.exit_code == 0, result.output
    on_disk = pd.read_csv(tmp / "rel.csv")
    assert list(on_disk.checkpoint) == ["us.pt"]
    # a rerun from another folder with another spelling of the same file resumes it
    (tmp / "sub").mkdir()
    monkeypatch.chdir(tmp / "sub")
    df = usspectrum.sweep("../us.pt", "../data", "0.5,1.0", "../rel.csv", **FAST)
    assert list(df.width.astype(str)) == ["0.5", "1.0"]
    assert list(pd.read_csv(tmp / "rel.csv").checkpoint) == ["us.pt", "../us.pt"]
