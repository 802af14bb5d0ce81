"""Where the time goes: the training step (every operator timed by wall clock, per part) and the whole
`ignite-mnist train` process (cProfile, per phase).

    .venv/bin/python scripts/profile_training.py step                 # 200 + 200 steps of the real step, batch 64, default precision
    .venv/bin/python scripts/profile_training.py step --precision fp32
    .venv/bin/python scripts/profile_training.py step --compile optimizer   # a lever: torch.compile'd parts
    .venv/bin/python scripts/profile_training.py step --peak-blocks 10      # and its share of the GEMM peak
    .venv/bin/python scripts/profile_training.py process              # one epoch of Fashion-MNIST, as a process, by phase

step: the exact training step of `ignite-mnist train` (engines.make_train_step on the dataset's tensors),
timed by wall clock, alternating with as many steps in which every aten operator is timed by wall clock
(a dispatch mode, not torch.profiler, whose own allocations make the step's operators page-fault: see
OperatorTimer), each charged to forward, backward, the optimizer, casts (autocast's), layout copies or
dropout masks; the fused kernels (ignite_mnist/kernels.c) as operators named kernels.*. What the operators
leave of the step's wall clock is Python, the engine and the allocator. With
--compile, the model's forward (and so its backward), the optimizer's step, or both go through
torch.compile (inductor) first; the time of the first steps (tracing, compiling, or loading inductor's
cache) is printed apart.

process: `ignite-mnist train --max-epochs 1` under cProfile on a fresh experiment, its cumulative
times split into imports, data (read + decode), the epochs (training, evaluation), checkpoint, metrics,
TensorBoard, release, and the rest (start-up and exit, outside Python's profile).
"""

import argparse
import importlib.util
import itertools
import json
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy  # noqa: F401  (before torch: see ignite_mnist/lazy_imports.py)
import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FASHION_MNIST_PATH = Path("/usr/share/datasets/fashion-mnist")


CASTS = ("aten._to_copy.default", "aten.copy_.default")
MASKS = ("aten.random_.from", "aten.lt.Scalar", "aten.lt.Scalar_out")


class OperatorTimer(TorchDispatchMode):
    """Wall time of every aten operator of the step, each charged to the part of the step it runs in.

    Not torch.profiler: its own allocations keep glibc's malloc from handing the step the blocks it freed the
    step before (on the AMX VM, about 1,600 page faults a step under the profiler against 6 without), so every
    operator that writes fresh memory (max-pool's zero-filled gradient, Adadelta's temporaries, autocast's
    casts) reads several times slower under it than it runs. A dispatch mode only reads the clock around each
    operator: the Python it adds between them is left out of the operators' times."""

    def __init__(self):
        super().__init__()
        self.in_optimizer = self.on = False
        self.times = {}  # (part, operator, first input's shape) -> [seconds, calls]

    def __enter__(self):
        self.on = True
        return super().__enter__()

    def __exit__(self, *exc):
        self.on = False
        return super().__exit__(*exc)

    def time_kernels(self, library):
        """kernels.c's functions (ctypes calls, which a dispatch mode does not see) timed as operators too."""
        timer = self

        class Timed:
            def __getattr__(self, name):
                function = getattr(library, name)

                def timed(*args):
                    t0 = time.perf_counter()
                    out = function(*args)
                    if timer.on:
                        timer.charge(f"kernels.{name}", (), time.perf_counter() - t0)
                    return out

                return timed

        return Timed()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.charge(func, args, time.perf_counter() - t0)
        return out

    def charge(self, func, args, seconds):
        name = str(func)
        backward = torch._C._current_autograd_node() is not None
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        mask = first is not None and first.dtype == torch.bool  # the dropout mask's cast
        part = ("optimizer step" if self.in_optimizer else
                "dropout masks" if (name in MASKS and not backward) or (name in CASTS and mask) else
                "casts (bf16: autocast's)" if name in CASTS else
                "layout copies (flatten, model.PlainLayout)" if name == "aten.clone.default" else
                "backward" if backward else "forward (and the batch, loss, zero_grad)")
        shape = () if first is None else tuple(first.shape)
        entry = self.times.setdefault((part, name, shape), [0.0, 0])
        entry[0] += seconds
        entry[1] += 1


