"""Export each searched config of a budget table and check the exported
file against the sweep's accuracy, evaluated by a process that never
imports usspectrum.

For every row of ``search-budgets.csv`` (written by ``usspectrum search``):
``usspectrum export CKPT --width <config> --data DATA`` (BN calibrated on the
same 2,000 seeded, augmented training images as the report's sweep), then
``python -c`` with plain torch + torchvision: ``torch.jit.load`` the file
and count top-1 over all of ``val/`` (torchvision's ``ImageFolder`` with
its PIL loader, ``ToTensor`` and ``Normalize`` with the checkpoint's
mean/std).
Writes ``export-check.csv`` beside the budget table: budget, config, the
sweep's val top-1 (``search-val.csv``), the exported file's top-1, the
difference, and the seconds.

    python examples/check_search_export.py examples/results/cifar10/search-stage \\
        --checkpoint examples/results/cifar10/models/us-nonuniform.pt
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

# run in a fresh interpreter: only torch and torchvision, never usspectrum
EVALUATE = r"""
import json, sys, torch
from torchvision import datasets, transforms
model_path, val_dir, mean, std = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
net = torch.jit.load(model_path).eval()
val = datasets.ImageFolder(val_dir, transforms.Compose([transforms.ToTensor(),
                                                        transforms.Normalize(mean, std)]))
correct = 0
with torch.no_grad():
    for x, y in torch.utils.data.DataLoader(val, batch_size=500, num_workers=1):
        correct += (net(x).argmax(1) == y).sum().item()
assert "usspectrum" not in sys.modules
print(json.dumps({"top1": 100.0 * correct / len(val), "images": len(val)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder with search-budgets.csv and search-val.csv")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default=os.path.relpath(ROOT.parent / "shared" / "data" / "cifar10"))
    args = parser.parse_args()

    from usspectrum import load_checkpoint

    spec = load_checkpoint(args.checkpoint).meta["image"]
    budgets = pd.read_csv(args.folder / "search-budgets.csv")
    swept = pd.read_csv(args.folder / "search-val.csv").set_index("width")["top1"]
    rows = []
    for _, row in budgets.iterrows():
        config = row["config"]
        out = args.folder / f"export-{row['budget']:g}.pt"
        start = time.perf_counter()
        subprocess.run(["usspectrum", "export", args.checkpoint, "--width", config,
                        "--data", args.data, "-o", str(out)], check=True)
        exported = time.perf_counter() - start
        result = subprocess.run([sys.executable, "-c", EVALUATE, str(out), str(Path(args.data) / "val"),
                                 json.dumps(list(spec.mean)), json.dumps(list(spec.std))],
                                check=True, capture_output=True, text=True)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append({"budget": row["budget"], "config": config, "sweep_top1": swept[config],
                     "export_top1": round(measured["top1"], 2),
                     "difference": round(measured["top1"] - swept[config], 2),
                     "images": measured["images"], "export_seconds": round(exported, 1),
                     "file_kb": round(out.stat().st_size / 1024)})
        out.unlink()  # the check needs the numbers, not the files
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.folder / "export-check.csv", index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
