"""The scripts that read a CIFAR-10 reproduction against the paper's claims
(examples/claims_cifar10.py, examples/why_claims_cifar10.py), on tiny models
and hand-made tables."""
import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import torch

import usspectrum
from usspectrum.io.checkpoint import save_checkpoint

from helpers import CLASSES, make_image_folder

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _claims(ours: list[str], holds: list[bool]) -> pd.DataFrame:
    return pd.DataFrame({"claim": ["a", "b"], "paper": ["p", "q"], "ours": ours,
                         "holds": holds, "criterion": ["c", "d"]})


def test_trend_sets_each_snapshot_beside_the_final_claims(tmp_path):
    claims = _script("claims_cifar10")
    for epoch, ours, holds in ((10, ["1.0", "x"], [True, False]),
                               (20, ["2.0", "y"], [True, False])):
        (tmp_path / f"epoch{epoch}").mkdir()
        _claims(ours, holds).to_csv(tmp_path / f"epoch{epoch}" / "claims.csv", index=False)
    _claims(["3.0", "z"], [True, True]).to_csv(tmp_path / "claims.csv", index=False)
    for name, last in (("us-uniform", 31), ("individual", 30)):
        pd.DataFrame({"epoch": range(1, last + 1)}).to_csv(tmp_path / f"{name}-log.csv",
                                                           index=False)
    table = claims.trend(tmp_path)
    # the final column is named for the epochs every model finished
    assert list(table.columns) == ["claim", "epoch 10", "holds at 10", "epoch 20",
                                   "holds at 20", "epoch 30", "holds at 30"]
    assert table.set_index("claim").loc["b"].tolist() == ["x", False, "y", False, "z", True]


def test_trend_is_none_without_snapshots(tmp_path):
    claims = _script("claims_cifar10")
    _claims(["3.0", "z"], [True, True]).to_csv(tmp_path / "claims.csv", index=False)
    assert claims.trend(tmp_path) is None


def test_stage_losses_are_measured_at_equal_mflops():
    claims = _script("claims_cifar10")
    df = pd.DataFrame({"width": ["0.5", "1.0", "1.0@s1x0.6", "1.0@s2x0.6"],
                       "mflops": [10.0, 20.0, 15.0, 10.0], "top1": [80.0, 90.0, 84.0, 80.0]})
    # uniform curve at 15 MFLOPs: 85, so stage 1 loses 1; stage 2 sits on the curve
    assert claims.stage_losses(df) == pytest.approx({"1": 1.0, "2": 0.0})


def test_stage_losses_can_leave_out_points_below_the_trained_range():
    claims = _script("claims_cifar10")
    # stage 1 slimmed at base 0.375 runs at 0.225 (< 0.25) and loses 6 points there;
    # at base 1.0 (0.6 >= 0.25) it loses 1 (uniform at 15 MFLOPs: 85, at 7.5: 76)
    df = pd.DataFrame({"width": ["0.25", "0.5", "1.0", "0.375@s1x0.6", "1.0@s1x0.6"],
                       "mflops": [5.0, 10.0, 20.0, 7.5, 15.0],
                       "top1": [72.0, 80.0, 90.0, 70.0, 84.0]})
    assert claims.stage_losses(df) == pytest.approx({"1": 3.5})
    assert claims.stage_losses(df, min_stage_width=0.25) == pytest.approx({"1": 1.0})


@pytest.fixture
def tiny(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8, size=16)
    paths = {}
    for averaged in (True, False):
        torch_model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=3,
                                              repeats=(1, 1, 1, 1, 1), average_output=averaged)
        paths[averaged] = tmp_path / f"{'avg' if averaged else 'plain'}.pt"
        save_checkpoint(torch_model, paths[averaged], class_names=CLASSES)
    return data, paths


def test_averaging_probe_finds_batchnorm_cancels_the_averaging(tiny):
    why = _script("why_claims_cifar10")
    data, paths = tiny
    rows = pd.DataFrame(why.averaging_probe(paths[True], str(data), images=24))
    logits = rows[rows.measure.str.startswith("max |logit")].set_index("width")["value"]
    agree = rows[rows.measure.str.startswith("share")].set_index("width")["value"]
    # at 1.0 the factor is 1 (nothing to cancel); below it, BN's batch statistics absorb it
    assert logits[1.0] == 0.0
    assert (logits < 1e-3).all() and (agree == 1.0).all()


def test_the_switch_the_probe_flips_does_change_the_network(tiny):
    """The control for the test above: with fixed (running) BN statistics the
    same switch changes the logits, so the agreement is BN's doing."""
    from usspectrum.io.checkpoint import load_checkpoint
    from usspectrum.nn.layers import SlimConv2d

    _, paths = tiny
    model = load_checkpoint(paths[True]).eval()
    model.set_width(0.25)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        on = model(x)
        for conv in model.modules():
            if isinstance(conv, SlimConv2d) and conv.average_output:
                conv.average_output = False
        off = model(x)
    assert (on - off).abs().max() > 0.01 * on.abs().max()


def test_averaging_probe_refuses_a_model_without_averaging(tiny):
    why = _script("why_claims_cifar10")
    data, paths = tiny
    with pytest.raises(SystemExit, match="not trained with output averaging"):
        why.averaging_probe(paths[False], str(data), images=24)


def test_wall_time_sums_each_models_epochs(tmp_path):
    claims = _script("claims_cifar10")
    pd.DataFrame({"epoch": [1, 2], "seconds": [3600.0, 1800.0], "images_per_s": [100.0, 300.0]}
                 ).to_csv(tmp_path / "us-uniform-log.csv", index=False)
    pd.DataFrame({"epoch": [1], "seconds": [720.0], "images_per_s": [50.0]}
                 ).to_csv(tmp_path / "individual-log.csv", index=False)
    table = claims.wall_time(tmp_path).set_index("model")
    assert table.loc["us-uniform"].tolist() == [2, 1.5, 200.0]
    assert table.loc["individual"].tolist() == [1, 0.2, 50.0]


