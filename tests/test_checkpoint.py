"""Checkpoint formats: usspectrum's own and the authors' release layout."""
import pickle

import pytest
import torch

import usspectrum
from usspectrum.spectrum.calibration import is_calibrated
from usspectrum.io.checkpoint import load_checkpoint, save_checkpoint
from usspectrum.errors import USSpectrumError
from usspectrum.nn.layers import slim_batchnorms

from helpers import bn_sizes, dense_copy, hand_channels, randomize_bn

RELEASE_WIDTHS = [0.25 + 0.025 * i for i in range(31)]


def release_us_state(model):
    """A state dict in the US-MobileNet v1 release layout, with random
    per-width statistics of the sizes the facts file implies."""
    g = torch.Generator().manual_seed(1)
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()
             if not k.endswith(("running_mean", "running_var"))}
    stats = {}
    for i, w in enumerate(RELEASE_WIDTHS):
        for name, c in bn_sizes(w).items():
            mean = torch.randn(c, generator=g) * 0.2
            var = torch.rand(c, generator=g) + 0.5
            state[f"module.{name}.bn.{i}.running_mean"] = mean
            state[f"module.{name}.bn.{i}.running_var"] = var
            state[f"module.{name}.bn.{i}.num_batches_tracked"] = torch.tensor(100)
            stats[(i, name)] = (mean, var)
    return state, stats


def test_release_us_checkpoint_gives_the_release_models_logits(tmp_path):
    source = usspectrum.create_model("us_mobilenet_v1").eval()
    randomize_bn(source)
    state, stats = release_us_state(source)
    path = tmp_path / "us_release.pt"
    torch.save({"model": state}, path)

    model = load_checkpoint(path)
    assert model.kind == "us" and model.meta["source"] == "release"
    x = torch.randn(2, 3, 224, 224)
    for index in (0, 10, 30):  # widths 0.25, 0.5, 1.0
        width = RELEASE_WIDTHS[index]
        assert is_calibrated(model, width)
        usspectrum.set_width(model, width)
        modules = dict(slim_batchnorms(model))
        override = {id(modules[name]): stats[(index, name)] for name in bn_sizes(width)}
        reference = dense_copy(model, hand_channels([width] * 14), stats=override)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
    assert not is_calibrated(model, 0.31)  # other widths stay calibratable


def test_release_snet_checkpoint(tmp_path):
    source = usspectrum.create_model("s_mobilenet_v1", stem="cifar", num_classes=10).eval()
    randomize_bn(source)
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}},
               tmp_path / "s.pt")
    model = load_checkpoint(tmp_path / "s.pt", stem="cifar")
    assert model.kind == "slimmable" and model.switches == (0.25, 0.5, 0.75, 1.0)
    usspectrum.set_width(model, 0.75)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense_copy(model, hand_channels([0.75] * 14), 2)(x),
                                   rtol=1e-4, atol=1e-5)


def test_own_format_round_trip_keeps_metadata_and_bn_stats(tmp_path):
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=3).eval()
    randomize_bn(model)
    with usspectrum.spectrum.calibration.Calibrator(model, [0.5]) as cal:
        cal.update(torch.randn(8, 3, 32, 32))
    save_checkpoint(model, tmp_path / "m.pt", class_names=["a", "b", "c"],
                    train={"epochs": 3, "seed": 7})
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.meta["class_names"] == ["a", "b", "c"] and loaded.meta["train"]["seed"] == 7
    assert loaded.meta["image"].image_size == 32 and is_calibrated(loaded, 0.5)
    x = torch.randn(2, 3, 32, 32)
    for w in (0.5, 0.8):
        model.set_width(w), loaded.set_width(w)
        with torch.no_grad():
            torch.testing.assert_close(model(x), loaded(x))


