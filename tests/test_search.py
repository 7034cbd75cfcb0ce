"""Greedy search: a non-increasing FLOPs path of usable configs, seeded
determinism, resume, budget errors, held-out images."""
import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import usspectrum
import usspectrum.spectrum.search as gs
from usspectrum.io.checkpoint import save_checkpoint
from usspectrum.cli import cli
from usspectrum.errors import UsageError
from usspectrum.io.export import export_width
from usspectrum.spectrum.search import SearchSettings, held_out_indices, search_groups, slim_group

from helpers import CLASSES, make_image_folder, randomize_bn

TINY = SearchSettings(step=0.5, search_images=9, calib_images=6, batch_size=8, workers=0,
                      progress=False)


@pytest.fixture
def setup(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=6)
    torch.manual_seed(0)
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=3,
                                    repeats=(1, 1, 1, 1, 1))
    randomize_bn(model)  # varied predictions, so candidates differ
    save_checkpoint(model, tmp_path / "us.pt", class_names=CLASSES)
    return tmp_path, data, tmp_path / "us.pt"


def test_groups_are_stages_or_layers():
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=3)
    stages = search_groups(model, "stage")
    assert [n for n, _ in stages] == ["stem", "stage 1", "stage 2", "stage 3", "stage 4", "stage 5"]
    assert sorted(i for _, idx in stages for i in idx) == list(range(14))
    assert len(search_groups(model, "layer")) == 14
    v2 = usspectrum.create_model("us_mobilenet_v2", stem="cifar", num_classes=3)
    assert len(search_groups(v2, "stage")) == 8 and len(search_groups(v2, "layer")) == 24


def test_a_step_always_changes_channels():
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=3)
    ratios = [1.0] * 14
    stem = [0]  # 32 channels: 0.95, 0.9 and 0.85 round to 32 (10% rule), 0.8 to 24
    new = slim_group(model, ratios, stem, 0.05, 0.25)
    assert new[0] == pytest.approx(0.8) and new[1:] == ratios[1:]
    assert [usspectrum.make_divisible(32 * r) for r in (0.85, 0.8)] == [32, 24]
    assert slim_group(model, [0.25] * 14, stem, 0.05, 0.25) is None


def test_held_out_images_are_disjoint_and_seeded():
    calib, held = held_out_indices(100, 30, 50, seed=3)
    assert len(calib) == 30 and len(held) == 50 and not set(calib) & set(held)
    assert (calib, held) == held_out_indices(100, 30, 50, seed=3)
    assert held != held_out_indices(100, 30, 50, seed=4)[1]
    with pytest.raises(UsageError, match="train/ has 100"):
        held_out_indices(100, 60, 50, seed=0)


