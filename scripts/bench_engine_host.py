"""What Ignite's engine and `train`'s handlers cost the host per iteration: `ignite-mnist train`'s own run
(launch.run_training, every handler attached) on a step that does nothing, against a plain loop over the same
batches with the same step; evaluation left out (the evaluators emptied), so only the trainer's iterations count.

    .venv/bin/python scripts/bench_engine_host.py [--device cpu|cuda] [--epochs 6] [--rounds 3] [--step-ms 2.7]

Where a training step is short and launch-bound (about 2.7 ms on an H200, README, Speed: On CUDA), this host time
is what the engine adds to each step (bench.py's paired_engine_overhead measures it with the real step); on a
2-core CPU a step takes 6-25 ms. Prints microseconds per iteration for each (the median of the epochs after the
first, then of the rounds), their difference, and that difference as a share of a step of --step-ms; the last
line is JSON. The data is the bundled sample (63 iterations an epoch at batch 64).
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy  # noqa: F401  (before torch: see ignite_mnist/lazy_imports.py)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ignite_mnist import data, engines  # noqa: E402
from ignite_mnist.experiment import DEFAULT_CONFIG, create_experiment, load_config  # noqa: E402
from ignite_mnist.launch import run_training  # noqa: E402


def no_op_steps(device: torch.device):
    """engines.make_train_step's stand-in: a step that returns a zero loss on the device, doing nothing."""
    zero = torch.zeros((), device=device)
    return lambda model, optimizer, train_set, bf16: (lambda engine, index: zero)


def engine_epochs(device: torch.device, epochs: int, work: Path) -> list:
    """Seconds per iteration of each epoch of `train`'s run on the no-op step (Ignite's own epoch timer)."""
    from ignite.engine import Events

    per_iteration, attach_handlers = [], engines.attach_handlers

    def attach(trainer, evaluators, *args, **kwargs):
        attach_handlers(trainer, evaluators, *args, **kwargs)
        evaluators.clear()  # no evaluation: the handlers read the dict when they run

        @trainer.on(Events.EPOCH_COMPLETED)
        def timed(engine):
            per_iteration.append(engine.state.times["EPOCH_COMPLETED"] / engine.state.epoch_length)

    config = load_config(DEFAULT_CONFIG)
    config["data"].update(dataset="mnist-sample", val_split=0)
    sizes = data.dataset_sizes("mnist-sample", Path("."))
    experiment = create_experiment(work, f"engine-host-{time.time_ns()}", config, 0, sizes)
    make_train_step, engines.make_train_step, engines.attach_handlers = engines.make_train_step, no_op_steps(device), attach
    try:
        run_training(experiment, Path("."), max_epochs=epochs, device_name=str(device))
    finally:
        engines.make_train_step, engines.attach_handlers = make_train_step, attach_handlers
        shutil.rmtree(experiment.root, ignore_errors=True)
    return per_iteration


def bare_epochs(device: torch.device, epochs: int) -> list:
    """The same batches and step in a plain loop, the loss summed as the trainer's Average sums it."""
    step = no_op_steps(device)(None, None, None, False)
    batch_size = load_config(DEFAULT_CONFIG)["training"]["batch_size"]
    batches = data.ShuffledBatches(data.dataset_sizes("mnist-sample", Path("."))["train"], batch_size, 0, 0, 1, device)
    per_iteration = []
    for epoch in range(1, epochs + 1):
        batches.set_epoch(epoch)
        start, total, count = time.perf_counter(), torch.zeros((), device=device), 0
        for index in batches:
            total += step(None, index)
            count += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        per_iteration.append((time.perf_counter() - start) / count)
    return per_iteration


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=6, help="each round's epochs (the first, warming up, is left out)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--step-ms", type=float, default=2.7, help="a training step's time, to express the cost as a share")
    args = p.parse_args()
    if args.epochs < 2 or args.rounds < 1:
        p.error("--epochs must be at least 2 and --rounds at least 1")
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="ignite-mnist-engine-host-"))
    runs = {"engine": [], "bare": []}
    try:
        for _ in range(args.rounds):  # alternating, so that a drift of the machine touches both
            runs["engine"].append(statistics.median(engine_epochs(device, args.epochs, work)[1:]) * 1e6)
            runs["bare"].append(statistics.median(bare_epochs(device, args.epochs)[1:]) * 1e6)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    us = {name: statistics.median(values) for name, values in runs.items()}
    added = us["engine"] - us["bare"]
    print(f"`train`'s engine and handlers, no-op step: {us['engine']:7.1f} us/iteration")
    print(f"plain loop, no-op step:                  {us['bare']:7.1f} us/iteration")
    print(f"added by the engine: {added:.1f} us an iteration, {100 * added / (args.step_ms * 1000):.1f}% of a "
          f"{args.step_ms:g} ms step ({device})")
    print(json.dumps({"device": str(device), "us_per_iteration": us, "rounds": runs, "engine_added_us": added,
                      "step_ms": args.step_ms, "share_of_step": added / (args.step_ms * 1000)}))


if __name__ == "__main__":
    main()
