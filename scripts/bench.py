"""Benchmark: the PyTorch MNIST example against ignite-mnist, on the same data and work, in two ways.

    .venv/bin/python scripts/bench.py                       # Fashion-MNIST (60,000 + 10,000), 1 epoch, 1 repeat
    .venv/bin/python scripts/bench.py --epochs 2 --repeats 3 --process-repeats 5
    .venv/bin/python scripts/bench.py --quick               # smoke test: the bundled sample (5,000 + 1,000), 1 epoch
    .venv/bin/python scripts/bench.py --device cuda         # the same on a GPU (the reference with --accel)
    .venv/bin/python scripts/bench.py --dataset mnist --data-path data   # MNIST's IDX files, torchvision's layout or flat

1. In-process epochs. Three contenders, each in its own subprocess (so that peak RSS is its own),
alternating: for each repeat, reference, then ignite-mnist, then bare. All train on the whole training set
(no validation split) and evaluate on the whole test set after every epoch, with torch's default threads.
- reference: scripts/reference_mnist.py's functions: pytorch/examples mnist/main.py's recipe (torchvision
  (Fashion)MNIST with ToTensor + Normalize, DataLoader batch 64 shuffled, the example's Net and loops, test
  batch 1000, Adadelta lr 1.0, StepLR gamma 0.7, fp32).
- ignite-mnist: what `ignite-mnist train` runs, not a copy: a temporary experiment from
  config/config.default.json (data.dataset set, data.val_split 0, precision from --precision), then
  launch.run_training(). Times per epoch come from the experiment's metrics.json.
- bare: ignite-mnist's own data, model, optimiser, train step and evaluator, driven by a plain Python
  loop instead of Ignite's Engine and handlers: it measures what the engine costs.

2. Whole processes, what the user waits for: `python scripts/reference_mnist.py --epochs E` against
`ignite-mnist train --max-epochs E` (its experiment made by an untimed `init`), alternating, start to exit.

3. The machine's own limit, in the same run: the best GFLOP/s of a 2048x2048 GEMM in fp32 and bf16
(measured before the contenders, after them, and between blocks of training steps in one process: the
best kept; the step's share of the peak measured alongside it, block by block, is reported too), the
network's FLOPs per training image (torch's FlopCounterMode, forward and backward), and so the training
step's achieved GFLOP/s as a fraction of the better of the two (bf16 where the CPU has it natively). The
CPU's model and kind (AMX, AVX512-BF16 or AVX2) are named.

Reported: per contender (median over repeats) train images/s, whole-epoch time (train + test-set
evaluation, per epoch), wall time per epoch, evaluation images/s, peak RSS (MiB), final test accuracy; then
    speedup         = reference whole-epoch time / ignite-mnist whole-epoch time (in-process)
    process_speedup = reference process time / ignite-mnist process time (whole processes)
    engine_overhead = ignite-mnist train time per epoch / bare train time per epoch - 1   (target <= 3%)
    paired_engine_overhead = the same, measured in one process: one epoch of ignite-mnist's run, every
                      10 of its iterations followed by 10 bare steps of the same step, the median of the
                      blocks' ratios (with its 95% confidence interval): steadier on a VM whose speed drifts
    peak_fraction   = step_gflops / peak_gflops, the best of the two GEMM peaks: the bf16 peak wherever the
                      CPU computes bf16 natively (AMX, AVX512-BF16), the fp32 peak where it does not (AVX2:
                      bf16 products there run hundreds of times slower than fp32)
    paired_peak_fraction = the same share, measured in blocks of 40 steps each followed by that GEMM peak
                      in one process, the median of the blocks: steadier on a VM whose speed drifts
and the time each process spent outside its epochs. The last line of the output is one JSON object with
all of these. Timings need a quiet machine: the share of the CPU that other processes took during each
in-process run is reported (warned above 5%).
"""

import argparse
import gzip
import json
import math
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
sys.path.insert(0, str(REPO))  # run from a checkout without installing: the package next to this script

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ignite_mnist import data  # noqa: E402
from ignite_mnist.errors import UserError  # noqa: E402

CONFIG = REPO / "config" / "config.default.json"
CONTENDERS = ("reference", "ignite", "bare")
LABELS = {"reference": "reference", "ignite": "ignite-mnist", "bare": "bare"}
ENGINE_OVERHEAD_TARGET = 0.03
FASHION_MNIST_PATH = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


# ---- data: torchvision's layout for the reference ---------------------------------------------


def torchvision_root(work_dir: Path, dataset: str) -> Path:
    return work_dir / "torchvision" / dataset


