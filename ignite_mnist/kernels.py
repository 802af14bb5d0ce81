"""Fused CPU kernels for the training step (kernels.c): one pass over memory where the eager operators they
replace make several (README, Speed).

- PoolReluDropout: model.Net's max-pool, ReLU, dropout1 and the change to the plain layout, and their backward:
  the same values as the eager operators, bit for bit;
- Conv1Relu: conv1 and its ReLU, with oneDNN's fused ReLU forward (the same values) and a one-pass backward to the
  weight and bias gradients, summed in float32 (more exact than the eager bf16 backward, not the same bits);
- Conv2Amx: conv2's weight and bias gradients on AMX's tiles, summed in float32 (bf16 training on a CPU with
  AMX; torch's forward and input gradient);
- LinearAmx: fc1 on AMX's tiles (bf16 training on a CPU with AMX): the forward with the weight's cast in one pass,
  x's gradient (torch's bits), the weight and bias gradients summed in float32;
- FusedAdadelta: torch.optim.Adadelta's update of each float32 parameter in one loop instead of eleven passes:
  torch's arithmetic, but square roots correctly rounded, where torch's CPU kernel is within one unit in the
  last place;
- philox_bytes: dropout's random bytes, Philox4x32-10 (counter-based, vectorized), keyed by torch's generator.

kernels.c is compiled with the C compiler (`$CC`, else `cc`) on first use, for this CPU (-march=native), and
kept in data.cache_root() (~/.cache/ignite-mnist). Without a compiler, or with IGNITE_MNIST_KERNELS=0, training
runs the eager operators, slower.
"""

import ctypes
import functools
import hashlib
import logging
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy  # noqa: F401  (before torch: see lazy_imports)
import torch
from torch.autograd.function import once_differentiable

from ignite_mnist import data
from ignite_mnist.errors import is_file

log = logging.getLogger("ignite_mnist")

SOURCES = [Path(__file__).with_name("kernels.c"), Path(__file__).with_name("kernels_dtype.h")]
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno", "-fopenmp",
         "-fPIC", "-shared"]
VLEN = 16  # channels must be a multiple of it: kernels.c's vectors hold 16 (AVX-512) or 8 channels

_library = None  # the loaded kernels, or False where they cannot be


class KernelsUnavailable(Exception):
    pass


def library():
    """kernels.c loaded, built first if this CPU's build is not in the cache; None if it cannot be (said once,
    in the log)."""
    global _library
    if _library is None:
        try:
            _library = _load()
        except KernelsUnavailable as e:
            log.info("fused kernels not used (%s): training runs PyTorch's own operators, slower", e)
            _library = False
    return _library or None


def _cpu_flags() -> str:
    try:
        return next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return ""


def _load():
    if os.environ.get("IGNITE_MNIST_KERNELS", "1") == "0":
        raise KernelsUnavailable("IGNITE_MNIST_KERNELS=0")
    if "OpenMP" not in torch.__config__.parallel_info():  # kernels.c's threads share torch's OpenMP runtime
        raise KernelsUnavailable("this torch does not use OpenMP")
    compiler = shlex.split(os.environ.get("CC") or "cc")  # (CC="ccache gcc" too)
    found = shutil.which(compiler[0]) if compiler else None
    key = hashlib.sha256()
    for part in [*(p.read_bytes() for p in SOURCES), " ".join([*compiler, *FLAGS]), _cpu_flags(),
                 str(platform.libc_ver()), _identity(found)]:  # a shared home: another libc or compiler, another build
        key.update(part if isinstance(part, bytes) else part.encode())
    try:
        cache = data.cache_root()
        path = cache / f"kernels-{key.hexdigest()[:16]}.so"
        built = is_file(path)
    except (RuntimeError, OSError) as e:
        raise KernelsUnavailable(f"no cache folder to keep them in ({e})") from None
    if not built:
        if found is None:
            raise KernelsUnavailable(f"no C compiler: {compiler[0] if compiler else 'CC'} not found")
        _build([found, *compiler[1:]], cache, path)
    openmp_before = _openmp_runtimes()
    try:
        lib = _open(path)
    except KernelsUnavailable:  # a damaged file, or one built for another system: built again, once
        if not built or found is None:
            raise
        path.unlink(missing_ok=True)
        _build([found, *compiler[1:]], cache, path)
        lib = _open(path)
    if len(_openmp_runtimes() | openmp_before) > 1:  # two thread pools would spin against each other
        raise KernelsUnavailable(f"kernels.c links another OpenMP runtime than torch's: {sorted(_openmp_runtimes())}")
    return lib


