"""Train several configurations side by side (one process each, e.g. on a lent GPU) and collect their
validation curves and final evaluations into one JSON file.

    python benchmarks/train_sweep.py benchmarks/sweeps/matched_cpu_budget.json --out sweep_out

A sweep file names a config (a preset or YAML path), overrides shared by every run, and per-run overrides:
    {"config": "scratch_small", "common": ["device=cuda", "precision=fp32"], "runs": {"name": ["optim.lr=1e-3"]}}
To compare what 30 CPU minutes buy, give each run the step count that fits 30 minutes on the CPU (measure
its seconds per step there first) and run in fp32, which is what the CPU trains in.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def summarize(run_dir: Path) -> dict:
    record: dict = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        record["val"] = [{k: v[k] for k in ("step", "box_miou", "point_miou")} for v in lines if v["split"] == "val"]
        train = [v for v in lines if v["split"] == "train"][-20:]
        if train:
            record["sec_per_step"] = sum(v["sec_per_step"] for v in train) / len(train)
    evaluation = run_dir / "eval" / "metrics.json"
    if evaluation.is_file():
        record["eval"] = json.loads(evaluation.read_text())
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="sweep JSON file")
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs, logs and summary.json")
    args = parser.parse_args()
    spec = json.loads(args.sweep.read_text())
    for key in ("config", "runs"):
        if key not in spec:
            raise SystemExit(f"{args.sweep}: expected a key {key!r}, found {sorted(spec)}")
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    start = time.time()
    procs = {}
    for name, overrides in spec["runs"].items():
        cmd = [sys.executable, "-m", "samforge.cli.main", "train", "--config", spec["config"],
               f"out={args.out / name}", *spec.get("common", []), *overrides]
        log = open(args.out / f"{name}.log", "w")
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    summary = {}
    for name, proc in procs.items():
        proc.wait()
        record = {"overrides": spec["runs"][name], "returncode": proc.returncode, **summarize(args.out / name)}
        summary[name] = record
        box = record.get("eval", {}).get("box", {}).get("miou")
        point = record.get("eval", {}).get("center_point", {}).get("miou")
        steps = record["val"][-1]["step"] if record.get("val") else None
        print(f"{name:24s} rc {proc.returncode}  steps {steps}  box mIoU {box}  centre-point mIoU {point}  "
              f"({time.time() - start:.0f} s)", flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
