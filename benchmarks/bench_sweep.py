"""How fast is a spectrum? Everything measured side by side in one run.

1. Evaluation throughput at widths 0.25/0.5/0.75/1.0 of
   - the project's path (the dense BN-folded channels-last copy the sweep runs,
     convs fused with their ReLU6),
   - two dense references built here, independently, from the sliced weights:
     the plain nn.Conv2d/nn.BatchNorm2d/ReLU6 network a user would write
     (NCHW), and the same after torch's own conv-BN fusion in channels-last,
   - the per-forward slicing path (the slimmable model itself).
   Forwards of the paths are interleaved and the median kept, so drifts of a
   noisy machine hit all of them alike. Predictions are compared image by image.
2. The fraction of the CPU's float32 peak (a large matmul, timed here) that
   evaluation reaches at width 1.0.
3. A 31-width sweep of a CIFAR-stem US-MobileNet v1 on ../shared/data/cifar10
   (10,000 val images, 2,000 calibration images): the project's sweep (one
   pass for all widths, dense copies) against the same sweep done width by
   width with per-forward slicing; wall time split into data loading,
   calibration and evaluation, and top-1/top-5 compared width by width.

    python benchmarks/bench_sweep.py                      # full run (~15 min on 2 cores)
    python benchmarks/bench_sweep.py --eval-images 2000   # quicker look
    python benchmarks/bench_sweep.py --checkpoint examples/results/us-nonuniform.pt

Not a test: it prints measured numbers and ratios against the targets.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import usspectrum
from usspectrum.runtime.allocator import keep_freed_memory
from usspectrum.io.checkpoint import load_checkpoint, save_checkpoint
from usspectrum.nn.folding import to_dense
from usspectrum.spectrum.flops import FlopCounter
from usspectrum.nn.layers import SlimBatchNormBase, SlimConv2d, SlimLinear

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def reference_dense(model: nn.Module, width: float) -> nn.Sequential:
    """A plain MobileNet v1 of one width, written out by hand from the
    slimmable model's weights (conv, BN with the width's eval statistics, ReLU6)."""
    model.set_width(width)
    channels = iter(model.active_channels())
    layers: list[nn.Module] = []
    c_in = 3
    with torch.no_grad():
        for name, m in model.layer_sequence():
            if isinstance(m, SlimConv2d):
                depthwise = m.depthwise
                c_out = c_in if depthwise else next(channels)
                conv = nn.Conv2d(c_in, c_out, m.kernel_size, m.stride, m.padding,
                                 groups=c_in if depthwise else 1, bias=False)
                w = m.weight[:c_out, : 1 if depthwise else c_in]
                if m.average_output and c_in != m.in_channels:
                    w = w * (m.in_channels / c_in)
                conv.weight.copy_(w)
                layers.append(conv)
                c_in = c_out
            elif isinstance(m, SlimBatchNormBase):
                bn = nn.BatchNorm2d(c_in, eps=m.eps)
                gamma, beta = m.affine(c_in)
                mean, var = m.eval_stats(c_in)
                bn.weight.copy_(gamma), bn.bias.copy_(beta)
                bn.running_mean.copy_(mean), bn.running_var.copy_(var)
                layers.append(bn)
            elif isinstance(m, SlimLinear):
                fc = nn.Linear(c_in, m.out_features)
                fc.weight.copy_(m.weight[:, :c_in]), fc.bias.copy_(m.bias)
                layers.append(fc)
            elif isinstance(m, nn.ReLU6):
                layers.append(nn.ReLU6(inplace=True))
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                layers.append(nn.AdaptiveAvgPool2d(1))
            elif isinstance(m, nn.Flatten):
                layers.append(nn.Flatten(1))
            else:
                raise TypeError(name)
    return nn.Sequential(*layers).eval()


def fused_reference(plain: nn.Sequential) -> nn.Module:
    """torch's conv-BN fusion of the hand-written reference, channels-last."""
    out, items, i = [], list(plain), 0
    while i < len(items):
        if isinstance(items[i], nn.Conv2d) and isinstance(items[i + 1], nn.BatchNorm2d):
            out.append(fuse_conv_bn_eval(items[i], items[i + 1]))
            i += 2
        else:
            out.append(items[i])
            i += 1

    class ChannelsLast(nn.Sequential):
        def forward(self, x):
            return super().forward(x.contiguous(memory_format=torch.channels_last))

    return ChannelsLast(*out).eval().to(memory_format=torch.channels_last)


