import pandas as pd

from usspectrum.plot import plot_spectrum, series_of, stage_series


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


def test_plot_writes_png_and_svg(tmp_path):
    df = pd.DataFrame({"model": ["s"] * 3, "width": ["0.25", "0.5", "1.0"],
                       "mflops": [3.3, 12.1, 46.3], "top1": [60.0, 70.0, 80.0]})
    paths = plot_spectrum(df, tmp_path / "fig.png", marked={"s": ["0.5"]})
    assert [p.name for p in paths] == ["fig.png", "fig.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in paths[1].read_text()
