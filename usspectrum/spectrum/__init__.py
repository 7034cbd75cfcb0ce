"""Measuring: BN calibration, evaluation, FLOPs and latency, the sweep that turns
widths into CSV rows, compare / slim-stage, and the greedy search."""