class Sliced(nn.Module):
    def __init__(self, model, width):
        super().__init__()
        self.model, self.width = model, width

    def forward(self, x):
        self.model.set_width(self.width)
        return self.model(x)


@torch.no_grad()
def interleaved_medians(paths: dict, x: torch.Tensor, repeats: int) -> dict[str, float]:
    for f in paths.values():  # warm-up
        f(x), f(x)
    times = {k: [] for k in paths}
    for _ in range(repeats):
        for k, f in paths.items():
            start = time.perf_counter()
            f(x)
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_peak(n: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def throughput_section(model, batch: int, repeats: int, image_size: int, macs_at_1: float,
                       peak: float) -> None:
    print(f"\n## evaluation throughput, batch {batch}, images/s (median of {repeats} "
          "interleaved forwards)")
    print(f"{'width':>6} {'project':>9} {'ref NCHW':>9} {'ref fused-CL':>12} {'sliced':>8} "
          f"{'proj/ref':>9} {'proj/fused':>10} {'proj/sliced':>11} {'same top-1':>10}")
    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    for width in (0.25, 0.5, 0.75, 1.0):
        paths = {"project": to_dense(model, width, fuse_activations=True),
                 "ref": reference_dense(model, width),
                 "fused": fused_reference(reference_dense(model, width)),
                 "sliced": Sliced(model, width)}
        with torch.no_grad():
            preds = {k: f(x).argmax(1) for k, f in paths.items()}
        same = all(torch.equal(preds["project"], p) for p in preds.values())
        t = interleaved_medians(paths, x, repeats)
        ips = {k: batch / v for k, v in t.items()}
        print(f"{width:>6} {ips['project']:>9.0f} {ips['ref']:>9.0f} {ips['fused']:>12.0f} "
              f"{ips['sliced']:>8.0f} {ips['project'] / ips['ref']:>8.2f}x "
              f"{ips['project'] / ips['fused']:>9.2f}x {ips['project'] / ips['sliced']:>10.2f}x "
              f"{str(same):>10}")
        if width == 1.0:
            achieved = 2 * macs_at_1 * ips["project"] / 1e9
            print(f"\nCPU float32 peak (4096^3 matmul): {peak:.1f} GFLOP/s; evaluation at width 1.0 "
                  f"({macs_at_1 / 1e6:.3f} MMACs/image): {achieved:.1f} GFLOP/s = "
                  f"{100 * achieved / peak:.1f}% of peak")


def decoding_section(data: Path, spec, images: int = 2000) -> None:
    """Per-image cost of the evaluation preprocessing on one thread: the
    project's (uint8 pixels, exact ToTensor + Normalize floats) against
    ImageFolder's PIL loader with ToTensor + Normalize."""
    from torchvision import datasets, transforms

    geometry = ([transforms.Resize(spec.resize), transforms.CenterCrop(spec.image_size)]
                if spec.resize is not None else [transforms.Resize((spec.image_size,) * 2)])
    plain = datasets.ImageFolder(str(data / "val"), transform=transforms.Compose(
        geometry + [transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)]))
    ours = usspectrum.io.data.open_split(data, "val", usspectrum.io.data.eval_transform(spec))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        times = {"project": [], "PIL+ToTensor": []}
        for _ in range(3):
            for name, ds in (("project", ours), ("PIL+ToTensor", plain)):
                start = time.perf_counter()
                for i in range(images):
                    ds[i]
                times[name].append((time.perf_counter() - start) / images * 1e6)
        same = all(torch.equal(ours[i][0], plain[i][0]) for i in range(0, images, 7))
    finally:
        torch.set_num_threads(threads)
    a, b = (min(v) for v in times.values())
    print(f"\n## decoding + preprocessing, one thread, {images} val images (best of 3)")
    print(f"project {a:.1f} us/image, PIL + ToTensor + Normalize {b:.1f} us/image: {b / a:.2f}x; "
          f"identical floats: {same}")


