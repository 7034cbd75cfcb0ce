"""Bad input, tried as a new user would: every case must end in one
``Error:`` line (no traceback), a non-zero exit, and no file already
written changed. Also the repairs that must not be errors: damaged result
rows measured again, defaults lowered to fit a small data set."""
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import usspectrum
from usspectrum.io.checkpoint import save_checkpoint
from usspectrum.cli import cli
from usspectrum.io.data import ImageSpec, open_rgb, read_image

from helpers import CLASSES, make_image_folder

TINY = dict(repeats=(1, 1, 1, 1, 1))
FAST = ["--calib-images", "6", "--batch-size", "4", "--workers", "0", "--quiet"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, needle: str = "", code: int | None = None) -> str:
    """The run failed with exactly one ``Error:`` line and no traceback."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert needle in errors[0], result.output
    return errors[0]


def snapshot(*paths: Path) -> dict:
    """The bytes of every file under ``paths`` (to prove nothing changed)."""
    files = {}
    for path in paths:
        for file in ([path] if path.is_file() else sorted(path.rglob("*"))):
            if file.is_file():
                files[file] = file.read_bytes()
    return files


@pytest.fixture
def setup(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=3, size=16)
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=3, **TINY)
    save_checkpoint(model, tmp_path / "us.pt", class_names=CLASSES)
    return tmp_path, data, tmp_path / "us.pt"


# --- resume identity ------------------------------------------------------

@pytest.mark.parametrize("change,needle", [
    (["--calib-images", "4"], "--calib-images 6 (now 4)"),
    (["--seed", "3"], "--seed 0 (now 3)"),
    (["--eval-images", "5"], "--eval-images 9 (now 5)"),
    (["--calib-augment", "none"], "--calib-augment train (now none)"),
    (["--calibration", "never"], "--calibration"),
])
def test_sweep_rerun_with_other_settings_is_refused_and_the_csv_kept(setup, change, needle):
    tmp, data, ckpt = setup
    out = tmp / "s.csv"
    assert run("sweep", ckpt, "--data", data, "--widths", "0.5,1.0", "-o", out, "--no-plot",
               *FAST).exit_code == 0
    before = snapshot(out)
    args = [a for a in FAST if a not in ("--calib-images", "6")] if "--calib-images" in change \
        else FAST
    result = run("sweep", ckpt, "--data", data, "--widths", "0.5,1.0", "-o", out, "--no-plot",
                 *args, *change)
    line = assert_one_line_error(result, needle)
    assert "--overwrite" in line
    assert snapshot(out) == before


def test_sweep_rerun_on_other_data_is_refused_until_overwrite(setup):
    tmp, data, ckpt = setup
    other = make_image_folder(tmp / "other", per_class=4, size=16, seed=5)
    out = tmp / "s.csv"
    assert run("sweep", ckpt, "--data", data, "--widths", "0.5", "-o", out, "--no-plot",
               *FAST).exit_code == 0
    before = snapshot(out)
    assert_one_line_error(run("sweep", ckpt, "--data", other, "--widths", "0.5", "-o", out,
                              "--no-plot", *FAST), "other data")
    assert snapshot(out) == before
    # a copy of the same files elsewhere is the same data
    copy = tmp / "copy"
    shutil.copytree(data, copy)
    assert run("sweep", ckpt, "--data", copy, "--widths", "0.5", "-o", out, "--no-plot",
               *FAST).exit_code == 0
    assert snapshot(out) == before
    result = run("sweep", ckpt, "--data", other, "--widths", "0.5", "-o", out, "--no-plot",
                 "--overwrite", *FAST)
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out)["eval_images"].tolist() == [12]  # 4 per class now


def test_compare_slim_stage_and_search_check_what_they_resume(setup):
    tmp, data, ckpt = setup
    other = make_image_folder(tmp / "other", per_class=4, size=16, seed=5)
    assert run("compare", ckpt, "--data", data, "--widths", "0.5", "-o", tmp / "cmp",
               "--no-plot", *FAST).exit_code == 0
    before = snapshot(tmp / "cmp")
    assert_one_line_error(run("compare", ckpt, "--data", data, "--widths", "0.5", "-o",
                              tmp / "cmp", "--no-plot", *FAST, "--seed", "1"), "--seed 0")
    assert run("slim-stage", ckpt, "--stage", "5", "--data", data, "--widths", "0.5", "-o",
               tmp / "st.csv", "--no-plot", *FAST).exit_code == 0
    before.update(snapshot(tmp / "st.csv"))
    assert_one_line_error(run("slim-stage", ckpt, "--stage", "5", "--data", other, "--widths",
                              "0.5", "-o", tmp / "st.csv", "--no-plot", *FAST), "other data")
    search = ["--granularity", "stage", "--step", "0.5", "--search-images", "6",
              "--calib-images", "3", "--batch-size", "4", "--workers", "0", "--no-report",
              "--quiet", "-o", tmp / "path.csv"]
    assert run("search", ckpt, "--data", data, *search).exit_code == 0
    before.update(snapshot(tmp / "path.csv"))
    assert_one_line_error(run("search", ckpt, "--data", other, *search), "other data")
    assert snapshot(tmp / "cmp", tmp / "st.csv", tmp / "path.csv") == before


def test_csv_of_another_model_is_refused(setup):
    tmp, data, ckpt = setup
    out = tmp / "s.csv"
    assert run("sweep", ckpt, "--data", data, "--widths", "0.5", "-o", out, "--no-plot",
               *FAST).exit_code == 0
    before = snapshot(out)
    other = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=3, **TINY)
    save_checkpoint(other, tmp / "other.pt", class_names=CLASSES)
    assert_one_line_error(run("sweep", tmp / "other.pt", "--data", data, "--widths", "0.5",
                              "-o", out, "--no-plot", *FAST), "another checkpoint")
    assert snapshot(out) == before


# --- checkpoint and data that cannot belong together ------------------------

def test_imagenet_checkpoint_on_a_ten_class_folder_is_refused_before_any_work(tmp_path):
    from torchvision.models import mobilenet_v2

    torch.save(mobilenet_v2().state_dict(), tmp_path / "tv.pt")
    data = make_image_folder(tmp_path / "data", classes=[f"c{i}" for i in range(10)],
                             per_class=1, size=16)
    for command in (["sweep", tmp_path / "tv.pt", "--widths", "1.0", "-o", tmp_path / "s.csv",
                     "--no-plot"],
                    ["compare", tmp_path / "tv.pt", "--widths", "1.0", "-o", tmp_path / "c",
                     "--no-plot"]):
        result = run(*command, "--data", data, *FAST)
        assert_one_line_error(result, "10 classes but the checkpoint predicts 1000")
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "c").exists()


def test_imagenet_class_subset_is_named_as_such(tmp_path):
    from torchvision.models import mobilenet_v2

    torch.save(mobilenet_v2().state_dict(), tmp_path / "tv.pt")
    data = make_image_folder(tmp_path / "imagenette", classes=["n01440764", "n02102040"],
                             per_class=1, size=16)
    assert_one_line_error(run("sweep", tmp_path / "tv.pt", "--data", data, "--widths", "1.0",
                              "-o", tmp_path / "s.csv", "--no-plot", *FAST), "WordNet")


def test_class_names_that_differ_are_refused(setup):
    tmp, _, ckpt = setup
    data = make_image_folder(tmp / "zoo", classes=["ant", "bee", "cow"], per_class=2, size=16)
    assert_one_line_error(run("sweep", ckpt, "--data", data, "--widths", "0.5", "-o",
                              tmp / "s.csv", "--no-plot", *FAST), "do not match")


# --- damaged results --------------------------------------------------------

def _two_rows(tmp, data, ckpt) -> tuple[Path, pd.DataFrame]:
    out = tmp / "s.csv"
    assert run("sweep", ckpt, "--data", data, "--widths", "0.5,1.0", "-o", out, "--no-plot",
               *FAST).exit_code == 0
    return out, pd.read_csv(out, dtype={"width": str})


@pytest.mark.parametrize("damage", ["half-written", "wrong types", "header only"])
def test_damaged_csv_resumes_keeping_whole_rows(setup, damage):
    tmp, data, ckpt = setup
    out, whole = _two_rows(tmp, data, ckpt)
    lines = out.read_text().splitlines(keepends=True)
    if damage == "half-written":
        out.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    elif damage == "wrong types":
        fields = lines[2].split(",")
        fields[DISPLAY_TOP1] = "abc"
        out.write_text("".join(lines[:2]) + ",".join(fields))
    else:
        out.write_text(lines[0])
    result = run("sweep", ckpt, "--data", data, "--widths", "0.5,1.0", "-o", out, "--no-plot",
                 *FAST)
    assert result.exit_code == 0, result.output
    if damage != "header only":
        assert "damaged row" in result.output
    again = pd.read_csv(out, dtype={"width": str})
    assert again["width"].tolist() == ["0.5", "1.0"]
    # the whole row is the same row; the damaged one was measured again, to the same numbers
    assert again["top1"].tolist() == whole["top1"].tolist()
    if damage != "header only":
        assert again["seconds"].iloc[0] == whole["seconds"].iloc[0]


DISPLAY_TOP1 = usspectrum.spectrum.sweep.COLUMNS.index("top1")


@pytest.mark.parametrize("content", [b"name,score\nx,1\n", b"\x89PNG\r\n\x1a\n\x00\x00garbage"])
def test_a_file_that_is_not_a_results_csv_is_refused_and_left_alone(setup, content):
    tmp, data, ckpt = setup
    out = tmp / "notes.csv"
    out.write_bytes(content)
    assert_one_line_error(run("sweep", ckpt, "--data", data, "--widths", "0.5", "-o", out,
                              "--no-plot", *FAST), "notes.csv")
    assert out.read_bytes() == content


# --- damaged checkpoints -----------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "byte-flipped", "folder"])
def test_damaged_checkpoint_is_one_line(setup, damage):
    tmp, data, ckpt = setup
    target = tmp / "bad.pt"
    raw = ckpt.read_bytes()
    if damage == "truncated":
        target.write_bytes(raw[: len(raw) // 2])
    elif damage == "byte-flipped":
        flipped = bytearray(raw)
        flipped[len(raw) // 2] ^= 0xFF  # inside the tensor data, which zip does not check
        target.write_bytes(bytes(flipped))
    else:
        target.mkdir()
    needle = {"truncated": "corrupt", "byte-flipped": "damaged", "folder": "is a folder"}[damage]
    for command in (["sweep", target, "--data", data, "--widths", "0.5", "-o", tmp / "s.csv",
                     "--no-plot", *FAST],
                    ["export", target, "--width", "0.5", "-o", tmp / "e.pt"]):
        assert_one_line_error(run(*command), needle)
    assert not (tmp / "s.csv").exists() and not (tmp / "e.pt").exists()


# --- data that cannot be read -------------------------------------------------

def _broken_cifar(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ("batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch"):
        (folder / name).write_bytes(pickle.dumps({"data": np.zeros((2, 5)), "labels": [0, 1]}))
    return root


def _empty_folder(root: Path) -> Path:
    for split in ("train", "val"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
    return root


def _unreadable_image(root: Path) -> Path:
    make_image_folder(root, per_class=3, size=16)
    for split in ("train", "val"):
        (root / split / "bee" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


COMMANDS = {
    "sweep": lambda ck, d, t, w: ["sweep", ck, "--data", d, "--widths", "0.5", "-o", t / "s.csv",
                                  "--no-plot", "--calib-images", "6", "--workers", w, "--quiet"],
    "compare": lambda ck, d, t, w: ["compare", ck, "--data", d, "--widths", "0.5", "-o", t / "c",
                                    "--no-plot", "--calib-images", "6", "--workers", w, "--quiet"],
    "calibrate": lambda ck, d, t, w: ["calibrate", ck, "--data", d, "--widths", "0.5",
                                      "--calib-images", "6", "-o", t / "cal.pt", "--workers", w,
                                      "--quiet"],
    "export": lambda ck, d, t, w: ["export", ck, "--width", "0.55", "--data", d,
                                   "--calib-images", "6", "-o", t / "e.pt"],
    "search": lambda ck, d, t, w: ["search", ck, "--data", d, "--step", "0.5", "--search-images",
                                   "6", "--calib-images", "3", "--workers", w, "--no-report",
                                   "--quiet", "-o", t / "p.csv"],
    "train": lambda ck, d, t, w: ["train", "--kind", "us", "--data", d, "-o", t / "m.pt",
                                  "--epochs", "1", "--batch-size", "4", "--image-size", "16",
                                  "--val-images", "6", "--calib-images", "6", "--workers", w,
                                  "--quiet"],
}


@pytest.mark.parametrize("broken,needle", [(_broken_cifar, "cifar-10-batches-py"),
                                           (_empty_folder, "one folder per class"),
                                           (_unreadable_image, "/bee/")])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_data_that_cannot_be_read_is_one_line(setup, broken, needle, command):
    tmp, _, ckpt = setup
    data = broken(tmp / "broken")
    if broken is _unreadable_image and command in ("calibrate", "export", "search"):
        # these read training images; make sure the bad one is among the drawn ones
        for split in ("train",):
            for i in range(3):
                (data / split / "bee" / f"{i}.png").write_bytes(b"not an image")
    workers = "1" if command in ("sweep", "train") and broken is _unreadable_image else "0"
    before = snapshot(tmp / "us.pt")
    result = run(*COMMANDS[command](ckpt, data, tmp, workers))
    assert_one_line_error(result, needle)
    assert snapshot(tmp / "us.pt") == before


def test_cifar_error_gives_no_download_advice(tmp_path):
    from usspectrum.io.data import open_split

    with pytest.raises(usspectrum.USSpectrumError) as caught:
        open_split(_broken_cifar(tmp_path / "c"), "val")
    assert "download=True" not in str(caught.value) and "never downloads" in str(caught.value)


# --- every image mode is read as RGB ------------------------------------------

def _mode_images(folder: Path) -> dict[str, np.ndarray]:
    """Images of every mode with the RGB pixels they stand for, worked out
    without Pillow's conversions where they differ from them."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    wide = rng.integers(0, 65536, (16, 16), dtype=np.uint16)
    expected = {}
    images = {
        "grey.png": (Image.fromarray(grey, "L"), np.repeat(grey[..., None], 3, -1)),
        "rgba.png": (Image.fromarray(np.dstack([rgb, grey]), "RGBA"), rgb),
        "palette.png": (Image.fromarray(rgb).quantize(16), None),
        "cmyk.jpg": (Image.fromarray(rgb).convert("CMYK"), None),
        "grey16.png": (Image.fromarray(wide),  # mode I;16
                       np.repeat(np.rint(wide / 257.0).astype(np.uint8)[..., None], 3, -1)),
    }
    for name, (image, pixels) in images.items():
        image.save(folder / name)
        if pixels is None:  # palette and CMYK: the colours Pillow maps the saved file to
            with Image.open(folder / name) as saved:
                pixels = np.asarray(saved.convert("RGB"))
        expected[name] = pixels
    return expected


