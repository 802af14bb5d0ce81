"""Two torch packages that a training never uses, kept out of start-up: torch._dynamo and FSDP. On a
2-core AVX2 EPYC that is about 2 s and 140 MiB off every `train`, 1 s off `test` and a pt export.
Import this before Ignite and before any optimizer is made.

- torch.optim imports torch._dynamo (1.5 s, 150 MiB there, and FSDP with it) only to call two functions:
  `graph_break()` around each step, a no-op outside torch.compile, and `disable(fn)`, which keeps the
  compiler out of a few Optimizer methods: outside torch.compile, fn itself.
- Ignite's checkpoint module imports torch.distributed.optim for one class, ZeroRedundancyOptimizer, and
  that package's __init__ imports FSDP, DTensor and sympy.

Each package is replaced in sys.modules by a stand-in that provides those names. Any other name (and,
for torch._dynamo, whose submodules expect it whole, the import of any submodule) first runs the
package's real __init__ in the stand-in, which is from then on the real package: torch.compile,
torch.export and torchvision find the whole of torch._dynamo, and the functions `disable` handed out
before hand over to the real one's.
"""

import importlib.abc
import importlib.util
import sys

import torch


def defer(name: str, provides: dict, whole_for_submodules: bool):
    """Put a stand-in for package `name` in sys.modules. `provides` maps names to functions of no
    arguments that give them; any other name runs the real __init__ first, and so does importing a
    submodule where `whole_for_submodules` (submodules that expect their package whole). Returns the
    stand-in, a function telling whether the real __init__ has run, and one that runs it (once) and
    returns True; None where the package is already imported, or missing."""
    if name in sys.modules:
        return None
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return None
    package = importlib.util.module_from_spec(spec)
    loaded = []

    def load() -> bool:
        if loaded:
            return True
        loaded.append(True)
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        del package.__getattr__
        for key in provides:
            package.__dict__.pop(key, None)
        try:
            spec.loader.exec_module(package)  # the real __init__, in this module object
        except BaseException:
            del sys.modules[name]  # as a failed import leaves it: the next import tries again
            raise
        return True

    def __getattr__(attr: str):
        if attr in provides:
            value = provides[attr]()
            setattr(package, attr, value)
            return value
        load()
        return getattr(package, attr)

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if not fullname.startswith(name + "."):
                return None
            load()
            if fullname in sys.modules:  # the real __init__ imported it: do not run it a second time
                return importlib.util.spec_from_loader(fullname, _Imported())
            return None

    finder = Finder()
    if whole_for_submodules:
        sys.meta_path.insert(0, finder)
    package.__getattr__ = __getattr__
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, package)  # as the import system binds a submodule to its parent
    return package, lambda: bool(loaded), load


class _Imported(importlib.abc.Loader):
    """The loader of a module already in sys.modules: hands it back as it is."""

    def create_module(self, spec):
        return sys.modules[spec.name]

    def exec_module(self, module):
        pass


def _zero_redundancy_optimizer():
    from torch.distributed.optim.zero_redundancy_optimizer import ZeroRedundancyOptimizer

    return ZeroRedundancyOptimizer


def _graph_break(msg: str = "") -> None:
    """torch._dynamo.graph_break outside torch.compile: nothing."""


def _defer_dynamo() -> None:
    deferred = defer("torch._dynamo", {"graph_break": lambda: _graph_break, "disable": lambda: disable},
                     whole_for_submodules=True)
    if deferred is None:
        return
    dynamo, is_loaded, load = deferred

    def disable(fn=None, recursive=True, **kwargs):
        """fn itself until torch._dynamo is imported (nothing can be compiling before), the real
        disable(fn) from then on."""
        if fn is None:  # the decorator form, which nothing in torch.optim uses
            return load() and dynamo.disable(fn, recursive, **kwargs)
        real = []

        def until_dynamo(*args, **kw):
            if not real:
                if not is_loaded():
                    return fn(*args, **kw)
                real.append(dynamo.disable(fn, recursive, **kwargs))
            return real[0](*args, **kw)

        return until_dynamo


defer("torch.distributed.optim", {"ZeroRedundancyOptimizer": _zero_redundancy_optimizer},
      whole_for_submodules=False)
_defer_dynamo()
