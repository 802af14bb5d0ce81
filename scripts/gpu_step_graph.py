"""The training step on a GPU three ways, in one process: what one CUDA graph for the whole step would gain.

    python3 scripts/gpu_step_graph.py --data-path DIR              # Fashion-MNIST's four IDX files in DIR
    python3 scripts/gpu_step_graph.py --dataset mnist-sample       # the bundled sample
    .venv/bin/python scripts/gpu_step_graph.py --device cpu --dataset mnist-sample --steps 20   # a dry run (eager only)

- eager: engines.make_train_step, what `train` runs (some 60 kernels launched from Python a step);
- compiled: the same step on engines.graphed(model), what training.cuda_graphs runs (torch.compile's CUDA graphs
  for the forward and backward; the batch's gather, zero_grad and Adadelta stay eager);
- graph: the batch's gather and normalisation, forward, backward and Adadelta (capturable, its learning rate a
  tensor on the GPU that StepLR would fill in place) captured in one torch.cuda.CUDAGraph and replayed for each
  batch, whose indexes are copied into a static tensor first.

In that order after eager, each in its own try (a failing way leaves the others' figures); each from the same
initial weights, bf16 autocast as `train` on a GPU: ms a step (the median of blocks of 50
steps, each synchronized), the mean training loss of its last 100 steps (dropout's draws differ between the
ways, so the losses agree only roughly), and one epoch of 64-image batches driven by Ignite's Engine with the
trainer's loss Average (the engine's cost a step, on top of the step's); for eager also a torch.profiler table of
--profile steps (each operator's own CPU time, what launching it costs, beside its GPU time). The graph's
learning rate is checked to be read at each replay: with it filled with 0, a replay leaves every weight as it was.
The last line is one JSON object. README, Speed, "On CUDA" says what was measured.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy  # noqa: F401  (before torch: see ignite_mnist/lazy_imports.py)
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ignite_mnist import data, engines  # noqa: E402
from ignite_mnist.device import prepare_cuda_for_training  # noqa: E402
from ignite_mnist.errors import UserError  # noqa: E402
from ignite_mnist.experiment import draw_split  # noqa: E402
from ignite_mnist.model import Net  # noqa: E402

BATCH = 64


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def setup(args, device, capturable=False):
    torch.manual_seed(args.seed)
    model = Net().to(device, memory_format=torch.channels_last)
    if capturable:  # the learning rate a tensor on the GPU: a replay reads its value then, StepLR fills it
        lr = torch.tensor(1.0, device=device)
        optimizer = torch.optim.Adadelta(model.parameters(), lr=lr, capturable=True, foreach=True)
    else:
        optimizer = engines.make_optimizer(model.parameters(), 1.0, device)
    return model, optimizer


def graphed_step(model, optimizer, train_set):
    """(step, lr): step(engine, index) replays one CUDA graph of the whole step for a full batch of indexes."""
    device = train_set.images.device
    static_index = torch.zeros(BATCH, dtype=torch.int64, device=device)

    def whole_step():
        x, y = train_set.batch(static_index)
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):  # no cast cache inside a graph
            loss = F.nll_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    model.train()
    side = torch.cuda.Stream(device)  # warm-up on a side stream, as torch.cuda.graphs' docs do: the optimizer's
    side.wait_stream(torch.cuda.current_stream(device))  # state and cuDNN's choices exist before the capture
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            whole_step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)  # the backward inside the graph allocates the gradients from its pool
    with torch.cuda.graph(graph):
        static_loss = whole_step()

    def step(engine, index):
        static_index.copy_(index)
        graph.replay()
        return static_loss.clone()

    return step, optimizer.param_groups[0]["lr"]


def time_steps(step, batches, device, steps: int, block: int = 50) -> tuple:
    """(median ms a step over blocks of `block` steps, mean loss of the last 100 steps)."""
    losses, blocks = [], []
    for start in range(0, steps, block):
        synchronize(device)
        t0 = time.perf_counter()
        block_losses = [step(None, next(batches)) for _ in range(min(block, steps - start))]
        synchronize(device)
        blocks.append((time.perf_counter() - t0) / len(block_losses) * 1000)
        losses += block_losses
    return statistics.median(blocks[1:] or blocks), float(torch.stack(losses[-100:]).float().mean())


def profile(step, batches, device, steps: int) -> None:
    """torch.profiler over `steps` steps: the operators by their own CPU time (what launching costs), with their
    time on the GPU beside it: where a step's milliseconds go when it is launch-bound."""
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step(None, next(batches))
        synchronize(device)
    print(f"the eager step, {steps} steps under torch.profiler (its own overhead included):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


def engine_epoch(step, train_set, device, seed: int) -> float:
    """Seconds of one epoch of full batches through Ignite's Engine, the trainer's loss Average attached."""
    from ignite.engine import Engine
    from ignite.metrics import Average

    trainer = Engine(step)
    Average(device=device).attach(trainer, "loss")
    batches = data.ShuffledBatches(len(train_set), BATCH, seed, 0, 1, device)
    full = [index for index in batches if len(index) == BATCH]  # the graph takes full batches only
    synchronize(device)
    t0 = time.perf_counter()
    trainer.run(full, max_epochs=1)
    synchronize(device)
    return time.perf_counter() - t0


def endless(train_set, device, seed: int):
    batches = data.ShuffledBatches(len(train_set), BATCH, seed, 0, 1, device)
    epoch = 1
    while True:
        batches.set_epoch(epoch)
        yield from (index for index in batches if len(index) == BATCH)
        epoch += 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=list(data.DATASETS))
    p.add_argument("--data-path", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=20, help="eager steps under torch.profiler (0: none)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("error: no CUDA GPU here: this probe needs one (--device cpu runs its eager way alone)")
        prepare_cuda_for_training()
    try:
        n = data.dataset_sizes(args.dataset, args.data_path)["train"]
        train_set = data.tensor_sets(args.dataset, args.data_path, draw_split(n, 0, args.seed), device)["train"]
    except UserError as e:  # no data there (and no download offline): say where to point it
        sys.exit(f"error: {e} (--data-path names the folder of the IDX files; --dataset mnist-sample needs none)")
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "dataset": args.dataset, "train_images": len(train_set)}
    ways = ["eager"] + (["graph", "compiled"] if device.type == "cuda" else [])  # the graph before inductor's risks
    for way in ways:
        try:
            measure(way, args, device, train_set, results)
        except Exception as e:  # one way failing (a toolchain, memory) leaves the others' figures
            results[way] = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(f"{way:9} failed: {results[way]['error']}", flush=True)
    for way in ways[1:]:
        if "ms_per_step" in results[way] and "ms_per_step" in results["eager"]:
            results[f"{way}_speedup"] = results["eager"]["ms_per_step"] / results[way]["ms_per_step"]
    print(json.dumps(results))


