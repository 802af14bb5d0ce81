"""Resume is exact on the CPU: 1 epoch, then resume to 3, equals 3 epochs straight, bit for bit."""

import os
import re
import shutil
import sys

import pytest
import torch

from conftest import assert_same, make_config, run_cli
from ignite_mnist import data, kernels
from ignite_mnist.checkpoints import read_checkpoint
from ignite_mnist.launch import run_training
from ignite_mnist.experiment import create_experiment, load_config


def new_experiment(workdir, tiny_data, name, **changes):
    config = load_config(make_config(workdir, **changes))
    return create_experiment(workdir / "experiments", name, config, seed=7,
                             sizes=data.dataset_sizes("mnist", tiny_data))


@pytest.mark.filterwarnings("error::UserWarning")  # (StepLR's, had the compiled step lost its marks)
@pytest.mark.parametrize("precision, compiled, fused", [("fp32", False, True), ("bf16", False, True), ("bf16", True, True),
                                                       ("bf16", False, False)])
def test_resumed_training_equals_uninterrupted_training(workdir, tiny_data, precision, compiled, fused, monkeypatch):
    if not fused:  # the eager operators, as without a C compiler (fused: kernels.c, where it builds)
        monkeypatch.setattr(kernels, "_library", False)
    else:
        assert kernels.library() is not None or shutil.which(os.environ.get("CC") or "cc") is None
    changes = {"training.precision": precision, "training.compile_optimizer": compiled}
    straight = new_experiment(workdir, tiny_data, f"straight-{precision}-{compiled}-{fused}", **changes)
    resumed = new_experiment(workdir, tiny_data, f"resumed-{precision}-{compiled}-{fused}", **changes)
    if compiled:
        from torch._dynamo.utils import counters
        graphs = counters["stats"]["unique_graphs"]
    run_training(straight, tiny_data, max_epochs=3, device_name="cpu")
    if compiled:  # once for the run: the learning rate, which StepLR changes every epoch, is an input
        assert counters["stats"]["unique_graphs"] == graphs + 1
        # as the float path computes it (a float32 tensor would log 0.48999997973442078)
        assert read_checkpoint(straight.checkpoints()[3], "cpu")["history"]["epochs"][2]["lr"] == 0.7 * 0.7
    run_training(resumed, tiny_data, max_epochs=1, device_name="cpu")
    assert list(resumed.checkpoints()) == [1]
    run_training(resumed, tiny_data, max_epochs=3, device_name="cpu")
    assert list(resumed.checkpoints()) == list(straight.checkpoints()) == [1, 2, 3]
    for epoch in (1, 2, 3):
        a = read_checkpoint(straight.checkpoints()[epoch], "cpu")
        b = read_checkpoint(resumed.checkpoints()[epoch], "cpu")
        assert_same(a, b, f"epoch {epoch}")
    last = read_checkpoint(straight.checkpoints()[3], "cpu")
    first = read_checkpoint(straight.checkpoints()[1], "cpu")
    assert not torch.equal(last["model"]["fc2.weight"], first["model"]["fc2.weight"]), "training changed the model"
    assert last["history"]["epochs"][-1]["test_accuracy"] > 50  # 320 digits, 3 epochs: it learns


def test_compile_optimizer_compiles_each_run_of_a_process_past_dynamo_s_limit_of_8():
    """A sweep trains its trials one after another in one process: each trial's step is compiled anew, not
    left uncompiled once dynamo has compiled 8 optimizers' steps."""
    from torch._dynamo.utils import counters

    from ignite_mnist.engines import compile_optimizer_step

    for run in range(10):
        layer = torch.nn.Linear(3, 2)
        optimizer = torch.optim.Adadelta(layer.parameters(), lr=1.0)
        compile_optimizer_step(optimizer)
        graphs = counters["stats"]["unique_graphs"]
        layer(torch.ones(4, 3)).sum().backward()
        optimizer.step()
        assert counters["stats"]["unique_graphs"] == graphs + 1, f"run {run + 1} was not compiled"


