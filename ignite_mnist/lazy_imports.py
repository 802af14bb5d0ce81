"""Two torch packages that a training never uses, kept out of start-up: torch._dynamo and FSDP. On a
2-core AVX2 EPYC that is about 2 s and 140 MiB off every single-process `train`, 1 s off `test` and a pt
export (a distributed run imports torch._dynamo anyway: torch.distributed and DDP use it).
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

import functools
import importlib.abc
import importlib.util
import sys
import threading

# numpy before torch, here and wherever torch is imported first: torch imports numpy from C++ and clears
# any error it raises, so a Ctrl-C during that import was lost and the command went on (or failed on numpy)
import numpy  # noqa: F401
import torch


def defer(name: str, provides: dict, whole_for_submodules: bool):
    """Put a stand-in for package `name` in sys.modules. `provides` maps names to functions of no
    arguments that give them; any other name runs the real __init__ first, and so does importing a
    submodule where `whole_for_submodules` (submodules that expect their package whole). Returns the
    stand-in, a function telling whether the real __init__ has run whole, and one that runs it (once);
    None where the package is already imported, or missing."""
    if name in sys.modules:
        return None
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return None
    package = importlib.util.module_from_spec(spec)
    lock = threading.RLock()  # another thread asking meanwhile waits, as it would for a real import
    loading, done = [], []  # the thread running the real __init__; [True] once it ran whole

    def load() -> None:
        with lock:
            if done or loading:  # loading: the real __init__ itself, asking for one of its own submodules
                return
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
            before = dict(package.__dict__)
            loading.append(threading.get_ident())
            try:
                spec.loader.exec_module(package)  # the real __init__, in this module object
            except BaseException:
                # the stand-in again, as a failed import leaves nothing: the next use tries anew
                package.__dict__.clear()
                package.__dict__.update(before)
                if whole_for_submodules:
                    sys.meta_path.insert(0, finder)
                raise
            finally:
                loading.clear()
            if package.__dict__.get("__getattr__") is __getattr__:
                del package.__getattr__
            done.append(True)

    def __getattr__(attr: str):
        if attr in provides:
            value = provides[attr]()
            setattr(package, attr, value)
            return value
        if loading and loading[0] == threading.get_ident():  # the real __init__'s own `from . import sub`
            raise AttributeError(attr)
        load()
        return getattr(package, attr)

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname.startswith(name + ".") and not done and not loading:
                return importlib.util.spec_from_loader(fullname, _PackageFirst(load))
            return None

    finder = Finder()
    if whole_for_submodules:
        sys.meta_path.insert(0, finder)
    package.__getattr__ = __getattr__
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, package)  # as the import system binds a submodule to its parent
    return package, lambda: bool(done), load


class _PackageFirst(importlib.abc.Loader):
    """Loads a submodule of a deferred package: the package's real __init__ first (which may import the
    submodule itself: then that module, run once), else the submodule as its own spec says."""

    def __init__(self, load_package):
        self.load_package = load_package
        self.real_spec, self.run = None, False

    def create_module(self, spec):
        self.load_package()
        module = sys.modules.get(spec.name)
        if module is None:
            self.real_spec = importlib.util.find_spec(spec.name)  # the deferred finder is gone by now
            if self.real_spec is None:
                raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)
            module, self.run = importlib.util.module_from_spec(self.real_spec), True
        else:
            self.real_spec = module.__spec__
        return module

    def exec_module(self, module):
        try:
            module.__spec__ = self.real_spec  # the import system set this loader's spec on it
        except AttributeError:  # dynamo's config module refuses new attributes, and kept its own
            pass
        if self.run:
            self.real_spec.loader.exec_module(module)


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
        """fn itself until torch._dynamo has run (nothing can be compiling before), the real disable(fn)
        from then on."""
        if fn is None:  # the decorator form, which nothing in torch.optim uses
            load()
            return dynamo.disable(fn, recursive, **kwargs)
        real = []

        def until_dynamo(*args, **kw):
            if not real:
                if not is_loaded():
                    return fn(*args, **kw)
                real.append(dynamo.disable(fn, recursive, **kwargs))
            return real[0](*args, **kw)

        return functools.wraps(fn)(until_dynamo) if kwargs.get("wrapping", True) else until_dynamo


defer("torch.distributed.optim", {"ZeroRedundancyOptimizer": _zero_redundancy_optimizer},
      whole_for_submodules=False)
_defer_dynamo()
