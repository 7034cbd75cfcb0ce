"""Training: the sandwich rule, inplace distillation, nonuniform widths,
weight decay groups, exact resume and bad input."""
import random

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import usspectrum
import usspectrum.training.loop as train_module
from usspectrum.cli import cli
from usspectrum.errors import UsageError
from usspectrum.nn.layers import SlimBatchNormBase, SlimConv2d
from usspectrum.training.steps import SandwichSampler, local_step, param_groups
from usspectrum.nn.width import WidthConfig

from helpers import make_image_folder


def us_step(model, images, labels, widths, criterion, distill):
    return local_step(model, "us", images, labels, criterion, widths, distill)


def tiny():
    return usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=3)


def test_sandwich_has_largest_smallest_and_random_middles():
    sampler = SandwichSampler((0.25, 1.0), 4, 14, False, random.Random(0))
    draws = [sampler.draw() for _ in range(20)]
    for widths in draws:
        assert len(widths) == 4 and str(widths[0]) == "1.0" and str(widths[1]) == "0.25"
        assert all(0.25 <= w.width <= 1.0 for w in widths[2:])
    middles = {str(w) for widths in draws for w in widths[2:]}
    assert len(middles) == 40  # every random member differs


def test_nonuniform_draws_a_width_per_layer():
    widths = SandwichSampler((0.25, 1.0), 3, 14, True, random.Random(0)).draw()
    ratios = widths[2].layer_ratios
    assert len(ratios) == 14 and len(set(ratios)) == 14
    assert all(0.25 <= r <= 1.0 for r in ratios)
    assert widths[0].is_uniform and widths[1].is_uniform


def test_us_step_runs_every_sandwich_width_in_order():
    model = tiny().train()
    seen = []
    model.register_forward_pre_hook(lambda m, i: seen.append(str(m.width_config)))
    widths = [WidthConfig(1.0), WidthConfig(0.25), WidthConfig(0.6), WidthConfig(0.4)]
    us_step(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), widths,
            torch.nn.CrossEntropyLoss(), True)
    assert seen == ["1.0", "0.25", "0.6", "0.4"]


def test_inplace_distillation_uses_detached_soft_targets_of_the_full_width():
    model = tiny().train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    losses = us_step(model, x, y, [WidthConfig(1.0), WidthConfig(0.25)],
                     torch.nn.CrossEntropyLoss(), True)
    got = [p.grad.clone() for p in model.parameters()]

    # By hand: CE on labels at 1.0, plus CE of the 0.25 net against the
    # full net's probabilities treated as constants.
    model.load_state_dict(state)
    model.zero_grad()
    model.set_width(1.0)
    full = model(x)
    teacher = F.softmax(full, dim=1).detach()
    model.set_width(0.25)
    small = model(x)
    student = -(teacher * F.log_softmax(small, dim=1)).sum(1).mean()
    (F.cross_entropy(full, y) + student).backward()
    for a, p in zip(got, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
    assert losses[1] == pytest.approx(student.item(), rel=1e-5)


def test_without_distillation_every_width_learns_from_labels():
    model = tiny().train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    losses = us_step(model, x, y, [WidthConfig(1.0), WidthConfig(0.25)],
                     torch.nn.CrossEntropyLoss(), False)
    model.load_state_dict(state)
    model.set_width(0.25)
    assert losses[1] == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-5)


def test_mixed_distillation_weights_soft_and_label_losses():
    model = tiny().train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    losses = us_step(model, x, y, [WidthConfig(1.0), WidthConfig(0.4)],
                     torch.nn.CrossEntropyLoss(), 0.3)
    model.load_state_dict(state)
    model.set_width(1.0)
    teacher = F.softmax(model(x), dim=1).detach()
    model.set_width(0.4)
    small = model(x)
    soft = -(teacher * F.log_softmax(small, dim=1)).sum(1).mean()
    assert losses[1] == pytest.approx(0.3 * soft.item() + 0.7 * F.cross_entropy(small, y).item(),
                                      rel=1e-5)


def test_distillation_weight_ramps_in_over_the_first_epochs():
    config = usspectrum.TrainConfig(distill_weight=0.8, distill_ramp=2.0)
    weights = [config.distill_weight_at(step, 10) for step in range(25)]
    assert weights[0] == pytest.approx(0.8 / 20) and weights[9] == pytest.approx(0.4)
    assert weights[19:] == [pytest.approx(0.8)] * 6
    assert all(a < b for a, b in zip(weights[:19], weights[1:20]))
    assert usspectrum.TrainConfig(distill_ramp=0).distill_weight_at(0, 10) == \
        usspectrum.TrainConfig.distill_weight
    assert usspectrum.TrainConfig(inplace_distill=False).distill_weight_at(99, 10) == 0.0


