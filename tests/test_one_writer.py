"""One run at a time writes a results CSV: a second run that would append to
the same file stops with one error line and changes nothing, a killed run
leaves no lock behind, and a file that two runs wrote at once (each width
twice, as older versions allowed) is repaired on the next run."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from usspectrum.io.lock import exclusive_writer, lock_path

from test_bad_input import FAST, assert_one_line_error, run, setup, snapshot  # noqa: F401

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX only")


def _holder(path) -> subprocess.Popen:
    """Another process that holds ``path``'s lock until it is killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from usspectrum.io.lock import exclusive_writer
        with exclusive_writer({str(path)!r}):
            print("held", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _sweep(data, ckpt, out):
    return run("sweep", ckpt, "--data", data, "--widths", "0.5,1.0", "-o", out, "--no-plot",
               *FAST)


def test_a_second_run_on_the_same_csv_stops_and_changes_nothing(setup):
    tmp, data, ckpt = setup
    out = tmp / "s.csv"
    assert _sweep(data, ckpt, out).exit_code == 0
    before = snapshot(out)
    holder = _holder(out)
    try:
        result = _sweep(data, ckpt, out)
        line = assert_one_line_error(result, "is writing", code=1)
        assert f"process {holder.pid}" in line and str(out) in line
        assert snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_run_leaves_no_lock_behind(setup):
    tmp, data, ckpt = setup
    out = tmp / "s.csv"
    holder = _holder(out)
    assert lock_path(out).exists()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    result = _sweep(data, ckpt, out)
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out, dtype={"width": str})["width"].tolist() == ["0.5", "1.0"]
    assert not lock_path(out).exists()


def test_the_lock_is_released_after_an_error_inside(tmp_path):
    out = tmp_path / "s.csv"
    with pytest.raises(RuntimeError):
        with exclusive_writer(out):
            raise RuntimeError("measuring failed")
    with exclusive_writer(out):  # would raise if the first were still held
        assert lock_path(out).read_text() == str(os.getpid())


def test_a_csv_with_every_width_twice_is_repaired_without_measuring_again(setup):
    tmp, data, ckpt = setup
    out = tmp / "s.csv"
    assert _sweep(data, ckpt, out).exit_code == 0
    once = pd.read_csv(out, dtype={"width": str})
    # what two runs appending at once left: the same rows again, measured a second time
    again = once.assign(seconds=once["seconds"] + 100.0)
    pd.concat([once, again]).to_csv(out, index=False)
    t0 = time.time()
    result = _sweep(data, ckpt, out)
    assert result.exit_code == 0, result.output
    assert "2 repeated rows" in result.output and "first of each is kept" in result.output
    fixed = pd.read_csv(out, dtype={"width": str})
    pd.testing.assert_frame_equal(fixed, once)
    assert os.path.getmtime(out) >= t0


def test_a_second_training_run_into_the_same_checkpoint_stops(tmp_path):
    from helpers import make_image_folder

    data = make_image_folder(tmp_path / "data", per_class=2, size=16)
    out = tmp_path / "m.pt"
    holder = _holder(out)
    try:
        result = run("train", "--kind", "us", "--data", data, "-o", out, "--epochs", "1",
                     "--batch-size", "4", "--workers", "0", "--quiet")
        assert_one_line_error(result, "is writing", code=1)
        assert not out.exists() and not (tmp_path / "m-log.csv").exists()
    finally:
        holder.kill()
        holder.wait()
