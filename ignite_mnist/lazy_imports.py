"""Ignite without torch.distributed.fsdp at start-up: 0.5 s (AVX512 EPYC) to 1 s (AVX2 EPYC) off the
commands that import Ignite and make no optimizer (`test`, a pt `export-release`); `train` gains nothing, as
torch.optim's first optimizer imports torch._dynamo, which imports fsdp itself. Import this before Ignite.

ignite.handlers.checkpoint imports torch.distributed.optim for one class, ZeroRedundancyOptimizer, and
that package's __init__ imports FSDP, DTensor and sympy, which nothing here uses. This puts a stand-in
for the package in sys.modules: ZeroRedundancyOptimizer comes from its own submodule, and any other name
first runs the package's real __init__ in the stand-in, which from then on is the real package.
"""

import importlib.util
import sys

import torch.distributed

PACKAGE = "torch.distributed.optim"


def defer_torch_distributed_optim() -> None:
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None:
        return
    package = importlib.util.module_from_spec(spec)

    def __getattr__(name: str):
        if name == "ZeroRedundancyOptimizer":
            from torch.distributed.optim.zero_redundancy_optimizer import ZeroRedundancyOptimizer

            return ZeroRedundancyOptimizer
        del package.__getattr__
        spec.loader.exec_module(package)  # the real __init__, in this module object
        return getattr(package, name)

    package.__getattr__ = __getattr__
    sys.modules[PACKAGE] = package
    torch.distributed.optim = package  # as the import system binds a submodule to its parent


defer_torch_distributed_optim()