def _open(path: Path):
    try:
        lib = ctypes.CDLL(str(path))
        p, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
        for dtype in ("bf16", "f32"):
            getattr(lib, f"pool_fwd_{dtype}").argtypes = [p, p, i32, f32, i64, i64, i64, i64, p, p, i32]
            getattr(lib, f"pool_bwd_{dtype}").argtypes = [p, p, f32, i64, i64, i64, i64, p, i32]
            getattr(lib, f"conv1_relu_bwd_{dtype}").argtypes = [p, p, p, i64, i64, i64, i64, p, p, p, i32]
            getattr(lib, f"max_abs_{dtype}").argtypes = [p, i64]
            getattr(lib, f"max_abs_{dtype}").restype = f32
        lib.adadelta.argtypes = [p, p, p, p, i64, f32, f32, f32, f32, i32]
        lib.philox_bytes.argtypes = [p, i64, ctypes.c_uint32, ctypes.c_uint32, i32]
        lib.philox_vectorized.argtypes = []
        lib.amx_permitted.argtypes = []
        lib.conv2_wgrad_bf16.argtypes = [p, p, i64, p, i64, i64, i64, i64, p, i32]
        lib.linear_wgrad_bf16.argtypes = [p, p, i64, i64, i64, p, p, i32]
        lib.linear_fwd_bf16.argtypes = [p, i64, i64, i64, p, p, p, p, i32]
        lib.linear_dgrad_bf16.argtypes = [p, i64, i64, i64, p, p, i32]
    except (OSError, AttributeError) as e:
        raise KernelsUnavailable(f"cannot load {path}: {e}") from None
    return lib


def _identity(program) -> str:
    """The compiler's path, size and time: a cheap stand-in for its version."""
    try:
        stat = os.stat(program)
        return f"{os.path.realpath(program)} {stat.st_size} {stat.st_mtime_ns}"
    except (OSError, TypeError):
        return ""


def _openmp_runtimes() -> set:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    return {os.path.realpath(m) for m in re.findall(r"/\S*/lib(?:g|i)?omp[^/\s]*\.so[^/\s]*", maps)}


def _build(compiler: list, cache: Path, path: Path) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for stale in cache.glob("kernels-*.so.tmp"):  # of a build killed half-way, an hour or more ago
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".so.tmp", dir=cache)  # then renamed: atomic, so
        os.close(fd)  # that processes building at once (the ranks of a run) never load half a file
    except OSError as e:
        raise KernelsUnavailable(f"cannot write {cache}: {e.strerror}") from None
    try:
        # its own process group: on a timeout, the compiler's own children (cc1, as, ld) are stopped too
        process = subprocess.Popen([*compiler, *FLAGS, str(SOURCES[0]), "-o", tmp], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise KernelsUnavailable(f"{compiler[0]} took more than 120 s to compile kernels.c") from None
        if process.returncode != 0:
            first = (stderr.strip().splitlines() or ["no message"])[0][:200]
            raise KernelsUnavailable(f"{compiler[0]} failed to compile kernels.c: {first}")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # on disk before it has its name: a crash leaves no truncated library there
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _threads() -> int:
    return torch.get_num_threads()


def _dtype_name(t: torch.Tensor) -> str:
    return {torch.bfloat16: "bf16", torch.float32: "f32"}[t.dtype]


# ---- dropout's random bytes ---------------------------------------------------------------------------


def philox_fits() -> bool:
    """Whether philox_bytes draws dropout's bytes: where the kernels are built with AVX2 or AVX-512, on which it
    is 4x faster than torch's generator; elsewhere (one 64-bit multiply at a time) it would be slower."""
    lib = library()
    return lib is not None and bool(lib.philox_vectorized())


def philox_bytes(n: int, key: int) -> torch.Tensor:
    """n bytes of Philox4x32-10 keyed by a 64-bit key (kernels.c): block i of 16 bytes from counter i."""
    out = torch.empty(n, dtype=torch.uint8)
    library().philox_bytes(out.data_ptr(), n, key & 0xFFFFFFFF, (key >> 32) & 0xFFFFFFFF, _threads())
    return out


# ---- max-pool, ReLU and dropout -------------------------------------------------------------------------


def pool_fits(x: torch.Tensor) -> bool:
    """Whether PoolReluDropout takes x: a channels_last CPU activation of the sizes kernels.c handles."""
    return (x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float32) and x.dim() == 4
            and x.shape[1] % VLEN == 0 and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0
            and x.is_contiguous(memory_format=torch.channels_last) and library() is not None)