def test_wrong_architecture_names_missing_and_unexpected_keys(tmp_path):
    state = usspectrum.create_model("s_mobilenet_v1", num_classes=10).state_dict()
    del state["features.3.body.3.weight"]
    state["features.14.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "bad.pt")
    with pytest.raises(USSpectrumError) as err:
        load_checkpoint(tmp_path / "bad.pt")
    message = str(err.value)
    assert "features.3.body.3.weight" in message and "features.14.weight" in message


def test_wrong_statistics_size_is_refused(tmp_path):
    source = usspectrum.create_model("us_mobilenet_v1")
    state, _ = release_us_state(source)
    state["module.features.0.1.bn.5.running_mean"] = torch.zeros(3)
    torch.save({"model": state}, tmp_path / "bad.pt")
    with pytest.raises(USSpectrumError, match="features.0.1 at width 0.375"):
        load_checkpoint(tmp_path / "bad.pt")


class Evil:
    def __reduce__(self):
        return (print, ("this ran code",))


def test_pickle_that_needs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"model": Evil()}, fh)
    with pytest.raises(USSpectrumError, match="must not run code"):
        load_checkpoint(path)
    assert "this ran code" not in capsys.readouterr().out


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(USSpectrumError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(USSpectrumError, match="corrupt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(USSpectrumError, match="not a dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_compact_checkpoint_is_half_size_and_loads_as_float32(tmp_path):
    from usspectrum.io.checkpoint import compact_checkpoint

    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=10).eval()
    randomize_bn(model)
    usspectrum.calibrate(model, [torch.randn(8, 3, 32, 32)], [0.5], dense=False)
    save_checkpoint(model, tmp_path / "full.pt", extra={"train_state": {"optimizer": {
        "momentum": torch.randn(1000)}}})
    compact_checkpoint(tmp_path / "full.pt", tmp_path / "half.pt")
    assert (tmp_path / "half.pt").stat().st_size < 0.55 * (tmp_path / "full.pt").stat().st_size
    raw = torch.load(tmp_path / "half.pt", weights_only=True)
    assert "train_state" not in raw and raw["stored_dtype"] == "float16"
    assert raw["state_dict"]["features.0.0.weight"].dtype == torch.float16

    full, half = load_checkpoint(tmp_path / "full.pt"), load_checkpoint(tmp_path / "half.pt")
    assert all(p.dtype == torch.float32 for p in half.parameters())
    assert is_calibrated(half, 0.5)
    for name, value in full.state_dict().items():
        if value.is_floating_point():  # float32 of the float16-rounded value
            assert torch.equal(half.state_dict()[name], value.half().float())
    x = torch.randn(4, 3, 32, 32)
    for m in (full, half):
        usspectrum.set_width(m, 0.5)
    with torch.no_grad():
        torch.testing.assert_close(half(x), full(x), rtol=2e-2, atol=2e-2)


def test_compact_refuses_other_formats(tmp_path):
    from usspectrum.io.checkpoint import compact_checkpoint

    torch.save({"model": {"a": torch.zeros(1)}}, tmp_path / "r.pt")
    with pytest.raises(USSpectrumError, match="not a usspectrum checkpoint"):
        compact_checkpoint(tmp_path / "r.pt", tmp_path / "o.pt")


def _unfinished_run(tmp_path):
    from helpers import make_image_folder

    data = make_image_folder(tmp_path / "data", per_class=4, size=16)
    out = tmp_path / "run.pt"
    opts = dict(kind="individual", data=str(data), out=str(out), epochs=2, batch_size=8,
                image_size=16, val_images=6, calib_images=6, workers=0, progress=False)
    usspectrum.train(stop_after=1, **opts)
    return data, out, opts


def test_snapshot_of_an_unfinished_run_says_so_when_loaded(tmp_path):
    import warnings

    data, out, opts = _unfinished_run(tmp_path)
    with pytest.warns(UserWarning, match=r"unfinished training run \(epoch 1 of 2\)"):
        load_checkpoint(out)
    usspectrum.train(resume=True, **opts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_checkpoint(out)
    assert not [w for w in caught if "unfinished" in str(w.message)]


def test_the_cli_prints_that_warning_as_one_line(tmp_path):
    from click.testing import CliRunner
    from usspectrum.cli import cli

    data, out, _ = _unfinished_run(tmp_path)
    result = CliRunner().invoke(cli, ["sweep", str(out), "--data", str(data), "--widths", "1.0",
                                      "--calib-images", "6", "--workers", "0", "--no-plot",
                                      "-o", str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
    lines = [l for l in result.output.splitlines() if "unfinished" in l]
    assert len(lines) == 1 and lines[0].startswith("Warning: ") and "epoch 1 of 2" in lines[0]
    assert "UserWarning" not in result.output and "warnings.warn" not in result.output


def test_training_left_reads_only_complete_records():
    from usspectrum.io.checkpoint import training_left

    assert training_left({"epochs_done": 3, "recipe": {"epochs": 30}}) == (3, 30)
    assert training_left({"epochs_done": 30, "recipe": {"epochs": 30}}) is None
    assert training_left({"recipe": {"epochs": 30}}) is None  # the authors' release: no record
    assert training_left({}) is None
