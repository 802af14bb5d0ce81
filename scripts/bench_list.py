"""Benchmark: `ignite-mnist list` over many experiments, as a whole process (what a user waits for).

    .venv/bin/python scripts/bench_list.py                 # 100 experiments, 5 runs
    .venv/bin/python scripts/bench_list.py --experiments 300 --runs 3

Trains one small experiment on the bundled sample (1 epoch), then makes N experiment folders from it:
its experiment.json, split.json and metrics.json copied, its checkpoints and releases hard-linked (list
never reads them), one folder in ten left broken. Times `ignite-mnist list` and `list --json` start to
exit; the target is under 2 s for 100 experiments on a 2-core machine. The last line is one JSON object.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 2.0


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ignite_mnist", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cli("-e", "seed", "init", "--set", "data.dataset=mnist-sample", cwd=work)
        cli("-e", "seed", "train", "--max-epochs", "1", "--device", "cpu", cwd=work)
        source = work / "experiments" / "seed"
        for i in range(args.experiments - 1):
            target = work / "experiments" / f"exp-{i:04d}"
            target.mkdir()
            if i % 10 == 9:  # broken: an experiment.json that is not JSON
                (target / "experiment.json").write_text("{")
                continue
            for name in ("experiment.json", "split.json", "metrics.json"):
                shutil.copy(source / name, target / name)
            for folder in ("checkpoints", "releases"):
                (target / folder).mkdir()
                for path in (source / folder).iterdir():
                    os.link(path, target / folder / path.name)
        times = {"list": [], "list --json": []}
        for _ in range(args.runs):
            for label in times:
                start = time.perf_counter()
                result = cli("list", *label.split()[1:], cwd=work)
                times[label].append(time.perf_counter() - start)
        listed = json.loads(result.stdout)
    summary = {"experiments": args.experiments, "listed": len(listed),
               "broken": sum("broken" in row for row in listed), "runs": args.runs,
               "cpu": cpu_name(), "target_seconds": TARGET_SECONDS,
               **{f"{label.replace(' --', '_')}_median_s": round(statistics.median(t), 3) for label, t in times.items()},
               **{f"{label.replace(' --', '_')}_max_s": round(max(t), 3) for label, t in times.items()}}
    for label, t in times.items():
        print(f"ignite-mnist {label}: {args.experiments} experiments, median {statistics.median(t):.2f} s, "
              f"max {max(t):.2f} s over {args.runs} runs (target < {TARGET_SECONDS} s)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
