"""Where the time goes: the training step (torch.profiler, per operator and per part) and the whole
`ignite-mnist train` process (cProfile, per phase).

    .venv/bin/python scripts/profile_training.py step                 # 200 steps of the real step, batch 64, default precision
    .venv/bin/python scripts/profile_training.py step --precision fp32
    .venv/bin/python scripts/profile_training.py step --compile optimizer   # a lever: torch.compile'd parts
    .venv/bin/python scripts/profile_training.py process              # one epoch of Fashion-MNIST, as a process, by phase

step: the exact training step of `ignite-mnist train` (engines.make_train_step on the dataset's tensors),
timed by wall clock over the same steps without the profiler (the profiler itself slows each op), then
under torch.profiler, its operators grouped into forward, backward, optimizer, copies (autocast's casts),
dropout masks and what no operator accounts for (Python, the engine, the allocator). With --compile, the
model's forward (and so its backward), the optimizer's step, or both go through torch.compile (inductor)
first; the time of the first steps (tracing, compiling, or loading inductor's cache) is printed apart, and the
split by part holds only without it (compiled kernels are charged to no part or the wrong one).

process: `ignite-mnist train --max-epochs 1` under cProfile on a fresh experiment, its cumulative
times split into imports, data (read + decode), the epochs (training, evaluation), checkpoint, metrics,
TensorBoard, release, and the rest (start-up and exit, outside Python's profile).
"""

import argparse
import json
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FASHION_MNIST_PATH = Path("/usr/share/datasets/fashion-mnist")


CASTS = ("aten::_to_copy", "aten::to", "aten::copy_")


def parts_of(events) -> dict:
    """Self CPU time (us) by part: every operator is charged to the part of its top-level ancestor."""
    parts = {}

    def charge(event, part):
        if part in ("forward", "backward") and event.name in CASTS:
            part = "copies (bf16: autocast's casts; fp32: layouts)"
        elif part == "forward" and event.name in ("aten::random_", "aten::lt"):
            part = "dropout masks"
        parts[part] = parts.get(part, 0) + event.self_cpu_time_total
        for child in event.cpu_children:
            charge(child, part)

    for event in events:
        if event.cpu_parent is None:
            name = event.name
            part = ("optimizer step" if name.startswith("Optimizer.step") else
                    "zero_grad" if name.startswith("Optimizer.zero_grad") else
                    "backward" if "autograd::engine" in name or "Backward" in name else "forward")
            charge(event, part)
    return parts


def profile_step(args) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ignite_mnist import data, engines
    from ignite_mnist.device import prepare_cpu_for_training, use_bf16
    from ignite_mnist.experiment import draw_split
    from ignite_mnist.model import Net

    torch.manual_seed(0)
    prepare_cpu_for_training()  # as training() does
    device = torch.device("cpu")
    bf16 = use_bf16(args.precision, device)
    sizes = data.dataset_sizes(args.dataset, args.data_path)
    sets = data.tensor_sets(args.dataset, args.data_path, draw_split(sizes["train"], 0, 0), device)
    model = Net().to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    if args.compile in ("model", "both"):
        model.forward = torch.compile(model.forward)
    if args.compile in ("optimizer", "both"):
        optimizer.step = torch.compile(optimizer.step)
    step = engines.make_train_step(model, optimizer, sets["train"], bf16)
    batches = data.ShuffledBatches(len(sets["train"]), 64, 0)
    indexes = [b for _, b in zip(range(args.steps + 20), batches)]
    t0 = time.perf_counter()
    for index in indexes[:20]:  # warm-up: oneDNN primitives, allocator, and torch.compile's work
        step(None, index)
    if args.compile != "none":
        print(f"torch.compile ({args.compile}): the first 20 steps took {time.perf_counter() - t0:.1f} s")
    faults0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for index in indexes[20:]:
        step(None, index)
    wall_ms = (time.perf_counter() - t0) / args.steps * 1000
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / args.steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for index in indexes[20:]:
            step(None, index)
        profiled_ms = (time.perf_counter() - t0) / args.steps * 1000
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events) / args.steps / 1000
    parts = {key: us / args.steps / 1000 for key, us in parts_of(prof.events()).items()}
    parts["Python, engine, allocator (no operator)"] = profiled_ms - total_self
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]
    print(f"training step, batch 64, {'bf16' if bf16 else 'fp32'}, {torch.get_num_threads()} threads: "
          f"{wall_ms:.2f} ms per step by wall clock ({64 / wall_ms * 1000:.0f} images/s), {faults:.0f} page faults "
          "per step\n")
    print(f"{'operator':42} {'self ms/step':>12} {'calls/step':>11}")
    for e in top:
        print(f"{e.key[:42]:42} {e.self_cpu_time_total / args.steps / 1000:12.3f} {e.count / args.steps:11.1f}")
    print(f"\nby part, under the profiler ({profiled_ms:.2f} ms per step, its own cost included; {total_self:.2f} ms "
          "in operators):")
    for key, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {key:34} {ms:7.2f} ms")
    return {"precision": "bf16" if bf16 else "fp32", "step_ms": wall_ms, "images_per_s": 64 / wall_ms * 1000,
            "page_faults_per_step": faults,
            "profiled_step_ms": profiled_ms, "operators_ms": total_self, "parts_ms": parts}