def test_path_is_non_increasing_and_its_configs_are_usable(setup, monkeypatch):
    tmp, data, ckpt = setup
    splits = []
    real_open = gs.open_split
    monkeypatch.setattr(gs, "open_split", lambda root, split, t=None: (
        splits.append(split), real_open(root, split, t))[1])
    path = usspectrum.search(ckpt, data, tmp / "path.csv", TINY)
    assert splits == ["train"]  # val/ never chooses
    assert path.step.tolist() == list(range(len(path)))
    assert path.mflops.is_monotonic_decreasing and path.mflops.iloc[-1] < path.mflops.iloc[0]
    last = usspectrum.WidthConfig.parse(path.config.iloc[-1])
    assert set(last.layer_ratios) == {0.25}  # every group reached the bottom
    smallest = usspectrum.count_flops(usspectrum.load_checkpoint(ckpt), 0.25).mflops
    assert path.mflops.iloc[-1] == pytest.approx(smallest, abs=1e-3)
    drops = path.top1.shift(1) - path.top1  # each step's loss against the step before
    assert (path.loss.iloc[1:] - drops.iloc[1:]).abs().max() < 1e-3
    middle = path.config.iloc[len(path) // 2]
    df = usspectrum.sweep(ckpt, data, [middle], tmp / "s.csv", calib_images=6, eval_images=6,
                          batch_size=6, workers=0, progress=False)
    assert df.mflops.iloc[0] == pytest.approx(path.mflops.iloc[len(path) // 2], abs=1e-3)
    meta = export_width(usspectrum.load_checkpoint(ckpt), middle, tmp / "m.pt2")
    assert meta["width"] == middle
    result = CliRunner().invoke(cli, ["flops", "--stem", "cifar", "--num-classes", "3",
                                      "--repeats", "1,1,1,1,1", "--widths", middle, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["mflops"] == pytest.approx(df.mflops.iloc[0], abs=1e-3)


def test_search_is_deterministic_and_resumes(setup, monkeypatch):
    tmp, data, ckpt = setup
    full = usspectrum.search(ckpt, data, tmp / "a.csv", TINY)
    cols = ["config", "top1", "mflops", "group"]

    calls = {"n": 0}
    real = gs.evaluate

    def stop_on_fourth(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(gs, "evaluate", stop_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        usspectrum.search(ckpt, data, tmp / "c.csv", TINY)
    assert len(pd.read_csv(tmp / "c.csv")) == 3  # steps 0-2 kept
    monkeypatch.setattr(gs, "evaluate", real)
    resumed = usspectrum.search(ckpt, data, tmp / "c.csv", TINY)
    # the same seed gives the same path: the first three steps were searched
    # afresh, the rest after resuming
    pd.testing.assert_frame_equal(resumed[cols], full[cols])
    with pytest.raises(usspectrum.USSpectrumError, match="--step 0.5 \\(now 0.1\\)"):
        usspectrum.search(ckpt, data, tmp / "c.csv", TINY, step=0.1)
    with pytest.raises(usspectrum.USSpectrumError, match="--calib-augment train"):
        usspectrum.search(ckpt, data, tmp / "c.csv", TINY, calib_augment="none")
    # a path from before calibration images were augmented is not resumed either
    pd.read_csv(tmp / "c.csv").drop(columns="calib_augment").to_csv(tmp / "old.csv", index=False)
    with pytest.raises(usspectrum.USSpectrumError, match="did not record --calib-augment"):
        usspectrum.search(ckpt, data, tmp / "old.csv", TINY)


def test_budgets_outside_the_model_are_clear_errors(setup):
    tmp, data, ckpt = setup
    model = usspectrum.load_checkpoint(ckpt)
    lo, hi = (usspectrum.count_flops(model, w).mflops for w in (0.25, 1.0))
    for budget, needle in ((lo * 0.9, "below the smallest"), (hi * 1.1, "above the largest")):
        result = CliRunner().invoke(cli, ["search", str(ckpt), "--data", str(data),
                                          "--budget", f"{budget:.4f}", "--quiet"])
        assert result.exit_code == 2 and needle in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(cli, ["search", str(ckpt), "--data", str(data),
                                      "--budget", "two", "--quiet"])
    assert result.exit_code == 2 and "--budget takes numbers" in result.output


def test_an_individual_model_is_refused(setup):
    tmp, data, _ = setup
    save_checkpoint(usspectrum.create_model("mobilenet_v1", stem="cifar", num_classes=3),
                    tmp / "ind.pt", class_names=CLASSES)
    with pytest.raises(UsageError, match="range of widths"):
        usspectrum.search(tmp / "ind.pt", data, tmp / "i.csv", TINY)


def test_cli_report_compares_with_the_uniform_width(setup):
    tmp, data, ckpt = setup
    model = usspectrum.load_checkpoint(ckpt)
    lo, hi = (usspectrum.count_flops(model, w).mflops for w in (0.25, 1.0))
    budgets = [round(lo + (hi - lo) * f, 3) for f in (0.3, 0.7)]
    result = CliRunner().invoke(cli, [
        "search", str(ckpt), "--data", str(data), "--budget", ",".join(map(str, budgets)),
        "--step", "0.5", "--search-images", "9", "--calib-images", "6", "--eval-images", "6",
        "--report-calib-images", "6",
        "--batch-size", "8", "--workers", "0", "-o", str(tmp / "out" / "path.csv"), "--quiet"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp / "out" / "search-budgets.csv", dtype={"uniform_width": str})
    assert sorted(table.budget) == sorted(budgets)
    assert (table.mflops <= table.budget + 1e-6).all()
    assert (table.uniform_mflops >= table.mflops - 1e-3).all()
    for _, row in table.iterrows():  # the uniform neighbour is the first at or above
        w = float(row.uniform_width)
        if w > 0.25:
            below = usspectrum.count_flops(model, round(w - 0.025, 3)).mflops
            assert below < row.mflops
    assert (tmp / "out" / "search.png").stat().st_size > 0
    assert (tmp / "out" / "search.svg").exists()
