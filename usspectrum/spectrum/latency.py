"""Latency and throughput of a model on this machine.

Latency is the median time of one batch-1 forward after warm-up; throughput
is images per second of batch-64 forwards (median of repeats). On CUDA the
device is synchronised around every timed call.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class Speed:
    latency_ms: float   # median, batch 1
    throughput: float   # images/s, batch ``batch``


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _median_seconds(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        model(x)
    _sync(x.device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        _sync(x.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_speed(model: nn.Module, image_size: int, device: str | torch.device = "cpu", *,
                  batch: int = 64, warmup: int = 5, repeats: int = 30,
                  batch_repeats: int = 5) -> Speed:
    """Median batch-1 latency and batch-``batch`` throughput of ``model``
    (in eval mode) on random ``3 x image_size x image_size`` inputs."""
    device = torch.device(device)
    model.eval()
    generator = torch.Generator().manual_seed(0)
    one = torch.randn(1, 3, image_size, image_size, generator=generator).to(device)
    many = torch.randn(batch, 3, image_size, image_size, generator=generator).to(device)
    latency = _median_seconds(model, one, warmup, repeats)
    per_batch = _median_seconds(model, many, max(1, warmup // 2), batch_repeats)
    return Speed(latency_ms=1000.0 * latency, throughput=batch / per_batch)


def measure_latency(model: nn.Module, image_size: int, device: str | torch.device = "cpu", *,
                    warmup: int = 5, repeats: int = 30) -> float:
    """Median batch-1 latency (ms) of ``model`` in eval mode."""
    device = torch.device(device)
    model.eval()
    one = torch.randn(1, 3, image_size, image_size,
                      generator=torch.Generator().manual_seed(0)).to(device)
    return 1000.0 * _median_seconds(model, one, warmup, repeats)
