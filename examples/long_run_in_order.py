"""Train the long CIFAR-10 run's five models one at a time (two threads), in a
fixed order, instead of every model one epoch at a time.

Why: the machine that trains can be lost between sessions with every
checkpoint on it (six attempts were). Trained one epoch at a time, nothing
is finished until all five are, about 14 hours later, so one loss in five
session boundaries loses everything. In order, a model is finished after
about 3 hours (individual, one core) or 6.5 hours (a US-Net or S-Net, one
core); its float16 copy is then committed and a later loss cannot take it.

The training itself is the pinned reproduction's (``runs/pinned``, imported
from there, with ``long_run_cifar10.sh``'s arguments; ``--jobs 1`` gives each
epoch's process both cores): each epoch resumes the model's checkpoint, so
the order in which models train cannot change a bit of any of them. Models
whose final float16 copy is already in ``FINISHED`` are not trained again.

    python examples/long_run_in_order.py      # via long_run_cifar10.sh
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINNED = ROOT / "runs" / "pinned"
# individual first (shortest, the accuracy target's reference), then the
# US-Net the target compares with it, then its averaged twin (Table 1)
ORDER = ["individual", "us-uniform", "us-uniform-avg", "s-net-4switch", "us-nonuniform"]
FINISHED = ROOT / "examples" / "results" / "cifar10-long" / "models"


def main() -> None:
    sys.path[:0] = [str(PINNED), str(PINNED / "examples")]
    import reproduce_cifar10 as pinned  # noqa: E402  (the pinned copy, not this checkout's)

    assert Path(pinned.__file__).resolve().is_relative_to(PINNED.resolve()), pinned.__file__

    def in_order(done: dict[str, int], running: set[str], epochs: int, free: int) -> list[str]:
        waiting = [n for n in ORDER if n not in running and done[n] < epochs
                   and not (FINISHED / f"{n}.pt").exists()]
        # a model already under way before one not yet started
        waiting.sort(key=lambda n: (done[n] == 0, ORDER.index(n)))
        return waiting[:free]

    pinned.next_jobs = in_order
    pinned.main()


if __name__ == "__main__":
    main()
