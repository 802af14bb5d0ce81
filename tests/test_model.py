"""The network is the PyTorch example's: same parameters, same outputs; its speed changes change nothing."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import three_training_steps
from ignite_mnist import model
from ignite_mnist.model import Dropout, Net, PlainLayout


def example_forward(net, x):
    """pytorch/examples mnist/main.py's forward, in its order (ReLU, then max-pool), in eval mode."""
    x = F.relu(net.conv1(x))
    x = F.relu(net.conv2(x))
    x = F.max_pool2d(x, 2)
    x = torch.flatten(x, 1)
    x = F.relu(net.fc1(x))
    return F.log_softmax(net.fc2(x), dim=1)


def test_same_parameters_and_outputs_as_the_example():
    torch.manual_seed(0)
    net = Net().eval()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {
        "conv1.weight": (32, 1, 3, 3), "conv1.bias": (32,), "conv2.weight": (64, 32, 3, 3), "conv2.bias": (64,),
        "fc1.weight": (128, 9216), "fc1.bias": (128,), "fc2.weight": (10, 128), "fc2.bias": (10,)}
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(net(x), example_forward(net, x))  # pool before ReLU: bit for bit the same
        channels_last = Net().eval()
        channels_last.load_state_dict(net.state_dict())
        channels_last = channels_last.to(memory_format=torch.channels_last)
        assert torch.allclose(channels_last(x), net(x), atol=1e-5)


def test_the_layout_change_in_training_changes_no_value_and_gives_the_gradient_back_channels_last(monkeypatch):
    x = torch.randn(4, 8, 5, 5).to(memory_format=torch.channels_last).requires_grad_(True)
    y = PlainLayout.apply(x)
    assert y.is_contiguous() and torch.equal(y, x)
    y.backward(torch.arange(y.numel(), dtype=torch.float32).view(y.shape))
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x.grad, torch.arange(y.numel(), dtype=torch.float32).view(y.shape))

    def trained(apply):  # a few bf16 training steps of the model, PlainLayout as given
        monkeypatch.setattr(model.PlainLayout, "apply", apply)
        monkeypatch.setattr(model.kernels, "pool_fits", lambda x: False)  # the eager path (kernels: test_kernels)
        return three_training_steps()

    original, calls = PlainLayout.apply, []
    with_it = trained(lambda x: calls.append(x.shape) or original(x))
    assert calls == [torch.Size([16, 64, 12, 12])] * 3  # the training forward changes the pooled layout
    without = trained(lambda x: x)
    assert all(torch.equal(with_it[k], without[k]) for k in with_it)  # bit for bit


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_byte_dropout_keeps_each_value_with_probability_1_minus_p(p):
    torch.manual_seed(1)
    dropout = Dropout(p).train()
    x = torch.rand(1_000_003) + 1  # odd size: the last 64-bit draw is used in part
    x.requires_grad_(True)
    y = dropout(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.002  # 1e6 draws: the standard error is ~0.0005
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / (1 - p))  # the gradient goes through the kept values only
    assert abs(y.mean().item() - x.mean().item()) < 0.01  # unbiased
    # neighbouring elements are independent: the eight bytes of one draw are not correlated, and each is
    # kept with probability 1 - p (a sign bit or a top byte drawn short would fail this)
    draws = kept[: 1_000_000].view(-1, 8).float()
    for a, b in ((0, 1), (3, 4), (6, 7)):
        assert abs((draws[:, a] * draws[:, b]).mean().item() - (1 - p) ** 2) < 0.005
    assert all(abs(draws[:, i].mean().item() - (1 - p)) < 0.005 for i in range(8))  # 125,000 draws: se ~0.0013


