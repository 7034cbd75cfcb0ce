import pandas as pd

from usspectrum.io.plot import plot_spectrum, series_of, stage_series


def test_stage_series_names():
    assert stage_series("0.75") == "uniform"
    assert stage_series("0.75@s5x0.6") == "stage 5 x0.6"
    assert stage_series("0.5@s1x0.6@s5x0.8") == "stage 1 x0.6 + stage 5 x0.8"


def test_series_split_by_stage_only_when_widths_carry_stages():
    plain = pd.DataFrame({"model": ["a", "b"], "width": ["0.5", "0.5"]})
    assert list(series_of(plain)) == ["a", "b"]
    staged = pd.DataFrame({"model": ["a", "a"], "width": ["0.5", "0.5@s5x0.6"]})
    assert list(series_of(staged)) == ["uniform", "stage 5 x0.6"]
    two = pd.DataFrame({"model": ["a", "b"], "width": ["0.5", "0.5@s5x0.6"]})
    assert list(series_of(two)) == ["a uniform", "b stage 5 x0.6"]


def test_plot_writes_png_and_svg_of_the_data(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig",
                        lambda self, *a, **kw: saved.append(self) or real_savefig(self, *a, **kw))
    # rows out of order: the curve must be drawn along the x axis
    df = pd.DataFrame({"model": ["s"] * 3 + ["t"] * 2, "width": ["1.0", "0.25", "0.5", "0.5", "1.0"],
                       "mflops": [46.3, 3.3, 12.1, 12.1, 46.3],
                       "top1": [80.0, 60.0, 70.0, 20.0, 75.0]})
    paths = plot_spectrum(df, tmp_path / "fig.png", marked={"s": ["0.5"]})
    assert [p.name for p in paths] == ["fig.png", "fig.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in paths[1].read_text()
    ax = saved[0].axes[0]
    curves = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
    assert list(curves) == ["s", "t"]  # the legend, in row order
    assert list(curves["s"].get_xdata()) == [3.3, 12.1, 46.3]
    assert list(curves["s"].get_ydata()) == [60.0, 70.0, 80.0]
    assert list(curves["t"].get_ydata()) == [20.0, 75.0]
    rings = [line for line in ax.lines if line.get_label().startswith("_")]
    assert len(rings) == 1 and list(rings[0].get_xdata()) == [12.1]  # the marked switch only
    assert rings[0].get_markeredgecolor() == curves["s"].get_color()
    assert "MFLOPs" in ax.get_xlabel() and "Top-1" in ax.get_ylabel()
