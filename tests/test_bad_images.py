"""Unreadable image files: a one-line error naming the file (main process
and DataLoader workers), work already written kept, and --skip-bad-images
leaving them out with a count in the CSV and the training log."""
import io

import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

import usspectrum
from usspectrum.io.checkpoint import save_checkpoint
from usspectrum.cli import cli
from usspectrum.io.data import BadImageError, CheckedLoader, read_image

from helpers import CLASSES, make_image_folder


def _truncated_jpeg(path, size=32):
    buffer = io.BytesIO()
    Image.effect_noise((size, size), 60).convert("RGB").save(buffer, format="JPEG", quality=95)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def _spoil(root, split):
    bad = [_truncated_jpeg(root / split / "ant" / "cut.jpg"), root / split / "bee" / "empty.png"]
    bad[1].write_bytes(b"")
    return bad


@pytest.fixture
def setup(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=3)
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=3,
                                    repeats=(1, 1, 1, 1, 1))
    save_checkpoint(model, tmp_path / "us.pt", class_names=CLASSES)
    return tmp_path, data


def test_the_files_really_are_unreadable(tmp_path):
    loader = CheckedLoader(read_image)
    for path in _spoil(make_image_folder(tmp_path, per_class=1), "val"):
        with pytest.raises(BadImageError, match=path.name):
            loader(str(path))


def test_error_from_a_worker_is_cut_to_its_own_line():
    rebuilt = BadImageError("Caught BadImageError in DataLoader worker process 0.\n"
                            "Original Traceback (most recent call last):\n  File x\n"
                            "usspectrum.io.data.BadImageError: cannot read image /d/a.jpg (bad)\n")
    assert str(rebuilt) == "cannot read image /d/a.jpg (bad)"


@pytest.mark.parametrize("workers", ["0", "1"])
def test_sweep_names_the_bad_file_then_skips_it(setup, workers):
    tmp, data = setup
    bad = _spoil(data, "val")
    args = ["sweep", str(tmp / "us.pt"), "--data", str(data), "--widths", "0.5,1.0",
            "--calib-images", "6", "--workers", workers, "-o", str(tmp / "s.csv"), "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot read image" in lines[0], result.output
    assert any(p.name in lines[0] for p in bad) and "--skip-bad-images" in lines[0]

    result = CliRunner().invoke(cli, args + ["--skip-bad-images"])
    assert result.exit_code == 0, result.output
    # the warning reaches the user as one line, with every left-out path
    warned = [l for l in result.output.splitlines() if "left out" in l]
    assert len(warned) == 1, result.output
    assert warned[0].startswith("Warning: --skip-bad-images: left out 2 unreadable images")
    assert all(str(p) in warned[0] for p in bad)
    rows = pd.read_csv(tmp / "s.csv")
    assert list(rows.skipped_images) == [2, 2] and list(rows.eval_images) == [9, 9]


@pytest.mark.parametrize("size,workers", [(16, "0"), (64, "1")])  # in memory; DataLoader worker
def test_training_names_the_bad_file_keeps_its_epochs_then_skips_it(tmp_path, size, workers):
    data = make_image_folder(tmp_path / "data", per_class=4, size=size)
    out = tmp_path / "m.pt"
    args = ["train", "--kind", "individual", "--data", str(data), "-o", str(out),
            "--batch-size", "4", "--val-images", "4", "--calib-images", "4",
            "--workers", workers, "--repeats", "1,1,1,1,1", "--quiet"]
    # one of two epochs done, as if the run had stopped there
    usspectrum.train(kind="individual", data=str(data), out=str(out), epochs=2, stop_after=1,
                     batch_size=4, val_images=4, calib_images=4, workers=int(workers),
                     repeats=(1, 1, 1, 1, 1), progress=False)
    bad = _truncated_jpeg(data / "train" / "cat" / "cut.jpg", size)
    result = CliRunner().invoke(cli, args + ["--epochs", "2", "--resume"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and bad.name in lines[0], result.output
    with pytest.warns(UserWarning, match=r"unfinished training run \(epoch 1 of 2\)"):
        assert usspectrum.load_checkpoint(out).meta["train"]["epochs_done"] == 1  # kept

    result = CliRunner().invoke(cli, args + ["--epochs", "2", "--resume", "--skip-bad-images"])
    assert result.exit_code == 0, result.output
    assert any(l.startswith("Warning: ") and "cut.jpg" in l for l in result.output.splitlines())
    log = pd.read_csv(tmp_path / "m-log.csv")
    assert list(log.epoch) == [1, 2] and int(log.skipped_images.iloc[-1]) == 1
