"""Which device a command runs on, in which precision, and how the CPU keeps its memory."""

import ctypes
import sys

import numpy  # noqa: F401  (before torch: see lazy_imports)
import torch

from ignite_mnist.errors import UserError


def resolve_device(name: str) -> torch.device:
    """cpu, cuda, cuda:N or auto, checked against what this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cpu":
        if device.index not in (None, 0):  # torch takes cpu:1 as cpu: say so rather than pretend
            raise UserError(f"device {name} does not exist: the CPU is one device, cpu (its cores share the work)")
        return torch.device("cpu")
    if device.type != "cuda":
        raise UserError(f"device {name!r} is not supported: use cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise UserError(f"device {name} is not available: this machine has no usable CUDA GPU; use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(f"device {name} does not exist: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", device.index or 0)


def native_bf16(device: torch.device) -> bool:
    """Does the hardware compute bf16 natively (CUDA with bf16, or a CPU with AVX512-BF16 or AMX)?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def use_bf16(precision: str, device: torch.device) -> bool:
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory a training step frees, for the next step to reuse.

    By default it returns large freed blocks to the kernel (each is its own mmap, and the heap's top is
    trimmed), so every step's activations and optimizer temporaries come back as fresh pages, each zeroed
    by a page fault: 600 to 6,900 faults a step on a 2-core AMX VM, where this made a whole one-epoch
    `train` 0.72x as long (README, Speed).
    Blocks up to 32 MiB (glibc's largest threshold) now come from the heap, which is no longer trimmed:
    the memory stays at its high-water mark, which is the peak anyway. glibc only; elsewhere a no-op.
    Returns whether malloc took both settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has a mallopt that does nothing)
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h; mallopt returns 1 on success
    return mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 and mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1


def prepare_cpu_for_training() -> None:
    """What a CPU training process sets before its first step (training(), and the scripts that time it)."""
    torch.set_flush_denormal(True)  # denormals in late training slow the CPU down for nothing
    keep_freed_memory()  # no page fault per step for memory freed by the one before


def prepare_cuda_for_training() -> None:
    """What a CUDA training process sets before its first step (training(), and the scripts that time it)."""
    torch.backends.cudnn.benchmark = True  # the fastest convolution for each batch shape, timed once
