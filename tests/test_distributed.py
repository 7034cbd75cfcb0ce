"""torchrun with Gloo on the CPU: two processes give what one process gives."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import usspectrum
from usspectrum.spectrum.calibration import get_bn_stats
from usspectrum.io.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from usspectrum.runtime.distributed import BatchShard, Context, GlobalBatchShard, shard_indices

from helpers import CLASSES, make_image_folder, randomize_bn

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun(*args, cwd, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*TORCHRUN, *map(str, args)], cwd=cwd, env=env, timeout=timeout,
                          capture_output=True, text=True)


def one_process(*args, cwd, timeout=240):
    # one thread, like each torchrun worker: the thread count changes float
    # rounding (how a conv splits its sums), which is not what is tested here
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, timeout=timeout,
                          capture_output=True, text=True)


# --- the sharding arithmetic ------------------------------------------------------

@pytest.mark.parametrize("count, world", [(10, 2), (11, 2), (7, 3), (2, 4)])
def test_evaluation_shards_cover_every_image_once(count, world):
    shards = [shard_indices(count, Context(r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(count))


@pytest.mark.parametrize("count, batch, world", [(50, 8, 2), (49, 8, 3), (8, 8, 2)])
def test_calibration_batches_are_the_one_process_batches(count, batch, world):
    one = list(BatchShard(count, batch, Context()))
    split = [b for r in range(world) for b in BatchShard(count, batch, Context(r, world))]
    assert sorted(split) == sorted(one) and len(split) == len(one)


def test_training_batches_split_the_one_process_batches():
    one = list(GlobalBatchShard(48, 15, seed=3, ctx=Context()))
    parts = [list(GlobalBatchShard(48, 15, seed=3, ctx=Context(r, 2))) for r in range(2)]
    assert [len(b) for b in one] == [15, 15, 15, 3]
    for step, batch in enumerate(one):
        assert parts[0][step] + parts[1][step] == batch


# --- sweeps and calibration under torchrun ----------------------------------------

@pytest.fixture
def cifar_model(cifar_root, tmp_path):
    tmp = tmp_path
    torch.manual_seed(0)
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=10,
                                    repeats=(1, 1, 1, 1, 1))
    randomize_bn(model)  # varied logits, so the counts differ by width
    names = sorted(p.name for p in (cifar_root / "train").iterdir())
    save_checkpoint(model, tmp / "m.pt", class_names=names)
    return tmp


SWEEP = ["--widths", "0.25,0.4,0.7,1.0", "--calib-images", 200, "--eval-images", 301,
         "--batch-size", 32, "--workers", 0, "--quiet", "--no-plot"]


@pytest.mark.data
def test_two_process_sweep_equals_one_process(cifar_root, cifar_model):
    tmp = cifar_model
    two = torchrun("-m", "usspectrum", "sweep", "m.pt", "--data", cifar_root, *SWEEP,
                   "-o", "two.csv", cwd=tmp)
    assert two.returncode == 0, two.stderr[-3000:]
    one = one_process("-m", "usspectrum", "sweep", "m.pt", "--data", cifar_root, *SWEEP,
                      "-o", "one.csv", cwd=tmp)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (pd.read_csv(tmp / f, dtype={"width": str}) for f in ("one.csv", "two.csv"))
    cols = ["width", "top1", "top5", "calib_images", "eval_images", "mflops"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert (b.eval_images == 301).all() and (b.calib_images == 200).all()
    assert a.top1.nunique() > 1  # the counts are not all alike by accident
    # rank 0 alone prints the table: one row per width (timing columns can
    # contain "0.25" too, so rows are matched by their first two cells)
    rows = [line.split()[:2] for line in two.stdout.splitlines()]
    assert rows.count(["m", "0.25"]) == 1


@pytest.mark.data
def test_two_process_calibration_equals_one_process(cifar_root, cifar_model):
    tmp = cifar_model
    args = ["m.pt", "--data", cifar_root, "--widths", "0.3,0.6,1.0", "--calib-images", 200,
            "--batch-size", 32, "--workers", 0]
    two = torchrun("-m", "usspectrum", "calibrate", *args, "-o", "two.pt", cwd=tmp)
    assert two.returncode == 0, two.stderr[-3000:]
    one = one_process("-m", "usspectrum", "calibrate", *args, "-o", "one.pt", cwd=tmp)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = get_bn_stats(load_checkpoint(tmp / "one.pt")), get_bn_stats(load_checkpoint(tmp / "two.pt"))
    assert set(a) == set(b) == {"0.3", "0.6", "1.0"}
    worst = 0.0
    for key in a:
        for name in a[key]:
            for x, y in zip(a[key][name], b[key][name]):
                worst = max(worst, float((x - y).abs().max()))
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    print(f"largest difference of calibrated statistics: {worst:.3g}")


# --- training ---------------------------------------------------------------------

TRAIN_SCRIPT = """
import json, os, sys
import torch
import usspectrum
kind, data, out = sys.argv[1:4]
torch.set_default_dtype(torch.float64)  # float noise far below what a logic error would show
result = usspectrum.train(kind=kind, data=data, out=out, epochs=2, batch_size=25, lr=0.01,
                          repeats=(1, 1, 1, 1, 1), nonuniform=True, num_sample=3,
                          train_images=48, val_images=6, calib_images=6, workers=0,
                          progress=False, seed=5, warmup_epochs=0.0)
