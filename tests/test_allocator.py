"""Freed CPU memory is kept for reuse: large tensors stop costing page faults."""
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt settings exist on glibc only")

PROBE = """
import resource, torch
from usspectrum.runtime.allocator import keep_freed_memory
kept = keep_freed_memory()
x = torch.ones(16 << 20)  # 64 MiB, above glibc's largest automatic mmap threshold
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):  # first allocations of that size fault either way
    torch.mul(x, 2)
start = faults()
for _ in range(10):
    torch.mul(x, 2)
print(kept, faults() - start)
"""


def run_probe(keep: str) -> tuple[bool, int]:
    env = dict(os.environ, USSPECTRUM_KEEP_MEMORY=keep, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_kept_memory_is_reused_without_page_faults():
    kept, faults = run_probe("1")
    default, default_faults = run_probe("0")
    assert kept and not default
    pages = (64 << 20) // 4096
    # each fresh 64 MiB mapping faults in its pages; reused heap memory does
    # not (one more growth of the heap may happen while it settles)
    assert faults < 2 * pages
    if "[always]" not in _transparent_huge_pages():  # 2 MiB pages fault 512x less
        assert default_faults > 8 * pages


def _transparent_huge_pages() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read()
    except OSError:
        return ""