def test_byte_dropout_is_reproducible_and_off_in_eval_mode():
    x = torch.ones(64, 64, 12, 12).to(memory_format=torch.channels_last)
    torch.manual_seed(3)
    a = Dropout(0.25)(x)
    torch.manual_seed(3)
    assert torch.equal(Dropout(0.25)(x), a)
    assert torch.equal(Dropout(0.25).eval()(x), x)
    assert Dropout(0.25)(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_byte_dropout_mask_is_the_bytes_compared_and_scaled_in_the_activation_dtype(dtype):
    # the comparison writes the mask in x's dtype directly (no bool mask and cast): the same values, bit for bit;
    # the bytes lie in x's memory order, as kernels.PoolReluDropout reads them from a channels_last activation
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(64, 64, 12, 12, dtype=dtype).contiguous(memory_format=layout)
        torch.manual_seed(5)
        y = Dropout(0.25)(x)
        torch.manual_seed(5)
        in_memory_order = model.random_bytes(x.numel())
        keep = (in_memory_order.view(64, 12, 12, 64).permute(0, 3, 1, 2) if layout == torch.channels_last
                else in_memory_order.view(x.shape)) < 192
        assert torch.equal(y, x * keep.to(dtype).mul_(1 / 0.75))
        assert y.dtype == dtype and y.stride() == x.stride()


def test_other_probabilities_use_torch_dropout():
    torch.manual_seed(4)
    x = torch.ones(100_000)
    y = Dropout(0.3)(x)  # 0.3 * 256 is not a whole number
    torch.manual_seed(4)
    assert torch.equal(y, F.dropout(x, 0.3, training=True))



COUNTED_TRAINING = """
import resource, sys
from ignite_mnist import cli, device, engines

faults, make_train_step, keep_freed_memory, kept = [], engines.make_train_step, device.keep_freed_memory, []
device.keep_freed_memory = lambda: kept.append(keep_freed_memory())  # what training() asked of malloc

def counting(*args, **kwargs):  # the real step, and the page faults of the process after each
    step = make_train_step(*args, **kwargs)
    def counted(engine, index):
        loss = step(engine, index)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        return loss
    return counted

engines.make_train_step = counting
for command in (["init", "--set", "data.dataset=mnist-sample"], ["train", "--max-epochs", "1", "--device", "cpu"]):
    try:
        cli.main([*sys.argv[1:], *command])
    except SystemExit as e:
        assert not e.code, e.code
steady = faults[20:]  # past the first steps: oneDNN's primitives, the allocator's high-water mark
# the median step: one-off events between two steps (a lazy import, a handler's first call) are not the steps'
print(kept == [True], sorted(b - a for a, b in zip(steady, steady[1:]))[(len(steady) - 1) // 2])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_training_steps_reuse_the_memory_freed_by_the_step_before(tmp_path):
    # `ignite-mnist train` on the bundled sample, its own steps counted: a page fault per fresh page made a
    # one-epoch train 1.4x as long on an AMX VM (README, Speed; docs/speed-log.md: 0.72x with it)
    run = subprocess.run([sys.executable, "-c", COUNTED_TRAINING, "-e", "exp", "--experiments-path", tmp_path],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    told_malloc_once, faults = run.stdout.split()[-2:]
    # training() told glibc's malloc, once, to keep freed memory, and malloc took it: on a machine whose steps
    # fault little either way (the AVX512 and AVX2 EPYCs), this is what shows the lever is in place
    assert told_malloc_once == "True"
    # page faults in the median step: 0 here (one-off events between steps: up to 1,300 faults), about 6,000
    # when training() leaves glibc's defaults, 1,150 with the heap kept but large blocks still mmap'ed
    assert float(faults) < 20


def test_random_bytes_without_the_kernels_are_torch_s_own_64_bit_draws(monkeypatch):
    monkeypatch.setattr(model.kernels, "_library", False)  # (with them: Philox keyed by one draw, test_kernels)
    torch.manual_seed(5)
    got = model.random_bytes(1001)
    torch.manual_seed(5)
    assert torch.equal(got, torch.empty(126, dtype=torch.int64).random_(-2**63, None).view(torch.uint8)[:1001])
