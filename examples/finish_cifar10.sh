#!/usr/bin/env bash
# The last step of the long CIFAR-10 run (examples/long_run_cifar10.sh), once
# every model's log has reached its last epoch and training has stopped:
#
#   1. the 3-epoch run's folder becomes examples/results/cifar10-3epoch/,
#      without its models (the new ones replace them: 40 MB budget);
#   2. the long run's folder becomes examples/results/cifar10/ (the shipped
#      one), its snapshots' CSVs naming the new paths;
#   3. from the working tree: the final figures, Table 1 and the float16
#      models (reproduce_cifar10.py), the claims and their trend
#      (claims_cifar10.py), the why-probes (why_claims_cifar10.py), and the
#      targets (check_cifar10_targets.py), each with its output in a .log.
#
# About 35 minutes on 2 cores. Nothing is committed: read the logs, then
# update the README, docs/cifar10-reproduction.md and
# tests/test_shipped_cifar10.py and commit.
#
#   examples/finish_cifar10.sh            # EPOCHS=45 by default
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS="${EPOCHS:-45}"
LONG=examples/results/cifar10-long
FINAL=examples/results/cifar10
OLD=examples/results/cifar10-3epoch
MODELS="us-uniform us-nonuniform s-net-4switch individual us-uniform-avg"

if pgrep -f "reproduce_cifar10.py.*--train-only" > /dev/null; then
    echo "Error: the long run is still training (pkill -f reproduce_cifar10.py stops it)" >&2
    exit 2
fi
if [ -d "$LONG" ]; then
    for m in $MODELS; do
        last=$(python -c "import pandas as pd; print(int(pd.read_csv('$LONG/$m-log.csv').epoch.max()))")
        [ "$last" -ge "$EPOCHS" ] || {
            echo "Error: $m has trained $last of $EPOCHS epochs; resume examples/long_run_cifar10.sh first" >&2
            exit 2
        }
        [ -f "$LONG/$m.pt" ] || { echo "Error: $LONG/$m.pt is missing" >&2; exit 2; }
    done
    git mv "$FINAL" "$OLD"
    git rm -rq "$OLD/models"
    rm -rf "$OLD/models"
    git mv "$LONG" "$FINAL"  # moves the ignored checkpoints along with the tracked logs
    grep -rl "$LONG/" "$FINAL" --include='*.csv' --include='*.log' \
        | xargs -r sed -i "s#$LONG/#$FINAL/#g"
elif [ ! -d "$OLD" ]; then
    echo "Error: neither $LONG nor $OLD exists: nothing to finish" >&2
    exit 2
fi
# from here on a rerun resumes: every sweep appends to its CSV and skips finished rows
{ time python examples/reproduce_cifar10.py --out "$FINAL" --epochs "$EPOCHS" --quiet; } \
    > "$FINAL/final.log" 2>&1
python examples/claims_cifar10.py --out "$FINAL" > "$FINAL/claims.log" 2>&1
python examples/why_claims_cifar10.py --out "$FINAL" > "$FINAL/why.log" 2>&1
python examples/check_cifar10_targets.py --out "$FINAL" --sweep us-uniform:0.35 \
    --sweep individual:1.0 | tee "$FINAL/targets.log" || true
