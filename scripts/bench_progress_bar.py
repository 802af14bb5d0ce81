"""What the training progress bar costs per iteration: Ignite's ProgressBar as `train` attaches it (advanced
100 times an epoch at most) against one advanced at every iteration and against none, on an engine whose step
does nothing, so that only the bar's Python is timed; the bar draws to /dev/null.

    .venv/bin/python scripts/bench_progress_bar.py [--iterations 938] [--epochs 20]

Prints microseconds per iteration for each, alternating, medians of the rounds; the last line is JSON.
A step of `train` takes about 3 ms on an H200 and 6-25 ms on a 2-core CPU, by CPU kind (README, Speed).
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy  # noqa: F401  (before torch: see ignite_mnist/lazy_imports.py)
import torch
from ignite.engine import Engine
from ignite.handlers import ProgressBar

from ignite_mnist.engines import attach_progress_bar


def time_bar(kind: str, iterations: int, epochs: int) -> float:
    """Seconds per iteration of an engine with a no-op step and the bar of `kind` (none, each, train)."""
    loss = torch.tensor(0.5)
    engine = Engine(lambda engine, batch: loss)
    if kind == "each":
        ProgressBar(persist=False).attach(engine, output_transform=lambda loss: {"loss": loss.item()})
    elif kind == "train":
        attach_progress_bar(engine, iterations)
    start = time.perf_counter()
    engine.run(range(iterations), max_epochs=epochs)
    return (time.perf_counter() - start) / (iterations * epochs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=938, help="an epoch's iterations (938: Fashion-MNIST at 64)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    stderr, sys.stderr = sys.stderr, open(os.devnull, "w")  # tqdm draws on sys.stderr
    try:
        runs = {kind: [] for kind in ("none", "each", "train")}
        for _ in range(args.rounds):
            for kind in runs:
                runs[kind].append(time_bar(kind, args.iterations, args.epochs) * 1e6)
    finally:
        sys.stderr = stderr
    us = {kind: statistics.median(values) for kind, values in runs.items()}
    for kind, label in (("none", "no bar"), ("each", "bar advanced every iteration"),
                        ("train", f"bar as `train` attaches it (every {max(1, args.iterations // 100)})")):
        print(f"{label:45} {us[kind]:7.1f} us/iteration")
    print(json.dumps({"iterations": args.iterations, "us_per_iteration": us,
                      "bar_each_us": us["each"] - us["none"], "bar_train_us": us["train"] - us["none"]}))


if __name__ == "__main__":
    main()
