"""Sessions needed to finish the long CIFAR-10 run when the machine (and every
checkpoint on it) may be lost between sessions: the five models trained one
epoch of each at a time, against two at a time, one after another, with a
finished model committed (float16) and so safe from later losses.

A rough model, for choosing the order: work in hours on one core (by default
the individual net 4, each US-Net / S-Net 8: 45 epochs at the fifth attempt's
epoch times, about 320 and 640 s with evaluation), two cores,
``--session-hours`` of training per session. A third order trains one model
at a time with two threads (not bit for bit the one-thread training).

    python examples/simulate_machine_losses.py
"""
from __future__ import annotations

import argparse
import random

NAMES = ["individual", "us-uniform", "us-uniform-avg", "s-net-4switch", "us-nonuniform"]


def sessions_needed(order: str, loss: float, session_hours: float, rng: random.Random,
                    work: dict[str, float], speedup: float = 1.8) -> int:
    """Sessions until all five models are finished, one simulated history."""
    done = {name: 0.0 for name in work}
    finished: set[str] = set()
    sessions, step = 0, 0.05
    while len(finished) < len(work):
        sessions += 1
        if sessions > 1 and rng.random() < loss:
            done = {n: (work[n] if n in finished else 0.0) for n in work}
        t = 0.0
        while t < session_hours and len(finished) < len(work):
            todo = [n for n in work if n not in finished]
            if order == "together":  # furthest behind first, two on one thread each
                todo.sort(key=lambda n: done[n] / work[n])
                running, rate = todo[:2], 1.0
            else:  # under way first, then the fixed order
                todo.sort(key=lambda n: (done[n] == 0, list(work).index(n)))
                running, rate = (todo[:2], 1.0) if order == "in order" else (todo[:1], speedup)
            for name in running:
                done[name] += step * rate
                if done[name] >= work[name]:
                    finished.add(name)
            t += step
    return sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", type=float, nargs="+", default=[0.2, 0.35, 0.5])
    parser.add_argument("--session-hours", type=float, default=2.6)
    parser.add_argument("--histories", type=int, default=2000)
    parser.add_argument("--individual-hours", type=float, default=4.0)
    parser.add_argument("--us-hours", type=float, default=8.0, help="each US-Net and the S-Net")
    parser.add_argument("--two-thread-speedup", type=float, default=1.8,
                        help="one model, two threads, against one thread (two one-thread "
                             "processes beat it by about 10%%)")
    args = parser.parse_args()
    work = {n: args.individual_hours if n == "individual" else args.us_hours for n in NAMES}
    for loss in args.losses:
        for order in ("together", "in order", "one, 2 threads"):
            runs = sorted(sessions_needed(order, loss, args.session_hours, random.Random(seed), work,
                                          args.two_thread_speedup)
                          for seed in range(args.histories))
            print(f"loss {loss:.2f} {order:>14}: mean {sum(runs) / len(runs):.2f} sessions, "
                  f"median {runs[len(runs) // 2]}, 90th percentile {runs[int(0.9 * len(runs))]}")


if __name__ == "__main__":
    main()