def profile_step(args) -> dict:
    from ignite_mnist import data, engines, kernels
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
    optimizer = engines.make_optimizer(model.parameters(), 1.0, device, args.compile in ("optimizer", "both"))
    if args.compile in ("model", "both"):
        model.forward = torch.compile(model.forward)
    if args.compile in ("optimizer", "both"):  # as training.compile_optimizer does
        engines.compile_optimizer_step(optimizer)
    step = engines.make_train_step(model, optimizer, sets["train"], bf16)
    batches = data.ShuffledBatches(len(sets["train"]), 64, 0)
    indexes = list(itertools.islice(itertools.chain.from_iterable(itertools.repeat(batches)),  # epochs enough
                                    2 * args.steps + 20))
    t0 = time.perf_counter()
    for index in indexes[:20]:  # warm-up: oneDNN primitives, allocator, and torch.compile's work
        step(None, index)
    if args.compile != "none":
        print(f"torch.compile ({args.compile}): the first 20 steps took {time.perf_counter() - t0:.1f} s")
    timer = OperatorTimer()
    if kernels.library() is not None:
        kernels._library = timer.time_kernels(kernels.library())
    optimizer.register_step_pre_hook(lambda *_: setattr(timer, "in_optimizer", True))
    optimizer.register_step_post_hook(lambda *_: setattr(timer, "in_optimizer", False))
    # plain steps and operator-timed steps alternate, so that the machine's drift enters both alike
    wall = timed = faults = timed_faults = 0.0
    for plain, operators in zip(indexes[20::2], indexes[21::2]):
        faults0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        step(None, plain)
        t1, faults1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with timer:
            step(None, operators)
        timed += time.perf_counter() - t1
        wall, faults = wall + t1 - t0, faults + faults1 - faults0
        timed_faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults1
    wall_ms, timed_ms = wall / args.steps * 1000, timed / args.steps * 1000
    faults, timed_faults = faults / args.steps, timed_faults / args.steps
    per_step = {key: (seconds * 1000 / args.steps, calls / args.steps) for key, (seconds, calls) in timer.times.items()}
    operators_ms = sum(ms for ms, _ in per_step.values())
    parts = {}
    for (part, _, _), (ms, _) in per_step.items():
        parts[part] = parts.get(part, 0.0) + ms
    rest = "Python, engine, allocator (the step's wall clock less its operators)"
    if args.compile != "none":  # compiled code calls its kernels directly: the dispatch mode never sees them
        rest = f"the compiled {args.compile}, Python, engine, allocator (wall clock less the operators seen)"
    parts[rest] = wall_ms - operators_ms
    print(f"training step, batch 64, {'bf16' if bf16 else 'fp32'}, {torch.get_num_threads()} threads: "
          f"{wall_ms:.2f} ms per step by wall clock ({64 / wall_ms * 1000:.0f} images/s), {faults:.0f} page faults "
          f"per step\n\noperators timed one by one ({timed_ms:.2f} ms a step with the timer's Python, "
          f"{timed_faults:.0f} page faults a step; {operators_ms:.2f} ms in operators):\n")
    print(f"{'operator':46} {'first input':>18} {'ms/step':>8} {'calls':>6}  part")
    for (part, name, shape), (ms, calls) in sorted(per_step.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"{name[:46]:46} {str(list(shape))[:18]:>18} {ms:8.3f} {calls:6.1f}  {part}")
    print(f"\nby part ({wall_ms:.2f} ms a step by wall clock):")
    for key, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {key:90} {ms:7.2f} ms")
    result = {"precision": "bf16" if bf16 else "fp32", "step_ms": wall_ms, "images_per_s": 64 / wall_ms * 1000,
              "page_faults_per_step": faults, "timed_step_ms": timed_ms, "timed_page_faults_per_step": timed_faults,
              "operators_ms": operators_ms, "parts_ms": parts}
    if args.peak_blocks:
        result.update(share_of_the_peak(step, itertools.cycle(indexes), bf16, args.peak_blocks))
    return result


def share_of_the_peak(step, batches, bf16: bool, blocks: int) -> dict:
    """The profiled step's share of the GEMM peak (bf16, or fp32 for an fp32 step), --compile included, as
    bench.py measures its own step's (bench.peak_shares: blocks of 40 steps, each followed by the peak)."""
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.peak_shares(step, batches, 64, torch.bfloat16 if bf16 else torch.float32, torch.device("cpu"),
                               blocks)
    shares = result["paired_peak_fractions"]
    print(f"\nthe step's share of the {'bf16' if bf16 else 'fp32'} GEMM peak, {blocks} blocks of 40 steps each "
          f"followed by the peak: {100 * result['paired_peak_fraction']:.1f}% (median; {100 * min(shares):.1f}% to "
          f"{100 * max(shares):.1f}%), {result['paired_step_ms']:.2f} ms a step")
    return result


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
    p.add_argument("--peak-blocks", type=int, default=0,
                   help="step: then the step's share of the GEMM peak in this many blocks of 40 steps (bench.py's)")
    args = p.parse_args()
    result = profile_step(args) if args.what == "step" else profile_process(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