@pytest.mark.parametrize("name", ["us_mobilenet_v1", "s_mobilenet_v1"])
def test_no_weight_decay_on_depthwise_convs_and_bn(name):
    model = usspectrum.create_model(name, stem="cifar", num_classes=3)
    decay, no_decay = param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    exempt = {id(p) for p in no_decay["params"]}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            is_dw_or_bn = (isinstance(module, (SlimBatchNormBase, torch.nn.BatchNorm2d))
                           or (isinstance(module, SlimConv2d) and module.depthwise))
            if is_dw_or_bn:
                assert id(p) in exempt
    pointwise = model.features[1].body[3].weight
    assert id(pointwise) not in exempt and id(model.classifier[0].weight) not in exempt
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


FAST = dict(epochs=2, batch_size=8, image_size=16, val_images=6, calib_images=6,
            workers=0, progress=False, warmup_epochs=0.5)


@pytest.mark.parametrize("kind", ["us", "slimmable", "individual"])
def test_interrupted_run_resumed_matches_the_uninterrupted_one(tmp_path, monkeypatch, kind):
    data = make_image_folder(tmp_path / "data", per_class=8, size=16)
    opts = dict(kind=kind, data=str(data), nonuniform=kind == "us", **FAST)
    whole = usspectrum.train(out=str(tmp_path / "whole.pt"), **opts)

    step_name = "local_step"  # every kind's step, as the loop calls it
    real, calls = getattr(train_module, step_name), []

    def crash(*args, **kw):
        calls.append(1)
        if len(calls) == 5:  # in the second epoch (3 steps per epoch)
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(train_module, step_name, crash)
    with pytest.raises(KeyboardInterrupt):
        usspectrum.train(out=str(tmp_path / "split.pt"), **opts)
    with pytest.warns(UserWarning, match=r"unfinished training run \(epoch 1 of 2\)"):
        snapshot = usspectrum.load_checkpoint(tmp_path / "split.pt")
    assert snapshot.meta["train"]["epochs_done"] == 1
    monkeypatch.setattr(train_module, step_name, real)
    resumed = usspectrum.train(out=str(tmp_path / "split.pt"), resume=True, **opts)

    a, b = whole.model.state_dict(), resumed.model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert list(resumed.log.epoch) == [1, 2]
    pd.testing.assert_series_equal(whole.log.loss, resumed.log.loss, rtol=1e-4)


@pytest.mark.parametrize("kind", ["us", "slimmable"])
def test_run_interrupted_mid_epoch_resumes_at_the_next_batch_bit_for_bit(tmp_path, monkeypatch,
                                                                          kind):
    data = make_image_folder(tmp_path / "data", per_class=8, size=16)
    opts = dict(kind=kind, data=str(data), nonuniform=kind == "us", **FAST)
    whole = usspectrum.train(out=str(tmp_path / "whole.pt"), **opts)

    step_name = "local_step"
    real, calls = getattr(train_module, step_name), []

    def crash(*args, **kw):
        calls.append(1)
        if len(calls) == 6:  # the third of the second epoch's 3 steps never finishes
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(train_module, step_name, crash)
    split = tmp_path / "split.pt"
    with pytest.raises(KeyboardInterrupt):  # progress saved after every step
        usspectrum.train(out=str(split), checkpoint_minutes=1e-9, **opts)
    progress = torch.load(tmp_path / "split.pt.partial.pt", weights_only=True)
    assert (progress["epoch"], progress["tally"][0]) == (1, 2)  # 0-based epoch 1, 2 batches done
    monkeypatch.setattr(train_module, step_name, real)
    steps = []
    monkeypatch.setattr(train_module, step_name,
                        lambda *a, **kw: steps.append(1) or real(*a, **kw))
    resumed = usspectrum.train(out=str(split), resume=True, **opts)

    assert len(steps) == 1  # only the step that was cut off ran again
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert list(resumed.log.epoch) == [1, 2]
    assert resumed.log.loss.tolist() == whole.log.loss.tolist()
    assert not (tmp_path / "split.pt.partial.pt").exists()