class PoolReluDropout(torch.autograd.Function):
    """dropout(relu(max_pool2d(x, 2))) of a channels_last x, in the plain layout, as model.Net computes it
    eagerly. keep_bytes: dropout's random bytes in the channels_last order of x; an element is kept where its byte
    is below keep_below, and multiplied by keep_value (dropout's mask value, in x's dtype)."""

    @staticmethod
    def forward(ctx, x, keep_bytes, keep_below: int, keep_value: float):
        n, c, h, w = x.shape
        pooled = torch.empty((n, c, h // 2, w // 2), dtype=x.dtype)  # plain: fc1 reads it so
        code = torch.empty((n, h // 2, w // 2, c), dtype=torch.uint8)
        keep_bytes = keep_bytes.contiguous()  # in pooled's memory order, as model.Dropout lays them on it
        assert keep_bytes.numel() == pooled.numel()
        getattr(library(), f"pool_fwd_{_dtype_name(x)}")(
            x.data_ptr(), keep_bytes.data_ptr(), keep_below, keep_value, n, h, w, c, pooled.data_ptr(),
            code.data_ptr(), _threads())
        ctx.save_for_backward(code)
        ctx.keep_value, ctx.input_shape = keep_value, x.shape
        return pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (code,) = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        grad = grad.contiguous()
        grad_x = torch.empty(ctx.input_shape, dtype=grad.dtype, memory_format=torch.channels_last)
        getattr(library(), f"pool_bwd_{_dtype_name(grad)}")(
            grad.data_ptr(), code.data_ptr(), ctx.keep_value, n, h, w, c, grad_x.data_ptr(), _threads())
        return grad_x, None, None, None


def conv1_fits(x: torch.Tensor, conv: torch.nn.Conv2d) -> bool:
    """Whether conv1_relu takes relu(conv(x)): a CPU batch of one-channel images, not needing its own gradient, and
    a 3x3 convolution of stride 1 without padding, to a multiple of VLEN channels, as model.Net's conv1."""
    return (x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float32) and x.dim() == 4
            and x.shape[1] == 1 and x.shape[2] * x.shape[3] <= 4096 and not x.requires_grad
            and (conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups)
            == (1, (3, 3), (1, 1), (0, 0), (1, 1), 1) and conv.out_channels % VLEN == 0 and conv.bias is not None
            and conv.padding_mode == "zeros" and conv.weight.dtype in (torch.bfloat16, torch.float32)
            and tuple(conv.weight.stride()[i] for i in (0, 2, 3)) == (9, 3, 1)  # [C, 9] in memory, either layout
            and library() is not None)


def conv1_relu(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """relu(conv(x)) in the dtype the eager operators compute it in (autocast's, else x's), as Conv1Relu."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return Conv1Relu.apply(x, conv.weight, conv.bias, dtype)


def _conv_relu(x, weight, bias):
    """relu(conv2d(x, weight, bias)), bit for bit. oneDNN's convolution with the ReLU applied to its float sums
    before rounding gives those values (ReLU and rounding commute) with one pass over the output fewer, but it
    makes NaN 0: it runs where no sum can be NaN, that is where no value is NaN or infinite and the largest
    possible sum is finite."""
    largest = [getattr(library(), f"max_abs_{_dtype_name(t)}")(t.data_ptr(), t.numel()) for t in (x, weight, bias)]
    if largest[0] * largest[1] * 9 + largest[2] < 1e38 and _onednn_runs(x.dtype):
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [0, 0], [1, 1], [1, 1], 1, "relu", [], "")
    return torch.relu(torch.conv2d(x, weight, bias))


@functools.lru_cache
def _onednn_runs(dtype: torch.dtype) -> bool:
    """Whether this torch has oneDNN's fused convolution and can run it in dtype on this CPU (oneDNN's bf16 needs
    AVX-512 or AVX-NE-CONVERT: not on an AVX2 CPU, where the eager operators run)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
            and (dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported()))


class Conv1Relu(torch.autograd.Function):
    """relu(conv2d(x, weight, bias)) computed in dtype (x, weight and bias cast to it, as autocast casts them): the
    eager operators' values, NaN included (_conv_relu). The backward gives weight's and bias's gradients through
    the ReLU in one pass over the output and its gradient (kernels.c's conv1_relu_bwd), summed in float32 and
    returned in float32, where oneDNN's bf16 backward rounds them to bf16 and takes three passes with the ReLU's.
    No gradient for x (conv1_fits: x must not need one)."""

    @staticmethod
    def forward(ctx, x, weight, bias, dtype):
        x = x.to(dtype).contiguous()
        out = _conv_relu(x, weight.to(dtype), bias.to(dtype).contiguous())
        out = out.contiguous(memory_format=torch.channels_last)
        ctx.save_for_backward(x, out)
        ctx.weight_layout, ctx.weight_dtype, ctx.bias_dtype = (weight.shape, weight.stride()), weight.dtype, bias.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        n, c, h, w = out.shape
        grad = grad.contiguous(memory_format=torch.channels_last)
        partial = torch.empty((n, 10, c), dtype=torch.float32)  # (float32 whatever torch's default dtype)
        grad_weight = torch.empty_strided(*ctx.weight_layout, dtype=torch.float32)  # weight's strides:
        # the optimizer's fused step takes a gradient laid out as its parameter
        grad_bias = torch.empty(c, dtype=torch.float32)
        getattr(library(), f"conv1_relu_bwd_{_dtype_name(out)}")(
            x.data_ptr(), out.data_ptr(), grad.data_ptr(), n, h + 2, w + 2, c, partial.data_ptr(),
            grad_weight.data_ptr(), grad_bias.data_ptr(), _threads())
        return None, grad_weight.to(ctx.weight_dtype), grad_bias.to(ctx.bias_dtype), None


def conv2_fits(x: torch.Tensor, conv: torch.nn.Conv2d) -> bool:
    """Whether conv2_amx takes conv(x): model.Net's conv2 (32 to 64 channels, 3x3, stride 1, no padding) on a bf16
    channels_last batch of 26x26 activations, computed in bf16 (autocast), on a CPU whose kernels have AMX."""
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16 and tuple(x.shape[1:]) == (32, 26, 26)
            and x.is_contiguous(memory_format=torch.channels_last) and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                 conv.groups, conv.padding_mode) == (32, 64, (3, 3), (1, 1), (0, 0), (1, 1), 1, "zeros")
            and conv.bias is not None and _amx())