def sweep_section(ckpt: Path, data: Path, eval_images: int | None, calib_images: int,
                  workers: int | None, skip_baseline: bool) -> None:
    widths = "0.25:1.0:0.025"
    common = dict(calib_images=calib_images, eval_images=eval_images, calibration="always",
                  workers=workers, progress=False)
    runs = {"project (1 pass, dense)": dict(common)}
    if not skip_baseline:
        runs["width by width, sliced"] = dict(common, dense=False, widths_per_pass=1)
    n_eval = eval_images or len(list((data / "val").rglob("*.*")))
    print(f"\n## 31-width sweep (0.25:1.0:0.025), {n_eval} eval + {calib_images} calibration "
          f"images, batch 200")
    print(f"{'path':<26} {'wall s':>8} {'load s':>8} {'calib s':>8} {'eval s':>8} {'other s':>8}")
    frames = {}
    for name, kw in runs.items():
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            df = usspectrum.sweep(ckpt, data, widths, Path(tmp) / "s.csv", **kw)
            wall = time.perf_counter() - start
        frames[name] = df
        parts = [df.load_seconds.sum(), df.calib_seconds.sum(), df.eval_seconds.sum()]
        print(f"{name:<26} {wall:>8.1f} {parts[0]:>8.1f} {parts[1]:>8.1f} {parts[2]:>8.1f} "
              f"{wall - sum(parts):>8.1f}", flush=True)
        frames[name].attrs["wall"] = wall
    if len(frames) == 2:
        fast, slow = frames.values()
        ratio = slow.attrs["wall"] / fast.attrs["wall"]
        same = (fast.top1.tolist() == slow.top1.tolist() and fast.top5.tolist() == slow.top5.tolist())
        diff = (fast.top1 - slow.top1).abs().max()
        print(f"speed-up end to end: {ratio:.2f}x (target >= 3x); top-1/top-5 identical at all "
              f"31 widths: {same} (largest top-1 difference {diff:.3f} points)")
        differ = fast[(fast.top1 != slow.top1) | (fast.top5 != slow.top5)]
        for _, row in differ.iterrows():
            other = slow[slow.width == row.width].iloc[0]
            print(f"  width {row.width}: top-1 {row.top1} vs {other.top1}, "
                  f"top-5 {row.top5} vs {other.top5}")
    fast = next(iter(frames.values()))
    print("project sweep, per width (s): " + ", ".join(
        f"{w}: {c:.2f}+{e:.2f}" for w, c, e in
        zip(fast.width, fast.calib_seconds, fast.eval_seconds) if w in ("0.25", "0.5", "0.75", "1.0"))
        + "  (calibration+evaluation compute)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None,
                        help="a CIFAR-10 checkpoint [default: a fresh full-depth CIFAR-stem "
                             "US-MobileNet v1, BN calibrated here]")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--eval-images", type=int, default=None, help="[default: all 10,000]")
    parser.add_argument("--calib-images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--skip-baseline-sweep", action="store_true")
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "val").is_dir():
        raise SystemExit(f"no CIFAR-10 ImageFolder at {data}; pass --data")
    # what usspectrum does in every sweep; done first so every path gets it
    kept = keep_freed_memory()
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; freed memory kept for reuse: {kept}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            ckpt = Path(args.checkpoint)
        else:
            torch.manual_seed(0)
            names = sorted(p.name for p in (data / "train").iterdir())
            net = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=10)
            ckpt = Path(tmp) / "us-cifar.pt"
            save_checkpoint(net, ckpt, class_names=names)
        model = load_checkpoint(ckpt).eval()
        size = model.meta["image"].image_size
        # calibrated statistics, so every path normalises with the same, sane numbers
        loader = usspectrum.io.data.make_loader(usspectrum.io.data.seeded_subset(
            usspectrum.io.data.open_split(data, "train", usspectrum.io.data.eval_transform(model.meta["image"])),
            400, 0, "calib"), 200, args.workers)
        usspectrum.calibrate(model, loader, [0.25, 0.5, 0.75, 1.0])
        print(f"model: {model.arch['name']} {model.arch['kwargs']}")
        peak = matmul_peak()
        macs = FlopCounter(model, size).at(1.0).flops
        throughput_section(model, args.batch, args.repeats, size, macs, peak)
        decoding_section(data, model.meta["image"])
        sweep_section(ckpt, data, args.eval_images, args.calib_images, args.workers,
                      args.skip_baseline_sweep)


if __name__ == "__main__":
    main()
