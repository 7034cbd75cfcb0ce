#!/usr/bin/env bash
# Start or resume the 45-epoch (one cosine cycle) CIFAR-10 reproduction (issue: "A CIFAR-10
# reproduction that converges") from a pinned copy of the code, so that work
# on the package meanwhile cannot change the run. Checkpoints (float32, with
# optimizer state; mid-epoch progress files every 5 minutes) stay in the
# ignored examples/results/cifar10-long/*.pt; the per-epoch logs beside them
# are committed. Rerunning resumes every model where it stopped, bit for bit;
# on a machine without the checkpoints it starts again from epoch 1.
#
#   setsid nohup examples/long_run_cifar10.sh >> runs/train.log 2>&1 &
#   pkill -f reproduce_cifar10.py        # stop (the next run resumes)
set -euo pipefail
cd "$(dirname "$0")/.."
PIN="${PIN:-37bb868}"  # the commit every attempt since the third trains with (the first two: ebe96a3/cfa2090)
mkdir -p runs
if [ ! -d runs/pinned ]; then
    git worktree add --detach runs/pinned "$PIN"
fi
[ "$(git -C runs/pinned rev-parse --short=7 HEAD)" = "${PIN:0:7}" ] || {
    echo "runs/pinned is not at $PIN; remove it (git worktree remove runs/pinned) first" >&2
    exit 2
}
export PYTHONPATH="$PWD/runs/pinned"
# the order of training (examples/long_run_in_order.py) is copied beside the pin,
# so that edits to it meanwhile cannot change the run either
cp examples/long_run_in_order.py runs/long_run_in_order.py
exec python runs/long_run_in_order.py --train-only --quiet \
    --data ../shared/data/cifar10 --out examples/results/cifar10-long \
    --epochs 45 --cycles 1 --snapshot-epochs 10 20 30 --jobs 1 "$@"
