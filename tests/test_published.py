"""The authors' published spectra and --reference curves in figures."""
import pandas as pd
import pytest
from click.testing import CliRunner

import usspectrum
from usspectrum.cli import cli
from usspectrum.io.published import published
from usspectrum.nn.width import parse_width_list


def test_us_mobilenet_spectra_have_every_released_width():
    v1 = published("us_mobilenet_v1")
    # the 31 widths of the release, 1.0 down to 0.25, as sweep CSVs write them
    assert sorted(v1["width"]) == sorted(str(c) for c in parse_width_list("0.25:1.0:0.025"))
    # the facts file's table: 1.0 -> 568 MFLOPs, 28.2 error; 0.25 -> 41, 44.3
    first = v1.set_index("width").loc[["1.0", "0.25"]]
    assert list(first["mflops"]) == [568, 41] and list(first["top1"]) == [71.8, 55.7]
    v2 = published("us_mobilenet_v2")
    assert len(v2) == 27 and v2.set_index("width").loc["0.35", "mflops"] == 59
    assert v2.set_index("width").loc["1.0", "top1"] == 71.5


def test_every_release_is_listed_with_its_switches():
    table = published()
    counts = table.groupby("model").size().to_dict()
    assert counts == {"us_mobilenet_v1": 31, "us_mobilenet_v2": 27, "s_mobilenet_v1": 4,
                      "s_mobilenet_v2": 4, "s_shufflenet": 3, "s_resnet50": 4,
                      "autoslim_mobilenet_v1": 3, "autoslim_mobilenet_v2": 3,
                      "autoslim_mnasnet": 3, "autoslim_resnet50": 4}
    autoslim = published("autoslim_mobilenet_v1").set_index("width")
    assert autoslim.loc["150M", "top1"] == 67.9 and autoslim.loc["572M", "mflops"] == 572
    with pytest.raises(usspectrum.UsageError, match="no published numbers for 'resnet18'"):
        published("resnet18")


def test_published_cli_writes_csv_and_refuses_unknown_names(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["published", "--csv", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "p.csv")) == 86
    bad = runner.invoke(cli, ["published", "--model", "vgg"])
    assert bad.exit_code == 2 and "known: us_mobilenet_v1" in bad.output


def test_plot_reference_draws_the_31_published_points(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(args[0]), list(args[1])))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    sweep = pd.DataFrame({"model": "mine", "width": ["0.25", "0.5", "1.0"],
                          "mflops": [41.0, 150.0, 569.0], "top1": [50.0, 60.0, 70.0]})
    sweep.to_csv(tmp_path / "s.csv", index=False)
    runner = CliRunner()
    ref = runner.invoke(cli, ["plot", str(tmp_path / "s.csv"), "-o", str(tmp_path / "b"),
                              "--reference", "us_mobilenet_v1"])
    assert ref.exit_code == 0, ref.output
    curves = {label: (x, y) for label, x, y in drawn if label}
    assert set(curves) == {"mine", "us_mobilenet_v1 (published)"}
    x, y = curves["us_mobilenet_v1 (published)"]
    assert len(x) == 31 and (x[0], y[0]) == (41, 55.7) and (x[-1], y[-1]) == (568, 71.8)
    assert "us_mobilenet_v1 (published)" in (tmp_path / "b.svg").read_text()
    bad = runner.invoke(cli, ["plot", str(tmp_path / "s.csv"), "-o", str(tmp_path / "c"),
                              "--reference", "us_mobilenet_v9"])
    assert bad.exit_code == 2 and "no published numbers" in bad.output