def test_compile_optimizer_s_notes_go_to_verbose_log_not_the_console(workdir, tiny_data):
    cli = ["--experiments-path", workdir / "experiments", "--data-path", tiny_data, "-e", "c"]
    r = run_cli(*cli, "init", "--set", "training.compile_optimizer=true", cwd=workdir)
    assert r.returncode == 0, r.stderr
    r = run_cli(*cli, "train", "--max-epochs", "1", "--device", "cpu", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "epoch 1/1: train loss" in r.stderr
    assert not re.search(r"^[WIE]\d{4} |torch\._dynamo|Profiler record function", r.stderr, re.M), r.stderr
    log = (workdir / "experiments" / "c" / "verbose.log").read_text()
    assert "torch._dynamo" in log or "torch.utils.cpp_extension" in log  # what torch.compile said, kept


def test_torch_s_loggers_are_taken_only_with_a_verbose_log_and_given_back(tmp_path):
    import logging
    import types

    from ignite_mnist.experiment import setup_logging

    setup_logging(None)  # gives back what an earlier training in this process took
    dynamo = logging.getLogger("torch._dynamo")
    before = (list(dynamo.handlers), dynamo.propagate)
    assert before[0], "torch gives its loggers their own console handlers"
    try:
        setup_logging(None, to_console=False)  # a rank > 0: no verbose.log to send them to
        assert (dynamo.handlers, dynamo.propagate) == before
        setup_logging(types.SimpleNamespace(log_file=tmp_path / "verbose.log"), verbose=True)  # --verbose: the console
        assert (dynamo.handlers, dynamo.propagate) == before
        setup_logging(types.SimpleNamespace(log_file=tmp_path / "verbose.log"))
        assert [type(h).__name__ for h in dynamo.handlers] == ["NullHandler", "LogFileHandler"]
        dynamo.warning("noted")
        assert "WARNING torch._dynamo: noted" in (tmp_path / "verbose.log").read_text()
        setup_logging(None)
        assert (dynamo.handlers, dynamo.propagate) == before  # not left writing to a closed experiment's log
    finally:
        setup_logging(None)


def test_training_is_reproducible_from_the_seed_and_differs_with_another(workdir, tiny_data):
    a = new_experiment(workdir, tiny_data, "a")
    b = new_experiment(workdir, tiny_data, "b")
    other = create_experiment(workdir / "experiments", "other", a.config, seed=8,
                              sizes=data.dataset_sizes("mnist", tiny_data))
    for experiment in (a, b, other):
        run_training(experiment, tiny_data, max_epochs=1, device_name="cpu")
    weights = [read_checkpoint(e.checkpoints()[1], "cpu")["model"]["conv1.weight"] for e in (a, b, other)]
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh runs the rest there)")
def test_training_resumes_on_cuda(workdir, tiny_data):
    """On CUDA too, `train` goes on from its last checkpoint, random generators included (torch.load maps
    every tensor of the checkpoint onto the GPU, the NumPy generator's keys among them)."""
    import numpy as np

    from ignite_mnist.checkpoints import RNGStates

    experiment = new_experiment(workdir, tiny_data, "cuda")
    run_training(experiment, tiny_data, max_epochs=1, device_name="cuda:0")
    run_training(experiment, tiny_data, max_epochs=2, device_name="cuda:0")
    assert list(experiment.checkpoints()) == [1, 2]
    assert [e["epoch"] for e in experiment.history()["epochs"]] == [1, 2]
    rng = read_checkpoint(experiment.checkpoints()[2], "cuda:0")["rng"]
    assert rng["numpy"]["keys"].device.type == "cuda" and "cuda" in rng
    RNGStates().load_state_dict(rng)
    assert np.array_equal(np.random.get_state()[1], rng["numpy"]["keys"].cpu().numpy().astype(np.uint32))
    assert torch.equal(torch.cuda.get_rng_state(), rng["cuda"][0].cpu())


def test_the_progress_bar_is_redrawn_at_most_100_times_an_epoch(workdir, tiny_data, monkeypatch):
    """At a terminal `train` shows a progress bar; each advance redraws it, so it advances 100 times an epoch
    at most (every advance cost 20% of a GPU step), and still reaches the epoch's end."""
    import io

    import tqdm

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    draws = []
    set_description = tqdm.std.tqdm.set_description
    monkeypatch.setattr(tqdm.std.tqdm, "set_description",
                        lambda bar, *args, **kwargs: (draws.append(bar.n), set_description(bar, *args, **kwargs))[1])
    monkeypatch.setattr(sys, "stderr", Terminal())
    experiment = new_experiment(workdir, tiny_data, "bar", **{"training.batch_size": 1, "data.val_split": 0})
    iterations = len(experiment.load_split()["train"])
    assert iterations >= 300  # so that advancing at every iteration would be 3 times too often
    run_training(experiment, tiny_data, max_epochs=1, device_name="cpu")
    assert 50 <= len(draws) <= 100
    console = sys.stderr.getvalue()
    assert re.search(rf"\[{iterations - iterations % (iterations // 100)}/{iterations}\]", console)
    # the epoch's line on a line of its own, the bar lifted first, not glued to the end of the bar
    assert re.search(r"\r *\repoch 1/1: train loss", console), console[-300:]