rank = os.environ.get("RANK", "single")
with open(f"{out}.widths-{rank}.json", "w") as fh:
    json.dump(result.step_widths, fh)
"""


@pytest.mark.parametrize("kind", ["us", "slimmable", "individual"])
def test_two_process_training_equals_one_process(tmp_path, kind):
    # 48 images in global batches of 25 and 23: shares of 13/12 and 12/11 images.
    # In float64: in float32, ReLU6 gates flipped by rounding noise make even two
    # one-process runs (1 vs 2 threads) drift apart by ~1e-4 within four steps.
    data = make_image_folder(tmp_path / "data", per_class=16, size=32)
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    two = torchrun(script, kind, data, "two.pt", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    one = one_process(script, kind, data, "one.pt", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = read_checkpoint(tmp_path / "one.pt"), read_checkpoint(tmp_path / "two.pt")
    assert a["train"]["epochs_done"] == b["train"]["epochs_done"] == 2
    for name, x in a["state_dict"].items():
        y = b["state_dict"][name]
        if x.is_floating_point():
            torch.testing.assert_close(y, x, rtol=1e-9, atol=1e-10, msg=name)
        else:
            assert torch.equal(x, y), name
    if kind == "us":
        widths = [json.loads((tmp_path / f"two.pt.widths-{r}.json").read_text()) for r in (0, 1)]
        single = json.loads((tmp_path / "one.pt.widths-single.json").read_text())
        assert widths[0] == widths[1] == single
        assert len(single) == 4 and len({tuple(w) for w in single}) == 4  # 2 steps x 2 epochs


def test_training_moves_the_weights_far_beyond_the_tolerance(tmp_path):
    """Guard for the equality test: its recipe moves the weights by orders of
    magnitude more than the 1e-9 tolerance used there."""
    data = make_image_folder(tmp_path / "data", per_class=16, size=32)
    result = usspectrum.train(kind="us", data=str(data), out=str(tmp_path / "m.pt"), epochs=2,
                              batch_size=25, lr=0.01, repeats=(1, 1, 1, 1, 1), nonuniform=True,
                              train_images=48, val_images=6, calib_images=6, workers=0,
                              progress=False, seed=5, warmup_epochs=0.0, num_sample=3)
    torch.manual_seed(5)
    start = usspectrum.create_model("us_mobilenet_v1", num_classes=3, stem="cifar",
                                    repeats=(1, 1, 1, 1, 1))
    after = result.model.state_dict()
    moved = [k for k, v in start.state_dict().items() if k.endswith("weight")
             and float((v - after[k]).abs().max()) > 1e-4]
    assert len(moved) > 10


# --- a process dies -----------------------------------------------------------------

def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _rank_of(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return item[5:].decode()
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_killed_process_ends_the_sweep_and_the_rerun_resumes(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=40, size=32)
    torch.manual_seed(0)
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=3)
    save_checkpoint(model, tmp_path / "m.pt", class_names=CLASSES)
    args = ["-m", "usspectrum", "sweep", "m.pt", "--data", data, "--widths", "0.25:1.0:0.075",
            "--widths-per-pass", 1, "--calib-images", 120, "--batch-size", 20, "--workers", 0,
            "--quiet", "--no-plot", "-o", "s.csv"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*TORCHRUN, *map(str, args)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    csv = tmp_path / "s.csv"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if csv.exists() and len(csv.read_text().splitlines()) >= 3:  # header + 2 rows
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before a process could be killed"
    victims = [p for p in _children(proc.pid) if _rank_of(p) == "1"]
    assert victims, "rank 1 not found among torchrun's children"
    os.kill(victims[0], signal.SIGKILL)
    started = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the sweep hung after one of its processes was killed")
    print(f"torchrun ended {time.monotonic() - started:.1f} s after the kill")
    assert proc.returncode != 0
    assert "FAILED" in stderr or "failed" in stderr.lower()
    kept = pd.read_csv(csv, dtype={"width": str})
    assert 2 <= len(kept) < 11

    rerun = torchrun(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    final = pd.read_csv(csv, dtype={"width": str})
    assert len(final) == 11 and final.width.is_unique
    # the rows written before the kill are kept as they were, not measured again
    pd.testing.assert_frame_equal(final.iloc[:len(kept)].reset_index(drop=True), kept)