def prepare_torchvision_root(dataset: str, data_path: Path, work_dir: Path) -> Path:
    """ROOT/<MNIST|FashionMNIST>/raw/ with the four IDX files uncompressed, as torchvision's classes read
    them; written once (kept when --work-dir is given), each file atomically."""
    root = torchvision_root(work_dir, dataset)
    raw = root / (data.DATASETS[dataset]["folder"] or "MNIST") / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for pair in data.locate(dataset, data_path, download=False).values():
        for source in pair:
            target = raw / source.name.removesuffix(".gz")
            if target.is_file():
                continue
            tmp = target.with_name(f".{target.name}.tmp")
            with (gzip.open if source.suffix == ".gz" else open)(source, "rb") as f, open(tmp, "wb") as out:
                shutil.copyfileobj(f, out)
            os.replace(tmp, target)
    return root


# ---- contender 1: the PyTorch example's recipe ------------------------------------------------


def run_reference(args) -> dict:
    """scripts/reference_mnist.py's own functions (the example's loops), timed per epoch, in this process."""
    import reference_mnist

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    device = torch.device(args.device)
    train_loader, test_loader = reference_mnist.loaders(torchvision_root(args.work_dir, args.dataset), args.dataset,
                                                        device)
    model = reference_mnist.Net().to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    epochs = []
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        train_loss = reference_mnist.train(model, device, train_loader, optimizer, epoch, quiet=True)
        t1 = time.perf_counter()
        test_loss, accuracy = reference_mnist.test(model, device, test_loader, quiet=True)
        t2 = time.perf_counter()
        scheduler.step()
        epochs.append({"train_seconds": t1 - t0, "test_seconds": t2 - t1, "train_loss": train_loss,
                       "test_loss": test_loss, "test_accuracy": accuracy})
    return {"epochs": epochs, "wall_seconds": time.perf_counter() - start, "precision": "fp32",
            "train_images": len(train_loader.dataset), "test_images": len(test_loader.dataset)}


# ---- contender 2: ignite-mnist, as `ignite-mnist train` runs it --------------------------------


def bench_experiment(args, name: str):
    """A temporary experiment as `init` makes it: the default config, the bench's dataset, no validation split."""
    from ignite_mnist.experiment import create_experiment, load_config

    config = load_config(CONFIG)
    config["data"].update(dataset=args.dataset, val_split=0)
    config["training"].update(precision=args.precision, cuda_graphs=args.cuda_graphs)
    return create_experiment(args.work_dir / "experiments", f"{name}-{os.getpid()}", config, args.seed,
                             dict(zip(("train", "test"), args.sizes)))


def run_ignite(args) -> dict:
    from ignite_mnist.device import use_bf16
    from ignite_mnist.launch import run_training

    experiment = bench_experiment(args, "bench")
    try:
        start = time.perf_counter()
        run_training(experiment, args.data_path, max_epochs=args.epochs, device_name=args.device)
        wall = time.perf_counter() - start
        metrics = experiment.history()["epochs"]
    finally:
        shutil.rmtree(experiment.root, ignore_errors=True)
    keys = ("train_seconds", "test_seconds", "train_loss", "test_loss", "test_accuracy")
    bf16 = use_bf16(args.precision, torch.device(args.device))
    return {"epochs": [{k: float(m[k]) for k in keys} for m in metrics], "wall_seconds": wall,
            "precision": "bf16" if bf16 else "fp32", "train_images": args.sizes[0], "test_images": args.sizes[1]}


# ---- contender 3: ignite-mnist's pieces in a plain loop (the engine's overhead) ----------------


def bare_config(args) -> dict:
    """The training section as ignite-mnist's own run gets it (bench_experiment): the default config, the bench's
    precision and cuda_graphs."""
    from ignite_mnist.experiment import load_config

    return {**load_config(CONFIG)["training"], "precision": args.precision, "cuda_graphs": args.cuda_graphs}


def bare_training(args, cfg: dict, device) -> tuple:
    """ignite-mnist's own pieces, set up as training() does, without the engine: (sets, model, optimizer,
    step, bf16), the whole training set (no validation split)."""
    from ignite.utils import manual_seed

    from ignite_mnist import engines
    from ignite_mnist.device import prepare_cpu_for_training, prepare_cuda_for_training, use_bf16
    from ignite_mnist.experiment import draw_split
    from ignite_mnist.model import Net

    (prepare_cpu_for_training if device.type == "cpu" else prepare_cuda_for_training)()  # as training() does
    bf16 = use_bf16(cfg["precision"], device)
    manual_seed(args.seed)
    sets = data.tensor_sets(args.dataset, args.data_path, draw_split(args.sizes[0], 0, args.seed), device)
    model = Net().to(device, memory_format=torch.channels_last)
    optimizer = engines.make_optimizer(model.parameters(), cfg["lr"], device)
    step = engines.make_train_step(engines.graphed(model, cfg, device), optimizer, sets["train"], bf16)
    return sets, model, optimizer, step, bf16


