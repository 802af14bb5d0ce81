"""The fused CPU kernels (kernels.c) compute what the eager operators they replace compute, and training falls back
to those operators wherever the kernels cannot run."""

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, three_training_steps
from ignite_mnist import kernels, model
from ignite_mnist.model import Net

needs_kernels = pytest.mark.skipif(kernels.library() is None, reason="no C compiler with OpenMP to build kernels.c")


def same_bits(a, b) -> bool:
    """The same values bit for bit, -0.0 and +0.0 told apart; any NaN as one (aten writes a bf16 NaN as 0xFFFF,
    kernels.c as c10's 0x7FC0)."""
    if not torch.equal(a.isnan(), b.isnan()):
        return False
    ints = torch.int16 if a.dtype == torch.bfloat16 else torch.int32
    return torch.equal(*(t.contiguous().masked_fill(t.isnan(), 0).view(ints) for t in (a, b)))


def for_each_thread_count(compute) -> list:
    """compute()'s results with torch's threads (the kernels' too) set to 1, 2 and 3 in turn, then restored."""
    threads, results = torch.get_num_threads(), []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(compute())
    finally:
        torch.set_num_threads(threads)
    return results


def returns_of(monkeypatch, *names) -> dict:
    """kernels.library through a proxy that records what the named kernels return, call by call (0: computed)."""
    lib, returned = kernels.library(), {name: [] for name in names}

    class Recording:
        def __getattr__(self, name):
            function = getattr(lib, name)
            if name not in returned:
                return function
            return lambda *args: returned[name].append(function(*args)) or returned[name][-1]

    monkeypatch.setattr(kernels, "library", lambda: Recording())
    return returned


def assert_float32_sums(pairs):
    """For each (got, torch's, exact): got within 1e-5 of the float64 sums (float32 sums of the bf16 products), and
    torch's within 2^-7 (rounded to bf16), both relative to the largest exact value."""
    for got, torch_s, exact in pairs:
        scale = exact.abs().max().item()
        assert (got.double() - exact).abs().max().item() < 1e-5 * scale
        assert (torch_s.double() - exact).abs().max().item() < 2 ** -7 * scale


def eager_pool_relu_dropout(x, keep_bytes, p):
    """model.Net's eager path from conv2's output: max-pool, ReLU, byte dropout (model.Dropout: the bytes in the
    pooled tensor's channels_last order), layout change."""
    r = F.relu(F.max_pool2d(x, 2))
    assert r.is_contiguous(memory_format=torch.channels_last)
    n, c, h, w = r.shape
    keep = torch.lt(keep_bytes.view(n, h, w, c).permute(0, 3, 1, 2), int((1 - p) * 256), out=torch.empty_like(r))
    return model.PlainLayout.apply(r * keep.mul_(1 / (1 - p)))