PHASES = [  # (phase, function name, file suffix): cumulative time of the function
    ("imports before the command", "<module>", "ignite_mnist/cli.py"),
    ("read and decode the data", "tensor_sets", "ignite_mnist/data.py"),
    ("training steps", "train_step", "ignite_mnist/engines.py"),
    ("evaluation", "evaluate", "ignite_mnist/engines.py"),
    ("checkpoint", "save_checkpoint", "ignite_mnist/engines.py"),
    ("metrics.json and retention", "publish_history", "ignite_mnist/engines.py"),
    ("TensorBoard pictures", "log_epoch_pictures", "ignite_mnist/engines.py"),
    ("TensorBoard worst digits", "log_worst_digits", "ignite_mnist/engines.py"),
    ("release of the best epoch", "export_best_release", "ignite_mnist/engines.py"),
    ("import of launch (torch, ignite)", "<module>", "ignite_mnist/launch.py"),
    ("the whole command (main)", "main", "ignite_mnist/cli.py"),
]


PROFILED_MAIN = """
import cProfile, sys
profile, code = cProfile.Profile(), 0
profile.enable()
try:
    from ignite_mnist import cli
    cli.main(sys.argv[2:])
except SystemExit as e:
    code = e.code
profile.disable()
profile.dump_stats(sys.argv[1])
sys.exit(code)
"""


def profile_process(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cli = [sys.executable, "-m", "ignite_mnist", "--experiments-path", f"{tmp}/experiments", "--data-path",
               str(args.data_path), "-e", "p"]
        subprocess.run([*cli, "init", "--set", f"data.dataset={args.dataset}", "--set", "data.val_split=0"],
                       check=True, capture_output=True)
        t0 = time.perf_counter()
        # cli.main(argv) with an argv ends by SystemExit, not by os._exit as the console command does, so
        # that the profile gets written (the teardown this skips is measured by bench.py's whole processes)
        subprocess.run([sys.executable, "-c", PROFILED_MAIN, f"{tmp}/train.prof", *cli[3:], "train", "--max-epochs",
                        "1", "--device", "cpu"], check=True, capture_output=True)
        wall = time.perf_counter() - t0
        stats = pstats.Stats(f"{tmp}/train.prof").stats
        history = json.loads(Path(f"{tmp}/experiments/p/metrics.json").read_text())["epochs"]
    cumulative = {}
    for label, function, suffix in PHASES:
        cumulative[label] = max((ct for (path, _, name), (_, _, _, ct, _) in stats.items()
                                 if name == function and path.endswith(suffix)), default=0.0)
    print(f"`ignite-mnist train --max-epochs 1`, {args.dataset}: {wall:.1f} s start to exit (under cProfile, "
          f"which slows Python code); the epoch by its own clock: train {history[0]['train_seconds']:.1f} s, "
          f"test {history[0]['test_seconds']:.1f} s\n")
    for label, seconds in cumulative.items():
        print(f"  {label:36} {seconds:7.2f} s")
    return {"wall_s": wall, "phases_s": cumulative, "epoch": history[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["step", "process"])
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist", "mnist-sample"])
    p.add_argument("--data-path", type=Path, default=FASHION_MNIST_PATH)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--compile", default="none", choices=["none", "model", "optimizer", "both"],
                   help="step: torch.compile the model's forward, the optimizer's step, or both")
    args = p.parse_args()
    result = profile_step(args) if args.what == "step" else profile_process(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