def run_bare(args) -> dict:
    from ignite_mnist import engines

    cfg = bare_config(args)
    device = torch.device(args.device)
    start = time.perf_counter()
    sets, model, optimizer, step, bf16 = bare_training(args, cfg, device)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=cfg["lr_gamma"])
    batches = data.ShuffledBatches(len(sets["train"]), cfg["batch_size"], args.seed, 0, 1, device)
    evaluator = engines.create_evaluator(model, sets["test"], bf16)
    epochs = []
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        batches.set_epoch(epoch)
        total, count = torch.zeros((), device=device), 0  # the epoch's mean loss, as the trainer's Average
        for index in batches:
            total += step(None, index)
            count += 1
        synchronize(device)
        t1 = time.perf_counter()
        result = engines.evaluate(evaluator, len(sets["test"]), cfg["eval_batch_size"])
        synchronize(device)
        t2 = time.perf_counter()
        lr_scheduler.step()
        epochs.append({"train_seconds": t1 - t0, "test_seconds": t2 - t1, "train_loss": total.item() / count,
                       "test_loss": result["loss"], "test_accuracy": result["accuracy"]})
    return {"epochs": epochs, "wall_seconds": time.perf_counter() - start, "precision": "bf16" if bf16 else "fp32",
            "train_images": len(sets["train"]), "test_images": len(sets["test"])}


def run_paired_engine(args, steps: int = 10) -> dict:
    """The engine's cost measured in pairs of blocks, alternating in one process: `ignite-mnist train`'s own
    run (launch.run_training, one epoch, every handler attached), into which a handler, attached last, runs
    `steps` bare steps after every `steps` iterations of the engine: the same step function, the same model and
    optimizer, in a plain loop. Each engine block is timed from the end of the bare block before it to its
    last ITERATION_COMPLETED handler, so it holds the engine's and the handlers' per-iteration work; the
    median of the blocks' ratios is steadier than epoch against epoch on a VM whose speed drifts by more
    than the 3% being measured (an AMX VM: -26% to +5% between whole epochs)."""
    import itertools

    from ignite.engine import Events

    from ignite_mnist import engines
    from ignite_mnist.launch import run_training

    engine_s, bare_s, attach_handlers = [], [], engines.attach_handlers
    device = torch.device(args.device)

    def attach_and_pair(trainer, evaluators, sets, optimizer, lr_scheduler, batches, history, to_save, job):
        attach_handlers(trainer, evaluators, sets, optimizer, lr_scheduler, batches, history, to_save, job)
        step = trainer._process_function  # the step the engine runs, on the same model and optimizer
        indexes = list(itertools.islice(data.ShuffledBatches(len(sets["train"]), batches.batch_size, args.seed + 1,
                                                             0, 1, device), steps))
        mark = []

        def bare_block():
            total = torch.zeros((), device=device)  # the loss summed, as bare's loop and the trainer's Average
            for index in indexes:
                total += step(None, index)
            synchronize(device)

        @trainer.on(Events.EPOCH_STARTED)
        def warm_up(engine):  # oneDNN's primitives and the allocator, before the first engine block
            bare_block()
            mark.append(time.perf_counter())

        @trainer.on(Events.ITERATION_COMPLETED(every=steps))
        def pair(engine):
            synchronize(device)
            t0 = time.perf_counter()
            engine_s.append(t0 - mark[-1])
            bare_block()
            bare_s.append(time.perf_counter() - t0)
            mark.append(time.perf_counter())

    engines.attach_handlers = attach_and_pair
    experiment = bench_experiment(args, "bench-paired")
    try:
        run_training(experiment, args.data_path, max_epochs=1, device_name=args.device)
    finally:
        shutil.rmtree(experiment.root, ignore_errors=True)
    ratios = [e / b - 1 for e, b in zip(engine_s, bare_s)]
    return {"paired_engine_overhead": median(ratios) if ratios else None, "paired_engine_overhead_ci95": median_ci95(ratios),
            "paired_engine_overheads": [round(r, 4) for r in ratios], "paired_engine_block_steps": steps,
            "train_images": args.sizes[0], "test_images": args.sizes[1]}


def median_ci95(values: list):
    """A 95% confidence interval of the median, free of any assumed distribution (the sign test's): the
    sorted values with d cut from each end, d the most for which 2 P(Binomial(n, 1/2) <= d) <= 0.05; None
    for fewer than 6 values, too few for any such interval."""
    n, d, tail = len(values), -1, 0.0
    while 2 * (tail + math.comb(n, d + 1) / 2 ** n) <= 0.05:
        d, tail = d + 1, tail + math.comb(n, d + 1) / 2 ** n
    if d < 0:
        return None
    ordered = sorted(values)
    return [ordered[d], ordered[n - 1 - d]]


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


WORKERS = {"reference": run_reference, "ignite": run_ignite, "bare": run_bare, "paired-engine": run_paired_engine}


# ---- running the contenders: one subprocess each, alternating -----------------------------------