def special_values(x):
    """Windows of ties, negatives, zeros, NaN and infinities: where max-pool's first-maximum rule and NaN rule,
    ReLU's and threshold_backward's decide."""
    x[0, 0, :2, :2] = 0.5  # a tie: the first in scan order takes the gradient
    x[0, 1, :2, :2] = -1.0  # a negative tie: ReLU stops the gradient
    x[0, 2, 2:4, 2:4] = 0.0
    x[0, 3, 0, 1] = float("nan")  # NaN wins its window
    x[0, 4, 1, 1] = float("inf")
    x[1, 5, :2, :2] = float("-inf")  # no value above -inf: the first keeps it
    x[1, 6, 1, 0] = float("nan")
    x[1, 6, 1, 1] = float("nan")  # two NaN: the last wins, as in aten
    x[1, 7, :2, :2] = -0.0  # ReLU passes -0.0 (and its gradient's zero is +0.0, max-pool's backward adds to 0)
    return x


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("p", [0.25, 0.5])
@pytest.mark.parametrize("shape", [(64, 64, 24, 24), (3, 16, 4, 6), (2, 32, 2, 2), (2, 16, 4, 36)])  # rows of 12, 3, 1, 18
def test_pool_relu_dropout_is_the_eager_operators_bit_for_bit(dtype, p, shape):
    generator = torch.Generator().manual_seed(0)
    x = special_values(torch.randn(shape, generator=generator).to(dtype)).contiguous(memory_format=torch.channels_last)
    n, c, h, w = shape
    keep_bytes = torch.randint(0, 256, (n * c * h * w // 4,), dtype=torch.uint8, generator=generator)
    grad = torch.randn(n, c, h // 2, w // 2, generator=generator).to(dtype)
    grad[0, 0, 0, 0] = float("inf")  # dropped or not, inf * mask as the eager multiply makes it

    results = []
    for fused in (False, True):
        xg = x.detach().clone().requires_grad_(True)
        if fused:
            assert kernels.pool_fits(xg)
            y = kernels.PoolReluDropout.apply(xg, keep_bytes, int((1 - p) * 256), model.mask_value(p, dtype))
        else:
            y = eager_pool_relu_dropout(xg, keep_bytes, p)
        y.backward(grad)
        assert y.is_contiguous() and xg.grad.is_contiguous(memory_format=torch.channels_last)
        results.append((y.detach(), xg.grad))
    (y_eager, g_eager), (y_fused, g_fused) = results
    assert y_fused.isnan().any() and not g_fused.isfinite().all()  # the special values reached both outputs
    assert (y_eager == 0).any() and y_eager.signbit().logical_and(y_eager == 0).any()  # -0.0 among them
    assert same_bits(y_fused, y_eager)
    assert same_bits(g_fused, g_eager)


def trained_with(monkeypatch, pool: bool, conv1: bool, precision: str, conv2: bool = True, fc1: bool = True) -> dict:
    """three_training_steps with the pooling, conv1, conv2 and fc1 kernels each used or not (torch's Adadelta);
    conv2's and fc1's run only in bf16 on AMX."""
    pool_fits, conv1_fits, conv2_fits, fc1_fits = kernels.pool_fits, kernels.conv1_fits, kernels.conv2_fits, \
        kernels.fc1_fits
    monkeypatch.setattr(kernels, "pool_fits", pool_fits if pool else (lambda x: False))
    monkeypatch.setattr(kernels, "conv1_fits", conv1_fits if conv1 else (lambda x, conv: False))
    monkeypatch.setattr(kernels, "conv2_fits", conv2_fits if conv2 else (lambda x, conv: False))
    monkeypatch.setattr(kernels, "fc1_fits", fc1_fits if fc1 else (lambda x, fc: False))
    calls = {"pool": 0, "conv1": 0, "conv2_wgrad": 0, "linear_fwd": 0, "linear_dgrad": 0, "linear_wgrad": 0}
    monkeypatch.setattr(kernels, "library", counted(kernels.library, calls))
    weights = three_training_steps(bf16=precision == "bf16")
    amx = precision == "bf16" and kernels._amx()
    assert (calls["pool"] > 0) == pool and (calls["conv1"] > 0) == conv1, calls
    assert (calls["conv2_wgrad"] > 0) == (conv2 and amx), calls
    assert all((calls[f"linear_{part}"] > 0) == (fc1 and amx) for part in ("fwd", "dgrad", "wgrad")), calls
    return weights


def counted(library, calls):
    """kernels.library, counting the calls of the kernels named in calls (by their names' beginnings)."""
    lib = library()

    class Counting:
        def __getattr__(self, name):
            for kind in calls:
                if name.startswith(kind):
                    calls[kind] += 1
            return getattr(lib, name)

    return lambda: Counting() if lib is not None else None


@needs_kernels
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_training_steps_give_the_same_weights_with_and_without_the_pooling_kernel(monkeypatch, precision):
    fused = trained_with(monkeypatch, pool=True, conv1=True, precision=precision)
    eager = trained_with(monkeypatch, pool=False, conv1=True, precision=precision)
    assert all(torch.equal(fused[k], eager[k]) for k in fused)


@needs_kernels
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_training_steps_with_the_conv1_kernel_stay_within_rounding_of_the_eager_operators(monkeypatch, precision):
    # conv1's weight gradients are summed in float32 where oneDNN's bf16 backward rounds them to bf16: the weights
    # move apart by rounding, not more (Adadelta's first steps move each weight by about 3e-3 at most)
    fused = trained_with(monkeypatch, pool=True, conv1=True, precision=precision)
    eager = trained_with(monkeypatch, pool=True, conv1=False, precision=precision)
    largest = max((fused[k] - eager[k]).abs().max().item() for k in fused)
    assert 0 < largest < 1e-3 if precision == "bf16" else largest < 1e-5, largest


def conv1_case(dtype, generator, nan=False):
    """A batch of images, a model.Net conv1 (channels_last, as training has it), and a gradient for its output."""
    conv = torch.nn.Conv2d(1, 32, 3).to(memory_format=torch.channels_last)
    with torch.no_grad():
        conv.bias[:4] = -100.0  # four channels the ReLU stops everywhere: no gradient there, exactly
    x = torch.randn(5, 1, 28, 28, generator=generator)
    if nan:
        x[0, 0, 3, 3] = float("nan")  # NaN passes ReLU and its gradient (threshold_backward's rule)
    grad = torch.randn(5, 32, 26, 26, generator=generator).to(dtype)
    return conv, x, grad


def conv1_both_ways(conv, x, grad, dtype):
    """(output, weight gradient, bias gradient) of the eager operators, then of kernels.conv1_relu."""
    results = []
    for fused in (False, True):
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = kernels.conv1_relu(x, conv) if fused else F.relu(conv(x))
        y.backward(grad)
        results.append((y.detach(), conv.weight.grad.clone(), conv.bias.grad.clone()))
    return results


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_conv1_relu_is_the_eager_operators_forward_and_sums_their_gradients_exactly(dtype):
    conv, x, grad = conv1_case(dtype, torch.Generator().manual_seed(0))
    assert kernels.conv1_fits(x, conv)
    (y_eager, w_eager, _), (y_fused, w_fused, b_fused) = conv1_both_ways(conv, x, grad, dtype)
    assert y_fused.dtype == dtype and y_fused.is_contiguous(memory_format=torch.channels_last)
    assert same_bits(y_fused, y_eager)

    # the gradients against float64 sums of the same bf16 (or float32) values: float32 sums, not rounded to bf16
    g = torch.where(y_fused > 0, grad, 0).double()  # where ReLU passes the gradient
    patches = F.unfold(x.to(dtype).double(), 3)  # [N, 9, 676]
    w_true = torch.einsum("nck,nik->ci", g.flatten(2), patches).view(32, 1, 3, 3)
    b_true = g.sum((0, 2, 3))
    assert w_fused.dtype == b_fused.dtype == torch.float32 and w_fused.stride() == conv.weight.stride()
    scale = w_true.abs().max().item()
    assert (w_fused - w_true).abs().max().item() < 1e-5 * scale
    assert (b_fused - b_true).abs().max().item() < 1e-5 * b_true.abs().max().item()
    assert torch.all(w_fused[:4] == 0) and torch.all(b_fused[:4] == 0)  # the channels ReLU stopped
    # and the eager backward computes the same sums, within its own rounding (bf16: 2^-9 of each value here; how its
    # backend sums differs from one CPU to another, hence the loose bound)
    assert (w_eager - w_true).abs().max().item() < (2 ** -6 if dtype == torch.bfloat16 else 1e-4) * scale


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("where", ["image", "weight", "overflow"])
def test_conv1_relu_passes_nan_as_the_eager_relu_does(dtype, where):
    # oneDNN's fused ReLU would make NaN 0 (and hide a diverged conv1): conv1_relu runs the eager ReLU then
    conv, x, grad = conv1_case(dtype, torch.Generator().manual_seed(3), nan=where == "image")
    with torch.no_grad():
        if where == "weight":
            conv.weight[5, 0, 1, 1] = float("nan")  # a diverged weight: channel 5 all NaN
        if where == "overflow":  # finite values whose products overflow at output (4, 4): inf - inf is NaN (bf16;
            # float32's fused multiply-adds give inf)
            conv.weight[5, 0, 1, 1], conv.weight[5, 0, 1, 2] = 3e38, -3e38
            x[0, 0, 5, 5] = x[0, 0, 5, 6] = 2.0
    (y_eager, w_eager, b_eager), (y_fused, w_fused, b_fused) = conv1_both_ways(conv, x, grad, dtype)
    assert same_bits(y_fused, y_eager)
    assert y_fused.isnan().any() if where != "overflow" else not y_fused[0, 5, 4, 4].isfinite()
    assert torch.equal(w_fused.isnan(), w_eager.isnan()) and torch.equal(b_fused.isnan(), b_eager.isnan())
    if where == "image":  # the NaN image's sums
        assert w_fused.isnan().any()
    elif where == "weight":  # ReLU passes the gradient where its output is NaN: channel 5's gradient is all there
        assert (w_fused[5] != 0).all() and not w_fused.isnan().any()


@needs_kernels
def test_conv1_gradients_are_the_same_bits_for_any_number_of_threads():
    conv, x, grad = conv1_case(torch.bfloat16, torch.Generator().manual_seed(1))

    def gradients():
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            kernels.conv1_relu(x, conv).backward(grad)
        return conv.weight.grad.clone(), conv.bias.grad.clone()

    results = for_each_thread_count(gradients)
    assert all(torch.equal(w, results[0][0]) and torch.equal(b, results[0][1]) for w, b in results)


def test_conv1_kernel_takes_only_what_it_computes():
    conv, x, _ = conv1_case(torch.float32, torch.Generator().manual_seed(2))
    fits = kernels.library() is not None
    assert kernels.conv1_fits(x, conv) == fits
    assert not kernels.conv1_fits(x.clone().requires_grad_(True), conv)  # it gives no gradient to the images
    assert not kernels.conv1_fits(x, torch.nn.Conv2d(1, 32, 3, padding=1))
    assert not kernels.conv1_fits(x, torch.nn.Conv2d(1, 24, 3))  # channels: a multiple of 16
    assert not kernels.conv1_fits(x, torch.nn.Conv2d(1, 32, 3, bias=False))
    assert not kernels.conv1_fits(torch.randn(2, 3, 28, 28), torch.nn.Conv2d(3, 32, 3))
    assert not kernels.conv1_fits(x.double(), conv.double())


# ---- conv2 on AMX -----------------------------------------------------------------------------------------

needs_amx = pytest.mark.skipif(not kernels._amx(), reason="kernels.c's conv2 and fc1 gradients need a CPU with AMX "
                                                           "(and Linux letting the process use its tiles)")


def conv2_case(n, generator):
    """model.Net's conv2 (channels_last), a bf16 batch of n ReLU outputs and a gradient for the output."""
    conv = torch.nn.Conv2d(32, 64, 3).to(memory_format=torch.channels_last)
    x = torch.rand(n, 32, 26, 26, generator=generator).to(torch.bfloat16, memory_format=torch.channels_last)
    grad = torch.randn(n, 64, 24, 24, generator=generator).to(torch.bfloat16, memory_format=torch.channels_last)
    return conv, x, grad


def amx_or_eager_gradients(layer, x, grad, fits, amx_layer, amx: bool):
    """(output, x's, weight's and bias's gradients) of layer(x) under bf16 autocast, through amx_layer (which fits
    takes where AMX is) or eagerly."""
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fits(x, layer) == kernels._amx()
        y = amx_layer(x, layer) if amx else layer(x)
    return (y, *torch.autograd.grad(y, (x, layer.weight, layer.bias), grad))


def conv2_gradients(conv, x, grad, amx: bool):
    """amx_or_eager_gradients through kernels.conv2_amx"""
    return amx_or_eager_gradients(conv, x, grad, kernels.conv2_fits, kernels.conv2_amx, amx)


@needs_amx
@pytest.mark.parametrize("n", [64, 13, 1])  # chunks of 8 images: whole ones, a part, one image
def test_conv2_amx_is_torch_s_forward_and_input_gradient_and_sums_the_weight_gradient_exactly(monkeypatch, n):
    conv, x, grad = conv2_case(n, torch.Generator().manual_seed(n))
    returned = returns_of(monkeypatch, "conv2_wgrad_bf16")
    y, grad_x, grad_weight, grad_bias = conv2_gradients(conv, x, grad, amx=True)
    assert returned == {"conv2_wgrad_bf16": [0]}  # the kernel computed them (no fallback)
    eager = conv2_gradients(conv, x, grad, amx=False)
    assert same_bits(y, eager[0]) and same_bits(grad_x, eager[1])
    assert grad_weight.dtype == torch.float32 and grad_weight.stride() == conv.weight.stride()
    exact_weight = torch.nn.grad.conv2d_weight(x.double(), conv.weight.shape, grad.double())
    exact_bias = grad.double().sum((0, 2, 3))
    assert_float32_sums([(grad_weight, eager[2], exact_weight), (grad_bias, eager[3], exact_bias)])


@needs_amx
def test_conv2_amx_gradients_are_the_same_bits_for_any_number_of_threads():
    conv, x, grad = conv2_case(20, torch.Generator().manual_seed(3))
    results = for_each_thread_count(lambda: conv2_gradients(conv, x, grad, amx=True)[2:])
    assert all(torch.equal(w, results[0][0]) and torch.equal(b, results[0][1]) for w, b in results)


@needs_amx
def test_where_the_amx_kernel_fails_conv2_takes_onednn_s_gradients(monkeypatch):
    conv, x, grad = conv2_case(9, torch.Generator().manual_seed(4))
    lib = kernels.library()

    class Refusing:  # conv2_wgrad_bf16 returns -1 (AMX refused after all, or memory short)
        def __getattr__(self, name):
            return (lambda *args: -1) if name == "conv2_wgrad_bf16" else getattr(lib, name)

    monkeypatch.setattr(kernels, "library", lambda: Refusing())
    fallen_back = conv2_gradients(conv, x, grad, amx=True)
    eager = conv2_gradients(conv, x, grad, amx=False)
    assert all(same_bits(a, b) for a, b in zip(fallen_back, eager))


@needs_amx
@pytest.mark.parametrize("conv2, fc1", [(True, False), (False, True), (True, True)])
def test_training_steps_with_the_amx_kernels_stay_within_rounding_of_the_eager_operators(monkeypatch, conv2, fc1):
    fused = trained_with(monkeypatch, pool=True, conv1=True, precision="bf16", conv2=conv2, fc1=fc1)
    eager = trained_with(monkeypatch, pool=True, conv1=True, precision="bf16", conv2=False, fc1=False)
    largest = max((fused[k] - eager[k]).abs().max().item() for k in fused)
    assert 0 < largest < 1e-3, largest


def test_conv2_kernel_takes_only_what_it_computes():
    conv, x, _ = conv2_case(2, torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernels.conv2_fits(x, conv) == kernels._amx()
        assert not kernels.conv2_fits(x.contiguous(), conv)  # the plain layout
        assert not kernels.conv2_fits(x[:, :, :24, :24].contiguous(memory_format=torch.channels_last), conv)
        assert not kernels.conv2_fits(x, torch.nn.Conv2d(32, 64, 3, padding=1))
        assert not kernels.conv2_fits(x, torch.nn.Conv2d(32, 64, 3, bias=False))
        assert not kernels.conv2_fits(x, torch.nn.Conv2d(32, 48, 3))
    assert not kernels.conv2_fits(x, conv)  # without autocast: the float32 or bf16 training it is not
    assert not kernels.conv2_fits(x.float(), conv)


# ---- fc1 on AMX --------------------------------------------------------------------------------------------


def fc1_case(n, generator):
    """model.Net's fc1, a bf16 batch of n flattened pooled activations (zeros among them, as after dropout) and a
    gradient for the output."""
    fc = torch.nn.Linear(9216, 128)
    with torch.no_grad():  # (nn.Linear's initial range, from the generator)
        fc.weight.uniform_(-9216 ** -0.5, 9216 ** -0.5, generator=generator)
        fc.bias.uniform_(-9216 ** -0.5, 9216 ** -0.5, generator=generator)
    x = (torch.rand(n, 9216, generator=generator) - 0.3).relu().to(torch.bfloat16)
    return fc, x, torch.randn(n, 128, generator=generator).to(torch.bfloat16)


def fc1_gradients(fc, x, grad, amx: bool):
    """amx_or_eager_gradients through kernels.fc1_amx"""
    return amx_or_eager_gradients(fc, x, grad, kernels.fc1_fits, kernels.fc1_amx, amx)


@needs_amx
@pytest.mark.parametrize("n", [64, 33, 32, 1])  # tiles of 32 images: whole ones, one more, exactly one, one image
def test_fc1_amx_is_torch_s_forward_and_input_gradient_and_sums_the_weight_gradient_exactly(monkeypatch, n):
    fc, x, grad = fc1_case(n, torch.Generator().manual_seed(n))
    returned = returns_of(monkeypatch, "linear_fwd_bf16", "linear_dgrad_bf16", "linear_wgrad_bf16")
    y, grad_x, grad_weight, grad_bias = fc1_gradients(fc, x, grad, amx=True)
    assert all(codes == [0] for codes in returned.values()), returned  # each kernel computed its part (x's
    # gradient is torch's bits: a fallback would pass the comparisons below)
    eager = fc1_gradients(fc, x, grad, amx=False)
    # the forward: oneDNN sums in another order, and about one output in 5,000 rounds to another bf16 value (the
    # neighbouring one, or near zero, where float32's rounding errors are bf16 steps, a few steps away); both are
    # float32 sums rounded once to bf16
    exact_y = x.double() @ fc.weight.to(torch.bfloat16).double().t() + fc.bias.to(torch.bfloat16).double()
    for got in (y, eager[0]):
        assert ((got.double() - exact_y).abs() <= 2 ** -8 * exact_y.abs() + 1e-6 * exact_y.abs().max()).all()
    assert (y != eager[0]).float().mean() < 0.002
    assert same_bits(grad_x, eager[1])
    assert grad_weight.dtype == grad_bias.dtype == torch.float32 and grad_weight.stride() == fc.weight.stride()
    exact_weight, exact_bias = grad.double().t() @ x.double(), grad.double().sum(0)
    assert_float32_sums([(grad_weight, eager[2], exact_weight), (grad_bias, eager[3], exact_bias)])


@needs_amx
def test_fc1_amx_output_and_gradients_are_the_same_bits_for_any_number_of_threads():
    fc, x, grad = fc1_case(40, torch.Generator().manual_seed(3))
    results = for_each_thread_count(lambda: fc1_gradients(fc, x, grad, amx=True))
    assert all(same_bits(a, b) for result in results[1:] for a, b in zip(result, results[0]))


@needs_amx
@pytest.mark.parametrize("refused", [("linear_fwd_bf16",), ("linear_dgrad_bf16",), ("linear_wgrad_bf16",),
                                     ("linear_fwd_bf16", "linear_dgrad_bf16", "linear_wgrad_bf16")])
def test_where_an_amx_kernel_fails_fc1_takes_torch_s_operator_for_its_part(monkeypatch, refused):
    fc, x, grad = fc1_case(33, torch.Generator().manual_seed(4))
    lib, asked = kernels.library(), set()
    with monkeypatch.context() as patch:
        returned = returns_of(patch, "linear_fwd_bf16", "linear_dgrad_bf16", "linear_wgrad_bf16")
        amx = fc1_gradients(fc, x, grad, amx=True)
        assert all(codes == [0] for codes in returned.values()), returned  # (the kernels' results, no fallback's)
    eager = fc1_gradients(fc, x, grad, amx=False)

    class Refusing:  # the kernels refused return -1 (AMX refused after all, or memory short)
        def __getattr__(self, name):
            asked.add(name)
            return (lambda *args: -1) if name in refused else getattr(lib, name)

    monkeypatch.setattr(kernels, "library", lambda: Refusing())
    fallen_back = fc1_gradients(fc, x, grad, amx=True)
    assert asked >= set(refused)
    computed_by = ["linear_fwd_bf16", "linear_dgrad_bf16", "linear_wgrad_bf16", "linear_wgrad_bf16"]  # y, x's, w's, b's
    expected = [e if kernel in refused else a for kernel, a, e in zip(computed_by, amx, eager)]
    assert not same_bits(amx[2], eager[2])  # (the float32 sums against torch's bf16 ones: the test tells them apart)
    assert all(same_bits(got, want) for got, want in zip(fallen_back, expected))


@needs_amx
def test_the_amx_gradients_are_the_same_whatever_torch_s_default_dtype():
    fc, x, grad = fc1_case(8, torch.Generator().manual_seed(6))
    conv, x2, grad2 = conv2_case(3, torch.Generator().manual_seed(6))
    results, default = [], torch.get_default_dtype()
    for dtype in (torch.float32, torch.float64):  # (the kernels write float32 into the buffers they are given)
        torch.set_default_dtype(dtype)
        try:
            results.append([*fc1_gradients(fc, x, grad, amx=True), *conv2_gradients(conv, x2, grad2, amx=True)])
        finally:
            torch.set_default_dtype(default)
    assert all(same_bits(a, b) for a, b in zip(*results))


def test_fc1_kernel_takes_only_what_it_computes():
    fc, x, _ = fc1_case(2, torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernels.fc1_fits(x, fc) == kernels._amx()
        assert not kernels.fc1_fits(x.t().contiguous().t(), fc)  # not row-major
        assert not kernels.fc1_fits(x[:, :9200].contiguous(), torch.nn.Linear(9200, 128))  # a multiple of 32: no
        assert not kernels.fc1_fits(x, torch.nn.Linear(9216, 10))
        assert not kernels.fc1_fits(x, torch.nn.Linear(9216, 128, bias=False))
        assert not kernels.fc1_fits(x.view(2, 64, 12, 12), fc)
    assert not kernels.fc1_fits(x, fc)  # without autocast: the float32 or bf16 training it is not
    assert not kernels.fc1_fits(x.float(), fc)


def adadelta_with_exact_square_roots(params, grads, square_avgs, acc_deltas, lr, rho=0.9, eps=1e-6):
    """torch/optim/adadelta.py's _single_tensor_adadelta, its two sqrt_ correctly rounded (through float64)."""
    for param, grad, square_avg, acc_delta in zip(params, grads, square_avgs, acc_deltas):
        square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
        std = square_avg.add(eps).double().sqrt().float()
        delta = acc_delta.add(eps).double().sqrt().float().div_(std).mul_(grad)
        acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
        param.add_(delta, alpha=-lr)


@needs_kernels
@pytest.mark.parametrize("lr", [1.0, 0.7, 0.343])
def test_fused_adadelta_is_torch_s_arithmetic_with_exact_square_roots(lr):
    torch.manual_seed(0)
    net = Net().to(memory_format=torch.channels_last)  # conv2's weight channels_last; tails of 10 and 32 elements
    fused = kernels.FusedAdadelta(net.parameters(), lr=lr)
    torch_adadelta = torch.optim.Adadelta(Net().parameters(), lr=lr)
    params = [p.detach().clone() for p in net.parameters()]
    square_avgs, acc_deltas = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    for step in range(4):
        grads = [torch.randn_like(p) * 10.0 ** -step for p in params]
        for p, g in zip(net.parameters(), grads):
            p.grad = g.clone()
        fused.step()
        adadelta_with_exact_square_roots(params, grads, square_avgs, acc_deltas, lr)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), params))
    assert all(torch.equal(fused.state[p]["square_avg"], s) and torch.equal(fused.state[p]["acc_delta"], a)
               for p, s, a in zip(net.parameters(), square_avgs, acc_deltas))
    assert all(fused.state[p]["step"].item() == 4 for p in net.parameters())
    # the state is torch's: the same keys and types, loadable into torch's Adadelta and back
    torch_adadelta.load_state_dict(fused.state_dict())
    assert {k: type(v) for k, v in torch_adadelta.state_dict()["state"][0].items()} == \
        {k: type(v) for k, v in fused.state_dict()["state"][0].items()}


@needs_kernels
def test_fused_adadelta_stays_within_float32_rounding_of_torch_s():
    torch.manual_seed(0)
    a = torch.randn(100_000)
    b = a.clone()
    fused, eager = kernels.FusedAdadelta([a], lr=1.0), torch.optim.Adadelta([b], lr=1.0)
    for _ in range(20):
        a.grad = torch.randn(100_000) * 1e-2
        b.grad = a.grad.clone()
        fused.step()
        eager.step()
    assert not torch.equal(a, b)  # the square roots differ in the last place, somewhere
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_fused_adadelta_runs_torch_s_step_where_it_would_compute_something_else(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "library", lambda: calls.append(1) or pytest.fail("the fused step ran"))
    torch.manual_seed(0)
    for options in ({"weight_decay": 0.1}, {"maximize": True}, {"lr": torch.tensor(1.0)}):
        a = torch.randn(1000)
        b = a.clone()
        fused, eager = kernels.FusedAdadelta([a], **options), torch.optim.Adadelta([b], **options)
        a.grad = torch.randn(1000)
        b.grad = a.grad.clone()
        fused.step()
        eager.step()
        assert torch.equal(a, b), options
    a = torch.randn(1000, dtype=torch.float64)
    a.grad = torch.randn(1000, dtype=torch.float64)
    kernels.FusedAdadelta([a]).step()  # float64
    assert kernels.FusedAdadelta([a]).step(lambda: torch.tensor(1.0)).item() == 1.0  # a closure: its loss back


@needs_kernels
def test_step_lr_sees_the_fused_step_as_an_optimizer_step():
    p = torch.nn.Parameter(torch.randn(10))
    optimizer = kernels.FusedAdadelta([p], lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()", had the step lost its marks
        p.grad = torch.ones(10)
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.7)


FALLBACK = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
import torch
from ignite_mnist import kernels, model
print(kernels.library() is None)
net = model.Net().to(memory_format=torch.channels_last)
net(torch.randn(4, 1, 28, 28).to(memory_format=torch.channels_last)).sum().backward()  # trains eagerly
kernels.FusedAdadelta(net.parameters()).step()
print("trained")
"""


@pytest.mark.parametrize("env", [{"IGNITE_MNIST_KERNELS": "0"}, {"CC": "/nonexistent/cc"}, {"CC": "false"}])
def test_without_the_kernels_training_runs_the_eager_operators_and_says_why_in_the_log(tmp_path, env):
    run = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "XDG_CACHE_HOME": str(tmp_path), **env})  # nothing built yet there
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["True", "trained"]
    said = [line for line in run.stderr.splitlines() if line.startswith("fused kernels not used")]
    expected = {"IGNITE_MNIST_KERNELS": "IGNITE_MNIST_KERNELS=0", "CC": "no C compiler: /nonexistent/cc not found"}
    if env.get("CC") == "false":
        assert len(said) == 1 and "false failed to compile kernels.c" in said[0], run.stderr
    else:
        assert len(said) == 1 and expected[next(iter(env))] in said[0], run.stderr
    assert not list(tmp_path.rglob("*.so*"))  # no half-built file left behind


def _runs_haswell_code() -> bool:
    flags = kernels._cpu_flags().split()
    return all(f in flags for f in ("avx2", "fma", "bmi2", "f16c", "movbe"))


@needs_kernels
@pytest.mark.skipif(not _runs_haswell_code(), reason="this CPU cannot run an AVX2 (-march=haswell) build")
def test_the_avx2_build_of_the_kernels_is_bit_for_bit_too(tmp_path):
    """A CPU without AVX-512 gets kernels.c's 256-bit code (VLEN 8, AVX2 intrinsics), which the tests' own build
    (-march=native) does not compile here: built with -march=haswell in a process of its own, the pooling, conv1,
    Philox and Adadelta tests run against it."""
    (tmp_path / "haswell_build.py").write_text(
        "from ignite_mnist import kernels\n"
        "kernels.FLAGS = [f if f != '-march=native' else '-march=haswell' for f in kernels.FLAGS]\n")
    tests = ROOT / "tests"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "haswell_build",
         str(tests / "test_kernels.py"), "-k", "(pool or conv1 or philox or adadelta) and not avx2_build"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(tests), str(ROOT)])})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    summary = run.stdout.splitlines()[-1]
    assert int(summary.split(" passed")[0].split()[-1]) >= 30, summary
    assert "kernels built for another CPU than this one" in run.stdout  # (the Haswell flags were used)


@needs_kernels
def test_the_kernels_are_built_once_per_cpu_and_source_then_loaded(tmp_path):
    def load():
        run = subprocess.run([sys.executable, "-c", "from ignite_mnist import kernels; print(kernels.library())"],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
        assert run.returncode == 0, run.stderr[-2000:]
        return list((tmp_path / "ignite-mnist").glob("kernels-*.so"))

    built = load()
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    assert load() == built and built[0].stat().st_mtime_ns == mtime  # loaded, not built again
    built[0].write_bytes(b"not a library")  # damaged (or another system's): built again
    assert load() == built and built[0].stat().st_size > 1000
    (tmp_path / "damaged.so").write_bytes(b"not a library")  # a library that cannot load is a reason, not a crash
    with pytest.raises(kernels.KernelsUnavailable, match="cannot load .*damaged.so"):
        kernels._open(tmp_path / "damaged.so")


def test_training_makes_the_fused_adadelta_on_the_cpu_unless_inductor_compiles_the_step():
    from ignite_mnist.engines import make_optimizer

    params = list(Net().parameters())
    assert type(make_optimizer(params, 1.0, torch.device("cpu"))) is kernels.FusedAdadelta
    assert type(make_optimizer(params, 1.0, torch.device("cpu"), compiled=True)) is torch.optim.Adadelta
    assert type(make_optimizer(params, 1.0, torch.device("meta"))) is torch.optim.Adadelta  # (CUDA's case)


def test_the_kernels_build_where_there_is_a_c_compiler():
    """Where a C compiler is found, kernels.c must build and load: a source that no longer compiles would otherwise
    only turn the other tests of this file into skips."""
    compiler = os.environ.get("CC") or "cc"
    if os.environ.get("IGNITE_MNIST_KERNELS") == "0" or shutil.which(compiler.split()[0]) is None:
        pytest.skip(f"no C compiler ({compiler}) or IGNITE_MNIST_KERNELS=0")
    assert kernels.library() is not None


@needs_kernels
def test_optimizer_hooks_run_once_a_step_on_the_fused_step_and_on_torch_s(monkeypatch):
    torch.optim.Adadelta([torch.nn.Parameter(torch.zeros(1))])  # a torch Adadelta hooks its class's step too
    for options in ({}, {"weight_decay": 0.1}):  # the fused step, then torch's
        p = torch.nn.Parameter(torch.randn(10))
        optimizer = kernels.FusedAdadelta([p], **options)
        calls = []
        optimizer.register_step_pre_hook(lambda *_: calls.append("pre"))
        optimizer.register_step_post_hook(lambda *_: calls.append("post"))
        p.grad = torch.ones(10)
        optimizer.step()
        assert calls == ["pre", "post"], options


def test_a_second_openmp_runtime_is_a_reason_not_a_rebuild(monkeypatch, tmp_path):
    """Two OpenMP runtimes in the process: the kernels are not used, and the built library is kept (built again, it
    would be the same library)."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler.split()[0]) is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    two = {"/a/libgomp.so.1", "/b/libomp.so"}
    runtimes = iter([set(), set(), set(), two])  # (before and after loading) a first load, then a second
    monkeypatch.setattr(kernels, "_openmp_runtimes", lambda: next(runtimes, two))
    builds = []
    monkeypatch.setattr(kernels, "_build", lambda *a, build=kernels._build: builds.append(1) or build(*a))
    assert kernels._load() is not None and builds == [1]
    with pytest.raises(kernels.KernelsUnavailable, match="another OpenMP runtime"):
        kernels._load()
    assert builds == [1] and len(list((tmp_path / "ignite-mnist").glob("kernels-*.so"))) == 1


def philox4x32_10(counter, key):
    """Philox4x32-10 as its paper defines it (Salmon et al., SC'11), in Python: the reference for kernels.c's."""
    (c0, c1, c2, c3), (k0, k1) = counter, key
    for round in range(10):
        if round:
            k0, k1 = (k0 + 0x9E3779B9) % 2**32, (k1 + 0xBB67AE85) % 2**32
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 % 2**32, (p0 >> 32) ^ c3 ^ k1, p0 % 2**32
    return c0, c1, c2, c3


def test_the_python_philox_gives_random123_s_known_answers():
    assert philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert philox4x32_10((2**32 - 1,) * 4, (2**32 - 1,) * 2) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == \
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


@needs_kernels
@pytest.mark.parametrize("n, key", [(16, 0), (1000, 0xA4093822_299F31D0), (4099, 2**64 - 1)])
def test_philox_bytes_are_philox4x32_10_block_by_block(n, key):
    import struct

    got = bytes(kernels.philox_bytes(n, key).numpy())
    key_words = (key % 2**32, key >> 32)
    blocks = (philox4x32_10((i % 2**32, i >> 32, 0, 0), key_words) for i in range((n + 15) // 16))
    assert got == b"".join(struct.pack("<4I", *block) for block in blocks)[:n]


@needs_kernels
def test_philox_bytes_are_the_same_for_any_number_of_threads_and_uniform():
    results = for_each_thread_count(lambda: kernels.philox_bytes(1_000_003, 12345))
    assert all(torch.equal(r, results[0]) for r in results)
    counts = torch.bincount(results[0].long(), minlength=256).double()
    expected = 1_000_003 / 256
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 340  # 255 degrees of freedom: above 340 by chance about once in 3,000
    assert not torch.equal(kernels.philox_bytes(4096, 1), kernels.philox_bytes(4096, 2))


@pytest.mark.skipif(not kernels.philox_fits(), reason="kernels not built with AVX2 or AVX-512: torch's own bytes")
def test_dropout_bytes_come_from_one_64_bit_draw_of_torch_s_generator():
    torch.manual_seed(7)
    a = model.random_bytes(10_000)
    after = torch.empty(3, dtype=torch.int64).random_(-2**63, None)
    torch.manual_seed(7)
    key = torch.empty((), dtype=torch.int64).random_(-2**63, None).item() % 2**64
    assert torch.equal(a, kernels.philox_bytes(10_000, key))
    assert torch.equal(after, torch.empty(3, dtype=torch.int64).random_(-2**63, None))  # one draw taken, no more


@needs_kernels
def test_philox_draws_dropout_s_bytes_where_the_build_is_vectorized():
    if "-march=native" not in kernels.FLAGS:
        pytest.skip("kernels built for another CPU than this one")
    flags = kernels._cpu_flags().split()
    assert kernels.philox_fits() == ("avx2" in flags or "avx512f" in flags)
