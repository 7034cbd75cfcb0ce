"""The CIFAR-10 models shipped in examples/results/cifar10/models/ load as
float32 and reproduce the committed figures' rows to the image."""
from pathlib import Path

import pandas as pd
import pytest
import torch

from usspectrum import SweepSettings, sweep
from usspectrum.io.checkpoint import load_checkpoint

from conftest import require_cifar

RESULTS = Path(__file__).resolve().parents[1] / "examples" / "results" / "cifar10"
MODELS = RESULTS / "models"
SHIPPED = {"us-uniform": "us", "us-nonuniform": "us", "s-net-4switch": "slimmable",
           "individual": "individual"}
# what examples/reproduce_cifar10.py evaluated with
SETTINGS = SweepSettings(calib_images=2000, eval_images=None, calibration="always", progress=False)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_loads_as_float32(name):
    path = MODELS / f"{name}.pt"
    assert path.exists(), f"{path} is missing: the reproduction ships it"
    model = load_checkpoint(path)
    assert model.kind == SHIPPED[name]
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {b.dtype for b in model.buffers() if b.is_floating_point()} == {torch.float32}
    # stored in half precision: what keeps the repository small
    raw = torch.load(path, weights_only=True, map_location="cpu")
    assert raw["stored_dtype"] == "float16"
    assert path.stat().st_size < 7 * 2**20


def test_shipped_models_stay_under_the_size_budget():
    total = sum(p.stat().st_size for p in MODELS.rglob("*.pt"))
    assert total < 40 * 2**20


def _row(csv: Path, width: str, model: str | None = None) -> pd.Series:
    df = pd.read_csv(csv, dtype={"width": str})
    if model is not None:
        df = df[df["model"] == model]
    rows = df[df["width"] == width]
    assert len(rows) == 1, f"{csv} has no single row for {model or ''} {width}"
    return rows.iloc[0]


@pytest.mark.parametrize("csv,model,checkpoint,width", [
    ("compare.csv", "us-uniform", "us-uniform", "0.35"),
    ("slim-stage.csv", None, "us-nonuniform", "0.5@s5x0.6"),
])
def test_shipped_model_reproduces_its_committed_row(tmp_path, csv, model, checkpoint, width):
    data = require_cifar()
    committed = _row(RESULTS / csv, width, model)
    ours = sweep(MODELS / f"{checkpoint}.pt", data, [width], tmp_path / "row.csv", SETTINGS)
    assert len(ours) == 1
    assert int(ours["eval_images"].iloc[0]) == int(committed["eval_images"]) == 10000
    assert int(ours["calib_images"].iloc[0]) == int(committed["calib_images"]) == 2000
    assert ours["calib_augment"].iloc[0] == committed["calib_augment"] == "train"
    # top-1 is rounded to 0.01 points = one image of 10,000: equal means to the image
    assert ours["top1"].iloc[0] == pytest.approx(committed["top1"], abs=1e-9)
    assert ours["mflops"].iloc[0] == pytest.approx(committed["mflops"], abs=1e-3)


def test_augmented_calibration_reproduces_the_training_statistics():
    """The individual net's running statistics were tracked on augmented
    images (padded crops), so calibrating on augmented images must land
    nearer to them than calibrating on plain ones, first layer above all."""
    from usspectrum.spectrum.calibration import calibrate, get_bn_stats
    from usspectrum.io.data import calibration_images, make_loader

    data = require_cifar()
    model = load_checkpoint(MODELS / "individual.pt")
    first = dict(model.named_modules())["features.0.1"]
    running_var = first.running_var.clone()
    spec = model.meta["image"]
    gaps = {}
    for augment in ("train", "none"):
        images = calibration_images(data, spec, 400, seed=0, augment=augment)
        calibrate(model, make_loader(images, 200, 0), [1.0])
        _, var = get_bn_stats(model, ["1.0"])["1.0"]["features.0.1"]
        gaps[augment] = (var / running_var).log().abs().mean().item()
    assert gaps["train"] < 0.5 * gaps["none"], gaps