def test_progress_file_of_another_recipe_is_not_used(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8, size=16)
    opts = dict(kind="us", data=str(data), out=str(tmp_path / "m.pt"), **FAST)
    usspectrum.train(stop_after=1, **opts)
    torch.save({"recipe": {"lr": 123.0}, "epoch": 1}, tmp_path / "m.pt.partial.pt")
    again = usspectrum.train(resume=True, **opts)
    reference = usspectrum.train(**{**opts, "out": str(tmp_path / "ref.pt")})
    assert again.log.loss.tolist() == reference.log.loss.tolist()


def test_eval_widths_add_calibrated_columns_for_every_kind(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8, size=16)
    result = usspectrum.train(kind="individual", data=str(data), out=str(tmp_path / "i.pt"),
                              eval_widths=(0.5, 1.0), **{**FAST, "epochs": 1})
    row = result.log.iloc[-1]
    assert {"top1_0.5", "top1_1"} <= set(result.log.columns)
    # the same width, calibrated both times: the two columns agree
    assert row["top1_1"] == row["top1_largest"]
    assert 0 <= row["top1_0.5"] <= 100


def test_resume_with_another_config_is_refused(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=4, size=16)
    usspectrum.train(kind="us", data=str(data), out=str(tmp_path / "m.pt"), **{**FAST, "epochs": 1})
    with pytest.raises(UsageError, match="another config: num_sample"):
        usspectrum.train(kind="us", data=str(data), out=str(tmp_path / "m.pt"), resume=True,
                         num_sample=3, **{**FAST, "epochs": 1})


def test_checkpoint_from_before_the_distillation_weight_resumes_as_pure_distillation(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=4, size=16)
    out = tmp_path / "m.pt"
    opts = dict(kind="us", data=str(data), out=str(out), **{**FAST, "epochs": 2})
    usspectrum.train(distill_weight=1.0, stop_after=1, **opts)
    saved = torch.load(out, weights_only=True)
    for field in ("distill_weight", "distill_ramp", "average_output"):
        del saved["train"]["recipe"][field]  # as an older usspectrum wrote it
    torch.save(saved, out)
    with pytest.raises(UsageError, match="distill_weight=1.0 \\(now 0.5\\)"):
        usspectrum.train(resume=True, **opts)
    assert list(usspectrum.train(resume=True, distill_weight=1.0, **opts).log.epoch) == [1, 2]


def test_checkpoint_describes_itself(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=4, size=16)
    usspectrum.train(kind="slimmable", data=str(data), out=str(tmp_path / "s.pt"),
                     switches=(0.5, 1.0), **{**FAST, "epochs": 1})
    model = usspectrum.load_checkpoint(tmp_path / "s.pt")
    assert model.kind == "slimmable" and model.switches == (0.5, 1.0)
    assert model.meta["class_names"] == ["ant", "bee", "cat"]
    assert model.meta["image"].image_size == 16
    recipe = model.meta["train"]["recipe"]
    assert recipe["kind"] == "slimmable" and recipe["seed"] == 0 and recipe["epochs"] == 1


@pytest.mark.parametrize("args, needle", [
    (["--kind", "big"], "unknown kind"),
    (["--kind", "slimmable", "--switches", "0", "--switches", "1"], "(0, 1]"),
    (["--kind", "us", "--width-range", "0.9", "0.3"], "inverted"),
    (["--kind", "us", "--resume"], "does not exist yet"),
    (["--kind", "us", "--distill-weight", "1.5"], "--distill-weight"),
    (["--kind", "individual", "--average-output"], "US-Nets only"),
    (["--kind", "us", "--epochs", "5", "--cycles", "2"], "multiple of --cycles"),
])
def test_bad_training_input_is_one_line(tmp_path, args, needle):
    data = make_image_folder(tmp_path / "data", per_class=1, size=16)
    result = CliRunner().invoke(cli, ["train", "--data", str(data), "-o", str(tmp_path / "m.pt"),
                                      "--quiet", *args])
    assert result.exit_code in (1, 2)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output


def test_data_without_train_folder(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--kind", "us", "--data", str(tmp_path),
                                      "-o", str(tmp_path / "m.pt")])
    assert result.exit_code == 2 and "no train/ folder" in result.output


@pytest.fixture(scope="module")
def cifar_us(tmp_path_factory):
    """A US-Net trained for about a minute on a CIFAR-10 subset (16x16, the
    shallow 1-1-1-1-1 variant so that a minute of CPU is enough to learn)."""
    from conftest import CIFAR

    if not (CIFAR / "train").is_dir():
        import os
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {CIFAR} is missing")
        pytest.skip(f"{CIFAR} not present")
    out = tmp_path_factory.mktemp("cifar") / "us.pt"
    result = usspectrum.train(kind="us", data=str(CIFAR), out=str(out), epochs=4, batch_size=32,
                              lr=0.02, weight_decay=5e-5, image_size=16, repeats=(1, 1, 1, 1, 1),
                              train_images=3000, val_images=500, calib_images=300,
                              warmup_epochs=0.3, workers=0, progress=False)
    return CIFAR, result


