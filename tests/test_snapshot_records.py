"""examples/snapshot_records.py: a snapshot's records made one model at a time
must be the records reproduce_cifar10.py makes with all five models at once."""
import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pytest

import usspectrum
from usspectrum import SweepSettings
from usspectrum.io.checkpoint import save_checkpoint
from usspectrum.spectrum.compare import compare

from helpers import CLASSES, make_image_folder

ROOT = Path(__file__).resolve().parents[1]
# a snapshot made all at once by the pinned reproduce_cifar10.py --figures-at 20
ALL_AT_ONCE = ROOT / "examples" / "results" / "cifar10-lost-run-6" / "epoch20"
MEASURED = ["model", "width", "mflops", "top1"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def records():
    return _script("snapshot_records")


def _shares_of_all(records) -> list[str]:
    names = ["us-uniform", "us-nonuniform", "s-net-4switch", "individual", "us-uniform-avg"]
    return [f for name in names for f in records.shares(name)]


def _copy_shares(records, folder: Path, leave_out: str = "") -> None:
    """The shares of ALL_AT_ONCE: its files, and its why.csv split by model."""
    why = pd.read_csv(ALL_AT_ONCE / "why.csv")
    for share in _shares_of_all(records):
        if share == leave_out:
            continue
        if share.startswith("why-"):
            name = share[len("why-"):-len(".csv")]
            why[why.model == name].to_csv(folder / share, index=False)
        else:
            shutil.copy(ALL_AT_ONCE / share, folder / share)
    for name in records.TABLE1:
        shutil.copy(ALL_AT_ONCE / f"{name}-log.csv", folder / f"{name}-log.csv")


def test_every_share_is_a_file_the_all_at_once_run_wrote(records):
    shares = _shares_of_all(records)
    assert sorted(shares) == sorted(["us-uniform.csv", "s-net-4switch.csv", "individual.csv",
                                     "table1-us-uniform.csv", "table1-us-uniform-avg.csv",
                                     "slim-stage.csv", "why-us-uniform-avg.csv",
                                     "why-us-nonuniform.csv"])
    for share in shares:
        assert share.startswith("why-") or (ALL_AT_ONCE / share).exists(), share
    # the why shares are why.csv's rows of each probed model
    assert set(pd.read_csv(ALL_AT_ONCE / "why.csv").model) == {
        "us-uniform-avg", "us-nonuniform", "per-epoch logs"}


def test_an_unknown_model_has_no_share(records):
    with pytest.raises(SystemExit, match="no records come from 'resnet'"):
        records.shares("resnet")


def test_assembled_shares_equal_the_records_made_all_at_once(records, tmp_path):
    folder = tmp_path / "epoch20"
    folder.mkdir()
    _copy_shares(records, folder)
    records.assemble(folder)
    for table in ("compare.csv", "table1.csv", "why.csv"):
        ours = pd.read_csv(folder / table)
        theirs = pd.read_csv(ALL_AT_ONCE / table)
        assert list(ours.columns) == list(theirs.columns)
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    assert (folder / "compare.png").stat().st_size > 0
    assert (folder / "slim-stage.png").stat().st_size > 0


def test_assembling_names_the_missing_share(records, tmp_path):
    _copy_shares(records, tmp_path, leave_out="slim-stage.csv")
    with pytest.raises(SystemExit, match="lacks slim-stage.csv"):
        records.assemble(tmp_path)


def test_one_model_at_a_time_measures_what_all_at_once_does(records, tmp_path, monkeypatch):
    """Figure 2 and Table 1 of tiny models: per-model shares, assembled, against
    compare() of the three and reproduce_cifar10's table1() (the same settings)."""
    monkeypatch.setattr(records, "WIDTHS", "0.25:1.0:0.25")
    monkeypatch.setattr(records, "CALIB_IMAGES", 12)
    data = make_image_folder(tmp_path / "data", per_class=6, size=16)
    snapshot = tmp_path / "snap" / "epoch10"
    snapshot.mkdir(parents=True)
    builders = {"us-uniform": ("us_mobilenet_v1", {}),
                "us-uniform-avg": ("us_mobilenet_v1", {"average_output": True}),
                "s-net-4switch": ("s_mobilenet_v1", {}),
                "individual": ("mobilenet_v1", {})}
    for name, (builder, kw) in builders.items():
        model = usspectrum.create_model(builder, stem="cifar", num_classes=3,
                                        repeats=(1, 1, 1, 1, 1), **kw)
        save_checkpoint(model, snapshot / f"{name}.pt", class_names=CLASSES)
    for name in builders:
        if name not in records.WHY:
            records.sweep_share(name, snapshot, str(data))
    monkeypatch.setattr(records, "WHY", ())  # the probes need trained models: tested apart
    records.sweep_share("us-uniform-avg", snapshot, str(data))
    # what the shares would have been checked against: the slim-stage share
    # comes from a nonuniform US-Net, not among these tiny models
    shutil.copy(ALL_AT_ONCE / "slim-stage.csv", snapshot / "slim-stage.csv")
    why = pd.read_csv(ALL_AT_ONCE / "why.csv")
    for name in ("us-uniform-avg", "us-nonuniform"):
        why[why.model == name].to_csv(snapshot / f"why-{name}.csv", index=False)
    records.assemble(snapshot)

    at_once = tmp_path / "at-once"
    settings = SweepSettings(calib_images=12, eval_images=None, calibration="always",
                             device="cpu", progress=False)
    expected = compare([snapshot / f"{n}.pt" for n in records.FIGURE2], str(data),
                       "0.25:1.0:0.25", at_once, settings, plot=False)
    ours = pd.read_csv(snapshot / "compare.csv", dtype={"width": str})
    pd.testing.assert_frame_equal(ours[MEASURED], expected[MEASURED].astype({"width": str}),
                                  check_dtype=False)
    reproduce = _script("reproduce_cifar10")
    table = reproduce.table1({n: snapshot / f"{n}.pt" for n in records.TABLE1}, str(data),
                             at_once, settings)
    # both written to CSV, so both read back as a reader of the files sees them
    pd.testing.assert_frame_equal(pd.read_csv(snapshot / "table1.csv"),
                                  pd.read_csv(at_once / "table1.csv"), check_exact=True)
    assert len(table) == 4


def test_the_ends_precision_check_is_assembled_as_the_pinned_script_wrote_it(records, tmp_path):
    """The shipped 3-epoch folder was made all at once, precision check
    included; its shares, assembled, give the same tables."""
    shipped = ROOT / "examples" / "results" / "cifar10"
    _copy_shares(records, tmp_path)  # the why shares (the 3-epoch folder has none)
    for share in _shares_of_all(records) + ["precision-float32.csv"]:
        if not share.startswith("why-"):
            shutil.copy(shipped / share, tmp_path / share)
    records.assemble(tmp_path)
    for table in ("compare.csv", "table1.csv", "precision-check.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / table),
                                      pd.read_csv(shipped / table), check_exact=True)