def test_every_image_mode_reads_as_rgb(tmp_path):
    for name, pixels in _mode_images(tmp_path).items():
        ours = read_image(str(tmp_path / name)).permute(1, 2, 0).numpy()
        assert ours.shape == (16, 16, 3), name
        tolerance = 2 if name.endswith(".jpg") else 0  # JPEG decoders round differently
        assert np.abs(ours.astype(int) - pixels.astype(int)).max() <= tolerance, name
        assert np.array_equal(np.asarray(open_rgb(str(tmp_path / name))), ours) or tolerance


def test_sweep_and_training_read_a_folder_of_mixed_modes(tmp_path):
    for split in ("train", "val"):
        for name in CLASSES:
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            _mode_images(folder)
    result = run("train", "--kind", "us", "--data", tmp_path / "data", "-o", tmp_path / "m.pt",
                 "--epochs", "1", "--batch-size", "5", "--val-images", "15", "--calib-images",
                 "15", "--workers", "0", "--quiet", "--threads", "1", "--repeats", "1,1,1,1,1")
    assert result.exit_code == 0, result.output
    result = run("sweep", tmp_path / "m.pt", "--data", tmp_path / "data", "--widths", "1.0",
                 "-o", tmp_path / "s.csv", "--no-plot", "--calib-images", "15", "--workers", "1",
                 "--quiet")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "s.csv")["eval_images"].tolist() == [15]


