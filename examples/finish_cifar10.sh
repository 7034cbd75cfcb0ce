#!/usr/bin/env bash
# The last step of the long CIFAR-10 run (examples/long_run_cifar10.sh), once
# every model has been trained, shipped and swept (each as it finished:
# examples/snapshot_records.py --ship NAME, then --final --model NAME, the
# float16 copies in examples/results/cifar10-long/models/ and the end's
# per-model CSVs beside the logs, all committed):
#
#   1. the 3-epoch run's folder becomes examples/results/cifar10-3epoch/,
#      without its models (the new ones replace them: 40 MB budget);
#   2. the long run's folder becomes examples/results/cifar10/ (the shipped
#      one), its CSVs naming the new paths;
#   3. the end's records and every snapshot's (compare, slim-stage, Table 1,
#      why, precision check) assembled from the per-model CSVs, the claims
#      and their trend (claims_cifar10.py), and the targets
#      (check_cifar10_targets.py, which re-sweeps two rows from the shipped
#      models), each with its output in a .log.
#
# No training and no model but the shipped ones is needed, so it runs on any
# machine with the repository. Nothing is committed: read the logs, then
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

if pgrep -f "long_run_in_order[.]py|reproduce_cifar10[.]py.*--train-only" > /dev/null; then
    echo "Error: the long run is still training (pkill -f long_run_in_order.py stops it)" >&2
    exit 2
fi
if [ -d "$LONG" ]; then
    for m in $MODELS; do
        last=$(python -c "import pandas as pd; print(int(pd.read_csv('$LONG/$m-log.csv').epoch.max()))")
        [ "$last" -ge "$EPOCHS" ] || {
            echo "Error: $m has trained $last of $EPOCHS epochs; resume examples/long_run_cifar10.sh first" >&2
            exit 2
        }
        [ -f "$LONG/models/$m.pt" ] || {
            echo "Error: $LONG/models/$m.pt is missing; run examples/snapshot_records.py --ship $m" >&2
            exit 2
        }
    done
    git mv "$FINAL" "$OLD"
    git rm -rq "$OLD/models"
    rm -rf "$OLD/models"
    git mv "$LONG" "$FINAL"  # moves the ignored checkpoints along with the tracked files
    grep -rl "$LONG/" "$FINAL" --include='*.csv' --include='*.log' \
        | xargs -r sed -i "s#$LONG/#$FINAL/#g"
elif [ ! -d "$OLD" ]; then
    echo "Error: neither $LONG nor $OLD exists: nothing to finish" >&2
    exit 2
fi
# from here on a rerun redoes only what follows: every step reads committed CSVs
for folder in "$FINAL"/epoch*/; do
    epoch=$(basename "$folder"); epoch=${epoch#epoch}
    python examples/snapshot_records.py --out "$FINAL" --epoch "$epoch" --assemble \
        > "${folder}assemble.log" 2>&1
    python examples/claims_cifar10.py --out "$folder" > "${folder}claims.log" 2>&1
done
python examples/snapshot_records.py --out "$FINAL" --final --assemble > "$FINAL/assemble.log" 2>&1
python examples/claims_cifar10.py --out "$FINAL" > "$FINAL/claims.log" 2>&1
python examples/check_cifar10_targets.py --out "$FINAL" --sweep us-uniform:0.35 \
    --sweep individual:1.0 | tee "$FINAL/targets.log" || true
