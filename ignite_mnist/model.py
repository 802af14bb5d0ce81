"""The network of the PyTorch MNIST example (pytorch/examples, mnist/main.py).

Layer names and shapes are the example's, so weights load into either. The changes, for speed only:
- max-pool runs before the ReLU that precedes it in the example: ReLU is monotonic, so
  max_pool(relu(x)) == relu(max_pool(x)) exactly, and the ReLU then touches a quarter of the values;
- dropout draws its mask from random bytes on the CPU (Dropout below): the same Bernoulli(1 - p)
  distribution, from a different random stream (random_bytes: Philox keyed by torch's generator where the
  fused kernels are built);
- in training, the pooled activations leave the channels_last layout of the convolutions after dropout1,
  and their gradient comes back to it in one copy (PlainLayout below);
- in training on the CPU, max-pool, ReLU, dropout1 and that layout change run as one kernel each way
  (kernels.PoolReluDropout: the same values as the eager operators, bit for bit), and so do conv1 and its ReLU
  (kernels.Conv1Relu: the same values forward; the weight gradients summed in float32, not rounded to bf16);
- in bf16 training on a CPU with AMX, conv2's weight and bias gradients come from an AMX kernel (kernels.Conv2Amx:
  summed in float32; its forward and input gradient are torch's), and fc1 runs on AMX kernels (kernels.LinearAmx:
  the forward with the weight's cast, oneDNN's values but where another order of the sum rounds to the
  neighbouring bf16; the weight and bias gradients summed in float32).
"""

import functools

import numpy  # noqa: F401  (before torch: see lazy_imports)
import torch
import torch.nn.functional as F
from torch import nn

from ignite_mnist import kernels


def random_bytes(n: int) -> torch.Tensor:
    """n uniform random bytes through torch's generator: where the fused kernels are built (with AVX2 or AVX-512),
    Philox4x32-10 keyed by one 64-bit draw of it (kernels.philox_bytes: a counter-based generator, vectorized);
    else torch's own draws of 64-bit words (2.5x faster a byte than 32-bit ones). Seeded runs and resumes repeat
    them either way."""
    if kernels.philox_fits():
        return kernels.philox_bytes(n, torch.empty((), dtype=torch.int64).random_(-2**63, None).item() % 2**64)
    words = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-2**63, None)  # all 64 bits uniform
    return words.view(torch.uint8)[:n]


class Dropout(nn.Dropout):
    """nn.Dropout whose mask costs a tenth of torch's on the CPU.

    torch's CPU dropout makes one Bernoulli draw per element, which here takes longer than the
    convolutions (about 4 ms of a 17 ms step). One 64-bit draw gives eight independent uniform bytes (torch
    draws them 2.5x faster a byte than 32-bit words), and a byte below (1 - p) * 256 keeps its element:
    exactly probability 1 - p when p is a multiple of 1/256, as the example's 0.25 and 0.5 are. Other
    values of p and other devices use F.dropout.
    """

    def draws_bytes(self, x) -> bool:
        """Whether the mask comes from random bytes: in training on the CPU, p a multiple of 1/256."""
        return (self.training and x.device.type == "cpu" and self.p != 0 and not (1 - self.p) * 256 % 1
                and not self.inplace)

    def forward(self, x):
        if not self.draws_bytes(x):
            return super().forward(x)
        # the comparison writes 0 and 1 in x's dtype at once: no bool mask and no cast pass over it. The bytes
        # lie in x's memory order (channels_last for the pooled activations), as kernels.PoolReluDropout reads them.
        keep = torch.empty_like(x)
        torch.lt(random_bytes(x.numel()).as_strided(x.shape, keep.stride()), int((1 - self.p) * 256), out=keep)
        return x * keep.mul_(1 / (1 - self.p))


@functools.lru_cache
def mask_value(p: float, dtype: torch.dtype) -> float:
    """A kept element's mask value as Dropout computes it: 1 / (1 - p), rounded to dtype by the multiply."""
    return torch.ones((), dtype=dtype).mul_(1 / (1 - p)).item()


class PlainLayout(torch.autograd.Function):
    """x copied into the plain (NCHW) layout; its gradient copied back into x's layout (channels_last).

    fc1 reads the pooled activations in the plain layout, so they must change layout once. Changed by
    `flatten`'s copy, the gradient comes back through that copy's backward (a view) in the plain layout, and
    the ReLU and dropout backwards then mix it with their channels_last tensors, 4-6x slower than on one
    layout: 7% of the bf16 step on an AMX CPU (docs/speed-log.md)."""

    @staticmethod
    def forward(ctx, x):
        ctx.memory_format = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else None
        return x.contiguous()

    @staticmethod
    def backward(ctx, grad):
        return grad if ctx.memory_format is None else grad.contiguous(memory_format=ctx.memory_format)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = Dropout(0.25)
        self.dropout2 = Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        if self.training and kernels.conv1_fits(x, self.conv1):  # training on the CPU
            x = kernels.conv1_relu(x, self.conv1)
        else:
            x = F.relu(self.conv1(x))
        if self.training and kernels.conv2_fits(x, self.conv2):  # training in bf16 on an AMX CPU
            x = kernels.conv2_amx(x, self.conv2)
        else:
            x = self.conv2(x)
        if self.dropout1.draws_bytes(x) and kernels.pool_fits(x):  # training on the CPU
            p = self.dropout1.p
            x = kernels.PoolReluDropout.apply(x, random_bytes(x.numel() // 4), int((1 - p) * 256),
                                              mask_value(p, x.dtype))
        else:
            x = self.dropout1(F.relu(F.max_pool2d(x, 2)))
            if self.training:  # (evaluation and exports: flatten changes the layout, no gradient comes back)
                x = PlainLayout.apply(x)
        x = torch.flatten(x, 1)
        if self.training and kernels.fc1_fits(x, self.fc1):  # training in bf16 on an AMX CPU
            x = F.relu(kernels.fc1_amx(x, self.fc1))
        else:
            x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)