# --- defaults that fit small data ---------------------------------------------

@pytest.fixture
def digits_model(tmp_path):
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=10, **TINY)
    save_checkpoint(model, tmp_path / "d.pt", class_names=[str(i) for i in range(10)],
                    image=ImageSpec.for_size(8))
    return tmp_path / "d.pt"


def test_defaults_fit_the_builtin_digits(tmp_path, digits_model):
    result = run("sweep", digits_model, "--data", "digits", "--widths", "0.5,1.0", "-o",
                 tmp_path / "s.csv", "--no-plot", "--quiet")
    assert result.exit_code == 0, result.output
    assert "Note: --calib-images" in result.output and "1347" in result.output
    assert pd.read_csv(tmp_path / "s.csv")["calib_images"].tolist() == [1347, 1347]
    result = run("export", digits_model, "--width", "0.55", "--data", "digits", "-o",
                 tmp_path / "e.pt")
    assert result.exit_code == 0, result.output
    result = run("search", digits_model, "--data", "digits", "--step", "0.5", "--no-report",
                 "--quiet", "-o", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    path = pd.read_csv(tmp_path / "p.csv")
    assert path["calib_images"].iloc[0] + path["search_images"].iloc[0] <= 1347
    # a value the user chose is not lowered
    assert_one_line_error(run("sweep", digits_model, "--data", "digits", "--widths", "0.5",
                              "--calib-images", "5000", "-o", tmp_path / "t.csv", "--no-plot"),
                          "only 1347", code=2)


def test_resuming_training_on_other_classes_is_refused(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=2, size=16)
    other = make_image_folder(tmp_path / "other", classes=["ant", "bee", "cow"], per_class=2,
                              size=16)
    args = ["train", "--kind", "us", "-o", tmp_path / "m.pt", "--epochs", "1", "--batch-size",
            "3", "--val-images", "3", "--calib-images", "3", "--workers", "0", "--quiet",
            "--repeats", "1,1,1,1,1"]
    assert run(*args, "--data", data).exit_code == 0
    before = snapshot(tmp_path / "m.pt", tmp_path / "m-log.csv")
    assert_one_line_error(run(*args, "--data", other, "--resume"), "other classes", code=2)
    assert snapshot(tmp_path / "m.pt", tmp_path / "m-log.csv") == before


@pytest.mark.parametrize("command,target,needle", [
    ("sweep", "usspectrum.cli.measure.run_sweep", "finished rows are kept in"),
    ("compare", "usspectrum.cli.measure.run_compare", "finished rows are kept in"),
    ("train", "usspectrum.cli.train.run_train", "rerun with --resume"),
    ("search", "usspectrum.cli.slim.run_search", "finished steps are kept in"),
])
def test_ctrl_c_is_one_line_naming_what_was_kept(setup, monkeypatch, command, target, needle):
    tmp, data, ckpt = setup

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupt)
    args = {"sweep": ["sweep", ckpt, "--data", data],
            "compare": ["compare", ckpt, "--data", data],
            "train": ["train", "--kind", "us", "--data", data, "-o", tmp / "m.pt"],
            "search": ["search", ckpt, "--data", data]}[command]
    line = assert_one_line_error(run(*args), needle, code=1)
    assert line.startswith("Error: interrupted;")