def test_learning_curves_need_the_per_width_columns(tmp_path):
    claims = _script("claims_cifar10")
    pd.DataFrame({"epoch": [1, 2], "top1_smallest": [10.0, 20.0], "top1_largest": [30.0, 40.0]}
                 ).to_csv(tmp_path / "old-log.csv", index=False)
    assert claims.plot_learning_curves(tmp_path) == []  # a 3-epoch-era log: no figure
    pd.DataFrame({"epoch": [1, 2], "top1_0.25": [10.0, 20.0], "top1_1": [30.0, 40.0]}
                 ).to_csv(tmp_path / "us-uniform-log.csv", index=False)
    paths = claims.plot_learning_curves(tmp_path)
    assert [p.name for p in paths] == ["learning-curve.png", "learning-curve.svg"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_warm_restarts_are_the_epochs_whose_rate_rose():
    claims = _script("claims_cifar10")
    # two 3-epoch cycles as the log records them: the rate after each epoch's last step
    log = pd.DataFrame({"epoch": [1, 2, 3, 4, 5, 6], "lr": [0.1, 0.05, 0.0, 0.1, 0.05, 0.0]})
    assert claims.warm_restarts(log) == [4]
    assert claims.warm_restarts(log.iloc[:3]) == []
    assert claims.warm_restarts(log.drop(columns="lr")) == []


def _targets_folder(tmp_path, last_epochs: dict, top1: dict, holds: list[bool]):
    for name, last in last_epochs.items():
        pd.DataFrame({"epoch": range(1, last + 1)}).to_csv(tmp_path / f"{name}-log.csv",
                                                           index=False)
    pd.DataFrame({"model": list(top1), "width": ["1.0"] * len(top1),
                  "top1": list(top1.values()), "eval_images": 10000}).to_csv(
        tmp_path / "compare.csv", index=False)
    _claims(["1.0", "x"], holds).to_csv(tmp_path / "claims.csv", index=False)


def test_targets_fail_exactly_where_the_files_miss_them(tmp_path):
    check = _script("check_cifar10_targets")
    epochs = dict.fromkeys(check.MODELS, 30) | {"us-uniform-avg": 29}
    _targets_folder(tmp_path, epochs, {"individual": 87.99, "us-uniform": 86.98}, [True, False])
    verdicts = {target: holds for target, holds, _ in check.checks(tmp_path)}
    failed = sorted(t for t, h in verdicts.items() if not h)
    assert failed == ["US-Net at 1.0 >= individual - 1.0", "claim: b",
                      "every log reaches epoch >= 30", "individual >= 88.0 top-1 at 1.0"]


def test_targets_pass_when_the_files_meet_them(tmp_path):
    check = _script("check_cifar10_targets")
    _targets_folder(tmp_path, dict.fromkeys(check.MODELS, 60),
                    {"individual": 88.0, "us-uniform": 87.0}, [True, True])
    failed = [t for t, h, _ in check.checks(tmp_path) if not h]
    # the tracked-.pt budget is the repository's own and may fail on its own
    assert [t for t in failed if not t.startswith("tracked .pt")] == []


def test_learning_curve_leaves_widths_a_log_did_not_measure_empty(tmp_path):
    """The individual net's logs measure it at 1.0 as their 'smallest' width:
    that top-1 must not appear as its top-1 at 0.25."""
    claims = _script("claims_cifar10")
    # an old-style log (no per-width columns) names its widths
    pd.DataFrame({"epoch": [1], "smallest": [1.0], "top1_smallest": [60.0],
                  "largest": [1.0], "top1_largest": [60.0]}
                 ).to_csv(tmp_path / "individual-log.csv", index=False)
    pd.DataFrame({"epoch": [1], "smallest": [0.25], "top1_smallest": [50.0],
                  "largest": [1.0], "top1_largest": [55.0]}
                 ).to_csv(tmp_path / "us-uniform-log.csv", index=False)
    pd.DataFrame({"epoch": [1], "smallest": [0.25], "top1_smallest": [48.0],
                  "largest": [1.0], "top1_largest": [56.0]}
                 ).to_csv(tmp_path / "s-net-4switch-log.csv", index=False)
    row = claims.learning_curve(tmp_path).iloc[0]
    assert pd.isna(row["individual 0.25"]) and row["individual 1.0"] == 60.0
    assert row["us-uniform 0.25"] == 50.0 and row["US - individual at 1.0"] == -5.0
    # a new-style log measures every net at 0.25 too: that value is used
    pd.DataFrame({"epoch": [1], "smallest": [1.0], "top1_smallest": [60.0], "largest": [1.0],
                  "top1_largest": [60.0], "top1_0.25": [12.5], "top1_1": [60.0]}
                 ).to_csv(tmp_path / "individual-log.csv", index=False)
    assert claims.learning_curve(tmp_path).iloc[0]["individual 0.25"] == 12.5
    # reproduce.log's lines name no widths: the individual's are both 1.0
    run = pd.DataFrame({"model": ["individual", "us-uniform", "s-net-4switch"], "epoch": [1, 1, 1],
                        "top1_smallest": [60.0, 50.0, 48.0], "top1_largest": [60.0, 55.0, 56.0]})
    row = claims.learning_curve(tmp_path, run).iloc[0]
    assert pd.isna(row["individual 0.25"]) and row["us-uniform 0.25"] == 50.0
