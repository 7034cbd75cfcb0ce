"""compare, slim-stage and demo: combined results, warnings and bad input."""
import pandas as pd
import pytest
from click.testing import CliRunner

import usspectrum
from usspectrum.io.checkpoint import save_checkpoint
from usspectrum.cli import cli
from usspectrum.spectrum.compare import compare, slim_stage
from usspectrum.errors import USSpectrumError

from helpers import CLASSES, make_image_folder

FAST = usspectrum.SweepSettings(calib_images=6, eval_images=6, batch_size=6, workers=0,
                                progress=False)


@pytest.fixture
def trio(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=3)
    paths = []
    for name in ("us_mobilenet_v1", "s_mobilenet_v1", "mobilenet_v1"):
        model = usspectrum.create_model(name, stem="cifar", num_classes=3)
        save_checkpoint(model, tmp_path / f"{name}.pt", class_names=CLASSES)
        paths.append(tmp_path / f"{name}.pt")
    return tmp_path, data, paths


def test_compare_sweeps_every_model_at_the_same_widths(trio):
    tmp, data, paths = trio
    df = compare(paths, data, "0.25,0.4,1.0", tmp / "cmp", FAST)
    assert sorted(df.model.unique()) == sorted(p.stem for p in paths)
    assert df.groupby("model").width.apply(list).map(tuple).nunique() == 1
    assert (df.bn == "calibrated").all()  # even at an S-Net's switches
    on_disk = pd.read_csv(tmp / "cmp" / "compare.csv")
    assert len(on_disk) == 9 and (tmp / "cmp" / "compare.png").exists()
    assert FAST.calibration == "auto" and not FAST.allow_extrapolate  # caller's settings untouched


def test_compare_refuses_different_class_lists(trio):
    tmp, data, paths = trio
    other = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=3)
    save_checkpoint(other, tmp / "other.pt", class_names=["x", "y", "z"])
    with pytest.raises(USSpectrumError, match="other classes"):
        compare([paths[0], tmp / "other.pt"], data, "0.5", tmp / "cmp", FAST)


def test_slim_stage_rows_and_warning_for_a_uniform_net(trio):
    tmp, data, paths = trio
    with pytest.warns(UserWarning, match="not a nonuniform-trained US-Net"):
        df = slim_stage(paths[0], data, [1, 5], 0.6, "0.5,1.0", tmp / "ss.csv", FAST)
    assert list(df.width) == ["0.5", "1.0", "0.5@s1x0.6", "1.0@s1x0.6", "0.5@s5x0.6", "1.0@s5x0.6"]
    flops = df.set_index("width").mflops
    assert flops["1.0@s5x0.6"] < flops["1.0"] and flops["1.0@s1x0.6"] < flops["1.0"]
    result = CliRunner().invoke(cli, ["plot", str(tmp / "ss.csv"), "-o", str(tmp / "again")])
    assert result.exit_code == 0 and (tmp / "again.svg").exists()


@pytest.mark.parametrize("args, needle", [
    (["--stage", "0"], "out of range"),
    (["--stage", "6"], "out of range"),
    (["--stage", "5", "--ratio", "1.5"], "(0, 1]"),
    (["--stage", "five"], "'all'"),
])
def test_slim_stage_bad_input_is_one_line(trio, args, needle):
    tmp, data, paths = trio
    result = CliRunner().invoke(cli, ["slim-stage", str(paths[0]), "--data", str(data),
                                      "--quiet", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output


def test_cli_compare_with_mismatched_classes_is_one_line(trio):
    tmp, data, paths = trio
    other = usspectrum.create_model("mobilenet_v1", stem="cifar", num_classes=2)
    save_checkpoint(other, tmp / "two.pt", class_names=["a", "b"])
    result = CliRunner().invoke(cli, ["compare", str(paths[0]), str(tmp / "two.pt"),
                                      "--data", str(data), "-o", str(tmp / "c"), "--quiet"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "other classes" in result.output


@pytest.mark.slow
def test_demo_writes_both_figures(tmp_path):
    from usspectrum.demo import run_demo

    results = run_demo(tmp_path / "demo", epochs=1, progress=False)
    compare_df = pd.read_csv(tmp_path / "demo" / "compare.csv", dtype={"width": str})
    assert compare_df.model.nunique() == 3 and len(compare_df) == 3 * 16
    # every model at the same 16 widths, 0.25:1.0:0.05, each BN-calibrated there
    widths = [f"{0.25 + 0.05 * i:.2f}".rstrip("0") for i in range(16)]
    for _, rows in compare_df.groupby("model"):
        assert [float(w) for w in rows.width] == [float(w) for w in widths]
        assert (rows.bn == "calibrated").all()
        assert rows.mflops.is_monotonic_increasing
    # the three share one architecture, so equal widths cost equal MFLOPs
    assert compare_df.groupby("width").mflops.nunique().max() == 1
    stage = results["slim_stage"]
    assert len(stage) == 7 * 4
    # slimming a stage on top of a width never costs more MFLOPs than the width
    # alone, and less once the stage has channels to lose (from 0.5 up: 8 is the floor)
    uniform = stage[~stage.width.astype(str).str.contains("@")].set_index("width").mflops
    for _, row in stage[stage.width.astype(str).str.contains("@")].iterrows():
        width = row.width.split("@")[0]
        assert row.mflops <= uniform[width]
        if float(width) >= 0.5:
            assert row.mflops < uniform[width], row.width
    for name in ("compare", "slim-stage"):
        assert (tmp_path / "demo" / f"{name}.png").exists()
        assert (tmp_path / "demo" / f"{name}.svg").exists()