def _amx() -> bool:
    """Whether kernels.c's AMX kernels (conv2's and fc1's) run here: built for a CPU with AMX, and Linux lets this
    process use its tiles (asked once for each library loaded)."""
    lib = library()
    if lib is None:
        return False
    if _library not in _amx_ready:
        _amx_ready[_library] = bool(lib.amx_permitted())
    return _amx_ready[_library]


_amx_ready = {}


def conv2_amx(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """conv(x) in bf16, as autocast computes it, with the weight and bias gradients from AMX (Conv2Amx)."""
    return Conv2Amx.apply(x, conv.weight, conv.bias)


class Conv2Amx(torch.autograd.Function):
    """conv2d(x, weight, bias) in bf16 (weight and bias cast to it, as autocast casts them): torch's forward and
    input gradient, the same bits; the weight and bias gradients from kernels.c's conv2_wgrad_bf16 on AMX, summed
    in float32 and returned in float32 (0.6 ms against 1.1 ms for oneDNN's, which rounds them to bf16)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        weight16 = weight.to(torch.bfloat16)
        ctx.save_for_backward(x, weight16)
        ctx.weight_layout, ctx.weight_dtype, ctx.bias_dtype = (weight.shape, weight.stride()), weight.dtype, bias.dtype
        return torch.conv2d(x, weight16, bias.to(torch.bfloat16))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight16 = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight16, [weight16.shape[0]], [1, 1], [0, 0],
                                                         [1, 1], False, [0, 0], 1, [True, False, False])[0]
        if not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):  # (a frozen conv2)
            return grad_x, None, None
        grad_weight = torch.empty_strided(*ctx.weight_layout, dtype=torch.float32)
        grad_bias = torch.empty(weight16.shape[0], dtype=torch.float32)
        if library().conv2_wgrad_bf16(x.data_ptr(), grad.data_ptr(), x.shape[0], grad_weight.data_ptr(),
                                      *grad_weight.stride(), grad_bias.data_ptr(), _threads()) != 0:
            # (AMX refused after all, or memory short: oneDNN's gradients, rounded to bf16, as the eager backward)
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad, x, weight16, [weight16.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, True])
        return grad_x, grad_weight.to(ctx.weight_dtype), grad_bias.to(ctx.bias_dtype)


def fc1_fits(x: torch.Tensor, fc: torch.nn.Linear) -> bool:
    """Whether fc1_amx takes fc(x): a linear layer (features in and out multiples of 32, float32 weight and bias)
    on a contiguous bf16 batch of vectors, computed in bf16 (autocast), on a CPU whose kernels have AMX."""
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.dim() == 2 and x.is_contiguous()
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and fc.in_features % 32 == 0 and fc.out_features % 32 == 0 and x.shape[1] == fc.in_features
            and fc.weight.dtype == torch.float32 and fc.weight.is_contiguous()
            and fc.bias is not None and fc.bias.dtype == torch.float32 and _amx())


def fc1_amx(x: torch.Tensor, fc: torch.nn.Linear) -> torch.Tensor:
    """fc(x) in bf16, as autocast computes it, forward and backward on AMX (LinearAmx)."""
    return LinearAmx.apply(x, fc.weight, fc.bias)


class LinearAmx(torch.autograd.Function):
    """linear(x, weight, bias) in bf16, as autocast computes it (weight and bias cast to bf16), on AMX: kernels.c's
    linear_fwd_bf16 (the weight's cast and the GEMM in one pass), linear_dgrad_bf16 (x's gradient) and
    linear_wgrad_bf16 (the weight and bias gradients, summed in float32 and written as float32: torch rounds them to
    bf16, then casts them, two more passes). x's gradient is torch's, bit for bit; the forward is oneDNN's float32
    sums rounded once to bf16, summed in another order: about one output in 5,000 rounds to another bf16 value
    (tests/test_kernels.py). Where a kernel fails (AMX refused after all, or memory short), torch's operators."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        (m, k), n, lib = weight.shape, x.shape[0], library()
        bias16, y = bias.to(torch.bfloat16), torch.empty(n, m, dtype=torch.bfloat16)
        weight_pairs = torch.empty(m // 2, k, 2, dtype=torch.bfloat16)  # the bf16 weight as x's gradient reads it
        if lib.linear_fwd_bf16(x.data_ptr(), n, k, m, weight.data_ptr(), bias16.data_ptr(), y.data_ptr(),
                               weight_pairs.data_ptr(), _threads()) != 0:
            weight16 = weight.to(torch.bfloat16)
            weight_pairs = torch.stack((weight16[0::2], weight16[1::2]), dim=-1)
            y = torch.nn.functional.linear(x, weight16, bias16)
        ctx.save_for_backward(x, weight_pairs)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight_pairs = ctx.saved_tensors
        (half, k, _), n, lib = weight_pairs.shape, x.shape[0], library()
        m, grad = 2 * half, grad.contiguous()
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty(n, k, dtype=torch.bfloat16)
            if lib.linear_dgrad_bf16(grad.data_ptr(), n, k, m, weight_pairs.data_ptr(), grad_x.data_ptr(),
                                     _threads()) != 0:
                grad_x = grad.mm(weight_pairs.permute(0, 2, 1).reshape(m, k))
        if not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):  # (a frozen fc1)
            return grad_x, None, None
        grad_weight, grad_bias = torch.empty(m, k, dtype=torch.float32), torch.empty(m, dtype=torch.float32)
        if lib.linear_wgrad_bf16(x.data_ptr(), grad.data_ptr(), n, k, m, grad_weight.data_ptr(),
                                 grad_bias.data_ptr(), _threads()) != 0:
            grad_weight, grad_bias = grad.t().mm(x), grad.sum(0)  # (rounded to bf16, as the eager backward's)
        return grad_x, grad_weight.float(), grad_bias.float()


# ---- Adadelta -----------------------------------------------------------------------------------------


class FusedAdadelta(torch.optim.Adadelta):
    """torch.optim.Adadelta whose step runs kernels.c's adadelta: one loop a parameter instead of eleven passes.
    The same state (checkpoints are torch's), the same arithmetic in torch's order and roundings, except the two
    square roots, correctly rounded here and within one unit in the last place in torch's (MKL's) kernel: the
    weights drift from torch's step by float32 rounding, not more. Torch's own step runs wherever the fused one
    does not compute the same thing (weight decay, maximize, a closure, a tensor lr, another device or dtype) and
    when the kernels are unavailable."""

    def _fits(self) -> bool:
        def dense(p):  # float32 on the CPU, each element once in memory
            return (p.device.type == "cpu" and p.dtype == torch.float32 and p.layout == torch.strided
                    and (p.is_contiguous() or (p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last))))

        def like(t, p):  # and t laid out as dense p is: then dense too, in the same order
            return (t.device.type == "cpu" and t.dtype == torch.float32 and t.layout == torch.strided
                    and t.shape == p.shape and t.stride() == p.stride())

        for group in self.param_groups:
            if (group["weight_decay"] != 0 or group["maximize"] or group["differentiable"] or group["capturable"]
                    or isinstance(group["lr"], torch.Tensor)):
                return False
            for p in group["params"]:
                state = self.state[p]
                if p.grad is not None and not (
                        dense(p) and like(p.grad, p)
                        and all(like(state[k], p) for k in ("square_avg", "acc_delta") if k in state)):
                    return False
        return library() is not None

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None or not self._fits():
            torch_step = torch.optim.Adadelta.step
            if getattr(torch_step, "hooked", False):  # its optimizer hooks wrapper: this step's own ran them already
                torch_step = torch_step.__wrapped__
            return torch_step(self, closure)
        steps = []
        for group in self.param_groups:
            lr, rho, eps = group["lr"], group["rho"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:  # as torch's Adadelta starts a parameter's state
                    state["step"] = torch.zeros(())
                    state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["acc_delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                steps.append(state["step"])
                library().adadelta(p.data_ptr(), p.grad.data_ptr(), state["square_avg"].data_ptr(),
                                   state["acc_delta"].data_ptr(), p.numel(), -lr, rho, 1 - rho, eps, _threads())
        torch._foreach_add_(steps, 1)  # each state["step"] += 1, as torch's step counts, in one call
        return None