@pytest.mark.data
@pytest.mark.slow
def test_short_cifar10_run_beats_chance_at_both_ends(cifar_us):
    _, result = cifar_us
    last = result.log.iloc[-1]
    assert last.top1_smallest > 20 and last.top1_largest > 20, result.log  # chance: 10%
    assert result.log.loss.iloc[-1] < result.log.loss.iloc[0]


@pytest.mark.data
@pytest.mark.slow
def test_calibration_rescues_a_us_net_away_from_its_average_width(cifar_us):
    """The shared BN's running statistics average over all sandwich widths, so
    they fit the smallest width worst: calibration must win big there, not
    lose at an untrained width in between (where the average of augmented
    batches fits about as well as calibration on augmented images, to an
    image or two of 500), and repeat exactly."""
    data, result = cifar_us
    opts = dict(calib_images=500, eval_images=500, batch_size=100, workers=0, progress=False)
    widths = "0.25,0.55"
    plain = usspectrum.sweep(result.checkpoint, data, widths, calibration="never", **opts)
    calibrated = usspectrum.sweep(result.checkpoint, data, widths, calibration="always", **opts)
    again = usspectrum.sweep(result.checkpoint, data, widths, calibration="always", **opts)
    assert (plain.bn == "running").all() and (calibrated.bn == "calibrated").all()
    gain = calibrated.top1 - plain.top1
    # at 0.55 the two fit equally well, to an image or two of 500 (0.2 points each):
    # which one wins by that much moves with the machine's arithmetic
    assert gain.iloc[0] > 8 and round(gain.iloc[1], 2) >= -0.4, (plain.top1, calibrated.top1)
    assert calibrated.top1.tolist() == again.top1.tolist()
    assert calibrated.top5.tolist() == again.top5.tolist()


def test_warm_restarts_repeat_the_warm_up_and_decay():
    from usspectrum.training.config import lr_factor
    one = [lr_factor(s, 50, 5, "cosine") for s in range(50)]
    two = [lr_factor(s, 100, 5, "cosine", cycles=2) for s in range(100)]
    assert two[:50] == one and two[50:] == one
    assert two[4] == 1.0 and two[49] < 0.01 and two[54] == 1.0
    assert abs(two[50 + 5 + 22] - 0.5) < 0.05  # cosine halfway through the second decay


def test_finished_run_extended_by_a_cycle_equals_the_run_planned_with_two(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8, size=16)
    opts = dict(kind="us", data=str(data), **{**FAST, "warmup_epochs": 1.0})
    planned = usspectrum.train(out=str(tmp_path / "planned.pt"), **{**opts, "epochs": 4},
                               cycles=2)
    out = str(tmp_path / "extended.pt")
    first = usspectrum.train(out=out, **opts)  # 2 epochs, one cycle, lr decayed to 0
    assert first.log.lr.iloc[-1] < 0.2 * planned.log.lr.max()
    extended = usspectrum.train(out=out, resume=True, cycles=2, **{**opts, "epochs": 4})
    assert list(extended.log.epoch) == [1, 2, 3, 4]
    assert extended.log.loss.tolist() == planned.log.loss.tolist()
    a, b = planned.model.state_dict(), extended.model.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert usspectrum.load_checkpoint(out).meta["train"]["recipe"]["cycles"] == 2


def test_extension_that_changes_the_cycle_length_is_refused(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=4, size=16)
    opts = dict(kind="individual", data=str(data), out=str(tmp_path / "m.pt"), **FAST)
    usspectrum.train(**opts)
    with pytest.raises(UsageError, match="keep 2 epochs per cycle .*--epochs 4 --cycles 2"):
        usspectrum.train(resume=True, **{**opts, "epochs": 4})
    with pytest.raises(UsageError, match="--epochs 3 is not a whole number of --cycles 2"):
        usspectrum.train(resume=True, cycles=2, **{**opts, "epochs": 3})
    usspectrum.train(resume=True, cycles=2, **{**opts, "epochs": 4})
    # the same cycle length, but the 4 epochs done do not fit in a 2-epoch plan
    with pytest.raises(UsageError, match="has trained 4 epochs, more than --epochs 2"):
        usspectrum.train(resume=True, **opts)
