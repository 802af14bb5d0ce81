"""A model or kernels lever, measured on the training step: this checkout's `model.Net` and kernels against
another checkout's (its model.py calling its own kernels.py and kernels.c), in one process, in alternating blocks
of steps (the order swapped each block, so that the machine's drift enters both alike), on the same batches of the
dataset, both through this checkout's `engines.make_train_step` and optimizer (the fused Adadelta of this
checkout's kernels on both sides: a lever in the optimizer is `scripts/ab_train.sh`'s to measure). Then whether the
two give the same weights, bit for bit, after the same steps from the same generator state.

    git worktree add /tmp/before HEAD~1
    .venv/bin/python scripts/ab_step.py /tmp/before                 # 24 blocks of 40 steps each side
    .venv/bin/python scripts/ab_step.py /tmp/before --precision fp32

Prints the median ms a step of each side and the median, lowest and highest of the blocks' ratios
(this / other), and the last line as JSON. A step-level figure: what a user waits for is
`scripts/ab_train.sh`'s.
"""

import argparse
import importlib.util
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy  # noqa: F401  (before torch: see ignite_mnist/lazy_imports.py)
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FASHION_MNIST_PATH = Path("/usr/share/datasets/fashion-mnist")


def other_model_module(checkout: Path):
    """The other checkout's model.py, calling the other checkout's kernels.py (its own kernels.c, built and loaded
    apart from this checkout's): both levers, the model's and the kernels', are measured."""
    import ignite_mnist
    from ignite_mnist import kernels as own_kernels

    paths = {name: checkout / "ignite_mnist" / f"{name}.py" for name in ("kernels", "model")}
    if not paths["model"].is_file():
        sys.exit(f"error: {paths['model']} is not there: give a checkout of ignite-mnist")
    if not paths["kernels"].is_file():  # a checkout from before the kernels: its model alone
        del paths["kernels"]
    loaded = {}
    try:
        for name, path in paths.items():  # kernels first: the other model.py's `from ignite_mnist import kernels`
            spec = importlib.util.spec_from_file_location(f"other_{name}", path)
            loaded[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded[name])
            if name == "kernels":
                ignite_mnist.kernels = sys.modules["ignite_mnist.kernels"] = loaded[name]
    finally:
        ignite_mnist.kernels = sys.modules["ignite_mnist.kernels"] = own_kernels
    return loaded["model"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", type=Path, help="another checkout of ignite-mnist (git worktree add ...)")
    parser.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist", "mnist-sample"])
    parser.add_argument("--data-path", type=Path, default=FASHION_MNIST_PATH)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--blocks", type=int, default=24)
    parser.add_argument("--steps", type=int, default=40, help="steps a block")
    args = parser.parse_args()

    from ignite_mnist import data, engines, model
    from ignite_mnist.device import prepare_cpu_for_training, use_bf16
    from ignite_mnist.experiment import draw_split

    prepare_cpu_for_training()  # as training() does
    device = torch.device("cpu")
    bf16 = use_bf16(args.precision, device)
    sizes = data.dataset_sizes(args.dataset, args.data_path)
    sets = data.tensor_sets(args.dataset, args.data_path, draw_split(sizes["train"], 0, 0), device)
    nets = {"this": model.Net, "other": other_model_module(args.other).Net}
    torch.manual_seed(0)
    weights = nets["this"]().state_dict()

    def train_step(side):
        net = nets[side]().to(device, memory_format=torch.channels_last)
        net.load_state_dict(weights)
        return net, engines.make_train_step(net, engines.make_optimizer(net.parameters(), 1.0, device),
                                          sets["train"], bf16)

    batches = data.ShuffledBatches(len(sets["train"]), 64, 0)
    indexes = list(itertools.islice(itertools.chain.from_iterable(itertools.repeat(batches)),  # epochs enough
                                    20 + args.blocks * args.steps))

    # the same results? the same steps from the same generator state on each side
    trained = {}
    for side in nets:
        net, step = train_step(side)
        torch.manual_seed(1)
        for index in indexes[:20]:
            step(None, index)
        trained[side] = net.state_dict()
    same = all(torch.equal(trained["this"][k], trained["other"][k]) for k in trained["this"])

    steps = {side: train_step(side)[1] for side in nets}
    for step in steps.values():  # warm-up: oneDNN's primitives, the allocator
        for index in indexes[:20]:
            step(None, index)
    ms = {side: [] for side in nets}
    for block in range(args.blocks):
        block_indexes = indexes[20 + block * args.steps: 20 + (block + 1) * args.steps]
        for side in (("other", "this") if block % 2 == 0 else ("this", "other")):
            t0 = time.perf_counter()
            for index in block_indexes:
                steps[side](None, index)
            ms[side].append((time.perf_counter() - t0) / args.steps * 1000)
    ratios = [t / o for t, o in zip(ms["this"], ms["other"])]
    result = {"precision": "bf16" if bf16 else "fp32", "this_ms": statistics.median(ms["this"]),
              "other_ms": statistics.median(ms["other"]), "ratio": statistics.median(ratios),
              "ratio_min": min(ratios), "ratio_max": max(ratios), "same_weights_after_20_steps": same}
    print(f"{result['precision']} step, batch 64, {args.blocks} alternating blocks of {args.steps} steps: this "
          f"{result['this_ms']:.2f} ms, other {result['other_ms']:.2f} ms; this / other: median "
          f"{result['ratio']:.3f}x (blocks {result['ratio_min']:.3f} to {result['ratio_max']:.3f}); weights after "
          f"the same 20 steps {'bit for bit the same' if same else 'differ'}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
