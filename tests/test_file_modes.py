"""Result files get the permissions the user's umask gives any new file
(atomic writes used to leave them 0600)."""
import os
import stat

import pandas as pd
import pytest

import usspectrum
from usspectrum.io.export import export_width
from usspectrum.io.plot import plot_spectrum
from usspectrum.io.results import RowWriter, write_table


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_writer_honours_the_umask(tmp_path, umask):
    expected = 0o666 & ~umask
    df = pd.DataFrame({"model": ["m", "m"], "width": ["0.5", "1.0"], "mflops": [1.0, 2.0],
                       "top1": [50.0, 60.0]})
    write_table(df, tmp_path / "table.csv")
    write_table(df, tmp_path / "table.json")
    writer = RowWriter(tmp_path / "rows.csv", ["width", "top1"])
    writer.append({"width": "0.5", "top1": 1.0})
    plots = plot_spectrum(df, tmp_path / "plot")
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=3,
                                    repeats=(1, 1, 1, 1, 1))
    usspectrum.save_checkpoint(model, tmp_path / "m.pt")
    export_width(model, 0.5, tmp_path / "slim.pt")
    written = [tmp_path / n for n in ("table.csv", "table.json", "rows.csv", "m.pt", "slim.pt")]
    for path in written + list(plots):
        assert _mode(path) == expected, f"{path.name}: {oct(_mode(path))} != {oct(expected)}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