def measure(way: str, args, device, train_set, results: dict) -> None:
    model, optimizer = setup(args, device, capturable=way == "graph")
    t0 = time.perf_counter()
    if way == "graph":
        step, lr = graphed_step(model, optimizer, train_set)
    else:
        net = engines.graphed(model, {"cuda_graphs": way == "compiled"}, device)
        step = engines.make_train_step(net, optimizer, train_set, bf16=device.type == "cuda")
        step(None, next(endless(train_set, device, args.seed + 1)))  # the first step: compiling, if anything
    synchronize(device)
    setup_s = time.perf_counter() - t0
    ms, loss = time_steps(step, endless(train_set, device, args.seed), device, args.steps)
    epoch_s = engine_epoch(step, train_set, device, args.seed)
    if way == "eager" and args.profile:
        profile(step, endless(train_set, device, args.seed), device, args.profile)
    results[way] = {"ms_per_step": ms, "last_100_loss": loss, "setup_s": setup_s, "engine_epoch_s": epoch_s,
                    "engine_ms_per_step": epoch_s / (len(train_set) // BATCH) * 1000}
    if way == "graph":  # the learning rate is read at each replay: 0 leaves every weight as it was
        before = [q.detach().clone() for q in model.parameters()]
        lr.fill_(0.0)
        step(None, next(endless(train_set, device, args.seed)))
        synchronize(device)
        results[way]["lr_read_at_replay"] = all(torch.equal(a, q) for a, q in zip(before, model.parameters()))
        lr.fill_(1.0)
    r = results[way]
    print(f"{way:9} {r['ms_per_step']:7.3f} ms/step  loss {r['last_100_loss']:.4f}  setup {setup_s:6.2f} s  "
          f"epoch through Ignite's Engine {epoch_s:6.2f} s ({r['engine_ms_per_step']:.3f} ms/step)", flush=True)


if __name__ == "__main__":
    main()