def busy_cpu_seconds():
    """CPU seconds all cores have been busy since boot (/proc/stat), or None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")  # user nice system, irq softirq steal


def run_worker(name: str, args, sizes: tuple) -> dict:
    """Run one contender in a child process; its JSON line, plus its peak RSS from wait4."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--dataset", args.dataset,
           "--data-path", str(args.data_path), "--work-dir", str(args.work_dir), "--epochs", str(args.epochs),
           "--seed", str(args.seed), "--sizes", f"{sizes[0]},{sizes[1]}", "--precision", args.precision,
           "--device", args.device] + (["--cuda-graphs"] if args.cuda_graphs else [])
    logs = args.work_dir / "logs"
    logs.mkdir(exist_ok=True)
    with open(logs / f"{name}.out", "w+") as out, open(logs / f"{name}.err", "w+") as err:
        busy0, t0 = busy_cpu_seconds(), time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)  # not a tty: no progress bar
        _, status, usage = os.wait4(proc.pid, 0)
        busy1, t1 = busy_cpu_seconds(), time.monotonic()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [line for line in stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        sys.exit(f"error: the {name} worker failed (exit {proc.returncode}):\n" + "\n".join(stderr.splitlines()[-20:]))
    result = json.loads(lines[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux: KiB
    result["other_cpu"] = None  # what the rest of the machine took of all cores meanwhile: > 5% disturbs timings
    if busy0 is not None and busy1 is not None:
        others = (busy1 - busy0) - (usage.ru_utime + usage.ru_stime)
        result["other_cpu"] = max(0.0, others) / ((t1 - t0) * (os.cpu_count() or 1))
    return result


def median(values: list):
    return None if None in values else statistics.median(values)


def summarise(run: dict) -> dict:
    """One run of one contender, per epoch (means over its epochs)."""
    epochs, n = run["epochs"], len(run["epochs"])
    train_s = sum(e["train_seconds"] for e in epochs) / n
    eval_s = sum(e["test_seconds"] for e in epochs) / n
    return {
        "img_s": run["train_images"] / train_s,
        "train_s": train_s,
        "epoch_s": train_s + eval_s,
        "wall_epoch_s": run["wall_seconds"] / n,
        "eval_img_s": run["test_images"] / eval_s,
        "peak_rss_mb": run["peak_rss_mb"],
        "accuracy": epochs[-1]["test_accuracy"],
        "test_loss": epochs[-1]["test_loss"],
        "train_loss": epochs[-1]["train_loss"],
        "other_cpu": run["other_cpu"],
    }


# ---- what the user waits for: whole processes, start to exit -----------------------------------


def timed_process(cmd: list, log_path: Path) -> tuple:
    """(wall seconds from start to exit, peak RSS MiB, stdout) of one command; its output in log_path."""
    with open(log_path, "w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"error: {' '.join(map(str, cmd))} failed:\n" + "\n".join(text.splitlines()[-15:]))
    return wall, usage.ru_maxrss / 1024, text


def run_processes(args) -> dict:
    """`python reference_mnist.py --epochs E` against `ignite-mnist train --max-epochs E`, alternating, each a
    whole process on the same files; ignite-mnist's experiment is made by an untimed `init` before."""
    import re

    cli = [sys.executable, "-m", "ignite_mnist", "--experiments-path", str(args.work_dir / "processes"),
           "--data-path", str(args.data_path)]
    reference = [sys.executable, str(Path(__file__).with_name("reference_mnist.py")), "--epochs", str(args.epochs),
                 "--data", str(torchvision_root(args.work_dir, args.dataset)), "--dataset", args.dataset,
                 "--seed", str(args.seed)] + (["--accel"] if args.device != "cpu" else [])
    logs = args.work_dir / "logs"
    logs.mkdir(exist_ok=True)
    runs = {"reference": [], "ignite": []}
    # `import torch` as both programs pay it: timed inside a fresh process, once per repeat (this VM's import
    # takes 1.7 to 3.3 s from one minute to the next); a whole `python -c "import torch"` adds start-up and
    # torch's teardown, which ignite-mnist skips.
    # (a marker, since a warning on stderr shares the log)
    import_code = "import time; t = time.perf_counter(); import torch; print(f'import torch: {time.perf_counter() - t}s')"
    for r in range(args.process_repeats):
        import_out = timed_process([sys.executable, "-c", import_code], logs / f"import-torch-{r}.out")[2]
        import_torch = float(re.search(r"^import torch: ([0-9.e+-]+)s$", import_out, re.M).group(1))
        wall, rss, out = timed_process(reference, logs / f"reference-process-{r}.out")
        found = re.search(r"final test accuracy ([0-9.]+)%, epochs ([0-9.]+)s", out)
        runs["reference"].append({"process_s": wall, "epochs_s": float(found.group(2)), "peak_rss_mb": rss,
                                  "accuracy": float(found.group(1))})
        name = f"process-{r}"
        timed_process([*cli, "-e", name, "init", "--seed", str(args.seed), "--set", f"data.dataset={args.dataset}",
                       "--set", "data.val_split=0", "--set", f"training.precision={args.precision}",
                       "--set", f"training.cuda_graphs={str(args.cuda_graphs).lower()}"],
                      logs / f"ignite-init-{r}.out")
        wall, rss, _ = timed_process([*cli, "-e", name, "train", "--max-epochs", str(args.epochs),
                                      "--device", args.device], logs / f"ignite-process-{r}.out")
        history = json.loads((args.work_dir / "processes" / name / "metrics.json").read_text())["epochs"]
        epochs_s = sum(e["train_seconds"] + e["test_seconds"] for e in history)
        runs["ignite"].append({"process_s": wall, "peak_rss_mb": rss, "accuracy": history[-1]["test_accuracy"],
                               "epochs_s": epochs_s, "outside_epochs_s": wall - epochs_s,
                               "import_torch_s": import_torch, "outside_less_import_s": wall - epochs_s - import_torch})
        runs["reference"][-1]["outside_epochs_s"] = runs["reference"][-1]["process_s"] - runs["reference"][-1]["epochs_s"]
        shutil.rmtree(args.work_dir / "processes" / name, ignore_errors=True)
        print(f"process {r + 1}/{args.process_repeats}: reference {runs['reference'][-1]['process_s']:.1f}s, "
              f"ignite-mnist {wall:.1f}s", file=sys.stderr, flush=True)
    med = {side: {k: statistics.median(run[k] for run in runs[side]) for k in runs[side][0]} for side in runs}
    return {
        "process_speedup": med["reference"]["process_s"] / med["ignite"]["process_s"],
        "reference_process_s": med["reference"]["process_s"], "ignite_mnist_process_s": med["ignite"]["process_s"],
        "reference_outside_epochs_s": med["reference"]["outside_epochs_s"],
        "ignite_mnist_outside_epochs_s": med["ignite"]["outside_epochs_s"],
        "import_torch_s": med["ignite"]["import_torch_s"],
        "ignite_mnist_outside_less_import_torch_s": med["ignite"]["outside_less_import_s"],
        "reference_process_accuracy": med["reference"]["accuracy"],
        "ignite_mnist_process_accuracy": med["ignite"]["accuracy"],
        "reference_process_peak_rss_mb": med["reference"]["peak_rss_mb"],
        "ignite_mnist_process_peak_rss_mb": med["ignite"]["peak_rss_mb"],
        "process_runs": {("ignite_mnist" if k == "ignite" else k): [{n: round(v, 3) for n, v in run.items()}
                                                                    for run in v] for k, v in runs.items()},
    }


# ---- the machine's own limit ------------------------------------------------------------------


def cpu_kind() -> dict:
    """The CPU's model name, family and model numbers (a VM's model name can be as bare as "AMD EPYC": family 25 model
    17 is a Zen 4, whose bf16 peak is half a Zen 5's) and kind: AMX, AVX512-BF16 (what bf16 runs on natively),
    AVX512 or AVX2."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""

    def field(name):
        return next((line.split(":", 1)[1].strip() for line in text.splitlines()
                     if line.split(":", 1)[0].strip() == name), "")

    model = field("model name")
    if field("cpu family") and field("model"):
        model += f", family {field('cpu family')} model {field('model')}"
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    kinds = [("amx_tile", "AMX"), ("avx512_bf16", "AVX512-BF16, no AMX"), ("avx512f", "AVX512, no native bf16"),
             ("avx2", "AVX2, no AVX512, no native bf16")]  # the first flag the CPU has names it
    kind = next((name for flag, name in kinds if flag in flags), "no native bf16")
    return {"cpu": f"{model or platform.machine()} ({kind}, {os.cpu_count()} cores)", "amx": "amx_tile" in flags,
            "avx512_bf16": "avx512_bf16" in flags}


def gemm_size(device) -> int:
    """The side of the GEMM that measures the peak: 2048 on a CPU; 8192 on a GPU, whose 2048 product is
    too short to fill it (an H200 runs 8192 bf16 products at about 790 TFLOP/s)."""
    return 8192 if device.type == "cuda" else 2048


def gemm_peak_gflops(dtype, device, n: int | None = None, repeats: int = 5) -> float:
    """The best GFLOP/s of an n x n matrix product, with torch's default threads: the machine's own limit.
    A dtype the hardware does not compute natively (bf16 on an AVX2-only CPU runs at well under 1 GFLOP/s:
    a 2048 product would take a minute) is measured at n = 256 instead, when that first try is that slow."""
    n = n or gemm_size(device)
    if n > 256 and gemm_peak_gflops(dtype, device, 256, 1) < 10:
        return gemm_peak_gflops(dtype, device, 256, repeats)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def flops_per_image() -> float:
    """FLOPs of one training image, forward and backward, counted by torch's FlopCounterMode on our Net."""
    from torch.utils.flop_counter import FlopCounterMode

    from ignite_mnist.model import Net

    model, x, y = Net(), torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    with FlopCounterMode(display=False) as counter:
        F.nll_loss(model(x), y).backward()
    return counter.get_total_flops() / 64


def gemm_peaks(args) -> dict:
    device = torch.device(args.device)
    return {"fp32": gemm_peak_gflops(torch.float32, device), "bf16": gemm_peak_gflops(torch.bfloat16, device)}


def paired_peak_fraction(args, precision: str, blocks: int = 8, steps: int = 40) -> dict:
    """The step's share of the GEMM peak measured alongside it, for bare_training's step (the config's batch):
    see peak_shares."""
    import itertools

    cfg = bare_config(args)
    device = torch.device(args.device)
    sets, _, _, step, _ = bare_training(args, cfg, device)
    batches = itertools.cycle(list(data.ShuffledBatches(len(sets["train"]), cfg["batch_size"], args.seed, 0, 1, device)))
    for _ in range(20):  # warm-up: oneDNN's primitives, the allocator
        step(None, next(batches))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return peak_shares(step, batches, cfg["batch_size"], dtype, device, blocks, steps)


def peak_shares(step, batches, batch_size: int, dtype, device, blocks: int = 8, steps: int = 40) -> dict:
    """In this process, blocks of `steps` training steps, each followed by the GEMM peak in `dtype`; the median
    of the blocks' shares of the peak, and the blocks' peaks. A VM's speed drifts within a run: an AMX VM's bf16
    peak switched between about 500-700 and 1,750-1,950 GFLOP/s from one block to the next while the step
    stayed at 140-230 GFLOP/s; the blocks' peaks also count toward the machine's best (machine_limit).
    (profile_training.py --peak-blocks measures its own step, compiled or not, with it.)"""
    fractions, peaks, step_ms, flops = [], [], [], flops_per_image() * batch_size * steps
    for _ in range(blocks):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(None, next(batches))
        synchronize(device)
        seconds = time.perf_counter() - t0
        peaks.append(gemm_peak_gflops(dtype, device, repeats=3))
        fractions.append(flops / seconds / 1e9 / peaks[-1])
        step_ms.append(seconds / steps * 1000)
    return {"paired_peak_fraction": median(fractions), "paired_peak_fractions": [round(f, 4) for f in fractions],
            "paired_peaks_gflops": [round(p, 1) for p in peaks], "paired_step_ms": median(step_ms)}


def machine_limit(args, earlier_peaks: dict) -> dict:
    """The machine's limit, its GEMM peaks the best of those measured before the contenders, now, and
    alongside the step's blocks: a VM's speed drifts during a run (an AVX2 EPYC's fp32 peak read 82 once
    and 136 another time)."""
    peaks = {k: max(v, earlier_peaks[k]) for k, v in gemm_peaks(args).items()}
    best = max(peaks, key=peaks.get)  # bf16 wherever the hardware has it; fp32 on CPUs without native bf16
    paired = paired_peak_fraction(args, best)
    peaks[best] = max(peaks[best], *paired["paired_peaks_gflops"])
    gpu = {"gpu": torch.cuda.get_device_name(args.device)} if args.device.startswith("cuda") else {}
    from ignite_mnist import kernels  # whether ignite-mnist's step ran its fused CPU kernels (README, Speed)

    fused = args.device == "cpu" and kernels.library() is not None
    return {**cpu_kind(), **gpu, "fused_kernels": fused, "gemm_size": gemm_size(torch.device(args.device)), "fp32_peak_gflops": peaks["fp32"], "bf16_peak_gflops": peaks["bf16"],
            "peak_gflops": peaks[best], "peak_precision": best, "flops_per_image": flops_per_image(), **paired}


# ---- the report -------------------------------------------------------------------------------


ROWS = [  # (label, key, format)
    ("train images/s", "img_s", "{:.0f}"),
    ("train s/epoch", "train_s", "{:.2f}"),
    ("whole epoch s (train + test eval)", "epoch_s", "{:.2f}"),
    ("wall s/epoch (whole run, setup incl.)", "wall_epoch_s", "{:.2f}"),
    ("eval images/s (test set)", "eval_img_s", "{:.0f}"),
    ("peak RSS MiB", "peak_rss_mb", "{:.0f}"),
    ("test accuracy % (last epoch)", "accuracy", "{:.2f}"),
    ("test loss (last epoch)", "test_loss", "{:.4f}"),
    ("train loss (last epoch)", "train_loss", "{:.4f}"),
    ("CPU taken by other processes", "other_cpu", "{:.0%}"),
]


def report(args, sizes, medians: dict, runs: dict, precision: dict, processes: dict, paired: dict,
           limit: dict) -> None:
    ref, ign, bare = medians["reference"], medians["ignite"], medians["bare"]
    speedup = ref["epoch_s"] / ign["epoch_s"]
    train_speedup = ign["img_s"] / ref["img_s"]
    overhead = ign["train_s"] / bare["train_s"] - 1
    step_gflops = limit["flops_per_image"] * ign["img_s"] / 1e9
    print(f"\n{args.dataset}: {sizes[0]} training images, {sizes[1]} test images; {args.epochs} epoch(s), "
          f"{args.repeats} repeat(s) (medians); torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.device}\nCPU: {limit['cpu']}; ignite-mnist's fused kernels (kernels.c): "
          f"{'used' if limit['fused_kernels'] else 'not used'}" + (f"\nGPU: {limit['gpu']}" if "gpu" in limit else "")
          + "\n")
    print(f"{'':40}" + "".join(f"{LABELS[c]:>14}" for c in CONTENDERS))
    print(f"{'precision':40}" + "".join(f"{precision[c]:>14}" for c in CONTENDERS))
    for label, key, fmt in ROWS:
        print(f"{label:40}" + "".join(f"{'n/a' if medians[c][key] is None else fmt.format(medians[c][key]):>14}"
                                      for c in CONTENDERS))
    print(f"\nspeedup (reference / ignite-mnist whole-epoch time): {speedup:.2f}x"
          f"   (train images/s: {train_speedup:.2f}x)")
    verdict = "ok" if overhead <= ENGINE_OVERHEAD_TARGET else "ABOVE TARGET"
    print(f"engine overhead (ignite-mnist / bare train time - 1): {100 * overhead:+.1f}%"
          f"   (target <= {100 * ENGINE_OVERHEAD_TARGET:.0f}%: {verdict})")
    blocks = paired["paired_engine_overheads"]
    if blocks:
        ci = paired["paired_engine_overhead_ci95"]
        verdict = "ABOVE TARGET" if paired["paired_engine_overhead"] > ENGINE_OVERHEAD_TARGET else (
            "ok" if ci is not None and ci[1] <= ENGINE_OVERHEAD_TARGET else "ok by the median, not surely")
        print(f"engine overhead in alternating blocks of {paired['paired_engine_block_steps']} steps, one epoch of "
              f"`train` in one process: {100 * paired['paired_engine_overhead']:+.1f}% (median of {len(blocks)} "
              f"blocks, {100 * min(blocks):+.1f}% to {100 * max(blocks):+.1f}%" + ("" if ci is None else
              f"; 95% confidence interval of the median {100 * ci[0]:+.1f}% to {100 * ci[1]:+.1f}%") + f": {verdict})")
    print(f"machine limit ({limit['gemm_size']}x{limit['gemm_size']} GEMM): fp32 {limit['fp32_peak_gflops']:.0f}, bf16 {limit['bf16_peak_gflops']:.0f} "
          f"GFLOP/s; the training step: {limit['flops_per_image'] / 1e6:.1f} MFLOP/image x {ign['img_s']:.0f} images/s = "
          f"{step_gflops:.0f} GFLOP/s, {100 * step_gflops / limit['peak_gflops']:.0f}% of the {limit['peak_precision']} "
          f"peak (the machine's best); measured alongside the peak, block by block: "
          f"{100 * limit['paired_peak_fraction']:.0f}% (median of {len(limit['paired_peak_fractions'])} blocks, "
          f"{100 * min(limit['paired_peak_fractions']):.0f}% to {100 * max(limit['paired_peak_fractions']):.0f}%, "
          f"the peak in them {min(limit['paired_peaks_gflops']):.0f} to {max(limit['paired_peaks_gflops']):.0f} GFLOP/s)")
    if processes:
        print(f"whole processes ({args.process_repeats} each, medians): reference {processes['reference_process_s']:.1f}s"
              f" ({processes['reference_process_accuracy']:.2f}%), ignite-mnist {processes['ignite_mnist_process_s']:.1f}s"
              f" ({processes['ignite_mnist_process_accuracy']:.2f}%): {processes['process_speedup']:.2f}x; outside the "
              f"epochs: {processes['reference_outside_epochs_s']:.1f}s against "
              f"{processes['ignite_mnist_outside_epochs_s']:.1f}s (import torch: {processes['import_torch_s']:.1f}s; "
              f"ignite-mnist less import torch: {processes['ignite_mnist_outside_less_import_torch_s']:.1f}s); "
              f"peak RSS {processes['reference_process_peak_rss_mb']:.0f} against "
              f"{processes['ignite_mnist_process_peak_rss_mb']:.0f} MiB")
    shares = [r["other_cpu"] for c in CONTENDERS for r in runs[c] if r["other_cpu"] is not None]
    other_cpu = max(shares, default=None)
    if other_cpu is not None and other_cpu > 0.05:
        print(f"warning: other processes used up to {100 * other_cpu:.0f}% of the CPU during a run: the timings are "
              "disturbed; run again on a quiet machine")
    print()
    summary = {
        "dataset": args.dataset, "train_images": sizes[0], "test_images": sizes[1],
        "epochs": args.epochs, "repeats": args.repeats, "seed": args.seed,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "other_cpu_share": other_cpu,  # the most that other processes took of all cores during one run
        "precision": precision["ignite"], "reference_precision": precision["reference"], "cuda_graphs": args.cuda_graphs,
        "speedup": speedup, "speedup_basis": "reference whole-epoch time / ignite-mnist whole-epoch time",
        "train_speedup": train_speedup, "engine_overhead": overhead, "engine_overhead_target": ENGINE_OVERHEAD_TARGET,
        "device": args.device, **{k: v for k, v in limit.items()},
        **{k: paired[k] for k in ("paired_engine_overhead", "paired_engine_overhead_ci95", "paired_engine_overheads",
                                 "paired_engine_block_steps")},
        "step_gflops": step_gflops, "peak_fraction": step_gflops / limit["peak_gflops"],
        **{k: v for k, v in processes.items() if k != "process_runs"},
    }
    for c in CONTENDERS:
        prefix = "ignite_mnist" if c == "ignite" else c
        m = medians[c]
        summary.update({f"{prefix}_img_s": m["img_s"], f"{prefix}_epoch_s": m["epoch_s"],
                        f"{prefix}_train_s": m["train_s"], f"{prefix}_wall_epoch_s": m["wall_epoch_s"],
                        f"{prefix}_eval_img_s": m["eval_img_s"], f"{prefix}_peak_rss_mb": m["peak_rss_mb"],
                        f"{prefix}_accuracy": m["accuracy"]})
    summary["runs"] = {("ignite_mnist" if c == "ignite" else c): [
        {k: v if v is None else round(v, 4) for k, v in s.items()} for s in runs[c]] for c in CONTENDERS}
    if processes:
        summary["process_runs"] = processes["process_runs"]
    print(json.dumps(summary))


# ---- main -------------------------------------------------------------------------------------


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=list(data.DATASETS), default="fashion-mnist")
    p.add_argument("--data-path", type=Path, help="the four IDX files (.gz or not), flat or in torchvision's layout "
                   f"(default for fashion-mnist: {FASHION_MNIST_PATH}; unused by mnist-sample)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke test: mnist-sample, 1 epoch, 1 repeat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="ignite-mnist's (and bare's) training.precision; the reference is always fp32")
    p.add_argument("--work-dir", type=Path, help="keeps the uncompressed data between runs (default: a temporary folder)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]: every contender runs there (the reference "
                   "with the example's --accel)")
    p.add_argument("--cuda-graphs", action="store_true", help="ignite-mnist's (and bare's) training.cuda_graphs: "
                   "on CUDA, the training step captured in CUDA graphs by torch.compile (ignored on a CPU)")
    p.add_argument("--process-repeats", type=int, default=3, help="whole-process runs of each side (0: none)")
    p.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--sizes", type=lambda s: tuple(int(n) for n in s.split(",")), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.dataset, args.epochs, args.repeats, args.process_repeats = "mnist-sample", 1, 1, 1
    if args.epochs < 1 or args.repeats < 1:
        p.error("--epochs and --repeats must be at least 1")
    if args.data_path is None:
        if args.dataset == "mnist":  # the default folder holds Fashion-MNIST, in the same flat layout
            p.error("--dataset mnist needs --data-path (the folder of MNIST's IDX files)")
        args.data_path = FASHION_MNIST_PATH if args.dataset == "fashion-mnist" else Path(".")
    return args


def main() -> None:
    args = parse_args()
    if args.worker:  # in a child: one contender, one JSON line
        print(json.dumps(WORKERS[args.worker](args)), flush=True)
        return
    temporary = args.work_dir is None
    args.work_dir = Path(tempfile.mkdtemp(prefix="ignite-mnist-bench-")) if temporary else args.work_dir.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        prepare_torchvision_root(args.dataset, args.data_path, args.work_dir)
        sizes = args.sizes = tuple(data.dataset_sizes(args.dataset, args.data_path)[s] for s in ("train", "test"))
        runs, precision, peaks = {c: [] for c in CONTENDERS}, {}, gemm_peaks(args)
        for r in range(args.repeats):
            for c in CONTENDERS:
                start = time.perf_counter()
                result = run_worker(c, args, sizes)
                if (result["train_images"], result["test_images"]) != sizes:
                    sys.exit(f"error: {c} used {result['train_images']}/{result['test_images']} images, not {sizes}")
                runs[c].append(summarise(result))
                precision[c] = result["precision"]
                print(f"repeat {r + 1}/{args.repeats} {LABELS[c]:>12}: {runs[c][-1]['img_s']:7.0f} train img/s, "
                      f"{runs[c][-1]['accuracy']:.2f}% ({time.perf_counter() - start:.1f}s; train s by epoch: "
                      + ", ".join(f"{e['train_seconds']:.2f}" for e in result["epochs"]) + ")", file=sys.stderr, flush=True)
        medians = {c: {k: median([s[k] for s in runs[c]]) for k in runs[c][0]} for c in CONTENDERS}
        processes = run_processes(args) if args.process_repeats else {}
        paired = run_worker("paired-engine", args, sizes)
        report(args, sizes, medians, runs, precision, processes, paired, machine_limit(args, peaks))
    except UserError as e:  # data not found, and the like: one line, as ignite-mnist says it
        sys.exit(f"error: {e}")
    finally:
        if temporary:
            shutil.rmtree(args.work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
