"""Shared prefixes: candidates that branch off the current config where they
first differ give the statistics and predictions of running each alone."""
import pytest
import torch

import usspectrum
from usspectrum.spectrum.calibration import DenseCalibrator, get_bn_stats
from usspectrum.nn.folding import DenseResidual, to_dense
from usspectrum.spectrum.search import search_groups, slim_group
from usspectrum.nn.layers import slim_batchnorms
from usspectrum.spectrum.evaluate import evaluate
from usspectrum.spectrum.prefix_tree import PrefixTree, branch_point
from usspectrum.nn.width import WidthConfig

from helpers import randomize_bn


def _candidates(model, base):
    """One candidate per slot, each slimming that slot one step below ``base``."""
    new = (slim_group(model, base, idx, 0.1, 0.25) for _, idx in search_groups(model, "layer"))
    return [WidthConfig.per_layer(r) for r in new if r is not None]


def _model(name):
    torch.manual_seed(0)
    # v2 with two blocks per middle stage: residual chains, fewer layers to run
    kw = {"repeats": (1, 2, 2, 2, 2, 2, 1)} if name.endswith("v2") else {}
    model = usspectrum.create_model(name, stem="cifar", num_classes=10, **kw).eval()
    randomize_bn(model)
    return model


def test_a_candidate_branches_at_its_slots_first_conv():
    model = _model("us_mobilenet_v1")
    base = WidthConfig.per_layer([0.8] * len(model.slots))
    base_net = to_dense(model, base)
    names = {id(m): n for n, m in model.named_modules()}
    top_level = [key for key, _ in base_net.named_children()]
    for slot, config in enumerate(_candidates(model, [0.8] * len(model.slots))):
        conv_name = names[id(model._slot_convs[slot][0])]
        dense_key = next(k for k, src in base_net.sources.items() if src == conv_name)
        assert branch_point(base_net, to_dense(model, config)) == top_level.index(dense_key)
    assert branch_point(base_net, to_dense(model, base)) == len(base_net)


@pytest.mark.parametrize("name", ["us_mobilenet_v1", "us_mobilenet_v2"])
def test_shared_calibration_and_evaluation_equal_separate_runs(name):
    model = _model(name)
    ratios = [1.0] * len(model.slots)
    ratios[3] = 0.7
    base = WidthConfig.per_layer(ratios)
    configs = _candidates(model, ratios)
    assert len(configs) == len(model.slots)
    has_skips = any(isinstance(m, DenseResidual) for m in to_dense(model, base).modules())
    assert has_skips == name.endswith("v2")  # v2 covers candidates inside residual chains
    torch.manual_seed(1)
    batches = [(torch.randn(12, 3, 32, 32), torch.randint(0, 10, (12,))) for _ in range(3)]
    keys = [str(c) for c in (base, *configs)]

    with DenseCalibrator(model, [base, *configs]) as cal:
        for images, _ in batches:
            cal.update(images)
    alone = get_bn_stats(model, keys)
    logits = {k: to_dense(model, c)(batches[0][0]) for k, c in zip(keys, [base, *configs])}
    for _, bn in slim_batchnorms(model):
        bn.calibrated.clear()

    with DenseCalibrator(model, configs, base=base) as cal:
        for images, _ in batches:
            cal.update(images)
    shared = get_bn_stats(model, keys)
    for key in keys:
        for layer, (mean, var) in alone[key].items():
            torch.testing.assert_close(shared[key][layer][0], mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(shared[key][layer][1], var, rtol=1e-5, atol=1e-6)

    nets = {k: to_dense(model, c) for k, c in zip(keys, [base, *configs])}
    tree = PrefixTree(keys[0], nets[keys[0]], {k: nets[k] for k in keys[1:]})
    outputs = tree(batches[0][0])
    assert set(outputs) == set(keys)
    for key in keys:
        torch.testing.assert_close(outputs[key], logits[key], rtol=1e-4, atol=1e-4)
    accuracy = evaluate(model, batches, [base, *configs], shares=base)
    for key in keys:
        hits = sum(int((to_dense(model, WidthConfig.parse(key))(x).argmax(1) == y).sum())
                   for x, y in batches)
        assert accuracy[key].top1_correct == hits and accuracy[key].images == 36


def test_shared_layers_count_each_batch_once():
    model = _model("us_mobilenet_v1")
    base = WidthConfig.per_layer([1.0] * len(model.slots))
    configs = _candidates(model, [1.0] * len(model.slots))
    with DenseCalibrator(model, configs, base=base) as cal:
        for _ in range(4):
            cal.update(torch.randn(6, 3, 32, 32))
        first_bn = cal.nets[str(base)][1]  # the stem's BN, shared by all but one candidate
        assert first_bn.batches == 4
        assert sum(cal.nets[str(c)][1] is first_bn for c in configs) == len(configs) - 1
